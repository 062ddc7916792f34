"""The pure fold of room state (trust/_fold.py): examples, and properties over arbitrary
event sequences: it never raises, never counts an invalid record, and reading events one by
one gives the same verdicts as reading the final state at once."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signedjson.key import get_verify_key
from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json

from synapse_pypi._maintainer import owners_events
from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    Verdict,
    build_content,
    generate_key,
    key_id,
    state_key_for,
    verify_attestation,
    verify_key_base64,
)
from synapse_pypi.trust._bans import POLICY_TYPE, build_policy, policy_state_key
from synapse_pypi.trust._fold import (
    CREATE,
    KEY_LEVEL_FIELD,
    POWER_LEVELS,
    PROJECT_FIELD,
    REDACTION,
    RoomEvent,
    RoomView,
    Rules,
    fold,
    slot_owner,
)

BOT = "@pypi-bot:a.example"
MOD = "@mod:a.example"
PUB = "@pub:b.example"
MAINT = "@maint:c.example"
EVE = "@eve:evil.example"
USERS = [BOT, MOD, PUB, MAINT, EVE]
PROJECT = "demo"
FILES = ["demo-1.0-py3-none-any.whl", "demo-1.0.tar.gz"]
SHAS = ["aa" * 32, "bb" * 32]

KEYS = {u: generate_key(f"k{i}") for i, u in enumerate(USERS)}
OTHER_KEY = generate_key("zz")

RULES = Rules(
    project=PROJECT,
    local=True,
    pinned={BOT: {key_id(KEYS[BOT]): KEYS[BOT].verify_key}},
    maintainers={MAINT: {key_id(KEYS[MAINT]): KEYS[MAINT].verify_key}},
    key_power_level=60,
    own=BOT,
)

_ids = itertools.count()


def _eid() -> str:
    return f"$e{next(_ids)}"


def att_content(publisher: str, filename: str, sha: str, key: Any = None, project: str = PROJECT) -> dict:
    return build_content(
        project=project, version="1.0", filename=filename, size=10, sha256=sha, cid=None, upstream_url=None,
        requires_python=None, timestamp=1, publisher=publisher, signing_key=key or KEYS[publisher],
    )


def attestation(sender: str, filename: str, sha: str, slot: str | None = None, **kw: Any) -> RoomEvent:
    return RoomEvent(_eid(), ATTESTATION_TYPE, sender, state_key_for(filename, slot or sender),
                     att_content(sender, filename, sha, **kw))


def key_event(user: str, key: Any = None, slot: str | None = None) -> RoomEvent:
    key = key or KEYS[user]
    return RoomEvent(_eid(), KEY_TYPE, user, slot or user, {"keys": {key_id(key): verify_key_base64(key)}})


def create() -> RoomEvent:
    return RoomEvent(_eid(), CREATE, BOT, "", {PROJECT_FIELD: PROJECT, "room_version": "12"})


def power(users: dict, **extra: Any) -> RoomEvent:
    return RoomEvent(_eid(), POWER_LEVELS, BOT, "", {"users": users, "redact": 50, **extra})


def redaction(sender: str, target: str, applied: bool = True) -> RoomEvent:
    return RoomEvent(_eid(), REDACTION, sender, None, {"redacts": target}, redacts=target, applied=applied)


def base_room() -> RoomView:
    view = RoomView("!room", RULES)
    view.apply_all([create(), power({MOD: 50, PUB: 60, MAINT: 60, EVE: 0})])
    return view


def verdicts(view: RoomView) -> dict:
    return {(r.filename, r.publisher): r.verdict for r in view.records()}


# -- examples ---------------------------------------------------------------------------


def test_a_published_key_counts_at_the_key_level_and_not_below() -> None:
    view = base_room()
    ev = attestation(PUB, FILES[0], SHAS[0])
    view.apply(ev)
    assert view.record(FILES[0], PUB).verdict is Verdict.UNKNOWN_KEY
    changes = view.apply(key_event(PUB))
    assert view.record(FILES[0], PUB).verdict is Verdict.VALID
    assert [r.publisher for r in changes.new] == [PUB]
    # Demoted below the key level: the key stops counting, the vouch is lost.
    changes = view.apply(power({MOD: 50, PUB: 10, MAINT: 60}))
    assert view.record(FILES[0], PUB).verdict is Verdict.UNKNOWN_KEY
    assert [r.publisher for r in changes.lost] == [PUB]


def test_a_peer_room_trusts_only_pinned_keys() -> None:
    view = RoomView("!peer", Rules(project=PROJECT, local=False, pinned=RULES.pinned))
    view.apply_all([create(), power({PUB: 100}), key_event(PUB), attestation(PUB, FILES[0], SHAS[0])])
    assert view.record(FILES[0], PUB).verdict is Verdict.UNKNOWN_KEY


def test_a_maintainer_is_known_by_pinned_keys_alone() -> None:
    view = base_room()
    view.apply(key_event(MAINT, key=OTHER_KEY))
    view.apply(attestation(MAINT, FILES[0], SHAS[0], key=OTHER_KEY))
    assert view.record(FILES[0], MAINT).verdict is Verdict.UNKNOWN_KEY
    view.apply(attestation(MAINT, FILES[0], SHAS[0]))
    assert view.record(FILES[0], MAINT).verdict is Verdict.VALID
    (claim,) = view.claims(FILES[0])
    assert claim.pinned and not claim.own


def test_own_claims_count_only_for_upstream_verified_attestations() -> None:
    view = base_room()
    view.apply(attestation(BOT, FILES[0], SHAS[0]))
    assert [c.own for c in view.claims(FILES[0])] == [True]
    content = build_content(
        project=PROJECT, version="1.0", filename=FILES[1], size=10, sha256=SHAS[0], cid=None, upstream_url=None,
        requires_python=None, timestamp=1, publisher=BOT, signing_key=KEYS[BOT], verified_against="attestations",
    )
    view.apply(RoomEvent(_eid(), ATTESTATION_TYPE, BOT, state_key_for(FILES[1], BOT), content))
    assert [c.own for c in view.claims(FILES[1])] == [False]


def test_a_redaction_synapse_did_not_apply_changes_nothing() -> None:
    view = base_room()
    ev = attestation(MAINT, FILES[0], SHAS[0])
    view.apply(ev)
    assert not view.apply(redaction(MOD, ev.event_id, applied=False))
    assert view.record(FILES[0], MAINT).verdict is Verdict.VALID


def test_a_redaction_without_the_power_changes_nothing() -> None:
    """Synapse applies a redaction from the original sender's own server whatever its
    sender's power: such a redaction must not take a vouch away."""
    view = base_room()
    ev = attestation(MAINT, FILES[0], SHAS[0])
    view.apply(ev)
    assert not view.apply(redaction("@other:c.example", ev.event_id))
    rec = view.record(FILES[0], MAINT)
    assert rec.verdict is Verdict.VALID and "is ignored" in rec.reason
    # A fresh read after a restart sees the same, given the content the module kept.
    held = view.event_for(ev.event_id)
    again = fold("!room", RULES, [create(), power({MOD: 50, PUB: 60, MAINT: 60}), held])
    assert again.record(FILES[0], MAINT).verdict is Verdict.VALID
    # Without the kept content, nothing is left to vouch with.
    gone = fold("!room", RULES, [create(), power({MOD: 50}), RoomEvent(
        ev.event_id, ev.type, ev.sender, ev.state_key, {}, redacted=True, redacted_by=("@other:c.example",))])
    assert gone.record(FILES[0], MAINT).verdict is Verdict.REDACTED


