"""What a hostile homeserver can send: a PDU it signs itself, straight to another server's
federation API, bypassing its own client API's checks (SYNAPSE-FACTS.md section 6).

    event_id = forge_redaction(hostile, victim, room_id, "@eve:" + hostile.server_name, target_event_id)

`hostile` must be a real homeserver in the room (its users joined through it), so that the
victim knows its signing key. The victim answers the transaction before it has processed the
PDU: poll for the outcome.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import ssl
import time
import urllib.parse
import urllib.request
from typing import Any

from signedjson.key import read_signing_keys
from signedjson.sign import sign_json

from .synapse import SynapseServer

__all__ = ["forge_redaction", "send_pdus"]


def _signing_key(hs: SynapseServer) -> Any:
    with open(hs.work_dir / "signing.key", encoding="utf-8") as f:
        return read_signing_keys(f)[0]


def _extremities(victim: SynapseServer, room_id: str) -> list[tuple[str, int]]:
    """(event id, depth) of the victim's forward extremities in the room (SQLite only)."""
    if victim.db != "sqlite":
        raise RuntimeError("forging PDUs reads the victim's SQLite database")
    db = sqlite3.connect(f"file:{victim.work_dir / 'homeserver.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT e.event_id, e.depth FROM event_forward_extremities AS f"
            " INNER JOIN events AS e ON e.event_id = f.event_id WHERE f.room_id = ?",
            (room_id,),
        ).fetchall()
    finally:
        db.close()
    return [(r[0], int(r[1])) for r in rows]


def _state_event_id(victim: SynapseServer, token: str, room_id: str, etype: str, state_key: str) -> str:
    for ev in victim.request_json("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/state", token=token):
        if ev["type"] == etype and ev.get("state_key") == state_key:
            return str(ev["event_id"])
    raise AssertionError(f"{etype}/{state_key} not in the state of {room_id}")


def forge_redaction(
    hostile: SynapseServer, victim: SynapseServer, victim_token: str, room_id: str, sender: str, redacts: str
) -> str:
    """Send a redaction of `redacts` by `sender` (a user of `hostile`) as `hostile` would,
    signed with its own key, to `victim`; returns the forged event's id."""
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
    from synapse.crypto.event_signing import add_hashes_and_signatures
    from synapse.events import make_event_from_dict

    room_version = KNOWN_ROOM_VERSIONS["12"]
    prev = _extremities(victim, room_id)
    pdu: dict[str, Any] = {
        "room_id": room_id,
        "type": "m.room.redaction",
        "sender": sender,
        # Since v11 the target is named in the content only.
        "content": {"redacts": redacts, "reason": "forged by a hostile server"},
        "prev_events": [eid for eid, _ in prev],
        "depth": max(depth for _, depth in prev) + 1,
        # v12: the room id is the create event; auth events are the power levels and the
        # sender's membership.
        "auth_events": [
            _state_event_id(victim, victim_token, room_id, "m.room.power_levels", ""),
            _state_event_id(victim, victim_token, room_id, "m.room.member", sender),
        ],
        "origin_server_ts": int(time.time() * 1000),
        "unsigned": {},
    }
    add_hashes_and_signatures(room_version, pdu, hostile.server_name, _signing_key(hostile))
    event_id = make_event_from_dict(pdu, room_version).event_id
    send_pdus(hostile, victim, [pdu])
    return str(event_id)


def send_pdus(origin: SynapseServer, destination: SynapseServer, pdus: list[dict[str, Any]]) -> None:
    """One signed federation transaction from `origin` to `destination`."""
    txn = secrets.token_hex(8)
    path = f"/_matrix/federation/v1/send/{txn}"
    body = {"origin": origin.server_name, "origin_server_ts": int(time.time() * 1000), "pdus": pdus}
    key = _signing_key(origin)
    signed = sign_json(
        {"method": "PUT", "uri": path, "origin": origin.server_name, "destination": destination.server_name,
         "content": body},
        origin.server_name,
        key,
    )
    sig = signed["signatures"][origin.server_name][f"{key.alg}:{key.version}"]
    auth = (
        f'X-Matrix origin="{origin.server_name}",destination="{destination.server_name}",'
        f'key="{key.alg}:{key.version}",sig="{sig}"'
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(
        f"https://127.0.0.1:{destination.federation_port}{path}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Authorization": auth, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=context) as response:
        answer = json.loads(response.read())
    if answer.get("pdus") and any(v for v in answer["pdus"].values()):
        raise AssertionError(f"{destination.server_name} rejected the PDUs: {answer}")
