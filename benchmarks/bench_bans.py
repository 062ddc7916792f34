#!/usr/bin/env python3
"""Benchmark how fast a moderator's ban travels: from the `!pypi ban` command in A's package
room until A, and B (a peer that trusts A's bot), refuse the file.

    .venv-test/bin/python benchmarks/bench_bans.py [--reps 10] [--json out.json]

Wiring as in tests/integration/test_federation.py and bench_redaction.py: two real Synapses
with the module, federating over loopback TLS, one real upstream. B has `peers: [A]` and pins
A's bot key; A has `moderators: [@mod:A]`. Each repetition uses a fresh project: its wheel is
fetched through A, then (once A has made the project's room) through B, and the script waits
until B reads A's room (B's admin API lists it in `peer_rooms`; a peer that looked before the
room existed looks again after `peer_retry_interval`, which is not what is measured); then the moderator sends
the command as an ordinary message, and two threads poll each server's file URL every
`--interval` (10 ms) from just before the message is sent, recording when each first answers
404. B's upstream is stopped during the measurement, so B refuses a file it holds in its cache.

Nothing is asserted: the script reports medians; a reader judges. Every process is stopped by
its PID (the harness classes), and the work directory is removed unless --keep.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import BenchError, log, median, phase, run_benchmark
from harness.dists import build_wheel, project_dir
from harness.matrix import Client, join_when_ready
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request

from synapse_pypi.trust import load_or_create_key, public_key_string


class Refused(threading.Thread):
    """Polls a file URL until it answers 404; the time relative to t0."""

    def __init__(self, url: str, t0: float, interval: float, timeout: float):
        super().__init__(daemon=True)
        self.url, self.t0, self.interval, self.timeout = url, t0, interval, timeout
        self.seen: float | None = None

    def run(self) -> None:
        while time.monotonic() - self.t0 < self.timeout:
            if http_request(self.url, timeout=30)[0] == 404:
                self.seen = time.monotonic() - self.t0
                return
            time.sleep(self.interval)  # polling interval of a measurement, not synchronisation


def fetch(hs: SynapseServer, project: str, path: Path) -> None:
    status, _, body = http_request(f"{hs.url}/simple/{project}/{path.name}", timeout=60)
    if status != 200 or body != path.read_bytes():
        raise BenchError(f"{hs.server_name} did not serve {path.name}: {status}")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out: {what}")
        time.sleep(0.05)  # polling for a condition


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    dists = work / "dists"
    with ExitStack() as stack:
        upstream = UpstreamServer(dists, work / "upstream")
        stack.callback(upstream.stop)
        with phase("starting an upstream and two federating Synapses"):
            upstream.start()
            fa, fb = free_port(), free_port()
            name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
            key_a_path = work / "key-a" / "attestation_signing.key"
            key_a = load_or_create_key(str(key_a_path))
            hs_a = SynapseServer(work / "hs-a", federation_port=fa, federation_names=[name_b], module_config={
                "upstream_url": upstream.url, "upstream_timeout": "3s", "upstream_retry_interval": 0,
                "signing_key_path": str(key_a_path), "moderators": [f"@mod:{name_a}"]})
            stack.callback(hs_a.dispose)
            hs_b = SynapseServer(work / "hs-b", federation_port=fb, federation_names=[name_a], module_config={
                "upstream_url": upstream.url, "upstream_timeout": "3s", "upstream_retry_interval": 0,
                "peers": [name_a], "trusted_keys": {f"@pypi-bot:{name_a}": [public_key_string(key_a)]}})
            stack.callback(hs_b.dispose)
            for hs in (hs_a, hs_b):
                hs.start()
            moderator = Client.register(hs_a, "mod")
            admin_b = Client.register(hs_b, "admin", admin=True)
        reps = []
        for i in range(args.reps):
            project = f"ban{i}"
            with phase(f"repetition {i + 1}/{args.reps} ({project})"):
                path = build_wheel(project_dir(dists, project), project, "1.0")
                fetch(hs_a, project, path)
                room = join_when_ready(moderator, f"#pypi-{project}:{name_a}")
                fetch(hs_b, project, path)
                status_url = f"/_synapse/pypi/v1/projects/{project}/files/{path.name}"
                wait_for(lambda u=status_url, r=room: admin_b.call("GET", u)["peer_rooms"].get(name_a) == r,
                         args.timeout, f"B reads A's room for {project}")
                upstream.stop()
                t0 = time.monotonic()
                watchers = [Refused(f"{hs.url}/simple/{project}/{path.name}", t0, args.interval, args.timeout)
                            for hs in (hs_a, hs_b)]
                for w in watchers:
                    w.start()
                send = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}"
                moderator.call("PUT", send, {"msgtype": "m.text", "body": f"!pypi ban {path.name} benchmark"})
                for w in watchers:
                    w.join()
                a, b = (w.seen for w in watchers)
                if a is None or b is None:
                    raise BenchError(f"{project}: not refused within {args.timeout}s (A {a}, B {b})")
                log(f"  refused by A after {a * 1000:.0f} ms, by B after {b * 1000:.0f} ms")
                reps.append({"project": project, "A_s": a, "B_s": b})
                upstream.start()
    return {
        "reps": reps,
        "results": {label: {"median_s": median([r[f"{label}_s"] for r in reps]),
                            "max_s": max(r[f"{label}_s"] for r in reps)} for label in ("A", "B")},
    }


def render_table(s: dict[str, Any]) -> str:
    rows = ["| server | median | max |", "|---|---|---|"]
    for label, what in (("A", "A (the moderator's homeserver)"), ("B", "B (peer, upstream down, file cached)")):
        r = s["results"][label]
        rows.append(f"| {what} | {r['median_s'] * 1000:.0f} ms | {r['max_s'] * 1000:.0f} ms |")
    return "\n".join(rows) + f"\n\n{len(s['reps'])} repetitions, from the command sent until the file answers 404.\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--reps", type=int, default=10, help="repetitions, a fresh project each (default 10)")
    p.add_argument("--interval", type=float, default=0.01, help="seconds between polls (default 0.01)")
    p.add_argument("--timeout", type=float, default=60, help="give up after this many seconds (default 60)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3 (the figures are medians)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-bans-")


if __name__ == "__main__":
    sys.exit(main())
