"""The serve policy: which sha256 a file must have before it is served (DESIGN.md §5).

Inputs are the sha256 each publisher claims in a *valid* attestation (see
`verify_attestation`), the upstream's published hash and whether the upstream answered, and
the claims of maintainer keys pinned to the project in config. The output is a `Decision`:
the hash to serve (or none), who contradicts it, and one readable line saying why.

The rules, in order:

1. Pinned maintainer keys outrank everything, the upstream included. If they disagree with
   each other: `Outcome.CONFLICT`. Otherwise their hash is served; other claims that differ
   are fraud, and an upstream that differs is named in the reason.
2. No claims at all: the upstream's hash decides (`Outcome.FIRST`, the caller serves and
   then attests), or, without one, `Outcome.UNKNOWN`.
3. Claims and a reachable upstream with a hash: the upstream decides. All agree:
   `Outcome.SERVE`; otherwise `Outcome.UPSTREAM_DECIDES` and every differing claim is fraud.
4. Claims and an upstream that is down or silent: unanimous claims are served
   (`Outcome.SERVE`); any disagreement, including with the hash on a cached upstream page,
   fails closed (`Outcome.CONFLICT`), since nobody can tell who lies.

Pure logic: no Twisted, no Synapse.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Iterable, Mapping

import attrs

__all__ = ["CACHED_UPSTREAM", "Decision", "Outcome", "decide"]

# The name the hash on a cached upstream page goes by when it counts as one more claim.
CACHED_UPSTREAM = "upstream (cached page)"

_NO_PINS: Mapping[str, str] = types.MappingProxyType({})


class Outcome(enum.Enum):
    """What to do with a file; ``.value`` is a short human phrase."""

    #: The attestations agree with the truth and nothing contradicts them (or pinned keys decide).
    SERVE = "attestations agree"
    #: No valid attestation yet: the upstream's hash decides; serve, then attest.
    FIRST = "first attestation"
    #: A conflict while the upstream is reachable: serve the upstream's hash; dissenters are fraud.
    UPSTREAM_DECIDES = "the upstream decides"
    #: A conflict nobody can settle now: refuse (409), naming the publishers.
    CONFLICT = "conflicting attestations"
    #: Nothing to go by: no upstream hash and no valid attestation (404 or 502, as the caller knows).
    UNKNOWN = "nothing to go by"


@attrs.frozen
class Decision:
    """The result of `decide`.

    Attributes:
        outcome: which rule applied.
        sha256: the hash the served bytes must have; None for CONFLICT and UNKNOWN.
        fraud: ``(publisher, claimed_sha256)`` for every claim that contradicts ``sha256``,
            sorted. Non-empty only for UPSTREAM_DECIDES and for SERVE when pinned keys decide.
        conflicting: for CONFLICT, every claim taking part, ``(publisher, sha256)`` sorted
            (`CACHED_UPSTREAM` stands for the hash on a cached upstream page); else empty.
        reason: one readable ASCII line.
    """

    outcome: Outcome
    sha256: str | None
    fraud: tuple[tuple[str, str], ...] = ()
    conflicting: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def decide(
    claims: Mapping[str, str],
    upstream_sha256: str | None,
    upstream_reachable: bool,
    pinned: Mapping[str, str] = _NO_PINS,
) -> Decision:
    """Decide which sha256 a file must have to be served.

    Args:
        claims: publisher mxid -> sha256 of its VALID attestation for the file.
        upstream_sha256: the hash the upstream's page gives for the file (fresh or cached),
            or None when there is none.
        upstream_reachable: whether the upstream answered just now; when False,
            ``upstream_sha256`` is from a cached page and counts as one more claim.
        pinned: publisher mxid -> sha256 of VALID attestations made with maintainer keys
            pinned to this project in config. A publisher in both mappings counts as pinned.

    Returns:
        The decision. It depends only on the contents of the mappings, not on their order.
        All hashes are compared exactly, so pass them as lower-case hex.
    """
    pins = sorted(pinned.items())
    others = sorted((p, h) for p, h in claims.items() if p not in pinned)

    if pins:
        return _decide_pinned(pins, others, upstream_sha256, upstream_reachable)

    if not others:
        if upstream_sha256 is None:
            return Decision(Outcome.UNKNOWN, None, reason="no upstream hash and no valid attestation")
        where = "the upstream" if upstream_reachable else "the cached upstream page"
        return Decision(
            Outcome.FIRST, upstream_sha256, reason=f"no valid attestation yet; {where} gives {_short(upstream_sha256)}"
        )

    if upstream_sha256 is not None and upstream_reachable:
        fraud = tuple((p, h) for p, h in others if h != upstream_sha256)
        if not fraud:
            return Decision(
                Outcome.SERVE,
                upstream_sha256,
                reason=f"{_agree(others)} with the upstream on {_short(upstream_sha256)}",
            )
        return Decision(
            Outcome.UPSTREAM_DECIDES,
            upstream_sha256,
            fraud=fraud,
            reason=f"the upstream gives {_short(upstream_sha256)}; contradicted by {_list(fraud)}",
        )

    voters = list(others)
    if upstream_sha256 is not None:
        voters.append((CACHED_UPSTREAM, upstream_sha256))
    voters.sort()
    hashes = {h for _, h in voters}
    why = "the upstream is unreachable" if not upstream_reachable else "the upstream gives no hash"
    if len(hashes) == 1:
        (agreed,) = hashes
        return Decision(Outcome.SERVE, agreed, reason=f"{_agree(others)} on {_short(agreed)} ({why})")
    return Decision(
        Outcome.CONFLICT,
        None,
        conflicting=tuple(voters),
        reason=f"conflicting attestations and {why}: {_list(voters)}",
    )


def _decide_pinned(
    pins: list[tuple[str, str]],
    others: list[tuple[str, str]],
    upstream_sha256: str | None,
    upstream_reachable: bool,
) -> Decision:
    hashes = {h for _, h in pins}
    if len(hashes) > 1:
        return Decision(
            Outcome.CONFLICT,
            None,
            conflicting=tuple(pins),
            reason=f"pinned maintainer keys disagree: {_list(pins)}",
        )
    (truth,) = hashes
    fraud = tuple((p, h) for p, h in others if h != truth)
    keys = "keys" if len(pins) > 1 else "key"
    attest = "attest" if len(pins) > 1 else "attests"
    parts = [f"the pinned maintainer {keys} of {_names(pins)} {attest} {_short(truth)}"]
    if upstream_sha256 is not None and upstream_sha256 != truth:
        where = "the upstream" if upstream_reachable else "the cached upstream page"
        parts.append(f"{where} gives {_short(upstream_sha256)} and is overruled")
    if fraud:
        parts.append(f"contradicted by {_list(fraud)}")
    return Decision(Outcome.SERVE, truth, fraud=fraud, reason="; ".join(parts))


def _name(publisher: str) -> str:
    # Reasons end up in HTTP responses and room notices: keep them one line of ASCII.
    if publisher.isascii() and publisher.isprintable():
        return publisher
    return ascii(publisher)


def _short(sha256: str) -> str:
    text = _name(sha256)
    return text if len(text) <= 16 else text[:12] + "..."


def _names(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(_name(p) for p, _ in pairs)


def _list(pairs: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{_name(p)} says {_short(h)}" for p, h in pairs)


def _agree(pairs: list[tuple[str, str]]) -> str:
    return "1 attestation agrees" if len(pairs) == 1 else f"{len(pairs)} attestations agree"
