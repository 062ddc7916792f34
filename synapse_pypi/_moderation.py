"""What the bot says and does about what the trust view finds.

Fraud (an attestation the policy found wrong), invalid attestations, an upstream that now
serves other bytes for a file (an alarm), a conflict nobody can settle (moderators are
summoned), and moderators' redactions that change a verdict. Each is recorded (admin API,
counters) at once and announced in the project's room, readable in any Matrix client, through
the Matrix queue; each is announced once.
"""

import logging
from typing import Any, Callable, Dict, Iterable, Optional, Set, Tuple

from synapse_pypi._matrix_queue import MatrixQueue
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._rooms import ProjectTrust
from synapse_pypi._store import Store
from synapse_pypi.trust import POLICY_TYPE, Decision, Outcome, Record, RoomView, Verdict

logger = logging.getLogger(__name__)

REDACTION = "m.room.redaction"


class Moderation:
    """Notices, redactions and records of what went wrong.

    Args:
        api: the ModuleApi.
        store: the module's tables.
        queue: the Matrix queue every message and redaction goes through.
        bot: the bot's mxid.
        moderators: mxids mentioned when a person must decide.
        run_background: `ModuleApi.run_as_background_process` (database writes).
        our_room: our room for a project, when the job runs (None if there is none); a
            notice for a project without a room yet is posted once the room exists.
        make_room: queues the making of our room for a project.
        writes: Matrix writes, each in a log context of its own.
    """

    def __init__(
        self,
        api: Any,
        store: Store,
        queue: MatrixQueue,
        bot: str,
        moderators: Iterable[str],
        run_background: Callable[..., Any],
        our_room: Callable[[str], Optional[RoomView]],
        make_room: Callable[[str], None],
        writes: MatrixWrites,
    ):
        self._writes = writes
        self._our_room = our_room
        self._make_room = make_room
        self._api = api
        self._store = store
        self._queue = queue
        self._bot = bot
        self._moderators = tuple(moderators)
        self._run_background = run_background
        self._server = api.server_name
        self._handled: Set[str] = set()
        self._alarmed: Set[Tuple[str, str, str]] = set()
        self._summoned: Set[Tuple[str, str, Tuple[Tuple[str, str], ...]]] = set()
        self.fraud_count = 0
        self.reported_count = 0
        self.alarm_count = 0
        self.conflict_count = 0

    def counters(self) -> Dict[str, int]:
        return {
            "fraud_count": self.fraud_count,
            "reported_count": self.reported_count,
            "alarm_count": self.alarm_count,
            "conflict_count": self.conflict_count,
        }

    # -- findings --------------------------------------------------------------------

    def handle(self, project: str, pt: Optional[ProjectTrust], filename: str, decision: Decision) -> None:
        """What a serve decision finds: fraud flagged, an upstream change alarmed, a conflict
        summoned, invalid attestations reported. Each once; Matrix work goes to the queue."""
        if pt is None:
            return
        local = pt.local
        if decision.fraud:
            source = _source(decision, pt, filename)
            for claim in decision.fraud:
                for room, rec in pt.records(filename):
                    if room.room_id == claim.room and rec.publisher == claim.publisher and rec.sha256 == claim.sha256:
                        self.fraud(project, room, rec, decision, source)
        if decision.upstream_lost is not None:
            self.alarm(project, local, filename, decision, _source(decision, pt, filename))
        if decision.outcome is Outcome.CONFLICT:
            self.conflict(project, local, filename, decision)
        for room, rec in pt.reports(filename):
            if rec.verdict not in (Verdict.VALID, Verdict.REDACTED):
                self.report(project, room, rec)

    def fraud(self, project: str, room: RoomView, rec: Record, decision: Decision, source: str) -> None:
        """A valid attestation that the decision contradicts: recorded, redacted where the
        bot may, announced."""
        if rec.event_id in self._handled:
            return
        self._handled.add(rec.event_id)
        self.fraud_count += 1
        claimed = rec.sha256 or rec.claimed or ""
        text = (
            f"Fraudulent attestation: {rec.publisher} says {rec.filename} has sha256 {claimed}, "
            f"but it is {decision.sha256} ({source}, checked by {self._server}). "
            "This attestation is not relied on."
        )
        logger.warning("fraud in %s: %s", room.room_id, text)
        self._record(rec.event_id, project, rec.filename, rec.publisher, claimed, decision.sha256 or "", "fraud")
        self._redact_and_say(project, room, rec.event_id, f"fraud: wrong sha256 for {rec.filename}", text, urgent=True)

    def report(self, project: str, room: RoomView, rec: Record) -> None:
        """An attestation that does not count (malformed, bad signature, unknown key,
        impersonation, another project's): recorded and announced; redacted unless it may be
        legitimate (a key not yet published)."""
        if rec.event_id in self._handled:
            return
        self._handled.add(rec.event_id)
        if rec.sender == self._bot and rec.publisher == self._bot and rec.verdict is Verdict.UNKNOWN_KEY:
            # Signed with our own previous key: we attest again when the file is served.
            logger.info("our attestation of %s in %s is signed with a previous key", rec.filename, room.room_id)
            return
        self.reported_count += 1
        what = "policy" if rec.event_type == POLICY_TYPE else "attestation"
        text = f"Invalid {what} for {rec.filename} in the slot of {rec.publisher} (sent by {rec.sender}): {rec.reason}."
        logger.warning("invalid attestation in %s: %s", room.room_id, text)
        self._record(rec.event_id, project, rec.filename, rec.publisher, rec.claimed or "", "", rec.verdict.name.lower())
        if rec.verdict is Verdict.UNKNOWN_KEY:
            self.notice(project, room, text + " It is not relied on.", ("notice", rec.event_id))
        else:
            self._redact_and_say(project, room, rec.event_id, f"invalid {what}: {rec.reason}", text)

    def alarm(self, project: str, room: Optional[RoomView], filename: str, decision: Decision, why: str) -> None:
        """The upstream publishes other bytes for a file than the hash that won: its bytes
        are never served. Announced once per (file, upstream hash)."""
        lost = decision.upstream_lost
        if lost is None or (project, filename, lost) in self._alarmed:
            return
        self._alarmed.add((project, filename, lost))
        self.alarm_count += 1
        text = (
            f"Upstream contradicts {why}: the upstream index now publishes sha256 {lost} for {filename}, "
            f"but {decision.sha256} is attested ({decision.reason}). A published file never changes its bytes: "
            f"{self._server} serves only {decision.sha256} and never fetches the upstream's new bytes."
        )
        logger.warning("%s", text)
        self._record(f"upstream:{project}/{filename}/{lost}", project, filename, "upstream", lost,
                     decision.sha256 or "", "upstream_changed")
        self.notice(project, room, text, ("alarm", filename, lost))

    def conflict(self, project: str, room: Optional[RoomView], filename: str, decision: Decision) -> None:
        """A disagreement nobody can settle: the file is refused (409); moderators are
        summoned, once per set of sides."""
        key = (project, filename, decision.conflicting)
        if decision.outcome is not Outcome.CONFLICT or key in self._summoned:
            return
        self._summoned.add(key)
        self.conflict_count += 1
        sides = "; ".join(f"{who} says {sha}" for who, sha in decision.conflicting)
        who = ", ".join(self._moderators) if self._moderators else "Moderators"
        text = (
            f"Conflict over {filename}: {sides}. {self._server} refuses to serve it (409) until it is settled. "
            f"{who}: please check the file and redact the attestation that is wrong."
        )
        logger.warning("%s", text)
        self._record(f"conflict:{project}/{filename}/{len(self._summoned)}", project, filename, "conflict",
                     sides[:128], "", "conflict")
        self.notice(project, room, text, ("conflict", filename, decision.conflicting), mentions=self._moderators)

    def redaction_changed(self, project: str, room: RoomView, lost: Record, by: str) -> None:
        """A moderator's redaction took a vouch away: say what it changes."""
        text = (
            f"{by} redacted the attestation of {lost.filename} by {lost.publisher} (sha256 {lost.sha256}): "
            f"it no longer counts. {self._server} decides the file again on its next request."
        )
        logger.info("%s", text)
        self.notice(project, room, text, ("redacted", lost.event_id))

    # -- Matrix ----------------------------------------------------------------------

    def notice(
        self,
        project: str,
        room: Optional[RoomView],
        text: str,
        key: Tuple[Any, ...],
        mentions: Tuple[str, ...] = (),
    ) -> None:
        """Post `text` in `room`, or, without one, in our room for the project once the
        queue has made it (the room job is queued first)."""
        if room is None:
            self._make_room(project)

        async def job() -> None:
            target = room or self._our_room(project)
            if target is None:
                logger.info("no room for %s to post in: %s", project, text)
                return
            await self.send_notice(target, text, mentions)

        self._queue.submit(project, key, job)

    def _redact_and_say(
        self, project: str, room: RoomView, event_id: str, reason: str, text: str, urgent: bool = False
    ) -> None:
        async def job() -> None:
            redacted = await self.redact(room, event_id, reason)
            await self.send_notice(
                room, text + (" It has been redacted." if redacted else " Moderators: please redact it.")
            )

        # The redaction of fraud takes the lie away for peers that cannot tell: it goes first.
        self._queue.submit(project, ("redact", event_id), job, urgent=urgent)

    async def redact(self, room: RoomView, event_id: str, reason: str) -> bool:
        if room.level(self._bot) < room.redact_level:
            return False
        try:
            await self._writes.send(
                {
                    "type": REDACTION,
                    "room_id": room.room_id,
                    "sender": self._bot,
                    "redacts": event_id,
                    "content": {"redacts": event_id, "reason": reason},
                }
            )
            return True
        except Exception as e:
            logger.warning("could not redact %s in %s: %s", event_id, room.room_id, e)
            return False

    def reply(self, project: str, room: RoomView, event_id: str, text: str) -> None:
        """Answer a message in the room (a moderator's command), through the queue."""
        self._queue.submit(project, ("reply", event_id), lambda: self.send_notice(room, text, reply_to=event_id))

    async def send_notice(
        self, room: RoomView, text: str, mentions: Tuple[str, ...] = (), reply_to: Optional[str] = None
    ) -> None:
        content: Dict[str, Any] = {"msgtype": "m.notice", "body": text}
        if mentions:
            content["m.mentions"] = {"user_ids": list(mentions)}
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        try:
            await self._writes.send(
                {"type": "m.room.message", "room_id": room.room_id, "sender": self._bot, "content": content}
            )
        except Exception as e:
            logger.warning("could not post a notice in %s: %s", room.room_id, e)

    def _record(self, key: str, project: str, filename: str, publisher: str, claimed: str, truth: str, kind: str) -> None:
        self._run_background(
            "synapse_pypi_record_flag", self._store.record_fraud, key, project, filename, publisher, claimed, truth, kind
        )


def _source(decision: Decision, pt: ProjectTrust, filename: str) -> str:
    """Who made the winning hash win, for notices."""
    winners = [c for c in pt.claims(filename) if c.sha256 == decision.sha256]
    pinned = sorted({c.publisher for c in winners if c.pinned})
    if pinned:
        return f"the pinned maintainer {', '.join(pinned)}"
    if any(c.own for c in winners):
        return "what this mirror verified against the upstream"
    if not winners:
        return "the upstream index's hash"
    return f"{len({c.server for c in winners})} independent publishers and the upstream"
