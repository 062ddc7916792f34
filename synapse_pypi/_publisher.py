"""Publishing this server's word: its attestations and its policies (bans), restored where
someone overwrote them. Our rooms and our key in them are made by `_room_setup.RoomSetup`.

Everything here is a Matrix write, so it runs in the Matrix queue, after the requests that
caused it have been answered (DESIGN.md §3). The serve path calls `served`, which returns at
once.

The bot attests only what this server verified: the sha256 of bytes it checked, and a CID only
if one of its own storage backends computed it for those bytes (never a CID learnt from
someone else's attestation). Its attestation of a file is written once: it is never replaced
by one with another hash (what the mirror verified stays verified); after a moderator redacted
it, the file is attested afresh when next served.
"""

import logging
import time
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional

from synapse_pypi import index
from synapse_pypi._config import PyPIConfig
from synapse_pypi._matrix_queue import MatrixQueue
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._metrics import ATTESTATIONS_PUBLISHED
from synapse_pypi._room_setup import RoomSetup
from synapse_pypi._rooms import Rooms, to_room_event
from synapse_pypi._store import Store
from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    Record,
    RoomView,
    Verdict,
    build_content,
    state_key_for,
)
from synapse_pypi.trust._bans import POLICY_TYPE, build_policy, policy_state_key

logger = logging.getLogger(__name__)

# Attested file names listed in one readable summary message at most.
SUMMARY_FILES = 20