def test_a_moderator_redaction_counts_and_a_demotion_undoes_it() -> None:
    view = base_room()
    ev = attestation(MAINT, FILES[0], SHAS[0])
    view.apply(ev)
    changes = view.apply(redaction(MOD, ev.event_id))
    assert [r.publisher for r in changes.lost] == [MAINT]
    assert view.record(FILES[0], MAINT).verdict is Verdict.REDACTED
    view.apply(power({MOD: 0, PUB: 60, MAINT: 60}))
    assert view.record(FILES[0], MAINT).verdict is Verdict.VALID


def test_the_sender_may_redact_its_own_attestation() -> None:
    view = base_room()
    ev = attestation(EVE, FILES[0], SHAS[0])
    view.apply(ev)
    view.apply(redaction(EVE, ev.event_id))
    assert view.record(FILES[0], EVE).verdict is Verdict.REDACTED


def test_an_intruder_is_reported_and_the_owner_vouch_kept() -> None:
    view = base_room()
    view.apply(key_event(PUB))
    mine = attestation(BOT, FILES[0], SHAS[0])
    view.apply(mine)
    view.apply(attestation(PUB, FILES[0], SHAS[1], slot=BOT))
    assert view.record(FILES[0], BOT).verdict is Verdict.VALID
    (report,) = view.intruders(FILES[0])
    assert report.verdict is Verdict.IMPERSONATION and report.sender == PUB and report.publisher == BOT
    # The owner writing again clears the report (the intruder's event is no longer state).
    view.apply(attestation(BOT, FILES[0], SHAS[0]))
    assert view.intruders() == []


