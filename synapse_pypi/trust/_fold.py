"""One fold of a package room's state: events in, the trust view out (DESIGN.md §5).

The module keeps one `RoomView` per room, fed by `on_new_event`; `synapse-pypi verify` builds
one from the client-server API's state. Both go through `RoomView.apply`, so they cannot judge a
room differently. Reading the same room's events one by one, in any order in which Matrix can
deliver them, gives the same verdicts as reading its final state at once (`fold`).

What the fold relies on:

* **Attestations** count in their owner's slot (state key ``"<filename>/<owner>"``). An event
  written into someone else's slot is reported (IMPERSONATION) and never erases the owner's
  own last attestation there, which the reader supplies alongside (found through
  ``replaces_state``).
* **Keys** published in the room count for their owner, in the owner's own slot, in our own
  rooms only, while the owner holds ``key_power_level``; keys pinned in config always count,
  and a maintainer pinned to the project is known by its pinned keys alone.
* **Redactions** take an event out only if Synapse applied them (the reader says so) *and*
  their sender is the event's own sender or holds the room's redact level. Anyone can send a
  redaction event; Synapse itself applies some that no power backs (from the original
  sender's own server), and those change nothing here.
* Every field is read defensively: no event content makes the fold raise, and nothing that
  is not a well-formed, signed attestation by a trusted key is counted.

Pure logic: no Twisted, no Synapse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from signedjson.types import VerifyKey

from synapse_pypi.trust._attestation import (
    ATTESTATION_TYPE,
    Attestation,
    MalformedAttestation,
    SignedAttestation,
    Verdict,
    check_signatures,
    read_attestation,
    split_state_key,
)
from synapse_pypi.trust._bans import (
    POLICY_TYPE,
    Policy,
    SignedPolicy,
    check_policy_signatures,
    read_policy,
    split_policy_key,
)
from synapse_pypi.trust._keys import KEY_TYPE, KeyFormatError, parse_public_key
from synapse_pypi.trust._policy import Claim

__all__ = [
    "CREATE",
    "MEMBER",
    "POWER_LEVELS",
    "KEY_LEVEL_FIELD",
    "PROJECT_FIELD",
    "REDACTION",
    "Changes",
    "Powers",
    "Record",
    "RoomEvent",
    "RoomView",
    "Rules",
    "fold",
    "slot_owner",
]

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
REDACTION = "m.room.redaction"
# In the content of the create event of rooms the bot makes: which project the room is for, so
# an alias moved onto another project's room is noticed.
PROJECT_FIELD = "dev.synapse-pypi.project"
# Also there: the power level at which a key published in the room counts. Read from the
# room itself (immutable, set by its creator), so that every reader of the room, the mirror
# and `synapse-pypi verify` alike, applies the same rule.
KEY_LEVEL_FIELD = "dev.synapse-pypi.key_power_level"

# Matrix's own defaults for a power-levels event that leaves a field out.
_DEFAULT_REDACT = 50
_DEFAULT_STATE = 50
_UNLIMITED = float("inf")
# Sizes a reason quotes from an event at most.
_MAX_SHOWN_HASH = 64


@attrs.frozen
class RoomEvent:
    """One event as the fold reads it, whether it came from Synapse or a client's API call.

    Attributes:
        event_id: the event id.
        type: the event type.
        sender: the sender's mxid.
        state_key: for state events, the state key; None for messages and redactions.
        content: the content. For an event Synapse has redacted: its content as it was before,
            where the reader kept it, else ``{}``.
        redacted: Synapse shows the event redacted.
        redacted_by: the senders of the redactions Synapse applied to it, where known.
        redacts: for a redaction, the event it redacts.
        applied: for a redaction, whether Synapse applied it (the target comes back redacted
            from Synapse's own store). A redaction that was not applied is ignored.
    """

    event_id: str
    type: str
    sender: str
    state_key: str | None = None
    content: Mapping[str, Any] = attrs.field(factory=dict)
    redacted: bool = False
    redacted_by: tuple[str, ...] = ()
    redacts: str | None = None
    applied: bool = False

    @classmethod
    def from_client(cls, event: Any) -> RoomEvent | None:
        """An event in the client-server API's JSON format, or None if it is not one.

        A redacted event carries its redaction in ``unsigned.redacted_because``.
        """
        if not isinstance(event, Mapping):
            return None
        event_id, etype, sender = event.get("event_id"), event.get("type"), event.get("sender")
        if not (isinstance(event_id, str) and isinstance(etype, str) and isinstance(sender, str)):
            return None
        state_key = event.get("state_key")
        content = event.get("content")
        unsigned = event.get("unsigned")
        because = unsigned.get("redacted_because") if isinstance(unsigned, Mapping) else None
        redacted_by: tuple[str, ...] = ()
        if isinstance(because, Mapping):
            by = because.get("sender")
            redacted_by = (by,) if isinstance(by, str) else ()
        redacts = event.get("redacts")
        if isinstance(content, Mapping) and isinstance(content.get("redacts"), str):
            redacts = content["redacts"]
        return cls(
            event_id=event_id,
            type=etype,
            sender=sender,
            state_key=state_key if isinstance(state_key, str) else None,
            content=content if isinstance(content, Mapping) else {},
            redacted=because is not None,
            redacted_by=redacted_by,
            redacts=redacts if isinstance(redacts, str) else None,
            # The server sent the redaction to a client: it is one it applies.
            applied=etype == REDACTION,
        )


@attrs.frozen
class Rules:
    """How a room is judged.

    Attributes:
        project: the room's project (normalized); attestations for others do not count.
        local: our own room: keys published in it count (a peer's room power is the peer's).
        pinned: keys trusted whatever the room says, by mxid then key id (config, our own).
        maintainers: keys of maintainers pinned to this project; they count alone for them.
        key_power_level: the level at which a key published in the room counts, unless the
            room's create event says (`KEY_LEVEL_FIELD`).
        own: this mirror's bot, whose upstream-verified attestations are its own corroboration.
    """

    project: str
    local: bool
    pinned: Mapping[str, Mapping[str, VerifyKey]] = attrs.field(factory=dict)
    maintainers: Mapping[str, Mapping[str, VerifyKey]] = attrs.field(factory=dict)
    key_power_level: int = 60
    own: str | None = None


@attrs.frozen
class Record:
    """The verdict on one attestation event.

    Attributes:
        filename: the file, from the state key.
        publisher: the slot's owner (state key); for a report of an intruder, still the owner.
        event_id: the event judged.
        sender: who sent it.
        verdict: what the fold found.
        reason: one readable line.
        attestation: what it claims (VALID: a vouch; UNKNOWN_KEY, BAD_SIGNATURE, WRONG_PROJECT:
            for notices only), None when it could not be read.
        claimed: the sha256 it claims, for notices, also when malformed (bounded).
        policy: for a policy event, what it says (VALID: it counts).
        event_type: the slot's event type (`ATTESTATION_TYPE` or `POLICY_TYPE`).
    """

    filename: str
    publisher: str
    event_id: str
    sender: str
    verdict: Verdict
    reason: str
    attestation: Attestation | None = None
    claimed: str | None = None
    policy: Policy | None = None
    event_type: str = ATTESTATION_TYPE

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    @property
    def sha256(self) -> str | None:
        """What the record vouches for: only a valid one vouches for anything."""
        return self.attestation.sha256 if self.valid and self.attestation is not None else None

    @property
    def cid(self) -> str | None:
        return self.attestation.cid if self.valid and self.attestation is not None else None


@attrs.frozen
class Changes:
    """What one `RoomView.apply` changed: the verdicts before and after, per record."""

    before: tuple[Record | None, ...] = ()
    after: tuple[Record | None, ...] = ()

    @property
    def files(self) -> frozenset[str]:
        return frozenset(r.filename for r in self.before + self.after if r is not None)

    @property
    def lost(self) -> tuple[Record, ...]:
        """Valid records that are valid no more (a vouch went away)."""
        out = []
        for old, new in zip(self.before, self.after):
            if old is not None and old.valid and (new is None or not new.valid or new.sha256 != old.sha256):
                out.append(old)
        return tuple(out)

    @property
    def new(self) -> tuple[Record, ...]:
        """Records that appeared or changed verdict or claim."""
        return tuple(
            new
            for old, new in zip(self.before, self.after)
            if new is not None and (old is None or (old.verdict, old.sha256, old.event_id) != (new.verdict, new.sha256, new.event_id))
        )

    def __bool__(self) -> bool:
        return bool(self.new or self.lost)


@attrs.frozen
class Powers:
    """A room's power levels, read defensively (Matrix's defaults where a field is missing
    or is not an integer)."""

    users: Mapping[str, int] = attrs.field(factory=dict)
    users_default: int = 0
    redact: int = _DEFAULT_REDACT
    events: Mapping[str, int] = attrs.field(factory=dict)
    state_default: int = _DEFAULT_STATE

    @classmethod
    def parse(cls, content: Mapping[str, Any]) -> Powers:
        def level(name: str, default: int) -> int:
            value = content.get(name, default)
            return value if _is_int(value) else default

        def levels(name: str) -> dict[str, int]:
            value = content.get(name)
            if not isinstance(value, Mapping):
                return {}
            return {k: v for k, v in value.items() if isinstance(k, str) and _is_int(v)}

        return cls(
            users=levels("users"),
            users_default=level("users_default", 0),
            redact=level("redact", _DEFAULT_REDACT),
            events=levels("events"),
            state_default=level("state_default", _DEFAULT_STATE),
        )

    def changed_users(self, other: Powers) -> set[str]:
        """The users whose level differs between the two (listed ones only)."""
        return {u for u in set(self.users) | set(other.users) if self.users.get(u) != other.users.get(u)}


_Slot = tuple[str, str, str]  # (event type, filename or "<kind>:<entity>", owner)


class RoomAuthority:
    """Who counts for what in one room: its creators, power levels, members, and the keys its
    users published there; so, whose redaction counts and which keys are trusted for whom.

    `RoomView` keeps one, feeds it the create, power-levels, member and key events, and asks
    it while judging records; when what it says changes, the view judges again.

    Args:
        rules: how the room is judged (pinned keys, maintainers, the key level by default).
    """

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.creator: str | None = None
        self.creators: frozenset[str] = frozenset()
        self.project_tag: str | None = None
        self.key_level: int = rules.key_power_level
        self.members: dict[str, str] = {}
        self.powers = Powers()
        #: The owners' own key events, by owner.
        self.key_events: dict[str, RoomEvent] = {}
        self._keys: dict[str, Mapping[str, VerifyKey]] = {}

    def level(self, user: str) -> float:
        """A user's power in the room (room v12: creators have unlimited power)."""
        if user in self.creators:
            return _UNLIMITED
        return self.powers.users.get(user, self.powers.users_default)

    @property
    def redact_level(self) -> int:
        return self.powers.redact

    def may_redact(self, user: str, event_sender: str) -> bool:
        """Whether a redaction sent by `user` of an event sent by `event_sender` counts."""
        return user == event_sender or self.level(user) >= self.redact_level

    def removed_by(self, ev: RoomEvent) -> str | None:
        """Who took `ev` out, if a redaction counts: the first sender with the right."""
        if not ev.redacted:
            return None
        if not ev.redacted_by:
            return "someone"  # Synapse shows it redacted but the reader could not tell by whom
        for who in ev.redacted_by:
            if self.may_redact(who, ev.sender):
                return who
        return None

    def keys_for(self, user: str) -> Mapping[str, VerifyKey]:
        """The keys trusted for `user` in this room, by key id."""
        keys = self._keys.get(user)
        if keys is None:
            keys = self._keys[user] = self._compute_keys(user)
        return keys

    def forget_keys(self, users: Iterable[str] | None = None) -> None:
        """Work out the keys of these users (of everyone: None) again when next asked."""
        if users is None:
            self._keys.clear()
        for user in users or ():
            self._keys.pop(user, None)

    def set_create(self, event: RoomEvent) -> None:
        self.creator = event.sender
        extra = event.content.get("additional_creators")
        creators = {event.sender}
        if isinstance(extra, (list, tuple)):
            creators.update(c for c in extra if isinstance(c, str))
        self.creators = frozenset(creators)
        tag = event.content.get(PROJECT_FIELD)
        self.project_tag = tag if isinstance(tag, str) else None
        level = event.content.get(KEY_LEVEL_FIELD)
        self.key_level = level if isinstance(level, int) and not isinstance(level, bool) else self.rules.key_power_level

    def set_powers(self, content: Mapping[str, Any]) -> set[str] | None:
        """New power levels: the users whose level changed, or None when everyone's may have."""
        new, old = Powers.parse(content), self.powers
        self.powers = new
        if new.users_default != old.users_default or new.redact != old.redact:
            return None
        return new.changed_users(old)

    def set_member(self, event: RoomEvent) -> None:
        assert event.state_key is not None
        membership = event.content.get("membership")
        self.members[event.state_key] = membership if isinstance(membership, str) else ""

    def _compute_keys(self, user: str) -> Mapping[str, VerifyKey]:
        rules = self.rules
        if user in rules.maintainers:
            # A maintainer of this project is known by the pinned keys alone.
            return rules.maintainers[user]
        keys = dict(rules.pinned.get(user, {}))
        ev = self.key_events.get(user)
        if (
            rules.local
            and ev is not None
            and self.removed_by(ev) is None
            and not (ev.redacted and not ev.content)
            and self.level(user) >= self.key_level
        ):
            for parsed_id, verify_key in published_keys(ev.content).items():
                keys.setdefault(parsed_id, verify_key)
        return keys


