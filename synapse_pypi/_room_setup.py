"""Our package rooms as the bot makes them, and the bot's key in them.

A room is made in the Matrix queue the first time a file of its project is served (or a ban
or the admin API needs it): public, with the alias `#<prefix><project>:<server>`, power levels
that give moderators the redaction and publishers the attestation, key and policy events, and
the bot's key published before anything it signs. A room read again must name the key the bot
signs with now; after a rotation the key is published again and the bot's attestations made
with the old key are stated again with the new one (`restate`).
"""

import logging
from typing import Any, Callable, Iterable, Mapping

from synapse_pypi._config import PyPIConfig
from synapse_pypi._matrix_queue import MatrixQueue
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._rooms import Rooms, to_room_event
from synapse_pypi.trust import ATTESTATION_TYPE, KEY_TYPE, Record, RoomView, key_id, verify_key_base64
from synapse_pypi.trust._bans import POLICY_TYPE
from synapse_pypi.trust._fold import KEY_LEVEL_FIELD, POWER_LEVELS, PROJECT_FIELD

logger = logging.getLogger(__name__)


class RoomSetup:
    """Making our rooms, and keeping our key in them current.

    Args:
        api: the ModuleApi.
        config: the module config.
        queue: the Matrix queue.
        rooms: the package rooms.
        signing_key: this server's attestation key.
        writes: Matrix writes, each in a log context of its own.
        restate: states again our attestations that stopped counting when our key changed.
    """

    def __init__(
        self,
        api: Any,
        config: PyPIConfig,
        queue: MatrixQueue,
        rooms: Rooms,
        signing_key: Any,
        writes: MatrixWrites,
        restate: Callable[[RoomView, Iterable[Record]], None],
    ):
        self._api = api
        self._config = config
        self._queue = queue
        self._rooms = rooms
        self._key = signing_key
        self._key_id = key_id(signing_key)
        self._writes = writes
        self._restate = restate
        self.bot = rooms.bot

    def make_room(self, project: str) -> None:
        """Queue the creation of our room for `project` (nothing happens if it exists)."""
        self._queue.submit(project, ("room",), lambda: self._create(project))

    def check_key(self, room: RoomView) -> None:
        """A room of ours was read: it must name the key we sign with now, and only that one
        (after a rotation, attestations made with the old key stop counting and the bot
        attests again as files are served)."""
        ev = next((e for e in room.key_events() if e.sender == self.bot), None)
        current = ev.content.get("keys") if ev is not None and not ev.redacted else None
        if isinstance(current, Mapping) and list(current) == [self._key_id]:
            return
        project = room.rules.project
        self._queue.submit(project, ("key",), lambda: self._publish_key(room))

    async def _create(self, project: str) -> None:
        await self._rooms.create(project, self._create_room)

    async def _create_room(self, project: str) -> str:
        config = self._config
        users = {m: config.moderator_power_level for m in config.moderators}
        users.update({p: config.attestation_power_level for p in config.publishers})
        users.pop(self.bot, None)  # v12: the creator must not be listed
        room_id, _ = await self._writes.create_room(
            self.bot,
            {
                "preset": "public_chat",
                "room_alias_name": f"{config.room_alias_prefix}{project}",
                "name": f"{project} — attestations for files served by {self._api.server_name}",
                "topic": (
                    f"Signed attestations (sha256, size, CID) for the files of the Python project {project}, "
                    f"published by the mirror {self._api.server_name} and other trusted publishers. "
                    "Moderators: redact any attestation that is wrong."
                ),
                "creation_content": {PROJECT_FIELD: project, KEY_LEVEL_FIELD: config.trusted_key_power_level},
                "power_level_content_override": {
                    "users": users,
                    # This map replaces Synapse's defaults, so it names every event that
                    # shapes the room: moderators redact, they do not re-plumb the room.
                    "events": {
                        ATTESTATION_TYPE: config.attestation_power_level,
                        KEY_TYPE: config.attestation_power_level,
                        POLICY_TYPE: config.attestation_power_level,
                        POWER_LEVELS: 100,
                        "m.room.join_rules": 100,
                        "m.room.history_visibility": 100,
                        "m.room.canonical_alias": 100,
                        "m.room.server_acl": 100,
                        "m.room.encryption": 100,
                        "m.room.tombstone": 100,
                        "m.room.guest_access": 100,
                        "m.room.name": 50,
                        "m.room.topic": 50,
                        "m.room.avatar": 50,
                    },
                    "redact": config.moderator_power_level,
                    "state_default": 50,
                    "events_default": 0,
                },
            },
            # The Matrix queue paces room creation (room_creation_rate); Synapse's own
            # per-user limit would only make the queue's jobs fail.
            ratelimit=False,
        )
        # The key goes in before any attestation, in the same job.
        await self._send_key(str(room_id))
        return str(room_id)

    async def _publish_key(self, room: RoomView) -> None:
        try:
            ev = await self._send_key(room.room_id)
        except Exception as e:
            logger.warning("could not publish our key in %s: %s", room.room_id, e)
            return
        self._restate(room, room.apply(to_room_event(ev)).lost)

    async def _send_key(self, room_id: str) -> Any:
        ev = await self._writes.send(
            {
                "type": KEY_TYPE,
                "room_id": room_id,
                "sender": self.bot,
                "state_key": self.bot,
                "content": {"keys": {self._key_id: verify_key_base64(self._key)}},
            }
        )
        logger.info("published key %s in %s", self._key_id, room_id)
        return ev