def test_an_intruders_key_event_does_not_erase_the_owners_key() -> None:
    view = base_room()
    view.apply_all([key_event(PUB), attestation(PUB, FILES[0], SHAS[0])])
    view.apply(key_event(EVE, key=OTHER_KEY, slot=PUB))
    assert view.record(FILES[0], PUB).verdict is Verdict.VALID


def test_wrong_project_survives_a_rejudge() -> None:
    view = base_room()
    view.apply(attestation(BOT, FILES[0], SHAS[0], project="other"))
    assert view.record(FILES[0], BOT).verdict is Verdict.WRONG_PROJECT
    view.rejudge()
    view.apply(power({MOD: 50, PUB: 60}))
    assert view.record(FILES[0], BOT).verdict is Verdict.WRONG_PROJECT


@pytest.mark.parametrize(
    "content",
    [
        {"keys": "not an object"},
        {"keys": ["a", "b"]},
        {"keys": {"ed25519:x": 5}},
        {"keys": {5: "x"}},
        {"keys": {"ed25519:x": "!!!"}},
        {},
    ],
)
def test_a_junk_key_event_breaks_nothing(content: dict) -> None:
    view = base_room()
    view.apply_all([key_event(PUB), attestation(PUB, FILES[0], SHAS[0])])
    view.apply(RoomEvent(_eid(), KEY_TYPE, PUB, PUB, content))
    assert view.record(FILES[0], PUB).verdict is Verdict.UNKNOWN_KEY
    assert fold("!r", RULES, [create(), RoomEvent(_eid(), KEY_TYPE, PUB, PUB, content)]).records() == []


@pytest.mark.parametrize(
    "content",
    [
        {"users": "x"},
        {"users": {"@a:b": "100"}, "users_default": "9", "redact": None},
        {"users": {"@a:b": True}},
        {"events": [1]},
    ],
)
def test_junk_power_levels_break_nothing(content: dict) -> None:
    view = base_room()
    view.apply(attestation(BOT, FILES[0], SHAS[0]))
    view.apply(RoomEvent(_eid(), POWER_LEVELS, BOT, "", content))
    assert view.record(FILES[0], BOT).verdict is Verdict.VALID
    assert view.redact_level == 50


def test_client_api_events_are_read_with_their_redaction() -> None:
    ev = RoomEvent.from_client({
        "event_id": "$x", "type": ATTESTATION_TYPE, "sender": PUB, "state_key": "f/x", "content": {},
        "unsigned": {"redacted_because": {"sender": MOD, "type": REDACTION}},
    })
    assert ev is not None and ev.redacted and ev.redacted_by == (MOD,)
    for junk in (None, 5, {"type": 1}, {"event_id": "$x", "type": "t"}, []):
        assert RoomEvent.from_client(junk) is None


# -- properties -------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**60), 2**60), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def actions(draw: Any) -> list[tuple]:
    """A sequence of abstract actions; turned into events by `play`."""
    out = []
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(["att", "att", "att", "key", "power", "redact", "junk", "junk_key", "policy",
                                     "policy", "overwrite"]))
        if kind == "att":
            out.append(("att", draw(st.sampled_from(USERS)), draw(st.sampled_from(FILES)),
                        draw(st.sampled_from(SHAS)), draw(st.sampled_from([None] + USERS)),
                        draw(st.sampled_from(["own", "other", "wrong_project"]))))
        elif kind == "key":
            out.append(("key", draw(st.sampled_from(USERS)), draw(st.booleans()), draw(st.sampled_from([None] + USERS))))
        elif kind == "power":
            levels = draw(st.dictionaries(st.sampled_from(USERS[1:]), st.sampled_from([0, 10, 50, 60, 100]), max_size=4))
            out.append(("power", levels, draw(st.sampled_from([0, 60])), draw(st.sampled_from([50, 100]))))
        elif kind == "redact":
            out.append(("redact", draw(st.sampled_from(USERS)), draw(st.integers(0, 50)), draw(st.booleans())))
        elif kind == "policy":
            out.append(("policy", draw(st.sampled_from(USERS)), draw(st.sampled_from(["file", "version", "project"])),
                        draw(st.sampled_from(["ban", "unban"])), draw(st.sampled_from([None] + USERS)),
                        draw(st.sampled_from(["own", "other", "wrong_project"]))))
        elif kind == "overwrite":
            # Someone writes into a slot already written (its owner's or not): what the
            # readers walk back through.
            out.append(("overwrite", draw(st.sampled_from(USERS)), draw(st.integers(0, 50))))
        elif kind == "junk":
            out.append(("junk", draw(st.sampled_from(USERS)), draw(st.sampled_from(FILES + ["bad/key/x", "nofilename"])),
                        draw(json_values)))
        else:
            out.append(("junk_key", draw(st.sampled_from(USERS)), draw(json_values)))
    return out