class RoomView:
    """What one room says, kept current one event at a time.

    Args:
        room_id: the room.
        rules: how it is judged.
    """

    def __init__(self, room_id: str, rules: Rules) -> None:
        self.room_id = room_id
        self.rules = rules
        #: The alias the room was found under (for messages), set by the reader.
        self.alias = ""
        #: Creators, power levels, members, published keys.
        self.authority = RoomAuthority(rules)
        # The owner's own last event per slot, and the latest intruder's where it is current.
        self._owned: dict[_Slot, RoomEvent] = {}
        self._intruders: dict[_Slot, RoomEvent] = {}
        self._records: dict[_Slot, Record] = {}
        self._intruder_records: dict[_Slot, Record] = {}
        self._by_owner: dict[str, set[_Slot]] = {}
        # event id -> ("slot" | "intruder" | "key", slot or owner): what a redaction may hit.
        self._events: dict[str, tuple[str, Any]] = {}
        self._signed: dict[str, tuple[RoomEvent, SignedAttestation | SignedPolicy | tuple[Verdict, str]]] = {}
        #: Bumped whenever a verdict may have changed.
        self.generation = 0

    # -- reading ---------------------------------------------------------------------

    def level(self, user: str) -> float:
        """A user's power in the room (`RoomAuthority.level`)."""
        return self.authority.level(user)

    @property
    def redact_level(self) -> int:
        return self.authority.redact_level

    def may_redact(self, user: str, event_sender: str) -> bool:
        return self.authority.may_redact(user, event_sender)

    def keys_for(self, user: str) -> Mapping[str, VerifyKey]:
        return self.authority.keys_for(user)

    def records(self, filename: str | None = None) -> list[Record]:
        """The owners' attestation records (of one file, or all), sorted."""
        recs = [r for (t, f, _), r in self._records.items()
                if t == ATTESTATION_TYPE and (filename is None or f == filename)]
        return sorted(recs, key=lambda r: (r.filename, r.publisher))

    def intruders(self, filename: str | None = None) -> list[Record]:
        """Reports of events written into someone else's slot (never counted)."""
        recs = [r for (t, f, _), r in self._intruder_records.items() if filename is None or f == filename]
        return sorted(recs, key=lambda r: (r.filename, r.publisher))

    def record(self, filename: str, publisher: str) -> Record | None:
        return self._records.get((ATTESTATION_TYPE, filename, publisher))

    def slot_record(self, event_type: str, name: str, owner: str) -> Record | None:
        """The owner's own record in a slot: of a file (attestations) or of
        ``"<kind>:<entity>"`` (policies), as `Record.filename` names it."""
        return self._records.get((event_type, name, owner))

    def filenames(self) -> list[str]:
        return sorted({f for t, f, _ in self._records if t == ATTESTATION_TYPE})

    def policies(self) -> list[Record]:
        """The owners' policy records, sorted; a valid one's `policy` says what it bans."""
        recs = [r for (t, _, _), r in self._records.items() if t == POLICY_TYPE]
        return sorted(recs, key=lambda r: (r.filename, r.publisher))

    def claims(self, filename: str) -> list[Claim]:
        """The policy's input from this room: one claim per valid record of the file."""
        out = []
        for r in self.records(filename):
            if r.valid and r.attestation is not None:
                # Our own word counts as our own only where we checked it against the upstream.
                own = r.publisher == self.rules.own and r.attestation.verified_against in (None, "upstream")
                pinned = r.publisher in self.rules.maintainers
                out.append(Claim(r.publisher, r.attestation.sha256, pinned=pinned, own=own, room=self.room_id))
        return out

    def key_events(self) -> list[RoomEvent]:
        """The owners' key events the view holds."""
        return list(self.authority.key_events.values())

    def event_for(self, event_id: str) -> RoomEvent | None:
        """The attestation or key event with this id, as the view holds it."""
        where = self._events.get(event_id)
        if where is None:
            return None
        kind, key = where
        if kind == "key":
            return self.authority.key_events.get(key)
        return (self._owned if kind == "slot" else self._intruders).get(key)

    # -- changing --------------------------------------------------------------------

    def apply(self, event: RoomEvent) -> Changes:
        """Take one event into the view; what changed is returned. Never raises."""
        etype = event.type
        if etype == REDACTION:
            return self._redaction(event)
        if event.state_key is None:
            return Changes()
        if etype in (ATTESTATION_TYPE, POLICY_TYPE):
            return self._slot_event(event)
        if etype == KEY_TYPE:
            if event.state_key != event.sender:
                return Changes()  # a key counts in its owner's own slot only
            old = self.authority.key_events.get(event.sender)
            if old is not None:
                self._events.pop(old.event_id, None)
            self.authority.key_events[event.sender] = event
            self._events[event.event_id] = ("key", event.sender)
            return self._rejudge_users({event.sender})
        if etype == POWER_LEVELS and event.state_key == "":
            changed = self.authority.set_powers(event.content)
            return self._rejudge_all() if changed is None else self._rejudge_users(changed)
        if etype == CREATE and event.state_key == "":
            self.authority.set_create(event)
            return self._rejudge_all()
        if etype == MEMBER:
            self.authority.set_member(event)
        return Changes()

    def apply_all(self, events: Iterable[RoomEvent]) -> Changes:
        """Apply several events; the changes of all of them."""
        before: list[Record | None] = []
        after: list[Record | None] = []
        for ev in events:
            ch = self.apply(ev)
            before.extend(ch.before)
            after.extend(ch.after)
        return Changes(tuple(before), tuple(after))

    def rejudge(self) -> Changes:
        """Judge every record again from the events held (what a re-verify does)."""
        self._signed.clear()
        return self._rejudge_all()

    # -- internals -------------------------------------------------------------------

    def _slot_event(self, event: RoomEvent) -> Changes:
        assert event.state_key is not None
        slot = _slot_of(event.type, event.state_key)
        owner = slot[2]
        if event.sender == owner:
            for old in (self._owned.get(slot), self._intruders.pop(slot, None)):
                if old is not None:
                    self._events.pop(old.event_id, None)
                    self._signed.pop(old.event_id, None)
            self._intruder_records.pop(slot, None)
            self._owned[slot] = event
            self._events[event.event_id] = ("slot", slot)
            self._by_owner.setdefault(owner, set()).add(slot)
            return self._rejudge_slots({slot})
        old = self._intruders.get(slot)
        if old is not None:
            self._events.pop(old.event_id, None)
            self._signed.pop(old.event_id, None)
        self._intruders[slot] = event
        self._events[event.event_id] = ("intruder", slot)
        before = self._intruder_records.get(slot)
        after = self._judge_intruder(slot, event)
        self._intruder_records[slot] = after
        self.generation += 1
        return Changes((before,), (after,))

    def _redaction(self, event: RoomEvent) -> Changes:
        if not event.applied or event.redacts is None:
            return Changes()
        where = self._events.get(event.redacts)
        if where is None:
            return Changes()
        kind, key = where
        store = self.authority.key_events if kind == "key" else (self._owned if kind == "slot" else self._intruders)
        target = store[key]
        if event.sender in target.redacted_by and target.redacted:
            return Changes()
        store[key] = attrs.evolve(target, redacted=True, redacted_by=target.redacted_by + (event.sender,))
        if kind == "key":
            return self._rejudge_users({key})
        if kind == "slot":
            return self._rejudge_slots({key})
        before = self._intruder_records.get(key)
        after = self._judge_intruder(key, store[key])
        self._intruder_records[key] = after
        self.generation += 1
        return Changes((before,), (after,))

    def _rejudge_all(self) -> Changes:
        self.authority.forget_keys()
        changes = self._rejudge_slots(set(self._owned))
        for slot, ev in self._intruders.items():
            self._intruder_records[slot] = self._judge_intruder(slot, ev)
        return changes

    def _rejudge_users(self, users: set[str]) -> Changes:
        """Users whose power or keys changed: their keys, their records, and the records of
        events they redacted are judged again."""
        if not users:
            return Changes()
        self.authority.forget_keys(users)
        slots = {slot for user in users for slot in self._by_owner.get(user, ())}
        slots.update(slot for slot, ev in self._owned.items() if ev.redacted and users.intersection(ev.redacted_by))
        for owner, ev in self.authority.key_events.items():
            if ev.redacted and users.intersection(ev.redacted_by):
                self.authority.forget_keys([owner])
                slots.update(self._by_owner.get(owner, ()))
        before: list[Record | None] = []
        after: list[Record | None] = []
        for slot, ev in self._intruders.items():
            if ev.redacted and users.intersection(ev.redacted_by):
                new = self._judge_intruder(slot, ev)
                before.append(self._intruder_records.get(slot))
                after.append(new)
                self._intruder_records[slot] = new
        changes = self._rejudge_slots(slots)
        return Changes(changes.before + tuple(before), changes.after + tuple(after))

    def _rejudge_slots(self, slots: set[_Slot]) -> Changes:
        if not slots:
            return Changes()
        before, after = [], []
        for slot in sorted(slots):
            ev = self._owned.get(slot)
            if ev is None:
                continue
            old = self._records.get(slot)
            new = self._judge(slot, ev)
            self._records[slot] = new
            if old != new:
                before.append(old)
                after.append(new)
        self.generation += 1
        return Changes(tuple(before), tuple(after))

    def _judge(self, slot: _Slot, ev: RoomEvent) -> Record:
        rec = self._judge_owned(slot, ev)
        return rec if slot[0] == ATTESTATION_TYPE else attrs.evolve(rec, event_type=slot[0])

    def _judge_owned(self, slot: _Slot, ev: RoomEvent) -> Record:
        _, filename, owner = slot
        claimed = _claimed(ev.content)
        by = self.authority.removed_by(ev)
        if by is not None:
            return Record(filename, owner, ev.event_id, ev.sender, Verdict.REDACTED, f"redacted by {by}", None, claimed)
        ignored = ""
        if ev.redacted:
            who = ", ".join(ev.redacted_by)
            if not ev.content:
                return Record(
                    filename, owner, ev.event_id, ev.sender, Verdict.REDACTED,
                    f"redacted by {who}, who may not redact it; its content is gone", None, claimed,
                )
            ignored = f" (a redaction by {who}, who may not redact it, is ignored)"
        signed = self._read(ev)
        if isinstance(signed, tuple):
            verdict, reason = signed
            return Record(filename, owner, ev.event_id, ev.sender, verdict, reason + ignored, None, claimed)
        if isinstance(signed, SignedPolicy):
            policy = signed.policy
            if policy.project != self.rules.project:
                return Record(filename, owner, ev.event_id, ev.sender, Verdict.WRONG_PROJECT,
                              f"policy for project {policy.project!r} in the room of {self.rules.project!r}" + ignored,
                              policy=policy)
            verdict, policy, reason = check_policy_signatures(signed, self.keys_for(ev.sender))
            return Record(filename, owner, ev.event_id, ev.sender, verdict, reason + ignored, policy=policy)
        att = signed.attestation
        if att.project != self.rules.project:
            return Record(
                filename, owner, ev.event_id, ev.sender, Verdict.WRONG_PROJECT,
                f"attestation for project {att.project!r} in the room of {self.rules.project!r}" + ignored,
                att, att.sha256,
            )
        verdict, checked, reason = check_signatures(signed, self.keys_for(ev.sender))
        return Record(filename, owner, ev.event_id, ev.sender, verdict, reason + ignored, checked, checked.sha256)

    def _judge_intruder(self, slot: _Slot, ev: RoomEvent) -> Record:
        etype, filename, owner = slot
        claimed = _claimed(ev.content)
        by = self.authority.removed_by(ev)
        if by is not None:
            return Record(filename, owner, ev.event_id, ev.sender, Verdict.REDACTED, f"redacted by {by}", None, claimed,
                          event_type=etype)
        read = self._read(ev)
        reason = read[1] if isinstance(read, tuple) else f"{ev.sender} wrote into the slot of {owner}"
        return Record(filename, owner, ev.event_id, ev.sender, Verdict.IMPERSONATION if owner else Verdict.MALFORMED,
                      reason, None, claimed, event_type=etype)

    def _read(self, ev: RoomEvent) -> SignedAttestation | SignedPolicy | tuple[Verdict, str]:
        held = self._signed.get(ev.event_id)
        if held is not None and held[0] is ev:
            return held[1]
        assert ev.state_key is not None
        got: SignedAttestation | SignedPolicy | tuple[Verdict, str]
        if ev.type == POLICY_TYPE:
            got = read_policy(ev.content, ev.state_key, ev.sender)
        else:
            got = read_attestation(ev.content, ev.state_key, ev.sender)
        self._signed[ev.event_id] = (ev, got)
        return got


