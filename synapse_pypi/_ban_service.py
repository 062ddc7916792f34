"""Bans inside Synapse (issue 14): what a ban refuses, our own bans, and moderators' commands.

Policies are judged by the pure fold like attestations (`trust._fold`, `trust._bans`); this is
the part that needs the module around it: the first valid ban covering a file, as one line for
a client; our own signed bans and unbans, published through the Matrix queue; and the
`!pypi ban|unban` commands of moderators in our rooms, answered in the room.
"""

import logging
from typing import Any, Callable, Dict, List, Optional

from synapse_pypi._config import PyPIConfig
from synapse_pypi._moderation import Moderation
from synapse_pypi._publisher import Publisher
from synapse_pypi._rooms import ProjectTrust, Rooms
from synapse_pypi.trust import Record, RoomView
from synapse_pypi.trust._bans import parse_command, resolve_target

logger = logging.getLogger(__name__)


class Bans:
    """Bans: refusals, ours, and the commands that make them.

    Args:
        config: the module config (the moderators' power level).
        rooms: the package rooms.
        publisher: publishes our signed policies.
        moderation: answers in the rooms.
        bot: the bot's mxid.
        version_of: the version in a distribution file name, or None.
    """

    def __init__(
        self,
        config: PyPIConfig,
        rooms: Rooms,
        publisher: Publisher,
        moderation: Moderation,
        bot: str,
        version_of: Callable[[str], Optional[str]],
    ):
        self._config = config
        self._rooms = rooms
        self._publisher = publisher
        self._moderation = moderation
        self._bot = bot
        self._version_of = version_of

    def refusal(self, pt: Optional[ProjectTrust], project: str, filename: Optional[str]) -> Optional[str]:
        """Why a file (or, with no file name, the project) must not be served or listed: the
        first valid ban covering it, as one line; None when nothing bans it."""
        if pt is None:
            return None
        base = filename[: -len(".metadata")] if filename and filename.endswith(".metadata") else filename
        rec = pt.ban_for(base, self._version_of(base) if base else None)
        if rec is None or rec.policy is None:
            return None
        policy = rec.policy
        what = project if policy.kind == "project" else f"{policy.kind} {policy.entity} of {project}"
        return f"{what} is banned: {policy.reason} (by {policy.publisher}, source: {policy.source})"

    def ban(self, project: str, kind: str, entity: str, reason: str, source: str, reply: Any = None) -> None:
        """Publish our signed ban (through the Matrix queue)."""
        self._publisher.publish_policy(project, kind, entity, "ban", reason, source, reply)

    def unban(self, project: str, kind: str, entity: str, reason: str, source: str, reply: Any = None) -> None:
        """Lift our own ban of an entity (others' bans stay theirs)."""
        self._publisher.publish_policy(project, kind, entity, "unban", reason, source, reply)

    def ours(self, project: str) -> List[Record]:
        """Our bot's valid bans in our own room for the project."""
        pt = self._rooms.projects.get(project)
        if pt is None or pt.local is None:
            return []
        return [r for r in pt.local.policies() if r.valid and r.publisher == self._bot and r.policy is not None
                and r.policy.recommendation == "ban"]

    def listing(self, pt: Optional[ProjectTrust]) -> List[Dict[str, Any]]:
        """Every valid ban of a project, for the admin API."""
        if pt is None:
            return []
        out = []
        for room, rec in pt.bans():
            assert rec.policy is not None
            p = rec.policy
            out.append({"kind": p.kind, "entity": p.entity, "reason": p.reason, "source": p.source,
                        "publisher": p.publisher, "room_id": room.room_id, "event_id": rec.event_id,
                        "timestamp": p.timestamp})
        return out

    def command(self, project: str, room: RoomView, event: Any) -> None:
        """A `!pypi ban|unban` message in one of our rooms: a moderator's is carried out by
        the bot (which signs the policy), anyone else's is refused; both are answered."""
        parsed = parse_command(dict(event.content).get("body"))
        if parsed is None:
            return
        if isinstance(parsed, str):
            self._moderation.reply(project, room, event.event_id, parsed)
            return
        needed = self._config.moderator_power_level
        if room.level(event.sender) < needed:
            self._moderation.reply(
                project, room, event.event_id,
                f"{event.sender}: only moderators (power level {needed} in this room) may ban or unban here.",
            )
            logger.info("%s, not a moderator, asked to %s %s in %s", event.sender, parsed.action, parsed.target, room.room_id)
            return
        target = resolve_target(project, parsed.target)
        if isinstance(target, str):
            self._moderation.reply(project, room, event.event_id, target)
            return
        kind, entity = target
        reason = f"{parsed.reason or 'lifted'} (asked by {event.sender})"

        async def reply(text: str) -> None:
            await self._moderation.send_notice(room, text, reply_to=event.event_id)

        logger.info("%s asked to %s %s %s of %s: %s", event.sender, parsed.action, kind, entity, project, reason)
        if parsed.action == "ban":
            self.ban(project, kind, entity, reason, "moderator", reply)
        else:
            self.unban(project, kind, entity, reason, "moderator", reply)