def play(acts: list[tuple]) -> list[RoomEvent]:
    events = [create(), power({MOD: 50, PUB: 60, MAINT: 60})]
    for act in acts:
        kind = act[0]
        if kind == "att":
            _, sender, filename, sha, slot, signer = act
            key = KEYS[sender] if signer == "own" else OTHER_KEY
            project = "other" if signer == "wrong_project" else PROJECT
            events.append(attestation(sender, filename, sha, slot=slot, key=key, project=project))
        elif kind == "key":
            _, user, good, slot = act
            events.append(key_event(user, key=KEYS[user] if good else OTHER_KEY, slot=slot))
        elif kind == "power":
            _, levels, default, redact = act
            events.append(power(levels, users_default=default, redact=redact))
        elif kind == "redact":
            _, sender, index, applied = act
            targets = [e for e in events if e.type in (ATTESTATION_TYPE, KEY_TYPE, POLICY_TYPE)]
            if targets:
                events.append(redaction(sender, targets[index % len(targets)].event_id, applied))
        elif kind == "policy":
            _, sender, pkind, recommendation, slot, signer = act
            entity = {"file": FILES[0], "version": "1.0", "project": PROJECT}[pkind]
            project = "other" if signer == "wrong_project" else PROJECT
            if pkind == "project":
                entity = project
            content = build_policy(project=project, kind=pkind, entity=entity, recommendation=recommendation,
                                   reason="why", source="moderator", timestamp=1, publisher=sender,
                                   signing_key=KEYS[sender] if signer != "other" else OTHER_KEY)
            events.append(RoomEvent(_eid(), POLICY_TYPE, sender, policy_state_key(pkind, entity, slot or sender),
                                    content))
        elif kind == "overwrite":
            _, sender, index = act
            slots = [e for e in events if e.type in (ATTESTATION_TYPE, KEY_TYPE, POLICY_TYPE)]
            if slots:
                target = slots[index % len(slots)]
                events.append(RoomEvent(_eid(), target.type, sender, target.state_key, target.content))
        elif kind == "junk":
            _, sender, skey, content = act
            content = content if isinstance(content, dict) else {"schema": content}
            events.append(RoomEvent(_eid(), ATTESTATION_TYPE, sender, skey if "/" in skey else skey, content))
        else:
            _, sender, content = act
            events.append(RoomEvent(_eid(), KEY_TYPE, sender, sender,
                                    {"keys": content} if not isinstance(content, dict) else content))
    return events


class _History:
    """A room's events as a server stores them, read back the way `synapse-pypi verify` and
    the module read them: `event` answers the walk back through ``replaces_state``."""

    def __init__(self, events: list[RoomEvent]) -> None:
        self.by_id: dict[str, dict] = {}
        current: dict[tuple, dict] = {}
        for e in events:
            if e.state_key is None:
                continue
            d = {"event_id": e.event_id, "type": e.type, "sender": e.sender, "state_key": e.state_key,
                 "content": dict(e.content), "unsigned": {}}
            prev = current.get((e.type, e.state_key))
            if prev is not None:
                d["unsigned"]["replaces_state"] = prev["event_id"]  # as Synapse sets it
            current[(e.type, e.state_key)] = self.by_id[e.event_id] = d
        self.state = list(current.values())

    def event(self, room_id: str, event_id: str) -> dict | None:
        return self.by_id.get(event_id)


