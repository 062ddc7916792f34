"""The serve policy: which sha256 a file must have before it is served (DESIGN.md §5).

A file name is bound to its bytes once and for ever: the upstream index never lets a published
file name change its bytes, so two different hashes for one file mean that someone lies or was
fooled. Disagreement is always reported; it is settled automatically only with clear
corroboration, and otherwise the file fails closed until a moderator decides.

Inputs are the claims of *valid* attestations (see `verify_attestation`) and the upstream's
published hash (from a fresh page, or the cached one while the upstream is down). The rules,
in order:

1. Claims made with maintainer keys pinned to the project outrank everything, the upstream
   included. If they disagree with each other: `Outcome.CONFLICT`. Otherwise their hash is
   served; other claims that differ are fraud, and an upstream that differs is an alarm.
2. No claims at all: the upstream's hash decides (`Outcome.FIRST`: serve, then attest), or,
   without one, `Outcome.UNKNOWN`.
3. Everyone agrees (claims and the upstream): `Outcome.SERVE`.
4. Otherwise the claims fall into sides, one per hash, the upstream's word on its side. A side
   is *corroborated* when it holds this mirror's own attestation of bytes it checked against
   the upstream (what the mirror verified itself stays verified), or when its strength -- the
   distinct servers of its publishers, plus one if the upstream gives that hash -- reaches
   `corroboration`. (Servers, not users, are counted: one server's users are one source. A
   server whose users say different things counts on each side: one of them lies, and the
   others decide which.) Exactly one corroborated side: it wins (`Outcome.SETTLED`); every other
   claim is fraud, and an upstream on a losing side is an alarm whose bytes are never fetched.
   None, or more than one: `Outcome.CONFLICT` (409 naming every side; a person decides).

One honest participant is enough to stop an attack (a lone dissent makes a conflict); it takes
corroboration, or a moderator, to pick the winner.

Pure logic: no Twisted, no Synapse.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

__all__ = ["CACHED_UPSTREAM", "DEFAULT_CORROBORATION", "UPSTREAM", "Claim", "Decision", "Outcome", "decide"]

# How the upstream's word is named among the sides of a conflict.
UPSTREAM = "the upstream index"
CACHED_UPSTREAM = "the upstream index (cached page)"
# Independent sources (distinct servers, the upstream counting as one) a side needs to win.
DEFAULT_CORROBORATION = 2


@attrs.frozen
class Claim:
    """One valid attestation's word on a file.

    Attributes:
        publisher: the publisher's mxid.
        sha256: the hash it attests, lower-case hex.
        pinned: made with a maintainer key pinned to the project in config.
        own: this mirror's own attestation of bytes it checked against the upstream.
        room: the room it was read from (one publisher may speak in several rooms).
    """

    publisher: str
    sha256: str
    pinned: bool = False
    own: bool = False
    room: str = ""

    @property
    def server(self) -> str:
        """The publisher's homeserver: independent sources are counted by server."""
        _, colon, server = self.publisher.partition(":")
        return server if colon else self.publisher


class Outcome(enum.Enum):
    """What to do with a file; ``.value`` is a short human phrase."""

    #: Everyone agrees (or pinned maintainers decide and nobody contradicts them).
    SERVE = "attestations agree"
    #: No valid attestation yet: the upstream's hash decides; serve, then attest.
    FIRST = "first attestation"
    #: A disagreement settled by corroboration or pinned keys: the losers are fraud or an alarm.
    SETTLED = "settled by corroboration"
    #: A disagreement nobody can settle: refuse (409), naming every side, until a moderator acts.
    CONFLICT = "conflicting attestations"
    #: Nothing to go by: no upstream hash and no valid attestation (404 or 502, as the caller knows).
    UNKNOWN = "nothing to go by"


