"""The serve policy: which hash a file must have, who contradicts it, and when to refuse."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_pypi.trust import CACHED_UPSTREAM, Decision, Outcome, decide

A = "a" * 64
B = "b" * 64
C = "c" * 64
BOT = "@pypi-bot:one.example"
PEER = "@pypi-bot:two.example"
EVE = "@eve:evil.example"
MAINTAINER = "@maintainer:example.org"
CO_MAINTAINER = "@co:example.org"


def test_no_claims_upstream_first() -> None:
    assert decide({}, A, True) == Decision(
        Outcome.FIRST, A, reason="no valid attestation yet; the upstream gives aaaaaaaaaaaa..."
    )


def test_no_claims_cached_upstream_first() -> None:
    assert decide({}, A, False) == Decision(
        Outcome.FIRST, A, reason="no valid attestation yet; the cached upstream page gives aaaaaaaaaaaa..."
    )


@pytest.mark.parametrize("reachable", [True, False])
def test_nothing_to_go_by(reachable: bool) -> None:
    assert decide({}, None, reachable) == Decision(
        Outcome.UNKNOWN, None, reason="no upstream hash and no valid attestation"
    )


def test_agreement_with_upstream() -> None:
    assert decide({BOT: A, PEER: A}, A, True) == Decision(
        Outcome.SERVE, A, reason="2 attestations agree with the upstream on aaaaaaaaaaaa..."
    )


def test_upstream_decides() -> None:
    assert decide({BOT: A, EVE: B, PEER: A}, A, True) == Decision(
        Outcome.UPSTREAM_DECIDES,
        A,
        fraud=((EVE, B),),
        reason="the upstream gives aaaaaaaaaaaa...; contradicted by @eve:evil.example says bbbbbbbbbbbb...",
    )


def test_upstream_decides_against_everyone() -> None:
    """A reachable upstream is the ground truth even if every attestation says otherwise."""
    decision = decide({BOT: B, PEER: C}, A, True)
    assert (decision.outcome, decision.sha256, decision.fraud) == (
        Outcome.UPSTREAM_DECIDES,
        A,
        ((BOT, B), (PEER, C)),
    )


def test_unanimous_while_upstream_down() -> None:
    assert decide({BOT: A, PEER: A}, None, False) == Decision(
        Outcome.SERVE, A, reason="2 attestations agree on aaaaaaaaaaaa... (the upstream is unreachable)"
    )


def test_unanimous_with_matching_cached_page() -> None:
    decision = decide({PEER: A}, A, False)
    assert (decision.outcome, decision.sha256, decision.fraud, decision.conflicting) == (Outcome.SERVE, A, (), ())


def test_unanimous_when_upstream_gives_no_hash() -> None:
    assert decide({PEER: A}, None, True) == Decision(
        Outcome.SERVE, A, reason="1 attestation agrees on aaaaaaaaaaaa... (the upstream gives no hash)"
    )


def test_conflict_while_upstream_down() -> None:
    assert decide({BOT: A, EVE: B}, None, False) == Decision(
        Outcome.CONFLICT,
        None,
        conflicting=((EVE, B), (BOT, A)),
        reason=(
            "conflicting attestations and the upstream is unreachable: "
            "@eve:evil.example says bbbbbbbbbbbb..., @pypi-bot:one.example says aaaaaaaaaaaa..."
        ),
    )


def test_cached_page_disagrees_with_unanimous_claims() -> None:
    assert decide({PEER: A}, B, False) == Decision(
        Outcome.CONFLICT,
        None,
        conflicting=((PEER, A), (CACHED_UPSTREAM, B)),
        reason=(
            "conflicting attestations and the upstream is unreachable: "
            "@pypi-bot:two.example says aaaaaaaaaaaa..., upstream (cached page) says bbbbbbbbbbbb..."
        ),
    )


def test_conflict_when_upstream_gives_no_hash() -> None:
    decision = decide({BOT: A, EVE: B}, None, True)
    assert decision.outcome is Outcome.CONFLICT
    assert decision.reason.startswith("conflicting attestations and the upstream gives no hash: ")


def test_pinned_outranks_upstream() -> None:
    assert decide({BOT: B, PEER: A}, B, True, pinned={MAINTAINER: A}) == Decision(
        Outcome.SERVE,
        A,
        fraud=((BOT, B),),
        reason=(
            "the pinned maintainer key of @maintainer:example.org attests aaaaaaaaaaaa...; "
            "the upstream gives bbbbbbbbbbbb... and is overruled; "
            "contradicted by @pypi-bot:one.example says bbbbbbbbbbbb..."
        ),
    )


def test_pinned_with_upstream_down() -> None:
    assert decide({}, B, False, pinned={MAINTAINER: A, CO_MAINTAINER: A}) == Decision(
        Outcome.SERVE,
        A,
        reason=(
            "the pinned maintainer keys of @co:example.org, @maintainer:example.org attest aaaaaaaaaaaa...; "
            "the cached upstream page gives bbbbbbbbbbbb... and is overruled"
        ),
    )


def test_pinned_agreeing_with_everyone() -> None:
    assert decide({BOT: A}, A, True, pinned={MAINTAINER: A}) == Decision(
        Outcome.SERVE, A, reason="the pinned maintainer key of @maintainer:example.org attests aaaaaaaaaaaa..."
    )


def test_pinned_disagree() -> None:
    assert decide({BOT: A}, A, True, pinned={MAINTAINER: A, CO_MAINTAINER: B}) == Decision(
        Outcome.CONFLICT,
        None,
        conflicting=((CO_MAINTAINER, B), (MAINTAINER, A)),
        reason=(
            "pinned maintainer keys disagree: "
            "@co:example.org says bbbbbbbbbbbb..., @maintainer:example.org says aaaaaaaaaaaa..."
        ),
    )


def test_publisher_in_both_counts_as_pinned() -> None:
    decision = decide({MAINTAINER: A, BOT: A}, B, True, pinned={MAINTAINER: A})
    assert (decision.outcome, decision.sha256, decision.fraud) == (Outcome.SERVE, A, ())


def test_reason_is_one_ascii_line() -> None:
    decision = decide({"@bad\nname:x": A, "@caf\u00e9:x": B}, None, False)
    assert decision.outcome is Outcome.CONFLICT
    assert decision.reason.isascii()
    assert "\n" not in decision.reason
    assert "'@bad\\nname:x'" in decision.reason


def test_outcome_phrases() -> None:
    assert {o.name: o.value for o in Outcome} == {
        "SERVE": "attestations agree",
        "FIRST": "first attestation",
        "UPSTREAM_DECIDES": "the upstream decides",
        "CONFLICT": "conflicting attestations",
        "UNKNOWN": "nothing to go by",
    }


# --- properties -----------------------------------------------------------------------------

hashes = st.sampled_from([A, B, C])
publishers = st.sampled_from([BOT, PEER, EVE, MAINTAINER, CO_MAINTAINER, "@x:y", "@z:y"])
claim_maps = st.dictionaries(publishers, hashes, max_size=6)
pinned_maps = st.dictionaries(st.sampled_from([MAINTAINER, CO_MAINTAINER, BOT]), hashes, max_size=2)
upstreams = st.none() | hashes


def _reversed(mapping: Mapping[str, str]) -> dict[str, str]:
    return dict(reversed(list(mapping.items())))


@given(claim_maps, upstreams, st.booleans(), pinned_maps)
def test_served_hash_is_justified(
    claims: dict[str, str], upstream: str | None, reachable: bool, pinned: dict[str, str]
) -> None:
    decision = decide(claims, upstream, reachable, pinned)
    others = {p: h for p, h in claims.items() if p not in pinned}

    if decision.outcome in (Outcome.CONFLICT, Outcome.UNKNOWN):
        assert decision.sha256 is None
    else:
        assert decision.sha256 is not None

    if decision.outcome is Outcome.CONFLICT:
        assert decision.fraud == ()
        assert len({h for _, h in decision.conflicting}) > 1
    else:
        assert decision.conflicting == ()

    served = decision.sha256
    if pinned:
        if len(set(pinned.values())) == 1:
            assert served == next(iter(pinned.values()))
            assert decision.outcome is Outcome.SERVE
        else:
            assert decision.outcome is Outcome.CONFLICT
            assert decision.conflicting == tuple(sorted(pinned.items()))
    elif not others:
        assert served == upstream
        assert decision.outcome is (Outcome.UNKNOWN if upstream is None else Outcome.FIRST)
    elif reachable and upstream is not None:
        assert served == upstream
    elif served is not None:
        # Unanimous: every claim, and the cached page if there is one, says the same.
        assert set(others.values()) == {served}
        assert upstream in (None, served)
    else:
        expected = sorted(others.items()) + ([(CACHED_UPSTREAM, upstream)] if upstream else [])
        assert decision.conflicting == tuple(sorted(expected))


@given(claim_maps, upstreams, st.booleans(), pinned_maps)
def test_fraud_is_exactly_the_contradicting_claims(
    claims: dict[str, str], upstream: str | None, reachable: bool, pinned: dict[str, str]
) -> None:
    decision = decide(claims, upstream, reachable, pinned)
    for publisher, claimed in decision.fraud:
        assert claimed != decision.sha256
        assert claims[publisher] == claimed
        assert publisher not in pinned
    if decision.outcome in (Outcome.SERVE, Outcome.UPSTREAM_DECIDES):
        expected = sorted((p, h) for p, h in claims.items() if p not in pinned and h != decision.sha256)
        assert list(decision.fraud) == expected
    if decision.outcome is Outcome.UPSTREAM_DECIDES:
        assert decision.fraud
    if decision.outcome is Outcome.SERVE and not pinned:
        assert decision.fraud == ()


@given(claim_maps, upstreams, st.booleans(), pinned_maps)
def test_decide_ignores_mapping_order(
    claims: dict[str, str], upstream: str | None, reachable: bool, pinned: dict[str, str]
) -> None:
    decision = decide(claims, upstream, reachable, pinned)
    assert decide(_reversed(claims), upstream, reachable, _reversed(pinned)) == decision
    assert "\n" not in decision.reason
    assert decision.reason
