"""Package rooms inside Synapse: finding, reading, creating and reclaiming them, ours and peers'.

One room per project (alias `#<prefix><project>:<server_name>`), made by the bot the first
time a file of the project is served (through the Matrix queue). A room is read from its state
once, through the pure fold (trust/_fold.py), and then kept current by `on_new_event`.

Every room the module reads is registered under its room id with its owner (our server or a
peer) and project. A room id that is already someone else's is never read a second time: a
peer alias that resolves to our own room, to another project's room, or to a room its bot did
not make is ignored and reported, and a local alias that points at another project's room is
taken back. Otherwise a peer could detach our own room's view from live updates.
"""

import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple

import attrs

from synapse_pypi._config import PyPIConfig
from synapse_pypi._context import SingleFlight
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._peers import PeerRooms, owner_name
from synapse_pypi.trust import Claim, Record
from synapse_pypi.trust._fold import MEMBER, PROJECT_FIELD, RoomEvent, RoomView, Rules, fold, slot_owner

logger = logging.getLogger(__name__)

# How many overwrites of one slot are walked back to find its owner's own event.
MAX_SLOT_HISTORY = 20
# Rooms with more events than this are folded in a thread: a fresh read checks every
# signature (about 0.3 s for 2,000 attestations), which must not hold the reactor.
THREAD_FOLD_EVENTS = 200
CANONICAL_ALIAS = "m.room.canonical_alias"
LOCAL = ""  # the owner of our own rooms, in `_owners`


@attrs.define
class ProjectTrust:
    """Everything read about one project: our room and peers' rooms."""

    project: str
    local: Optional[RoomView] = None
    peers: Dict[str, RoomView] = attrs.Factory(dict)  # peer server name -> its room
    peer_misses: Dict[str, float] = attrs.Factory(dict)  # peer -> when we last failed to find it
    peers_tried: bool = False

    @property
    def rooms(self) -> List[RoomView]:
        return ([self.local] if self.local else []) + list(self.peers.values())

    def records(self, filename: str) -> List[Tuple[RoomView, Record]]:
        return [(room, rec) for room in self.rooms for rec in room.records(filename)]

    def reports(self, filename: str) -> List[Tuple[RoomView, Record]]:
        """Every record of the file, the intruders' included."""
        return self.records(filename) + [(room, rec) for room in self.rooms for rec in room.intruders(filename)]

    def claims(self, filename: str) -> List[Claim]:
        return [c for room in self.rooms for c in room.claims(filename)]

    def filenames(self) -> List[str]:
        return sorted({f for room in self.rooms for f in room.filenames()})

    def bans(self) -> List[Tuple[RoomView, Record]]:
        """Every valid ban, from every room read (an `unban` in a publisher's slot lifts that
        publisher's own ban only)."""
        return [
            (room, rec)
            for room in self.rooms
            for rec in room.policies()
            if rec.valid and rec.policy is not None and rec.policy.recommendation == "ban"
        ]

    def ban_for(self, filename: Optional[str], version: Optional[str]) -> Optional[Record]:
        """The first valid ban covering the file (or, with no file name, the project)."""
        for _, rec in self.bans():
            assert rec.policy is not None
            if rec.policy.kind == "project" or (filename is not None and rec.policy.covers(filename, version)):
                return rec
        return None


def to_room_event(ev: Any, kept: Optional[str] = None, redacted_by: Tuple[str, ...] = ()) -> RoomEvent:
    """The fold's view of a Synapse event (`kept`: the content we kept, for a redacted one)."""
    redacted = ev.internal_metadata.is_redacted()
    content: Any = ev.get_dict().get("content") or {}
    if redacted and kept is not None:
        try:
            content = json.loads(kept)
        except ValueError:
            content = {}
    redacts = getattr(ev, "redacts", None) or (content.get("redacts") if isinstance(content, dict) else None)
    return RoomEvent(
        event_id=ev.event_id,
        type=ev.type,
        sender=ev.sender,
        state_key=ev.get_state_key() if ev.is_state() else None,
        content=content if isinstance(content, dict) else {},
        redacted=redacted,
        redacted_by=redacted_by,
        redacts=redacts if isinstance(redacts, str) else None,
    )


