"""Snapshot names without IPNS: the newest CID of a named index, as signed state in a room.

The room of a name is `#<prefix>snapshot.<name>:<server>` (a project name never holds a dot
after normalization, so it can never be a package room's alias), made by the bot of that
server. Each publisher states in its own slot (`state_key` = its user id) a content signed with
its attestation key:

    {"name": NAME, "cid": CID, "published_at": ms, "published_by": ADMIN, "signatures": {...}}

A name resolves to the newest `published_at` among the slots whose signature verifies under a
pinned key of their sender (`trusted_keys`, and this server's bot): a user who can write
the state but holds no such key, or signs for someone else, changes nothing. Anyone on a
federated server can read the room and check who signed what.
"""

import logging
import re
import time
from typing import Any, Dict, Mapping, Optional, Tuple, cast

import attrs
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

from synapse_pypi._errors import HttpError
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._room_reader import RoomReader
from synapse_pypi.trust import key_id, parse_public_key

logger = logging.getLogger(__name__)

SNAPSHOT_TYPE = "dev.synapse-pypi.snapshot"
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
# A CID as Kubo prints one: CIDv0 (base58btc, Qm...) or CIDv1 in base32 (b...).
CID_RE = re.compile(r"^(?:Qm[1-9A-HJ-NP-Za-km-z]{44}|b[a-z2-7]{58,})$")
# How long a resolved name is kept before the room is read again.
RESOLVE_TTL_S = 1.0


def is_cid(text: str) -> bool:
    return bool(CID_RE.match(text))


