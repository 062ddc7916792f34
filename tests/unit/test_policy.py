"""The serve policy (trust/_policy.py): write-once hashes, corroboration or 409."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_pypi.trust import CACHED_UPSTREAM, UPSTREAM, Claim, Outcome, decide

GOOD, BAD, OTHER = "aa" * 32, "bb" * 32, "cc" * 32
BOT = "@pypi-bot:a.example"
PEER_B = "@pypi-bot:b.example"
PEER_C = "@pypi-bot:c.example"
ROGUE = "@rogue:evil.example"
ROGUE_TWIN = "@twin:evil.example"
MAINT = "@maint:m.example"


def own(sha: str) -> Claim:
    return Claim(BOT, sha, own=True)


def test_no_claims_the_upstream_decides_first() -> None:
    d = decide([], GOOD, True)
    assert d.outcome is Outcome.FIRST and d.sha256 == GOOD and not d.fraud
    assert decide([], GOOD, False).outcome is Outcome.FIRST
    assert "cached page" in decide([], GOOD, False).reason


@pytest.mark.parametrize("reachable", [True, False])
def test_nothing_to_go_by(reachable: bool) -> None:
    d = decide([], None, reachable)
    assert d.outcome is Outcome.UNKNOWN and d.sha256 is None


def test_everyone_agrees() -> None:
    d = decide([own(GOOD), Claim(PEER_B, GOOD)], GOOD, True)
    assert d.outcome is Outcome.SERVE and d.sha256 == GOOD and not d.fraud and d.upstream_lost is None


def test_agreeing_claims_without_upstream_are_served() -> None:
    assert decide([Claim(PEER_B, GOOD)], None, False).outcome is Outcome.SERVE


def test_upstream_changes_an_attested_file() -> None:
    """Scenario 1: the mirror verified GOOD; the upstream now says BAD: an alarm, not a correction."""
    d = decide([own(GOOD)], BAD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD
    assert d.upstream_lost == BAD and not d.fraud
    assert "overruled" in d.reason


def test_malicious_upstream_at_first_fetch_with_two_honest_peers() -> None:
    """Scenario 2: two independent peers outweigh a lone upstream."""
    d = decide([Claim(PEER_B, GOOD), Claim(PEER_C, GOOD)], BAD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD and d.upstream_lost == BAD


def test_malicious_upstream_with_one_honest_peer_is_a_conflict() -> None:
    d = decide([Claim(PEER_B, GOOD)], BAD, True)
    assert d.outcome is Outcome.CONFLICT and d.sha256 is None
    assert (UPSTREAM, BAD) in d.conflicting and (PEER_B, GOOD) in d.conflicting


def test_two_users_of_one_server_are_one_source() -> None:
    d = decide([Claim(ROGUE, BAD), Claim(ROGUE_TWIN, BAD)], GOOD, True)
    assert d.outcome is Outcome.CONFLICT


def test_a_publisher_that_says_two_things_loses_one_of_them() -> None:
    two_faced = [Claim(PEER_B, GOOD, room="!a"), Claim(PEER_B, BAD, room="!b")]
    d = decide(two_faced, GOOD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD and [c.room for c in d.fraud] == ["!b"]


def test_a_liar_on_an_honest_servers_homeserver_is_outweighed() -> None:
    # The liar's server also hosts the honest peer bot: it counts on both sides.
    d = decide([Claim(PEER_B, GOOD), Claim("@liar:b.example", BAD)], GOOD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD


def test_rogue_publisher_after_the_mirror_verified() -> None:
    """Scenario 3: own + upstream against one publisher: the publisher is fraud."""
    d = decide([own(GOOD), Claim(ROGUE, BAD)], GOOD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD
    assert [c.publisher for c in d.fraud] == [ROGUE] and d.upstream_lost is None
    # Also while the upstream is down: what the mirror verified stays verified.
    assert decide([own(GOOD), Claim(ROGUE, BAD)], None, False).sha256 == GOOD


def test_rogue_publisher_before_the_first_fetch_is_a_conflict() -> None:
    d = decide([Claim(ROGUE, BAD)], GOOD, True)
    assert d.outcome is Outcome.CONFLICT and d.sha256 is None and not d.fraud


def test_own_attestation_from_attestations_is_no_own_corroboration() -> None:
    # The mirror served (offline) what one peer attested: that is one more server, not a check.
    relayed = Claim(BOT, BAD, own=False)
    d = decide([relayed, Claim(ROGUE, BAD)], GOOD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == BAD  # two servers outweigh the lone upstream
    assert decide([relayed], GOOD, True).outcome is Outcome.CONFLICT


def test_two_corroborated_sides_are_a_conflict() -> None:
    d = decide([own(GOOD), Claim(PEER_B, BAD), Claim(PEER_C, BAD)], GOOD, True)
    assert d.outcome is Outcome.CONFLICT
    assert "more than one side" in d.reason


def test_corroboration_is_configurable() -> None:
    claims = [Claim(PEER_B, GOOD), Claim(PEER_C, GOOD)]
    assert decide(claims, BAD, True, corroboration=3).outcome is Outcome.CONFLICT
    assert decide(claims + [Claim("@x:d.example", GOOD)], BAD, True, corroboration=3).sha256 == GOOD


def test_pinned_maintainer_outranks_everything() -> None:
    d = decide([Claim(MAINT, GOOD, pinned=True), own(BAD), Claim(PEER_B, BAD)], BAD, True)
    assert d.outcome is Outcome.SETTLED and d.sha256 == GOOD and d.upstream_lost == BAD
    assert sorted(c.publisher for c in d.fraud) == [BOT, PEER_B]
    assert decide([Claim(MAINT, GOOD, pinned=True)], GOOD, True).outcome is Outcome.SERVE


def test_pinned_maintainers_that_disagree_are_a_conflict() -> None:
    d = decide([Claim(MAINT, GOOD, pinned=True), Claim("@m2:m.example", BAD, pinned=True)], GOOD, True)
    assert d.outcome is Outcome.CONFLICT


def test_a_cached_upstream_page_is_named_as_such() -> None:
    d = decide([Claim(PEER_B, GOOD)], BAD, False)
    assert d.outcome is Outcome.CONFLICT and (CACHED_UPSTREAM, BAD) in d.conflicting


def test_reason_is_one_ascii_line() -> None:
    d = decide([Claim("@\u00e9v\u00e9:x\ny", "ee" * 32)], GOOD, True)
    assert d.reason.isascii() and "\n" not in d.reason


def test_outcome_phrases() -> None:
    assert {o.value for o in Outcome} >= {"attestations agree", "conflicting attestations"}


# -- properties -------------------------------------------------------------------------

publishers = st.sampled_from([BOT, PEER_B, PEER_C, ROGUE, ROGUE_TWIN, MAINT])
claims_st = st.lists(
    st.builds(Claim, publishers, st.sampled_from([GOOD, BAD, OTHER]), st.booleans(), st.booleans()),
    max_size=6,
)
upstreams = st.one_of(st.none(), st.sampled_from([GOOD, BAD, OTHER]))


@given(claims_st, upstreams, st.booleans(), st.integers(1, 4))
def test_a_served_hash_is_always_backed(claims, upstream, reachable, corroboration) -> None:
    d = decide(claims, upstream, reachable, corroboration)
    if d.sha256 is None:
        assert d.outcome in (Outcome.CONFLICT, Outcome.UNKNOWN)
        return
    backing = [c for c in claims if c.sha256 == d.sha256]
    pins = [c for c in claims if c.pinned]
    if pins:
        assert {c.sha256 for c in pins} == {d.sha256}
    elif d.outcome is Outcome.FIRST:
        assert not claims and d.sha256 == upstream
    else:
        assert backing or d.sha256 == upstream
    # Everything that contradicts the served hash is named: fraud, or the upstream's alarm.
    assert {c for c in claims if c.sha256 != d.sha256 and not c.pinned} == set(d.fraud)
    assert d.upstream_lost == (upstream if upstream not in (None, d.sha256) else None)


@given(claims_st, upstreams, st.booleans())
def test_a_lone_dissenter_always_stops_an_unverified_hash(claims, upstream, reachable) -> None:
    """One honest participant is enough: without pins or the mirror's own verification, a
    single dissenting server keeps a lone other source from winning."""
    claims = [c for c in claims if not c.pinned and not c.own]
    words = [(c.server, c.sha256) for c in claims] + ([("upstream", upstream)] if upstream else [])
    servers = {s for s, _ in words}
    one_word_each = all(len({h for s2, h in words if s2 == s}) == 1 for s in servers)
    d = decide(claims, upstream, reachable)
    if one_word_each and len(servers) == 2 and len({h for _, h in words}) == 2:
        assert d.outcome is Outcome.CONFLICT


@given(claims_st, upstreams, st.booleans())
def test_order_does_not_matter(claims, upstream, reachable) -> None:
    assert decide(claims, upstream, reachable) == decide(list(reversed(claims)), upstream, reachable)
