"""Synapse's `on_new_event`, for package rooms: the trust views kept current, event by event.

For our rooms and peers' rooms alike. It runs inline for events that arrive over federation,
so it stays cheap: events go through the pure fold (`RoomView.apply`), and what takes longer
(checking new claims against the upstream, notices, redactions) goes to the background or to
the Matrix queue. A redaction counts only if Synapse applied it (the fold then checks who sent
it); an event that is not, or no longer, part of the room's state never counts.
"""

import logging
from typing import Any, Awaitable, Callable, List, Mapping, Optional, Tuple

from synapse_pypi._moderation import Moderation
from synapse_pypi._publisher import Publisher
from synapse_pypi._rooms import Rooms, to_room_event
from synapse_pypi._store import Store
from synapse_pypi.trust import ATTESTATION_TYPE, KEY_TYPE, Changes, Record, RoomEvent, RoomView, Verdict
from synapse_pypi.trust._bans import POLICY_TYPE
from synapse_pypi.trust._fold import CREATE, MEMBER, POWER_LEVELS, REDACTION

logger = logging.getLogger(__name__)

_FOLDED = frozenset({ATTESTATION_TYPE, KEY_TYPE, POWER_LEVELS, CREATE, MEMBER, POLICY_TYPE})
MESSAGE = "m.room.message"


class EventFeed:
    """Feeds room events to the views and reacts to what changes.

    Args:
        api: the ModuleApi.
        store: the module's tables (kept contents, redacters).
        rooms: the package rooms.
        moderation: reports, notices, redaction notices.
        publisher: our own word (restated after a key change, restored after an overwrite).
        bot: the bot's mxid.
        on_vouch_lost: called with a project when a vouch goes away.
        check_files: judges files of a project whose claims changed (in the background).
        command: handles a `!pypi` command in one of our rooms (sender, text, event id).
    """

    def __init__(
        self,
        api: Any,
        store: Store,
        rooms: Rooms,
        moderation: Moderation,
        publisher: Publisher,
        bot: str,
        on_vouch_lost: Callable[[str], None],
        check_files: Callable[[str, List[str]], Awaitable[None]],
        command: Callable[[str, RoomView, Any], None],
    ):
        self._command = command
        self._api = api
        self._store = store
        self._rooms = rooms
        self._moderation = moderation
        self._publisher = publisher
        self._bot = bot
        self._on_vouch_lost = on_vouch_lost
        self._check_files = check_files
        self._run_background = api.run_as_background_process

    async def on_new_event(self, event: Any, state: Mapping[Tuple[str, str], Any]) -> None:
        """Keep views current, for our rooms and peers' rooms alike.

        It never waits on its common path: Synapse runs it inline for federated events, and
        for local ones in a chain that outlives the request that sent the event, whose log
        context is finished by the time a wait would end. What needs the database (is a
        redaction applied? who redacted this?) runs as a background process of its own."""
        room = self._rooms.room(event.room_id)
        if room is None:
            self._rooms.hold(event.room_id, event, state)
            return
        owner = self._rooms.owner_of(event.room_id)
        project = owner[0] if owner else room.rules.project
        etype = event.type
        if etype == REDACTION:
            target = event.redacts or dict(event.content).get("redacts")
            if not isinstance(target, str) or room.event_for(target) is None:
                return
            self._run_background("synapse_pypi_redaction", self._redaction, project, room, event, target)
            return
        if etype == MESSAGE and owner is not None and owner[1] == "" and event.sender != self._bot:
            # A moderator's command to the bot, in one of our own rooms only.
            self._command(project, room, event)
            return
        if not event.is_state() or etype not in _FOLDED:
            return
        current = state.get((etype, event.get_state_key()))
        if current is None or current.event_id != event.event_id or event.internal_metadata.is_soft_failed():
            # Not (or no longer) part of the room's state: it never counts.
            return
        rev = to_room_event(event)
        if rev.redacted:
            # Redacted before we saw it (say, over federation): who redacted it, and its content
            # if we kept it, come from the database.
            self._run_background("synapse_pypi_redacted_event", self._redacted_event, project, room, event)
            return
        self._react(project, room, room.apply(rev))

    async def _redaction(self, project: str, room: RoomView, event: Any, target: str) -> None:
        applied = await self._applied(target)
        if not applied:
            logger.warning(
                "%s sent a redaction of %s in %s that Synapse did not apply: ignored",
                event.sender, target, event.room_id,
            )
        changes = room.apply(
            RoomEvent(event.event_id, REDACTION, event.sender, None, {}, redacts=target, applied=applied)
        )
        for rec in changes.lost:
            # The moment a redaction takes effect (benchmarks/bench_redaction.py reads it).
            logger.info("attestation %s for %s by %s redacted by %s", rec.event_id, rec.filename, rec.publisher,
                        event.sender)
        self._react(project, room, changes, redacted_by=event.sender)

    async def _redacted_event(self, project: str, room: RoomView, event: Any) -> None:
        by = await self._store.redacters([event.event_id])
        kept = await self._store.kept_contents([event.event_id])
        rev = to_room_event(event, kept.get(event.event_id), tuple(by.get(event.event_id, ())))
        self._react(project, room, room.apply(rev))

    async def _applied(self, event_id: str) -> bool:
        """Whether Synapse applied a redaction of `event_id`: it comes back redacted."""
        ev = await self._api._store.get_event(event_id, allow_none=True)
        return ev is not None and ev.internal_metadata.is_redacted()

    def _react(self, project: str, room: RoomView, changes: Changes, redacted_by: Optional[str] = None) -> None:
        if not changes:
            return
        if any(r.policy is not None for r in changes.new + changes.lost):
            # A ban came or went: pages are rendered again, files decided again.
            self._on_vouch_lost(project)
        if changes.lost:
            self._on_vouch_lost(project)
            if redacted_by is None:
                self._publisher.restate(room, changes.lost)
            elif redacted_by != self._bot:
                for rec in changes.lost:
                    self._moderation.redaction_changed(project, room, rec, redacted_by)
        new_valid: List[Record] = []
        kept: List[Record] = []
        for rec in changes.new:
            if rec.sender == self._bot:
                continue
            if rec.valid:
                kept.append(rec)
                if rec.policy is None:
                    new_valid.append(rec)
            elif rec.verdict is not Verdict.REDACTED:
                self._moderation.report(project, room, rec)
                if rec.publisher == self._bot:
                    self._publisher.restore(project, room, rec)
        if kept:
            self._rooms.keep(room, [e for e in (room.event_for(r.event_id) for r in kept) if e is not None])
        if new_valid:
            files = sorted({r.filename for r in new_valid})
            self._run_background("synapse_pypi_check_attestation", self._check_files, project, files)
