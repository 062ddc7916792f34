"""Peers' package rooms: found by alias over federation, joined, and read through the fold.

A peer's room counts only if the peer's bot made it, for this project, and it is not a room
already known as someone else's (our own room, or another project's): see `_rooms.Rooms`. Each
peer may hold a request for at most `peer_timeout`; one that could not be reached is tried again
after `peer_retry_interval`, in the background. First lookups started by page views are
rate-limited (`peer_lookup_rate`).
"""

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from synapse_pypi._config import PyPIConfig
from synapse_pypi._context import SingleFlight
from synapse_pypi._matrix_writes import MatrixWrites, in_own_context
from synapse_pypi.trust._fold import PROJECT_FIELD

if TYPE_CHECKING:
    from synapse_pypi._rooms import ProjectTrust, Rooms


def owner_name(owner: Tuple[str, str]) -> str:
    """'our room for six' or 'example.org's room for six'."""
    project, server = owner
    return f"{server}'s room for {project}" if server else f"our room for {project}"

logger = logging.getLogger(__name__)


class PeerRooms:
    """The peers' side of `Rooms`.

    Args:
        rooms: our rooms (registration by room id and owner, reading).
        api: the ModuleApi.
        config: the module config.
        run_background: `ModuleApi.run_as_background_process`.
        clock: the reactor (peer timeouts).
        writes: Matrix writes (joins), each in a log context of its own.
    """

    def __init__(
        self,
        rooms: "Rooms",
        api: Any,
        config: PyPIConfig,
        run_background: Callable[..., Any],
        clock: Any,
        writes: MatrixWrites,
    ):
        self._writes = writes
        self._rooms = rooms
        self._api = api
        self._config = config
        self._run_background = run_background
        self._clock = clock
        self._flights = SingleFlight()
        # Peer lookups that project page views may start: a token bucket (a minute's burst), so
        # that unauthenticated page views cannot make the server ask its peers without bound.
        self._lookup_tokens = float(config.peer_lookup_rate)
        self._lookup_tokens_at = time.monotonic()

    async def ensure(self, pt: "ProjectTrust", page_view: bool) -> None:
        """Join and read the peers' rooms for `pt` the first time (each within
        `peer_timeout`); try unreachable ones again in the background later.

        Args:
            page_view: the caller serves a project page, not a file: the first lookup is
                subject to `peer_lookup_rate` (without a token, the page goes by what is
                known; the file request that follows still asks the peers)."""
        if not self._config.peers:
            return
        if not pt.peers_tried:
            if page_view and not self._lookup_token():
                return
            await self._flights.run(("peers", pt.project), lambda: self._first_peers(pt))
        else:
            self._maybe_retry_peers(pt)

    async def _first_peers(self, pt: "ProjectTrust") -> None:
        if not pt.peers_tried:
            pt.peers_tried = True
            await self._join_peers(pt, self._config.peers)

    async def _join_peers(self, pt: "ProjectTrust", peers: Tuple[str, ...]) -> None:
        """Join the peers' rooms for this project, in parallel, each within the timeout."""
        from synapse.module_api import run_in_background
        from twisted.internet import defer

        from synapse_pypi._context import make_deferred_yieldable

        calls = [run_in_background(self._join_peer, pt, peer) for peer in peers]
        await make_deferred_yieldable(defer.gatherResults(calls, consumeErrors=True))

    async def _join_peer(self, pt: "ProjectTrust", peer: str) -> None:
        alias = self._rooms.alias_for(pt.project, peer)
        started = time.monotonic()
        try:
            # One bound for the lookup and the join together: `peer_timeout` is the most a
            # peer can add to a request.
            room_id = await self._bounded(self._find_and_join(pt.project, alias, peer))
            if room_id is None:
                pt.peer_misses[peer] = time.monotonic()
                return
            room = await self._rooms.read(pt.project, room_id, False, alias)
        except Exception as e:
            pt.peer_misses[peer] = time.monotonic()
            if getattr(e, "code", None) == 404:
                logger.info("peer %s has no room for %s", peer, pt.project)
            else:
                logger.warning("peer %s: cannot join %s (%s: %s)", peer, alias, e.__class__.__name__, e)
            return
        pt.peers[peer] = room
        pt.peer_misses.pop(peer, None)
        logger.info(
            "joined %s's room %s for %s in %.2fs (%d attested files)",
            peer, room.room_id, pt.project, time.monotonic() - started, len(room.filenames()),
        )

    def peer_bot(self, peer: str) -> str:
        """Who made a peer's package rooms: its bot (peers use the same `bot_localpart`).
        Users whose keys are pinned are publishers there, not room makers."""
        return f"@{self._config.bot_localpart}:{peer}"

    async def _find_and_join(self, project: str, alias: str, peer: str) -> Optional[str]:
        room_id, servers = await self._api.lookup_room_alias(alias)
        owner = self._rooms.owner_of(room_id)
        if owner is not None and owner != (project, peer):
            self._refuse_peer(alias, room_id, f"resolves to {room_id}, which is {owner_name(owner)}")
            return None
        membership = await self._api.get_room_state(room_id, [("m.room.member", self._rooms.bot)])
        member = membership.get(("m.room.member", self._rooms.bot))
        if member is None or dict(member.content).get("membership") != "join":
            await self._writes.membership(
                sender=self._rooms.bot,
                target=self._rooms.bot,
                room_id=room_id,
                new_membership="join",
                remote_room_hosts=[peer] + [s for s in servers if s != peer],
            )
        create = (await self._api.get_room_state(room_id, [("m.room.create", "")])).get(("m.room.create", ""))
        creator = create.sender if create is not None else None
        if creator != self.peer_bot(peer):
            self._refuse_peer(alias, room_id, f"was created by {creator}, not by {peer}'s bot")
            return None
        tag = dict(create.content).get(PROJECT_FIELD)
        if tag is not None and tag != project:
            self._refuse_peer(alias, room_id, f"was made for the project {tag!r}")
            return None
        return str(room_id)

    def _refuse_peer(self, alias: str, room_id: str, why: str) -> None:
        logger.warning("peer room %s %s: ignored", alias, why)
        self._rooms.ignore(room_id, alias, why)

    async def _bounded(self, awaitable: Any) -> Any:
        """Await a Synapse call for at most `peer_timeout`: a slow or dead peer must never
        hold a request for longer. The call runs in a log context of its own, as it may go on
        after the request that started it has been answered."""
        from synapse.module_api import make_deferred_yieldable
        from twisted.internet import defer

        async def call() -> Any:
            return await awaitable

        d = in_own_context(self._api.server_name, "peer", call)
        d.addTimeout(self._config.peer_timeout_s, self._clock)
        try:
            return await make_deferred_yieldable(d)
        except defer.TimeoutError:
            raise TimeoutError(f"no answer within {self._config.peer_timeout_s:g}s")

    def _lookup_token(self) -> bool:
        rate = self._config.peer_lookup_rate
        now = time.monotonic()
        self._lookup_tokens = min(float(rate), self._lookup_tokens + (now - self._lookup_tokens_at) * rate / 60.0)
        self._lookup_tokens_at = now
        if self._lookup_tokens < 1:
            return False
        self._lookup_tokens -= 1
        return True

    def _maybe_retry_peers(self, pt: "ProjectTrust") -> None:
        """Peers we could not reach are tried again, in the background, after a while."""
        now = time.monotonic()
        due = tuple(
            p
            for p in self._config.peers
            if p not in pt.peers and now - pt.peer_misses.get(p, 0) > self._config.peer_retry_s
        )
        if due:
            for p in due:
                pt.peer_misses[p] = now  # one retry in flight per peer
            self._run_background("synapse_pypi_join_peers", self._join_peers, pt, due)