@attrs.frozen
class Decision:
    """The result of `decide`.

    Attributes:
        outcome: which rule applied.
        sha256: the hash the served bytes must have; None for CONFLICT and UNKNOWN.
        fraud: every claim that contradicts ``sha256`` (SERVE with pinned keys, SETTLED), sorted.
        upstream_lost: the upstream's hash when it contradicts ``sha256``: an alarm, and the
            upstream's bytes must not be fetched. None otherwise.
        conflicting: for CONFLICT, every side's word as ``(who, sha256)``, sorted (`UPSTREAM` or
            `CACHED_UPSTREAM` for the upstream); else empty.
        reason: one readable ASCII line.
    """

    outcome: Outcome
    sha256: str | None
    fraud: tuple[Claim, ...] = ()
    upstream_lost: str | None = None
    conflicting: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def decide(
    claims: Iterable[Claim],
    upstream_sha256: str | None,
    upstream_reachable: bool,
    corroboration: int = DEFAULT_CORROBORATION,
) -> Decision:
    """Decide which sha256 a file must have to be served.

    Args:
        claims: the valid attestations' claims for the file, from every room read.
        upstream_sha256: the hash the upstream's page gives (fresh, or cached while the
            upstream is down), or None when there is none.
        upstream_reachable: whether that page is fresh; only the wording depends on it.
        corroboration: the strength a side needs to win a disagreement on its own (at least 1).

    Returns:
        The decision. It depends only on the set of claims, not on their order. Hashes are
        compared exactly, so pass them as lower-case hex.
    """
    all_claims = sorted(set(claims), key=_claim_key)
    upstream_name = UPSTREAM if upstream_reachable else CACHED_UPSTREAM
    pins = [c for c in all_claims if c.pinned]
    if pins:
        return _decide_pinned(pins, all_claims, upstream_sha256, upstream_name)

    if not all_claims:
        if upstream_sha256 is None:
            return Decision(Outcome.UNKNOWN, None, reason="no upstream hash and no valid attestation")
        return Decision(
            Outcome.FIRST,
            upstream_sha256,
            reason=f"no valid attestation yet; {upstream_name} gives {_short(upstream_sha256)}",
        )

    sides: dict[str, list[Claim]] = {}
    for c in all_claims:
        sides.setdefault(c.sha256, []).append(c)
    if upstream_sha256 is not None:
        sides.setdefault(upstream_sha256, [])
    if len(sides) == 1:
        (agreed,) = sides
        with_upstream = f" and {upstream_name}" if upstream_sha256 is not None else ""
        return Decision(Outcome.SERVE, agreed, reason=f"{_agree(all_claims)}{with_upstream} on {_short(agreed)}")

    def strength(sha: str) -> int:
        return len({c.server for c in sides[sha]}) + (1 if sha == upstream_sha256 else 0)

    def corroborated(sha: str) -> bool:
        return any(c.own for c in sides[sha]) or strength(sha) >= max(1, corroboration)

    winners = [sha for sha in sorted(sides) if corroborated(sha)]
    if len(winners) == 1:
        (truth,) = winners
        fraud = tuple(c for c in all_claims if c.sha256 != truth)
        lost = upstream_sha256 if upstream_sha256 not in (None, truth) else None
        why = "this mirror verified it" if any(c.own for c in sides[truth]) else f"{strength(truth)} sources agree"
        parts = [f"{_short(truth)} is corroborated ({why})"]
        if lost is not None:
            parts.append(f"{upstream_name} gives {_short(lost)} and is overruled")
        if fraud:
            parts.append(f"contradicted by {_list(fraud)}")
        return Decision(Outcome.SETTLED, truth, fraud=fraud, upstream_lost=lost, reason="; ".join(parts))

    conflicting = sorted(
        [(c.publisher, c.sha256) for c in all_claims]
        + ([(upstream_name, upstream_sha256)] if upstream_sha256 is not None else [])
    )
    why = "no side is corroborated" if not winners else "more than one side is corroborated"
    return Decision(
        Outcome.CONFLICT,
        None,
        conflicting=tuple(conflicting),
        reason=f"conflicting hashes, {why}: {_pairs(conflicting)}",
    )


def _decide_pinned(
    pins: Sequence[Claim], all_claims: Sequence[Claim], upstream_sha256: str | None, upstream_name: str
) -> Decision:
    hashes = {c.sha256 for c in pins}
    if len(hashes) > 1:
        conflicting = tuple(sorted((c.publisher, c.sha256) for c in pins))
        return Decision(
            Outcome.CONFLICT,
            None,
            conflicting=conflicting,
            reason=f"pinned maintainer keys disagree: {_pairs(conflicting)}",
        )
    (truth,) = hashes
    fraud = tuple(c for c in all_claims if not c.pinned and c.sha256 != truth)
    lost = upstream_sha256 if upstream_sha256 not in (None, truth) else None
    names = sorted({c.publisher for c in pins})
    keys, attest = ("keys", "attest") if len(names) > 1 else ("key", "attests")
    parts = [f"the pinned maintainer {keys} of {', '.join(_name(n) for n in names)} {attest} {_short(truth)}"]
    if lost is not None:
        parts.append(f"{upstream_name} gives {_short(lost)} and is overruled")
    if fraud:
        parts.append(f"contradicted by {_list(fraud)}")
    outcome = Outcome.SETTLED if (fraud or lost) else Outcome.SERVE
    return Decision(outcome, truth, fraud=fraud, upstream_lost=lost, reason="; ".join(parts))


def _claim_key(c: Claim) -> tuple[str, str, bool, bool, str]:
    return (c.publisher, c.sha256, c.pinned, c.own, c.room)


def _name(publisher: str) -> str:
    # Reasons end up in HTTP responses and room notices: keep them one line of ASCII.
    if publisher.isascii() and publisher.isprintable():
        return publisher
    return ascii(publisher)


def _short(sha256: str) -> str:
    text = _name(sha256)
    return text if len(text) <= 16 else text[:12] + "..."


def _pairs(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{_name(p)} says {_short(h)}" for p, h in pairs)


def _list(claims: Iterable[Claim]) -> str:
    return _pairs((c.publisher, c.sha256) for c in claims)


def _agree(claims: Sequence[Claim]) -> str:
    return "1 attestation agrees" if len(claims) == 1 else f"{len(claims)} attestations agree"
