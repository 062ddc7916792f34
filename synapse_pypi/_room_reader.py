"""Reading rooms that may live on other servers (snapshot names, community indexes): find a
room by alias, join it with the bot over federation where it is not ours, read its state;
every call that may cross federation within `peer_timeout`, each failure an HttpError that
says what went wrong."""

import logging
from typing import Any, Iterable, List, Optional, Tuple

from synapse_pypi._errors import HttpError
from synapse_pypi._matrix_writes import MatrixWrites, in_own_context

logger = logging.getLogger(__name__)


class RoomReader:
    """Args: api: the ModuleApi; config: the module config; clock: the reactor."""

    def __init__(self, api: Any, config: Any, clock: Any):
        self._api = api
        self._config = config
        self._clock = clock
        self._writes = MatrixWrites(api)
        self.bot = f"@{config.bot_localpart}:{api.server_name}"

    async def lookup(self, alias: str) -> Optional[Tuple[str, List[str]]]:
        """(room id, servers) of an alias, or None when nobody has it."""
        try:
            room_id, servers = await self.bounded("lookup", self._api.lookup_room_alias(alias))
        except TimeoutError:
            raise HttpError(504, f"{alias}: no answer within {self._config.peer_timeout_s:g}s")
        except Exception as e:
            if getattr(e, "code", None) != 404:
                logger.info("looking up %s failed: %s", alias, e)
            return None
        return str(room_id), list(servers)

    async def join(self, room_id: str, servers: List[str]) -> None:
        """The bot joins the room unless it is in it already."""
        membership = await self._api.get_room_state(room_id, [("m.room.member", self.bot)])
        member = membership.get(("m.room.member", self.bot))
        if member is not None and dict(member.content).get("membership") == "join":
            return
        try:
            await self.bounded("join", self._writes.membership(
                sender=self.bot, target=self.bot, room_id=room_id, new_membership="join", remote_room_hosts=servers
            ))
        except Exception as e:
            raise HttpError(502, f"could not join {room_id}: {e}")

    async def open(self, alias: str, what: str) -> str:
        """The room id behind an alias, joined if it is another server's."""
        found = await self.lookup(alias)
        if found is None:
            raise HttpError(404, f"no {what} {alias}")
        room_id, servers = found
        server = alias.split(":", 1)[1]
        if server != self._api.server_name:
            await self.join(room_id, [server] + [s for s in servers if s != server])
        return room_id

    async def creator(self, room_id: str) -> Optional[str]:
        create = (await self._api.get_room_state(room_id, [("m.room.create", "")])).get(("m.room.create", ""))
        return create.sender if create is not None else None

    async def state(self, room_id: str, types: Iterable[Tuple[str, Optional[str]]]) -> Any:
        return await self._api.get_room_state(room_id, list(types))

    async def bounded(self, what: str, awaitable: Any) -> Any:
        """At most `peer_timeout` for a call that may go over federation, in a log context
        of its own (it may go on after the request that started it was answered)."""
        from synapse.module_api import make_deferred_yieldable
        from twisted.internet import defer

        async def call() -> Any:
            return await awaitable

        d = in_own_context(self._api.server_name, what, call)
        d.addTimeout(self._config.peer_timeout_s, self._clock)
        try:
            return await make_deferred_yieldable(d)
        except defer.TimeoutError:
            raise TimeoutError(f"no answer within {self._config.peer_timeout_s:g}s")
