"""The Matrix client-server API, as a moderator or publisher would use it from any client.

Every call goes to a real Synapse over HTTP; failures raise with the status and body.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable
from urllib.parse import quote

from harness.synapse import SynapseServer

CS = "/_matrix/client/v3"


class MatrixError(AssertionError):
    def __init__(self, status: int, body: bytes, what: str):
        super().__init__(f"{what}: {status} {body[:300]!r}")
        self.status = status
        self.body = body


class Client:
    """One user on one homeserver."""

    def __init__(self, hs: SynapseServer, user_id: str, token: str):
        self.hs = hs
        self.user_id = user_id
        self.token = token

    @classmethod
    def register(cls, hs: SynapseServer, localpart: str, admin: bool = False) -> Client:
        user_id, token = hs.register_user(localpart, admin=admin)
        return cls(hs, user_id, token)

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, _, data = self.hs.request(method, path, json_body=body, token=self.token, timeout=60)
        if status != expect:
            raise MatrixError(status, data, f"{method} {path}")
        return json.loads(data) if data else {}

    def room_id(self, alias: str) -> str:
        return self.call("GET", f"{CS}/directory/room/{quote(alias)}")["room_id"]

    def join(self, room: str) -> str:
        return self.call("POST", f"{CS}/join/{quote(room)}", {})["room_id"]

    def send_state(self, room_id: str, event_type: str, state_key: str, content: Any, expect: int = 200) -> str:
        path = f"{CS}/rooms/{quote(room_id)}/state/{quote(event_type)}/{quote(state_key, safe='')}"
        return self.call("PUT", path, content, expect=expect).get("event_id", "")

    def state(self, room_id: str) -> list:
        return self.call("GET", f"{CS}/rooms/{quote(room_id)}/state")

    def state_event(self, room_id: str, event_type: str, state_key: str = "") -> Any:
        path = f"{CS}/rooms/{quote(room_id)}/state/{quote(event_type)}/{quote(state_key, safe='')}"
        return self.call("GET", path)

    def redact(self, room_id: str, event_id: str, reason: str = "wrong") -> str:
        txn = secrets.token_hex(8)
        path = f"{CS}/rooms/{quote(room_id)}/redact/{quote(event_id)}/{txn}"
        return self.call("PUT", path, {"reason": reason})["event_id"]

    def notices(self, room_id: str) -> list[str]:
        """Bodies of the m.notice messages in the room, oldest first."""
        data = self.call("GET", f"{CS}/rooms/{quote(room_id)}/messages?dir=b&limit=500")
        bodies = [
            e["content"].get("body", "")
            for e in data.get("chunk", [])
            if e.get("type") == "m.room.message" and e.get("content", {}).get("msgtype") == "m.notice"
        ]
        return list(reversed(bodies))


def poll(cond: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll `cond` until it returns something true; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout}s")
        time.sleep(0.05)  # polling interval


def join_when_ready(client: Client, alias: str) -> str:
    """Wait for a package room's alias, then join the room once it is joinable; its id.

    The module binds the alias before the room is fully made: until then a join is refused
    (403 "not invited" while the join rules are not sent, 404 while the creation events are
    not persisted, seen on PostgreSQL)."""

    def lookup() -> str | None:
        try:
            return client.room_id(alias)
        except MatrixError as e:
            if e.status == 404:
                return None
            raise

    def join() -> bool:
        try:
            client.join(room_id)
            return True
        except MatrixError as e:
            if e.status in (403, 404):
                return False
            raise

    room_id = poll(lookup, what=f"room {alias}")
    poll(join, what=f"room {alias} joinable")
    return room_id