def final_state(events: list[RoomEvent]) -> list[RoomEvent]:
    """What a reader gets after the fact: the current state, with redactions Synapse applied
    marked on their targets (content kept, as the module keeps it), and, for a slot someone
    other than its owner wrote last, whatever the real reader walks back to through
    ``replaces_state`` (`_maintainer.owners_events`, which decides which slots to walk with the
    same `slot_owner` as the module's `_rooms`)."""
    redactions: dict[str, tuple[str, ...]] = {}
    for e in events:
        if e.type == REDACTION and e.applied and e.redacts:
            redactions[e.redacts] = redactions.get(e.redacts, ()) + (e.sender,)
    by_id = {e.event_id: e for e in events}

    def marked(e: RoomEvent) -> RoomEvent:
        by = redactions.get(e.event_id)
        return RoomEvent(e.event_id, e.type, e.sender, e.state_key, e.content, redacted=True, redacted_by=by) if by else e

    history = _History(events)
    read = owners_events(history, "!room", history.state)  # type: ignore[arg-type]  # a stand-in server
    return [marked(by_id[d["event_id"]]) for d in read]


def snapshot(view: RoomView) -> tuple:
    return (
        [(r.filename, r.publisher, r.event_id, r.verdict, r.sha256) for r in view.records()],
        [(r.filename, r.publisher, r.event_id, r.verdict) for r in view.intruders()],
        [(r.filename, r.publisher, r.event_id, r.verdict, r.policy) for r in view.policies()],
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions())
def test_incremental_equals_fresh_read_and_rejudge(acts: list[tuple]) -> None:
    events = play(acts)
    live = RoomView("!room", RULES)
    for ev in events:
        live.apply(ev)
    fresh = fold("!room", RULES, final_state(events))
    assert snapshot(live) == snapshot(fresh)
    live.rejudge()
    assert snapshot(live) == snapshot(fresh)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions())
def test_only_well_formed_signed_attestations_count(acts: list[tuple]) -> None:
    view = RoomView("!room", RULES)
    for ev in play(acts):
        view.apply(ev)
    for rec in view.policies():
        if rec.valid:
            ev = view.event_for(rec.event_id)
            assert ev is not None and ev.sender == rec.publisher and rec.policy is not None
            assert rec.policy.project == PROJECT and KEYS[ev.sender] is not None
    for rec in view.records():
        if not rec.valid:
            assert rec.sha256 is None
            continue
        ev = view.event_for(rec.event_id)
        assert ev is not None and ev.sender == rec.publisher
        verdict, att, _ = verify_attestation(ev.content, ev.state_key or "", ev.sender, False, view.keys_for)
        assert verdict is Verdict.VALID and att is not None and att.project == PROJECT
        assert all(c.sha256 in SHAS for c in view.claims(rec.filename))
        if ev.redacted:
            assert not any(view.may_redact(who, ev.sender) for who in ev.redacted_by)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([ATTESTATION_TYPE, KEY_TYPE, POWER_LEVELS, CREATE, REDACTION, POLICY_TYPE]),
                          st.sampled_from(USERS + ["", "x"]), st.one_of(st.none(), st.text(max_size=30)),
                          json_values), max_size=20))
def test_arbitrary_content_never_raises(raw: list[tuple]) -> None:
    view = base_room()
    view.apply(attestation(BOT, FILES[0], SHAS[0]))
    events = []
    for etype, sender, skey, content in raw:
        content = content if isinstance(content, dict) else {"v": content}
        redacts = content.get("redacts") if isinstance(content.get("redacts"), str) else None
        events.append(RoomEvent(_eid(), etype, sender, skey, content, redacts=redacts, applied=True))
    for ev in events:
        view.apply(ev)
    fold("!room", RULES, events)
    for rec in view.records():
        assert rec.verdict in Verdict


# Near-valid content: every event type the fold reads, built right and then, often, given a
# wrong type or value in one of the fields the fold reads. An event built wrong is remembered
# as such: no record of it may ever count.

def _not_exactly(good: Any) -> Any:
    """Wrong values for a field whose right value is `good`: other types, other values."""
    return json_values.filter(lambda v: not (type(v) is type(good) and v == good))


_WRONG_INT = st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                       st.integers(max_value=-1), st.integers(min_value=2**53), st.floats(allow_nan=False))
_WRONG_SHA = st.one_of(json_values.filter(lambda v: not isinstance(v, str)),
                       st.text(max_size=70).filter(lambda t: not re.fullmatch(r"[0-9a-f]{64}", t)),
                       st.just("AA" * 32), st.just("a" * 63))