def fold(room_id: str, rules: Rules, events: Iterable[RoomEvent]) -> RoomView:
    """A view of a room from its state (and its owners' replaced events), read at once.

    The create and power-levels events go first, so that the rest is judged once; in a slot
    that an intruder wrote last, the owner's own (older) event goes before the intruder's."""
    order = {CREATE: 0, POWER_LEVELS: 1, MEMBER: 2, KEY_TYPE: 3}

    def key(e: RoomEvent) -> tuple[int, int]:
        if e.type == KEY_TYPE or not isinstance(e.state_key, str):
            owner = e.state_key
        else:
            owner = _slot_of(e.type, e.state_key)[2]
        return order.get(e.type, 4), 0 if e.sender == owner else 1

    view = RoomView(room_id, rules)
    view.apply_all(sorted(events, key=key))
    return view


def slot_owner(event_type: str, state_key: Any) -> str | None:
    """Whose slot a state event is in, for the event types with one slot per owner
    (attestations, policies, keys); None for other events and for malformed state keys.

    Every reader of a room's state (the module's `_rooms`, `synapse-pypi verify`) calls this
    to know which slots to walk back (``replaces_state``) when someone other than the owner
    wrote last: the owner's own last event there is what counts, the intruder's is reported.
    """
    if not isinstance(state_key, str):
        return None
    if event_type == KEY_TYPE:
        return state_key
    if event_type in (ATTESTATION_TYPE, POLICY_TYPE):
        owner = _slot_of(event_type, state_key)[2]
        return owner or None
    return None