class Rooms:
    """Our package rooms and peers', read through the fold.

    Args:
        api: the ModuleApi.
        config: the module config.
        store: the module's tables (kept contents, redacters).
        rules_for: the fold's rules for (project, local).
        run_background: `ModuleApi.run_as_background_process`.
        on_local_loaded: called with our room's view when it is first read (key rotation).
        replay: `on_new_event`, for events that arrived while a room was being read.
        clock: the reactor (peer timeouts).
        writes: Matrix writes, each in a log context of its own.
    """

    def __init__(
        self,
        api: Any,
        config: PyPIConfig,
        store: Any,
        rules_for: Callable[[str, bool], Rules],
        run_background: Callable[..., Any],
        on_local_loaded: Callable[[RoomView], None],
        replay: Callable[[Any, Any], Awaitable[None]],
        clock: Any,
        writes: MatrixWrites,
    ):
        self._replay = replay
        # room id -> events that arrived while the room was being read (replayed after).
        self._loading: Dict[str, List[Tuple[Any, Any]]] = {}
        self._api = api
        self._config = config
        self._store = store
        self._rules_for = rules_for
        self._run_background = run_background
        self._on_local_loaded = on_local_loaded
        self._clock = clock
        self.bot = f"@{config.bot_localpart}:{api.server_name}"
        self._projects: Dict[str, ProjectTrust] = {}
        self._rooms: Dict[str, RoomView] = {}  # room id -> view
        self._owners: Dict[str, Tuple[str, str]] = {}  # room id -> (project, LOCAL or peer)
        self._flights = SingleFlight()
        # Peer lookups that page views may start: a token bucket (a minute's burst), so that
        # unauthenticated page views cannot make the server ask its peers without bound.
        self._lookup_tokens = float(config.peer_lookup_rate)
        self._lookup_tokens_at = time.monotonic()
        #: Rooms we refused to read, newest last (for the admin API).
        self.ignored: List[Dict[str, str]] = []
        self.peers = PeerRooms(self, api, config, run_background, clock, writes)

    # -- lookups ---------------------------------------------------------------------

    @property
    def projects(self) -> Mapping[str, ProjectTrust]:
        return self._projects

    def room(self, room_id: str) -> Optional[RoomView]:
        return self._rooms.get(room_id)

    def hold(self, room_id: str, event: Any, state: Any) -> bool:
        """Keep an event for a room being read right now, to apply once it is; False if the
        room is not being read."""
        held = self._loading.get(room_id)
        if held is None:
            return False
        held.append((event, state))
        return True

    def owner_of(self, room_id: str) -> Optional[Tuple[str, str]]:
        return self._owners.get(room_id)

    def alias_for(self, project: str, server: Optional[str] = None) -> str:
        return f"#{self._config.room_alias_prefix}{project}:{server or self._api.server_name}"

    # -- loading ---------------------------------------------------------------------

    async def view(self, project: str) -> ProjectTrust:
        """What we know of `project`; our own room is read the first time (a few ms: no
        Matrix writes, no federation)."""
        pt = self._projects.get(project)
        if pt is not None:
            return pt
        return await self._flights.run(("load", project), lambda: self._load(project))

    async def with_peers(self, project: str, page_view: bool = False) -> ProjectTrust:
        """`view`, with peers' rooms joined and read the first time (`_peers.PeerRooms`)."""
        pt = await self.view(project)
        await self.peers.ensure(pt, page_view)
        return pt

    async def _load(self, project: str) -> ProjectTrust:
        pt = self._projects.get(project)
        if pt is not None:
            return pt
        pt = ProjectTrust(project)
        pt.local = await self._load_local(project)
        self._projects[project] = pt
        if pt.local is not None:
            self._on_local_loaded(pt.local)
        return pt

    async def _load_local(self, project: str) -> Optional[RoomView]:
        alias = self.alias_for(project)
        room_id = await self._resolve(alias)
        if room_id is None:
            return None
        why, room = await self._check_local(project, room_id, alias)
        if why is None:
            return room
        logger.warning("%s points at %s, which %s: ignoring that room and reclaiming the alias", alias, room_id, why)
        self.ignore(room_id, alias, why)
        await self._unbind_alias(alias)
        return None

    async def _check_local(self, project: str, room_id: str, alias: str) -> Tuple[Optional[str], Optional[RoomView]]:
        owner = self._owners.get(room_id)
        if owner is not None and owner != (project, LOCAL):
            return f"is already {owner_name(owner)}", None
        # Events from the moment the state is read on are held for the view (see `_read`).
        self._loading.setdefault(room_id, [])
        try:
            state = await self._api.get_room_state(room_id)
        except BaseException:
            self._loading.pop(room_id, None)
            raise
        why = self._why_not_ours(project, alias, state)
        if why is not None:
            self._loading.pop(room_id, None)
            return why, None
        room = await self.read(project, room_id, True, alias, state)
        return None, room

    def _why_not_ours(self, project: str, alias: str, state: Mapping[Tuple[str, str], Any]) -> Optional[str]:
        create = state.get(("m.room.create", ""))
        if create is None or create.sender != self.bot:
            creator = create.sender if create is not None else "nobody"
            return f"was created by {creator} and not by {self.bot}"
        tag = dict(create.content).get(PROJECT_FIELD)
        canonical = state.get((CANONICAL_ALIAS, ""))
        canonical_alias = dict(canonical.content).get("alias") if canonical is not None else None
        if tag is not None and tag != project:
            return f"was made for the project {tag!r}"
        if tag is None and canonical_alias not in (None, alias):
            return f"was made for {canonical_alias}"
        member = state.get((MEMBER, self.bot))
        if member is None or dict(member.content).get("membership") != "join":
            # Creation cut short (Synapse stopped after binding the alias, before the bot's
            # join): nothing can be posted there. It is replaced.
            return "was never finished"
        return None

    async def _resolve(self, alias: str) -> Optional[str]:
        try:
            room_id, _ = await self._api.lookup_room_alias(alias)
        except Exception as e:
            if getattr(e, "code", None) == 404:
                return None
            raise
        return str(room_id)

    async def _unbind_alias(self, alias: str) -> None:
        # The module API can bind aliases (create_room) but not unbind them; the directory
        # handler's own deletion, without the requester checks, is what an admin's would do.
        from synapse.types import RoomAlias

        handler = self._api._hs.get_directory_handler()
        await handler._delete_association(RoomAlias.from_string(alias))

    def ignore(self, room_id: str, alias: str, why: str) -> None:
        self.ignored.append({"room_id": room_id, "alias": alias, "why": why, "at": str(int(time.time() * 1000))})
        del self.ignored[:-100]

    def register(self, project: str, owner: str, view: RoomView) -> bool:
        """Make `view` the one live view of its room, unless the room is someone else's."""
        known = self._owners.get(view.room_id)
        if known is not None and known != (project, owner):
            return False
        self._owners[view.room_id] = (project, owner)
        self._rooms[view.room_id] = view
        return True

    async def read(
        self, project: str, room_id: str, local: bool, alias: str, state: Optional[Mapping[Tuple[str, str], Any]] = None
    ) -> RoomView:
        """Read a room's state into a fresh view and make it the live one. Events that
        arrive meanwhile are held and applied after."""
        self._loading.setdefault(room_id, [])
        try:
            view = await self._read_state(project, room_id, local, alias, state)
        finally:
            held = self._loading.pop(room_id, [])
        for event, at in held:
            await self._replay(event, at)
        return view

    async def _read_state(
        self, project: str, room_id: str, local: bool, alias: str, state: Optional[Mapping[Tuple[str, str], Any]]
    ) -> RoomView:
        if state is None:
            state = await self._api.get_room_state(room_id)
        synapse_events = list(state.values())
        for (etype, skey), ev in state.items():
            # Attestations, policies and keys: an intruder's overwrite never hides the
            # owner's own last event in its slot (the fold reports the intruder).
            owner = slot_owner(etype, skey)
            if owner is not None and ev.sender != owner:
                prev = await self._owners_last(room_id, ev, owner)
                if prev is not None:
                    synapse_events.append(prev)
        redacted = [ev.event_id for ev in synapse_events if ev.internal_metadata.is_redacted()]
        kept = await self._store.kept_contents(redacted)
        by = await self._store.redacters(redacted)
        events = [to_room_event(ev, kept.get(ev.event_id), tuple(by.get(ev.event_id, ()))) for ev in synapse_events]
        rules = self._rules_for(project, local)
        if len(events) > THREAD_FOLD_EVENTS:
            view = await self._api.defer_to_thread(fold, room_id, rules, events)
        else:
            view = fold(room_id, rules, events)
        view.alias = alias
        if not self.register(project, LOCAL if local else _peer_of(alias), view):
            raise RuntimeError(f"{room_id} is already {owner_name(self._owners[room_id])}")
        self.keep(view)
        return view

    async def _owners_last(self, room_id: str, ev: Any, owner: str) -> Any:
        """The owner's own last event in a slot someone else wrote last (replaces_state)."""
        replaced = ev.unsigned.get("replaces_state")
        for _ in range(MAX_SLOT_HISTORY):
            if not isinstance(replaced, str):
                return None
            prev = await self._api._store.get_event(replaced, allow_none=True)
            if prev is None or prev.room_id != room_id:
                return None
            if prev.sender == owner:
                return prev
            replaced = prev.unsigned.get("replaces_state")
        return None

    def keep(self, view: RoomView, events: Optional[List[RoomEvent]] = None) -> None:
        """Keep, in the background, the content of the events the view relies on (valid
        attestations, keys) that Synapse could drop on a redaction we must ignore."""
        if events is None:
            ids = [r.event_id for r in view.records() + view.policies() if r.valid]
            events = [e for e in (view.event_for(i) for i in ids) if e is not None]
            events += [e for e in view.key_events() if not e.redacted]
        rows = [(e.event_id, json.dumps(dict(e.content), sort_keys=True)) for e in events if e.content]
        if rows:
            self._run_background("synapse_pypi_keep", self._store.keep_contents, view.room_id, rows)

    # -- creating --------------------------------------------------------------------

    async def create(self, project: str, creation: Callable[[str], Awaitable[str]]) -> Optional[RoomView]:
        """Our room for the project, made now with `creation` (which returns the room id)
        unless it exists already. Runs in the Matrix queue."""
        pt = await self.view(project)
        if pt.local is not None:
            return pt.local
        room_id = await creation(project)
        logger.info("created package room %s for %s", room_id, project)
        view = await self.read(project, room_id, True, self.alias_for(project))
        pt.local = view
        self._on_local_loaded(view)
        return view

    # -- re-reading ------------------------------------------------------------------

    async def reload(self, project: str) -> ProjectTrust:
        """Forget what we know of the project's rooms and read them again (admin re-verify)."""
        pt = self._projects.pop(project, None)
        if pt is not None:
            for room in pt.rooms:
                self._rooms.pop(room.room_id, None)
                self._owners.pop(room.room_id, None)
        return await self.with_peers(project)


def _peer_of(alias: str) -> str:
    return alias.partition(":")[2]