_ATT_WRONG: dict[str, Any] = {
    "schema": _not_exactly(1),
    "project": st.one_of(json_values.filter(lambda v: v != PROJECT), st.just("Demo"), st.just("other")),
    "version": st.one_of(json_values.filter(lambda v: not isinstance(v, str)), st.just("not a version!")),
    "filename": st.one_of(json_values.filter(lambda v: v not in FILES), st.sampled_from(FILES)),
    "size": _WRONG_INT,
    "timestamp": _WRONG_INT,
    "hashes": st.one_of(json_values.filter(lambda v: not isinstance(v, dict)),
                        _WRONG_SHA.map(lambda v: {"sha256": v}), st.just({})),
    "publisher": st.one_of(json_values.filter(lambda v: v not in USERS), st.sampled_from(USERS)),
    "signatures": st.one_of(json_values.filter(lambda v: not isinstance(v, dict)), st.just({}),
                            st.sampled_from(USERS).map(lambda u: {u: {}}),
                            st.sampled_from(USERS).map(lambda u: {u: {"ed25519:x": 5}})),
    "cid": st.one_of(json_values.filter(lambda v: not isinstance(v, str)), st.just("bad cid!"), st.just("")),
    "upstream_url": st.one_of(json_values.filter(lambda v: not isinstance(v, str)), st.just("ftp://x")),
    "verified_against": st.one_of(json_values.filter(lambda v: not isinstance(v, str)), st.just("bogus")),
}
_POLICY_WRONG: dict[str, Any] = {
    "schema": _not_exactly(1),
    "project": st.one_of(json_values.filter(lambda v: v != PROJECT), st.just("Demo"), st.just("other")),
    "kind": st.one_of(json_values, st.sampled_from(["file", "version", "project"])),
    "entity": st.one_of(json_values, st.sampled_from(FILES + ["1.0", "2.0", PROJECT])),
    "recommendation": st.one_of(json_values.filter(lambda v: v not in ("ban", "unban")), st.just("BAN")),
    "reason": json_values.filter(lambda v: not isinstance(v, str)),
    "source": st.one_of(json_values.filter(lambda v: v not in ("moderator", "upstream", "admin")), st.just("me")),
    "timestamp": _WRONG_INT,
    "publisher": st.one_of(json_values.filter(lambda v: v not in USERS), st.sampled_from(USERS)),
    "signatures": _ATT_WRONG["signatures"],
}


# Left out, these make content wrong (the others are optional).
_REQUIRED = (frozenset(_ATT_WRONG) | frozenset(_POLICY_WRONG)) - {"cid", "upstream_url", "verified_against"}


@st.composite
def _spoiled(draw: Any, content: dict, sender: str, wrong: dict[str, Any], key: Any) -> tuple[dict, bool]:
    """`content`, given a wrong field (or one left out) two times in three, mostly signed
    again with the right key; and whether it was spoiled."""
    if draw(st.integers(0, 2)) == 0:
        return content, False
    field = draw(st.sampled_from(sorted(wrong)))
    spoiled = dict(content)
    if field in _REQUIRED and draw(st.integers(0, 4)) == 0:
        del spoiled[field]
    else:
        spoiled[field] = draw(wrong[field])
    if field != "signatures" and draw(st.integers(0, 3)):
        # Signed again with the right key: the signature is fine, the field is not.
        unsigned = {k: v for k, v in spoiled.items() if k != "signatures"}
        try:
            spoiled = sign_json(unsigned, sender, key)
        except (TypeError, ValueError):
            pass  # not encodable as canonical JSON: left with the old signature
    if field in ("filename", "kind", "entity", "publisher") and spoiled.get(field) == content.get(field):
        return content, False
    return spoiled, True


