"""The cost of judging a package room (issue 10, issue 13 point 5): the pure fold, no Synapse.

Builds a room of N attestations (default 2,000) by a handful of publishers, with real ed25519
signatures, and measures, as medians over repeated runs:

* a fresh read of the whole room (what a restart or an admin re-verify costs), and the
  fold's throughput in events per second;
* applying one power-levels event that changes one publisher's level (what a moderator's
  demotion costs the reactor), and one that changes nothing about trust;
* applying one key event for one publisher (a publisher can send those at will);
* applying one new attestation, and one redaction.

    python benchmarks/bench_fold.py [--attestations 2000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    build_content,
    generate_key,
    key_id,
    state_key_for,
    verify_key_base64,
)
from synapse_pypi.trust._fold import CREATE, POWER_LEVELS, REDACTION, RoomEvent, RoomView, Rules, fold

BOT = "@pypi-bot:a.example"


def build_room(n: int, publishers: int) -> tuple[Rules, list[RoomEvent], dict[str, Any]]:
    users = [BOT] + [f"@pub{i}:p{i}.example" for i in range(publishers - 1)]
    keys = {u: generate_key(f"k{i}") for i, u in enumerate(users)}
    rules = Rules(project="big", local=True, pinned={BOT: {key_id(keys[BOT]): keys[BOT].verify_key}}, own=BOT)
    events = [
        RoomEvent("$create", CREATE, BOT, "", {"room_version": "12"}),
        RoomEvent("$pl", POWER_LEVELS, BOT, "", {"users": {u: 60 for u in users[1:]}, "redact": 50}),
    ]
    for u in users[1:]:
        events.append(RoomEvent(f"$key-{u}", KEY_TYPE, u, u, {"keys": {key_id(keys[u]): verify_key_base64(keys[u])}}))
    for i in range(n):
        publisher = users[i % len(users)]
        filename = f"big-{i // len(users)}.0-py3-none-any.whl"
        content = build_content(
            project="big", version=f"{i // len(users)}.0", filename=filename, size=1000 + i,
            sha256=f"{i:064x}", cid=None, upstream_url=None, requires_python=None, timestamp=i,
            publisher=publisher, signing_key=keys[publisher],
        )
        events.append(RoomEvent(f"$att{i}", ATTESTATION_TYPE, publisher, state_key_for(filename, publisher), content))
    return rules, events, {"users": users, "keys": keys}


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attestations", type=int, default=2000)
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rules, events, extra = build_room(args.attestations, args.publishers)
    users, keys = extra["users"], extra["keys"]

    fresh = median_ms(lambda: fold("!room", rules, events), max(3, args.repeat // 3))
    view: RoomView = fold("!room", rules, events)
    assert sum(r.valid for r in view.records()) == args.attestations
    levels = {u: 60 for u in users[1:]}
    counter = iter(range(10**9))

    def demote_one() -> None:
        levels[users[1]] = 10 if levels[users[1]] == 60 else 60
        view.apply(RoomEvent(f"$pl{next(counter)}", POWER_LEVELS, BOT, "", {"users": dict(levels), "redact": 50}))

    def unrelated_power() -> None:
        levels["@someone:x.example"] = next(counter) % 50
        view.apply(RoomEvent(f"$pl{next(counter)}", POWER_LEVELS, BOT, "", {"users": dict(levels), "redact": 50}))

    def key_event() -> None:
        u = users[2]
        view.apply(RoomEvent(f"$k{next(counter)}", KEY_TYPE, u, u, {"keys": {key_id(keys[u]): verify_key_base64(keys[u])}}))

    def attestation() -> None:
        i = next(counter)
        filename = f"big-new{i}.0-py3-none-any.whl"
        content = build_content(
            project="big", version=f"{i}.1", filename=filename, size=1, sha256="ab" * 32, cid=None,
            upstream_url=None, requires_python=None, timestamp=1, publisher=BOT, signing_key=keys[BOT],
        )
        view.apply(RoomEvent(f"$n{i}", ATTESTATION_TYPE, BOT, state_key_for(filename, BOT), content))

    targets = iter([e.event_id for e in events if e.type == ATTESTATION_TYPE])

    def redaction() -> None:
        target = next(targets)
        view.apply(RoomEvent(f"$r{target}", REDACTION, BOT, None, {"redacts": target}, redacts=target, applied=True))

    rows = [
        ("fresh read of the room", fresh),
        ("power levels: one publisher demoted/promoted", median_ms(demote_one, args.repeat)),
        ("power levels: an unrelated user", median_ms(unrelated_power, args.repeat)),
        ("key event of one publisher", median_ms(key_event, args.repeat)),
        ("one new attestation", median_ms(attestation, args.repeat)),
        ("one redaction", median_ms(redaction, args.repeat)),
    ]
    print(f"room: {args.attestations} attestations by {args.publishers} publishers ({len(events)} events)")
    for what, ms in rows:
        print(f"{what:48s} {ms:9.2f} ms (median of {args.repeat if what != rows[0][0] else max(3, args.repeat // 3)})")
    print(f"fold throughput (fresh read): {len(events) / (fresh / 1000):,.0f} events/s")


if __name__ == "__main__":
    main()