def check_name(name: str) -> str:
    """A snapshot name: lower-case letters, digits, '-' and '_'; or NAME:SERVER for another
    server's."""
    local, colon, server = name.partition(":")
    if not NAME_RE.match(local) or (colon and not re.match(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$", server)):
        raise HttpError(400, f"{name!r} is not a snapshot name (lower-case letters, digits, '-' and '_', "
                             "optionally :SERVER)")
    return name


@attrs.frozen
class Named:
    """What a name resolves to, and who said so."""

    name: str
    cid: str
    signed_by: str
    published_at: int
    room_id: str


class SnapshotNames:
    """Publishes and resolves snapshot names.

    Args:
        api: the ModuleApi.
        config: the module config.
        signing_key: this server's attestation key (the bot signs what it publishes).
        clock: the reactor.
    """

    def __init__(self, api: Any, config: Any, signing_key: Any, clock: Any):
        self._api = api
        self._config = config
        self._key = signing_key
        self._clock = clock
        self._writes = MatrixWrites(api)
        self._rooms = RoomReader(api, config, clock)
        self.bot = self._rooms.bot
        self._pinned: Dict[str, Dict[str, Any]] = {
            mxid: dict(parse_public_key(k) for k in keys) for mxid, keys in config.trusted_keys.items()
        }
        self._pinned.setdefault(self.bot, {})[key_id(signing_key)] = signing_key.verify_key
        self._resolved: Dict[str, Tuple[float, Named]] = {}

    def alias(self, name: str) -> str:
        local, _, server = name.partition(":")
        return f"#{self._config.room_alias_prefix}snapshot.{local}:{server or self._api.server_name}"

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, name: str, cid: str, admin: str) -> Dict[str, Any]:
        check_name(name)
        if ":" in name:
            raise HttpError(400, f"{name}: names on other servers are published there, not here")
        if not is_cid(cid):
            raise HttpError(400, f"{cid!r} is not a CID (CIDv0 Qm... or CIDv1 base32 b...)")
        room_id = await self._room_for(name)
        content = sign_json(
            {"name": name, "cid": cid, "published_at": int(self._clock.seconds() * 1000), "published_by": admin},
            self.bot,
            self._key,
        )
        event = await self._writes.send(
            {"type": SNAPSHOT_TYPE, "room_id": room_id, "sender": self.bot, "state_key": self.bot, "content": content}
        )
        self._resolved.pop(name, None)
        logger.info("admin %s published snapshot %s as %s in %s", admin, cid, name, room_id)
        return {"name": name, "cid": cid, "alias": self.alias(name), "room_id": room_id, "event_id": event.event_id}

    async def _room_for(self, name: str) -> str:
        alias = self.alias(name)
        found = await self._rooms.lookup(alias)
        if found is not None:
            room_id = found[0]
            creator = await self._rooms.creator(room_id)
            if creator != self.bot:
                raise HttpError(409, f"{alias} belongs to a room made by {creator}, not by {self.bot}")
            return room_id
        room_id, _ = await self._writes.create_room(
            self.bot,
            {
                "preset": "public_chat",
                "room_alias_name": alias[1:].split(":", 1)[0],
                "name": f"snapshot index {name} — signed IPFS CIDs published by {self._api.server_name}",
                "topic": f"The newest state event {SNAPSHOT_TYPE} names the IPFS CID of the snapshot index {name}; "
                f"its signature says who published it. pip: --index-url <homeserver>/snapshots/{name}/simple/",
                "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {
                    "history_visibility": "world_readable"}}],
                "power_level_content_override": {
                    "events": {SNAPSHOT_TYPE: 100, "m.room.power_levels": 100, "m.room.canonical_alias": 100,
                               "m.room.join_rules": 100, "m.room.history_visibility": 100},
                    "state_default": 100,
                    "events_default": 0,
                },
            },
            ratelimit=False,
        )
        logger.info("made %s (%s) for the snapshot name %s", alias, room_id, name)
        return str(room_id)

    # -- resolving -------------------------------------------------------------------------

    async def resolve(self, name: str) -> Named:
        check_name(name)
        now = time.monotonic()
        hit = self._resolved.get(name)
        if hit is not None and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
        named = await self._read(name)
        self._resolved[name] = (now, named)
        return named

    async def _read(self, name: str) -> Named:
        alias = self.alias(name)
        room_id = await self._rooms.open(alias, f"snapshot is named {name}: no room")
        maker = f"@{self._config.bot_localpart}:{alias.split(':', 1)[1]}"
        creator = await self._rooms.creator(room_id)
        if creator != maker:
            raise HttpError(409, f"{alias} was made by {creator}, not by {maker}: not a snapshot room")
        state = await self._rooms.state(room_id, [(SNAPSHOT_TYPE, None)])
        best: Optional[Named] = None
        for (_type, state_key), event in state.items():
            named = self._valid(name, room_id, event.sender, state_key, dict(event.content))
            if named is not None and (best is None or named.published_at > best.published_at):
                best = named
        if best is None:
            raise HttpError(404, f"{alias} holds no snapshot CID signed by a trusted key")
        return best

    def _valid(self, name: str, room_id: str, sender: str, state_key: str, content: Mapping[str, Any]) -> Optional[Named]:
        """The slot's claim if its sender signed it with a pinned key; None otherwise."""
        keys = self._pinned.get(sender)
        cid, when = content.get("cid"), content.get("published_at")
        if state_key != sender or not keys or not isinstance(cid, str) or not is_cid(cid):
            return None
        if not isinstance(when, int) or isinstance(when, bool) or content.get("name") != name.partition(":")[0]:
            return None
        signatures = content.get("signatures")
        mine = signatures.get(sender) if isinstance(signatures, dict) else None
        if not isinstance(mine, dict):
            return None
        for kid, verify_key in keys.items():
            if kid not in mine:
                continue
            try:
                verify_signed_json(dict(content), sender, cast(Any, _Keyed(verify_key, kid)))
            except (SignatureVerifyException, ValueError, TypeError):
                continue
            return Named(name, cid, sender, when, room_id)
        return None


class _Keyed:
    """A verify key under the id the signature is filed under (signedjson looks the
    signature up by the key's `alg` and `version`)."""

    def __init__(self, key: Any, kid: str):
        self._key = key
        self.alg, _, self.version = kid.partition(":")

    def verify(self, message: bytes, signature: bytes) -> Any:
        return self._key.verify(message, signature)