@st.composite
def near_valid_events(draw: Any) -> tuple[list[RoomEvent], set[str]]:
    """Events of every type the fold reads, near valid; and the ids of those built wrong."""
    events = [create(), power({MOD: 50, PUB: 60, MAINT: 60})]
    spoiled: set[str] = set()
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["att", "att", "att", "policy", "policy", "key", "power", "create", "redact"]))
        # Mostly senders whose keys are trusted (pinned): what they send wrong would count.
        sender = draw(st.sampled_from([BOT, MAINT, BOT, MAINT, *USERS]))
        if kind == "att":
            filename, sha = draw(st.sampled_from(FILES)), draw(st.sampled_from(SHAS))
            key = KEYS[sender] if draw(st.integers(0, 3)) else OTHER_KEY
            content = build_content(
                project=PROJECT, version="1.0", filename=filename, size=draw(st.integers(0, 2**53 - 1)), sha256=sha,
                cid=draw(st.sampled_from([None, "bafkrei" + "a" * 52])), upstream_url=None,
                requires_python=None, timestamp=1, publisher=sender, signing_key=key,
                verified_against=draw(st.sampled_from([None, "upstream"])),
            )
            content, bad = draw(_spoiled(content, sender, _ATT_WRONG, key))
            ev = RoomEvent(_eid(), ATTESTATION_TYPE, sender, state_key_for(filename, sender), content)
        elif kind == "policy":
            pkind = draw(st.sampled_from(["file", "version", "project"]))
            entity = {"file": FILES[0], "version": "1.0", "project": PROJECT}[pkind]
            key = KEYS[sender] if draw(st.integers(0, 3)) else OTHER_KEY
            content = build_policy(project=PROJECT, kind=pkind, entity=entity,
                                   recommendation=draw(st.sampled_from(["ban", "unban"])), reason="why",
                                   source="moderator", timestamp=1, publisher=sender, signing_key=key)
            content, bad = draw(_spoiled(content, sender, _POLICY_WRONG, key))
            ev = RoomEvent(_eid(), POLICY_TYPE, sender, policy_state_key(pkind, entity, sender), content)
        elif kind == "key":
            good = {key_id(KEYS[sender]): verify_key_base64(KEYS[sender])}
            # Never OTHER_KEY: what is signed with it must never count.
            keys = draw(st.one_of(st.just(good), json_values,
                                  st.dictionaries(st.sampled_from([key_id(KEYS[sender]), "ed25519:x", "rsa:y"]),
                                                  st.one_of(json_values, st.just(verify_key_base64(KEYS[sender]))),
                                                  max_size=3)))
            ev, bad = RoomEvent(_eid(), KEY_TYPE, sender, sender, {"keys": keys}), False
        elif kind == "power":
            level = st.one_of(st.sampled_from([0, 10, 50, 60, 100]), json_values)
            content = {
                "users": draw(st.one_of(st.dictionaries(st.sampled_from(USERS[1:]), level, max_size=4), json_values)),
                "events": draw(st.one_of(st.dictionaries(st.sampled_from([ATTESTATION_TYPE, KEY_TYPE, POLICY_TYPE]),
                                                         level, max_size=3), json_values)),
                "redact": draw(level), "users_default": draw(level), "state_default": draw(level),
            }
            ev, bad = RoomEvent(_eid(), POWER_LEVELS, BOT, "", content), False
        elif kind == "create":
            content = {PROJECT_FIELD: draw(st.one_of(st.just(PROJECT), json_values)),
                       KEY_LEVEL_FIELD: draw(st.one_of(st.sampled_from([0, 60, 100]), json_values)),
                       "additional_creators": draw(st.one_of(st.lists(st.sampled_from(USERS), max_size=2), json_values))}
            ev, bad = RoomEvent(_eid(), CREATE, BOT, "", content), False
        else:
            targets = [e.event_id for e in events if e.type in (ATTESTATION_TYPE, KEY_TYPE, POLICY_TYPE)]
            target = draw(st.sampled_from(targets)) if targets and draw(st.booleans()) else draw(json_values)
            ev, bad = RoomEvent(_eid(), REDACTION, sender, None, {"redacts": target},
                                redacts=target if isinstance(target, str) else None, applied=draw(st.booleans())), False
        events.append(ev)
        if bad:
            spoiled.add(ev.event_id)
    return events, spoiled