def _slot_of(event_type: str, state_key: str) -> _Slot:
    """(type, file name or ``"<kind>:<entity>"``, owner) of an attestation or a policy; a
    malformed state key is a slot of no owner ("")."""
    try:
        if event_type == POLICY_TYPE:
            kind, entity, owner = split_policy_key(state_key)
            return event_type, f"{kind}:{entity}", owner
        name, owner = split_state_key(state_key)
        return event_type, name, owner
    except MalformedAttestation:
        return event_type, state_key, ""


def published_keys(content: Mapping[str, Any]) -> dict[str, VerifyKey]:
    """The well-formed keys of a key event's content (``{"keys": {"ed25519:<id>": <b64>}}``);
    anything else is skipped."""
    published = content.get("keys")
    out: dict[str, VerifyKey] = {}
    for kid, b64 in (published.items() if isinstance(published, Mapping) else ()):
        if not isinstance(kid, str) or not isinstance(b64, str):
            continue
        try:
            parsed_id, verify_key = parse_public_key(f"{kid} {b64}")
        except (KeyFormatError, ValueError, TypeError):
            continue
        out[parsed_id] = verify_key
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _claimed(content: Mapping[str, Any]) -> str | None:
    hashes = content.get("hashes") if isinstance(content, Mapping) else None
    sha = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    return sha[:_MAX_SHOWN_HASH] if isinstance(sha, str) else None