class Publisher:
    """Our rooms, key and attestations.

    Args:
        api: the ModuleApi.
        config: the module config.
        store: the module's tables.
        queue: the Matrix queue.
        rooms: the package rooms.
        signing_key: this server's attestation key.
        version_of: the version in a distribution file name, or None.
        writes: Matrix writes, each in a log context of its own.
    """

    def __init__(
        self,
        api: Any,
        config: PyPIConfig,
        store: Store,
        queue: MatrixQueue,
        rooms: Rooms,
        signing_key: Any,
        version_of: Callable[[str], Optional[str]],
        writes: MatrixWrites,
    ):
        self._writes = writes
        self._api = api
        self._config = config
        self._store = store
        self._queue = queue
        self._rooms = rooms
        self._key = signing_key
        self._version_of = version_of
        self.bot = rooms.bot
        self._summaries: Dict[str, List[str]] = {}
        #: Our rooms as we make them, and our key in them.
        self.setup = RoomSetup(api, config, queue, rooms, signing_key, writes, restate=self.restate)

    # -- what the serve path calls ---------------------------------------------------

    def served(self, project: str, dist: index.DistFile, sha256: str, size: int, verified_against: str) -> None:
        """A file was served (or committed) with these bytes: attest it unless we have."""
        if dist.filename.endswith(".metadata") or self._version_of(dist.filename) is None:
            return
        pt = self._rooms.projects.get(project)
        room = pt.local if pt is not None else None
        if room is not None:
            mine = room.record(dist.filename, self.bot)
            if mine is not None and mine.valid and mine.sha256 == sha256:
                return
        else:
            self.make_room(project)
        self._submit_attest(project, dist, sha256, size, verified_against)

    def make_room(self, project: str) -> None:
        """Queue the creation of our room for `project` (`RoomSetup.make_room`)."""
        self.setup.make_room(project)

    def check_key(self, room: RoomView) -> None:
        """A room of ours was read: it must name the key we sign with now (`RoomSetup`)."""
        self.setup.check_key(room)

    def stored(self, project: str, dist: index.DistFile, sha256: str, size: int, basis: str) -> None:
        """One of our backends now holds the file (a CID): refresh our attestation with it
        (this job replaces a waiting one for the file: `basis` is what that one would say)."""
        if self._version_of(dist.filename) is None:
            return
        pt = self._rooms.projects.get(project)
        mine = pt.local.record(dist.filename, self.bot) if pt is not None and pt.local is not None else None
        if mine is not None and mine.valid and mine.attestation is not None:
            basis = mine.attestation.verified_against or "upstream"
        self._submit_attest(project, dist, sha256, size, basis)

    def publish_policy(
        self,
        project: str,
        kind: str,
        entity: str,
        recommendation: str,
        reason: str,
        source: str,
        reply: Optional[Callable[[str], Awaitable[None]]] = None,
    ) -> None:
        """Queue our signed policy (`ban` or `unban`) for an entity of the project; `reply`
        is told what became of it (a moderator's command is answered in the room)."""
        pt = self._rooms.projects.get(project)
        if pt is None or pt.local is None:
            self.make_room(project)
        self._queue.submit(
            project,
            ("policy", kind, entity),
            lambda: self._publish_policy(project, kind, entity, recommendation, reason, source, reply),
            # A ban stops a file from being served on every mirror: it does not wait for a
            # quiet moment (a room still to be made for it is made first, as usual).
            urgent=recommendation == "ban" and pt is not None and pt.local is not None,
        )

    async def _publish_policy(
        self,
        project: str,
        kind: str,
        entity: str,
        recommendation: str,
        reason: str,
        source: str,
        reply: Optional[Callable[[str], Awaitable[None]]],
    ) -> None:
        pt = await self._rooms.view(project)
        room = pt.local
        if room is None:
            logger.warning("no package room for %s: %s of %s %s not published", project, recommendation, kind, entity)
            return
        content = build_policy(
            project=project, kind=kind, entity=entity, recommendation=recommendation, reason=reason,
            source=source, timestamp=int(time.time() * 1000), publisher=self.bot, signing_key=self._key,
        )
        try:
            ev = await self._writes.send(
                {
                    "type": POLICY_TYPE,
                    "room_id": room.room_id,
                    "sender": self.bot,
                    "state_key": policy_state_key(kind, entity, self.bot),
                    "content": content,
                }
            )
        except Exception as e:
            logger.warning("could not publish the %s of %s %s in %s: %s", recommendation, kind, entity, room.room_id, e)
            if reply is not None:
                await reply(f"Could not publish the {recommendation} of {kind} {entity}: {e}")
            return
        rev = to_room_event(ev)
        room.apply(rev)
        self._rooms.keep(room, [rev])
        logger.info("published %s of %s %s/%s (%s: %s)", recommendation, kind, project, entity, source, reason)
        if reply is not None:
            done = "banned: it is not served or listed" if recommendation == "ban" else "no longer banned by us"
            await reply(f"{kind.capitalize()} {entity} of {project} is {done} (reason: {reason}).")

    def restore(self, project: str, room: RoomView, intruder: Record) -> None:
        """Someone overwrote one of our slots (an attestation or a policy): send our own
        event there again, so that the room's state (what peers, `synapse-pypi verify` and a
        restarted server read first) carries it again. Readers that walk the slot back find
        ours meanwhile; this spares them the walk, and spares peers that cannot."""
        key = ("restore", intruder.event_type, intruder.filename)
        self._queue.submit(project, key, lambda: self._restore(room, intruder.event_type, intruder.filename))

    def restore_overwritten(self, room: RoomView) -> None:
        """A room of ours was read: restore every slot of ours that someone else wrote last
        (while this server was down, or before a restore it had queued could run)."""
        for rec in room.intruders():
            if rec.publisher == self.bot:
                self.restore(room.rules.project, room, rec)

    # -- jobs ------------------------------------------------------------------------

    def _submit_attest(self, project: str, dist: index.DistFile, sha256: str, size: int, basis: str) -> None:
        self._queue.submit(
            project, ("attest", dist.filename), lambda: self._attest(project, dist, sha256, size, basis)
        )

    def restate(self, room: RoomView, lost: Iterable[Record]) -> None:
        """Our attestations that stopped counting because our key changed: state them again,
        signed with the key we sign with now (the same claims: what we verified stays
        verified). Not after a redaction: a moderator's decision is not undone."""
        project = room.rules.project
        for rec in lost:
            now = room.record(rec.filename, rec.publisher)
            att = rec.attestation
            if rec.publisher == self.bot and att is not None and now is not None and now.verdict is Verdict.UNKNOWN_KEY:
                dist = index.DistFile(
                    filename=att.filename,
                    url=att.upstream_url or "",
                    hashes={"sha256": att.sha256},
                    requires_python=att.requires_python,
                )
                self._submit_attest(project, dist, att.sha256, att.size, att.verified_against or "upstream")

    async def _attest(self, project: str, dist: index.DistFile, sha256: str, size: int, basis: str) -> None:
        version = self._version_of(dist.filename)
        pt = await self._rooms.view(project)
        room = pt.local
        if room is None or version is None:
            logger.info("not attesting %s/%s: no package room yet", project, dist.filename)
            return
        cid = await self._store.own_cid(sha256)
        mine = room.record(dist.filename, self.bot)
        if mine is not None and mine.valid:
            if mine.sha256 != sha256:
                # Write-once: what we attested stays attested; the serve policy decides.
                logger.error(
                    "not attesting %s/%s as %s: we attested %s for it", project, dist.filename, sha256, mine.sha256
                )
                return
            if cid is None or mine.cid == cid:
                return
        content = build_content(
            project=project,
            version=version,
            filename=dist.filename,
            size=size,
            sha256=sha256,
            cid=cid,
            upstream_url=dist.url or None,
            requires_python=dist.requires_python,
            timestamp=int(time.time() * 1000),
            publisher=self.bot,
            signing_key=self._key,
            verified_against=basis,
        )
        ev = await self._writes.send(
            {
                "type": ATTESTATION_TYPE,
                "room_id": room.room_id,
                "sender": self.bot,
                "state_key": state_key_for(dist.filename, self.bot),
                "content": content,
            }
        )
        # on_new_event will see it too; record it now so the next serve already knows.
        rev = to_room_event(ev)
        room.apply(rev)
        self._rooms.keep(room, [rev])
        logger.info("attested %s/%s sha256 %s cid %s", project, dist.filename, sha256, cid)
        ATTESTATIONS_PUBLISHED.inc()
        if mine is None or not mine.valid:
            self._summarise(project, room, dist.filename, sha256)

    def _summarise(self, project: str, room: RoomView, filename: str, sha256: str) -> None:
        """One readable message per batch of new attestations: Element and other clients
        hide custom state events, so a person in the room sees what was attested."""
        self._summaries.setdefault(project, []).append(f"{filename} (sha256 {sha256})")
        self._queue.submit(project, ("summary",), lambda: self._post_summary(project, room))

    async def _post_summary(self, project: str, room: RoomView) -> None:
        done = self._summaries.pop(project, [])
        if not done:
            return
        shown = done[:SUMMARY_FILES]
        more = f", and {len(done) - len(shown)} more" if len(done) > len(shown) else ""
        noun = "file" if len(done) == 1 else "files"
        text = f"{self._api.server_name} verified and attested {len(done)} {noun}: {', '.join(shown)}{more}."
        try:
            await self._writes.send(
                {
                    "type": "m.room.message",
                    "room_id": room.room_id,
                    "sender": self.bot,
                    "content": {"msgtype": "m.notice", "body": text},
                }
            )
        except Exception as e:
            logger.warning("could not post a summary in %s: %s", room.room_id, e)

    async def _restore(self, room: RoomView, event_type: str, name: str) -> None:
        mine = room.slot_record(event_type, name, self.bot)
        ev = room.event_for(mine.event_id) if mine is not None and mine.valid else None
        still = any(r.event_type == event_type and r.publisher == self.bot for r in room.intruders(name))
        if ev is None or ev.state_key is None or not still:
            return  # nothing of ours to restore, or ours is the slot's current event again
        try:
            sent = await self._writes.send(
                {
                    "type": ev.type,
                    "room_id": room.room_id,
                    "sender": self.bot,
                    "state_key": ev.state_key,
                    "content": dict(ev.content),
                }
            )
        except Exception as e:
            logger.warning("could not restore our %s of %s in %s: %s", event_type, name, room.room_id, e)
            return
        rev = to_room_event(sent)
        room.apply(rev)
        self._rooms.keep(room, [rev])
        logger.info("restored our %s of %s in %s after someone overwrote it", event_type, name, room.room_id)