def _independently_valid(ev: RoomEvent) -> bool:
    """A simple check of a counted record's event, apart from the fold's parser: signed by the
    sender's real key (never OTHER_KEY), and the fields the serve path uses of the right type."""
    c = ev.content
    try:
        verify_signed_json(dict(c), ev.sender, get_verify_key(KEYS[ev.sender]))
    except SignatureVerifyException:
        return False
    if c.get("publisher") != ev.sender or c.get("project") != PROJECT or type(c.get("schema")) is not int:
        return False
    ts = c.get("timestamp")
    if type(ts) is not int or not 0 <= ts < 2**53:
        return False
    if ev.type == POLICY_TYPE:
        return c.get("recommendation") in ("ban", "unban") and isinstance(c.get("reason"), str)
    size, hashes = c.get("size"), c.get("hashes")
    return (type(size) is int and 0 <= size < 2**53 and isinstance(hashes, dict)
            and isinstance(hashes.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", hashes["sha256"]) is not None
            and c.get("filename") == (ev.state_key or "").partition("/")[0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_events())
def test_near_valid_content_never_raises_and_never_counts_what_was_built_wrong(built: tuple) -> None:
    events, spoiled = built
    live = RoomView("!room", RULES)
    for ev in events:
        live.apply(ev)
    fresh = fold("!room", RULES, final_state(events))
    for view in (live, fresh):
        view.rejudge()
        for rec in view.records() + view.policies() + view.intruders():
            assert rec.verdict in Verdict
            if not rec.valid:
                assert rec.sha256 is None and rec.cid is None
                continue
            assert rec.event_id not in spoiled, (rec, view.event_for(rec.event_id))
            ev = view.event_for(rec.event_id)
            assert ev is not None and ev.sender == rec.publisher and _independently_valid(ev)
        for filename in FILES:
            assert all(c.sha256 in SHAS for c in view.claims(filename))


def test_a_policy_bans_only_with_a_trusted_key_and_a_redaction_lifts_it() -> None:
    view = base_room()
    ban = build_policy(project=PROJECT, kind="version", entity="1.0", recommendation="ban", reason="malware",
                       source="moderator", timestamp=1, publisher=BOT, signing_key=KEYS[BOT])
    ev = RoomEvent(_eid(), POLICY_TYPE, BOT, policy_state_key("version", "1.0", BOT), ban)
    view.apply(ev)
    (rec,) = view.policies()
    assert rec.valid and rec.policy.covers(FILES[0], "1.0") and not rec.policy.covers(FILES[0], "2.0")
    # An untrusted user's ban counts for nothing.
    rogue = build_policy(project=PROJECT, kind="project", entity=PROJECT, recommendation="ban", reason="x",
                         source="moderator", timestamp=1, publisher=EVE, signing_key=KEYS[EVE])
    view.apply(RoomEvent(_eid(), POLICY_TYPE, EVE, policy_state_key("project", PROJECT, EVE), rogue))
    assert [r.valid for r in view.policies() if r.publisher == EVE] == [False]
    view.apply(redaction(MOD, ev.event_id))
    assert not [r for r in view.policies() if r.valid and r.publisher == BOT]



def test_an_intruder_in_the_bots_ban_slot_lifts_nothing_on_a_fresh_read() -> None:
    """A publisher with the power to send policies writes an unban into the bot's ban slot:
    the live view, and every reader of the room's state afterwards (restart, re-verify,
    `synapse-pypi verify`, a peer's first read), keep the bot's ban and report the intruder."""
    assert slot_owner(POLICY_TYPE, policy_state_key("file", FILES[0], BOT)) == BOT
    ban = build_policy(project=PROJECT, kind="file", entity=FILES[0], recommendation="ban", reason="malware",
                       source="moderator", timestamp=1, publisher=BOT, signing_key=KEYS[BOT])
    lift = build_policy(project=PROJECT, kind="file", entity=FILES[0], recommendation="unban", reason="mine now",
                        source="moderator", timestamp=2, publisher=PUB, signing_key=KEYS[PUB])
    slot = policy_state_key("file", FILES[0], BOT)
    events = [create(), power({MOD: 50, PUB: 60}), key_event(PUB),
              RoomEvent(_eid(), POLICY_TYPE, BOT, slot, ban), RoomEvent(_eid(), POLICY_TYPE, PUB, slot, lift)]
    live = RoomView("!room", RULES)
    live.apply_all(events)
    for view in (live, fold("!room", RULES, final_state(events))):
        (rec,) = view.policies()
        assert rec.valid and rec.publisher == BOT and rec.policy.recommendation == "ban"
        assert view.slot_record(POLICY_TYPE, f"file:{FILES[0]}", BOT) == rec
        (report,) = view.intruders()
        assert (report.verdict, report.sender, report.event_type) == (Verdict.IMPERSONATION, PUB, POLICY_TYPE)
