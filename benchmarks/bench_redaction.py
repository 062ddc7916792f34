#!/usr/bin/env python3
"""Benchmark how fast a moderator's redaction of an attestation takes effect, on the
moderator's own homeserver and on a peer that reads its package room over federation.

    /work/venv/bin/python benchmarks/bench_redaction.py --json out.json

The wiring is the one of tests/integration/test_federation.py: two real Synapses (A and B)
with the module, federating over loopback TLS (`SynapseServer(federation_port=...,
federation_names=[...])`), one real upstream for both. A's attestation key is made first
(`load_or_create_key`) so that B can pin it in `trusted_keys`; B has `peers: [A]`; A has
`moderators: [@mod:A]` (as in tests/integration/test_trust.py). No storage providers: the
attestations carry no CID, which changes nothing about redactions.

Each repetition (`--reps`, default 10, at least 3) uses a fresh project:

1. a small wheel is built on the upstream; its file is fetched through A, and the script
   waits until A's admin API (`/_synapse/pypi/v1/projects/<p>/files/<f>`) shows A's bot
   attestation "valid";
2. the project's page is fetched through B (B joins A's package room over federation), and
   the script waits until B's admin API lists that same event, A's bot attestation, as
   "valid";
3. the moderator (a plain user of A, already joined to the room) redacts the event through
   the client-server API. Two threads, one per homeserver, poll the admin API every
   `--interval` (10 ms) from just before the redact request is sent; each records when its
   server first shows the event "redacted" (the time the answer came back, so the figure is
   an upper bound, at most one poll late) and when it last showed it "valid". At the end,
   each server's own log line for the redaction (`attestation ... redacted by ...`, written
   by the module's `on_new_event`) gives the same moment without polling, to the ms.

Nothing here asserts a timing: the script reports, a reader judges. The tests used to require
"within one second" on A and "within two seconds" on B; the table shows those bounds next to
the figures. Every process is stopped by its PID in `finally` (the harness classes do it);
the work directory is removed unless --keep. See benchmarks/README.md for what each figure
means.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
# The harness is imported as a top-level package, as tests/conftest.py does.
sys.path.insert(0, str(REPO / "tests"))
# _common sits next to this script, whose directory Python puts first on sys.path.
from _common import BenchError, log, median, phase, poll, run_benchmark
from harness.dists import build_wheel, project_dir, sha256_file
from harness.matrix import Client, join_when_ready
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request

from synapse_pypi.trust import load_or_create_key, public_key_string

# What the module logs when it sees a redaction of an attestation (synapse_pypi/_trust_service.py),
# with the log's timestamp (tests/harness/synapse.py's log format: local time, ms).
REDACTED_LOG = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - .*? - attestation (\S+) for \S+ by \S+ redacted by \S+$", re.M
)
# What the tests used to require (tests/integration/test_trust.py, test_federation.py).
OLD_TEST_BOUNDS_S = {"A": 1.0, "B": 2.0}


# -- the servers -------------------------------------------------------------------------------


class Mirror:
    """One homeserver with the module and its server admin (for the module's admin API)."""

    def __init__(self, label: str, hs: SynapseServer, admin: Client):
        self.label = label
        self.hs = hs
        self.admin = admin

    @property
    def bot(self) -> str:
        return f"@pypi-bot:{self.hs.server_name}"

    def attestations(self, project: str, filename: str) -> list[dict[str, Any]]:
        return self.admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{quote(filename)}")["attestations"]

    def verdict(self, project: str, filename: str, event_id: str) -> str | None:
        """The verdict on one attestation event, None while this server does not list it."""
        return next((a["verdict"] for a in self.attestations(project, filename) if a["event_id"] == event_id), None)

    def lists_valid(self, project: str, filename: str, event_id: str) -> bool:
        return self.verdict(project, filename, event_id) == "valid"

    def logged_redactions(self) -> dict[str, float]:
        """Event id -> when the module logged its redaction (wall clock, epoch seconds)."""
        return {
            event_id: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, event_id in REDACTED_LOG.findall(self.hs.log_text())
        }

    def own_attestation(self, project: str, filename: str, sha256: str) -> str | None:
        """The event id of this server's bot attestation of the file, once it is valid."""
        return next(
            (a["event_id"] for a in self.attestations(project, filename)
             if a["publisher"] == self.bot and a["verdict"] == "valid" and a["sha256"] == sha256),
            None,
        )


def get(hs: SynapseServer, path: str) -> bytes:
    status, _, body = http_request(hs.url + path, timeout=60)
    if status != 200:
        raise BenchError(f"GET {path} through {hs.server_name}: {status} {body[:300]!r}")
    return body


# -- the measurement ---------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls one server's admin API until the event shows "redacted"; times relative to t0.

    Waits for `go` before its first poll; gives up when `cancel` is set. Records `seen_s`
    (the answer that first showed "redacted" came back), `last_valid_s` (the last poll that
    still showed "valid" was sent; the change happened between the two) and `polls`; or
    `error`.
    """

    def __init__(self, m: Mirror, project: str, filename: str, event_id: str, interval: float, timeout: float,
                 go: threading.Event, cancel: threading.Event):
        super().__init__(name=f"watch-{m.label}", daemon=True)
        self.m, self.project, self.filename, self.event_id = m, project, filename, event_id
        self.interval, self.timeout, self.go, self.cancel = interval, timeout, go, cancel
        self.t0 = 0.0  # set by the caller before `go`
        self.seen_s: float | None = None
        self.last_valid_s: float | None = None
        self.polls = 0
        self.error: str | None = None

    def run(self) -> None:
        self.go.wait()
        deadline = self.t0 + self.timeout
        try:
            while True:
                sent = time.perf_counter()
                verdict = self.m.verdict(self.project, self.filename, self.event_id)
                back = time.perf_counter()
                self.polls += 1
                if verdict == "redacted":
                    self.seen_s = back - self.t0
                    return
                if verdict != "valid":
                    self.error = f"{self.m.label}: the event's verdict became {verdict!r}, not 'redacted'"
                    return
                self.last_valid_s = max(sent - self.t0, 0.0)
                if self.cancel.is_set():
                    self.error = f"{self.m.label}: cancelled"
                    return
                if back > deadline:
                    self.error = f"{self.m.label}: still 'valid' {self.timeout:.0f} s after the redaction"
                    return
                time.sleep(self.interval)  # polling interval, not synchronisation
        except Exception as e:  # reported by the caller, which raises BenchError
            self.error = f"{self.m.label}: {e.__class__.__name__}: {e}"


def redact_and_watch(moderator: Client, room_id: str, event_id: str, mirrors: Sequence[Mirror], project: str,
                     filename: str, interval: float, timeout: float) -> dict[str, Any]:
    go, cancel = threading.Event(), threading.Event()
    watchers = [Watcher(m, project, filename, event_id, interval, timeout, go, cancel) for m in mirrors]
    for w in watchers:
        w.start()
    wall0, t0 = time.time(), time.perf_counter()
    for w in watchers:
        w.t0 = t0
    go.set()
    try:
        moderator.redact(room_id, event_id, "benchmark: moderation")
    except Exception:
        cancel.set()
        for w in watchers:
            w.join(timeout + 5)
        raise
    redact_s = time.perf_counter() - t0
    out: dict[str, Any] = {"redact_call_s": redact_s, "t0_wall": wall0}
    for w in watchers:
        w.join(timeout + 5)
        if w.is_alive():
            raise BenchError(f"{w.m.label}: the watcher did not finish")
        if w.error or w.seen_s is None:
            raise BenchError(w.error or f"{w.m.label}: no result")
        out[w.m.label] = {"seen_s": w.seen_s, "last_valid_s": w.last_valid_s, "polls": w.polls}
    return out


# -- output ------------------------------------------------------------------------------------


def stat(xs: Sequence[float]) -> dict[str, Any]:
    return {"runs": list(xs), "median": median(xs), "min": min(xs), "max": max(xs)}


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def render_table(s: dict[str, Any]) -> str:
    env, res = s["environment"], s["results"]
    out = [
        "",
        (
            f"synapse-pypi redaction benchmark (Synapse {env['synapse']}, Python {env['python']}, "
            f"{env['cpus']} CPUs, sqlite, federation over loopback TLS)"
        ),
        f"synapse_pypi: {env['module']}",
        "A = the moderator's homeserver (its bot's attestation is redacted in A's package room)",
        "B = a peer of A reading A's package room over federation",
        (
            f"time from just before the redact request is sent until the admin API first shows the attestation "
            f"'redacted'; polled every {s['interval_s'] * 1000:.0f} ms; {s['reps']} repetitions, a fresh project each"
        ),
        "",
        f"   {'':34} {'median':>7} {'min':>6} {'max':>6} {'old test':>9}   runs (ms)",
    ]
    rows = [
        ("A, same homeserver", res["A"], f"{OLD_TEST_BOUNDS_S['A'] * 1000:.0f} ms"),
        ("B, over federation", res["B"], f"{OLD_TEST_BOUNDS_S['B'] * 1000:.0f} ms"),
        ("B - A (per run)", res["B_minus_A"], ""),
        ("the redact call returned", res["redact_call"], ""),
    ]
    for label, st, bound in rows:
        out.append(
            f"   {label:34} {ms(st['median']):>4} ms {ms(st['min']):>3} ms {ms(st['max']):>3} ms {bound:>9}   "
            + ", ".join(ms(x) for x in st["runs"])
        )
    out += [
        "   (old test = the bound the tests used to assert; each figure is when the answer that first showed",
        "    'redacted' came back, so at most one poll interval plus one admin request late)",
        f"   last poll still 'valid', median: A {ms(res['A_last_valid']['median'])} ms, "
        f"B {ms(res['B_last_valid']['median'])} ms",
    ]
    for label in ("A", "B"):
        st = res[f"{label}_logged"]
        if st is not None:
            out.append(
                f"   the module on {label} logged 'redacted by': median {ms(st['median'])} ms, max {ms(st['max'])} ms; "
                f"runs {', '.join(ms(x) for x in st['runs'])}"
            )
    out += [
        "",
        "Set-up per repetition (not in the figures), medians: "
        f"A serves the file and attests it valid in {s['setup']['a_attests']['median']:.2f} s; "
        f"B's first page and A's attestation valid on B {s['setup']['b_sees']['median']:.2f} s later",
        "",
        f"total time {s['seconds']:.0f} s",
        "",
    ]
    return "\n".join(out)


# -- the run -----------------------------------------------------------------------------------


def module_desc() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "working tree (not a git checkout)"
    return "working tree " + out.stdout.strip()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    dists = work / "dists"
    with ExitStack() as stack:
        # Each process is registered for stopping (by its PID, in the harness) before it is
        # started, so a failed start-up is cleaned up too.
        upstream = UpstreamServer(dists, work / "upstream")
        stack.callback(upstream.stop)
        with phase("starting an upstream and two federating Synapses"):
            upstream.start()
            fa, fb = free_port(), free_port()
            name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
            # A's attestation key, made before A starts so that B can be told to trust it.
            key_a_path = work / "key-a" / "attestation_signing.key"
            key_a = load_or_create_key(str(key_a_path))
            hs_a = SynapseServer(
                work / "hs-a", federation_port=fa, federation_names=[name_b],
                module_config={"upstream_url": upstream.url, "upstream_timeout": "3s",
                               "signing_key_path": str(key_a_path), "moderators": [f"@mod:{name_a}"]},
            )
            stack.callback(hs_a.dispose)
            hs_b = SynapseServer(
                work / "hs-b", federation_port=fb, federation_names=[name_a],
                module_config={"upstream_url": upstream.url, "upstream_timeout": "3s", "peers": [name_a],
                               "trusted_keys": {f"@pypi-bot:{name_a}": [public_key_string(key_a)]}},
            )
            stack.callback(hs_b.dispose)
            for hs in (hs_a, hs_b):
                hs.start()
            a = Mirror("A", hs_a, Client.register(hs_a, "admin", admin=True))
            b = Mirror("B", hs_b, Client.register(hs_b, "admin", admin=True))
            moderator = Client.register(hs_a, "mod")

        reps: list[dict[str, Any]] = []
        for i in range(args.reps):
            project = f"redact{i}"
            with phase(f"repetition {i + 1}/{args.reps} ({project})"):
                path = build_wheel(project_dir(dists, project), project, "1.0")
                sha = sha256_file(path)
                t0 = time.monotonic()
                body = get(hs_a, f"/simple/{project}/{path.name}")
                if body != path.read_bytes():
                    raise BenchError(f"A served {path.name} with different bytes")
                event_id = poll(partial(a.own_attestation, project, path.name, sha),
                                what=f"A attests {path.name}", timeout=args.timeout)
                a_attests = time.monotonic() - t0
                t0 = time.monotonic()
                get(hs_b, f"/simple/{project}/")
                poll(partial(b.lists_valid, project, path.name, event_id),
                     what=f"B lists A's attestation of {path.name} as valid", timeout=args.timeout)
                b_sees = time.monotonic() - t0
                room_id = join_when_ready(moderator, f"#pypi-{project}:{name_a}")
                r = redact_and_watch(moderator, room_id, event_id, (a, b), project, path.name,
                                     args.interval, args.timeout)
                r.update({"project": project, "event_id": event_id, "a_attests_s": a_attests, "b_sees_s": b_sees})
                log(f"  redacted: A {ms(r['A']['seen_s'])} ms, B {ms(r['B']['seen_s'])} ms "
                    f"(the call returned after {ms(r['redact_call_s'])} ms)")
            reps.append(r)
        for m in (a, b):
            logged = m.logged_redactions()
            for r in reps:
                at = logged.get(r["event_id"])
                # The module's own log line; the log has ms resolution and the clocks are one.
                r[m.label]["logged_s"] = None if at is None else at - r["t0_wall"]

    results = {
        "A": stat([r["A"]["seen_s"] for r in reps]),
        "B": stat([r["B"]["seen_s"] for r in reps]),
        "B_minus_A": stat([r["B"]["seen_s"] - r["A"]["seen_s"] for r in reps]),
        "redact_call": stat([r["redact_call_s"] for r in reps]),
        "A_last_valid": stat([r["A"]["last_valid_s"] or 0.0 for r in reps]),
        "B_last_valid": stat([r["B"]["last_valid_s"] or 0.0 for r in reps]),
    }
    for label in ("A", "B"):
        logged = [r[label]["logged_s"] for r in reps if r[label]["logged_s"] is not None]
        results[f"{label}_logged"] = stat(logged) if logged else None
        if len(logged) < len(reps):
            log(f"{label}: the module's 'redacted by' line is missing for {len(reps) - len(logged)} repetitions")
    return {
        "environment": {
            "module": module_desc(),
            "python": platform.python_version(),
            "synapse": importlib.metadata.version("matrix-synapse"),
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        },
        "reps": args.reps,
        "interval_s": args.interval,
        "old_test_bounds_s": OLD_TEST_BOUNDS_S,
        "results": results,
        "setup": {
            "a_attests": stat([r["a_attests_s"] for r in reps]),
            "b_sees": stat([r["b_sees_s"] for r in reps]),
        },
        "repetitions": reps,
        "seconds": time.monotonic() - t_start,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--reps", type=int, default=10, help="repetitions, a fresh project each (default 10)")
    p.add_argument("--interval", type=float, default=0.01,
                   help="seconds between two polls of one server's admin API (default 0.01)")
    p.add_argument("--timeout", type=float, default=60,
                   help="give up on any one wait after this many seconds (default 60)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs) for a look")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3 (the figures are medians)")
    if args.interval <= 0:
        p.error("--interval must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-redaction-")


if __name__ == "__main__":
    sys.exit(main())
