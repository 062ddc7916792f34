#!/usr/bin/env python3
"""Benchmark what index pages cost: a 200,000-name root under concurrent clients, the
Matrix API's latency alongside, the first render of a huge project page, and parse time
against page size.

    .venv-test/bin/python benchmarks/bench_pages.py --json out.json

Everything runs on 127.0.0.1: one real Synapse with the module (SQLite), one real upstream
(tests/harness/upstream_server.py) serving a root list of `--names` (200,000) projects and
one project page of `--files` (200,000) files, both as stored pages (`.page.json`). Every
process is stopped by its PID at the end and the work directory is removed unless --keep.

1. *Matrix API idle*: `GET /_matrix/client/versions` every 10 ms for `--seconds`, nothing
   else running: the reference.
2. *Root, cold*: the first `GET /simple/` (JSON): fetch, parse, store and render; the
   versions poller runs alongside.
3. *Root, warm*: `--clients` (5) threads, each on its own keep-alive connection, send
   `GET /simple/` (JSON; then with `Accept-Encoding: gzip` as pip and uv send it; then with
   If-None-Match, answered 304; then HEAD) for `--seconds` each, while the versions poller
   runs. Latency of every request, median and p99.
4. *Huge page, first JSON render*: the first `GET /simple/<huge>/` with the versions
   poller alongside: how long the Matrix API waited at worst while the page was fetched,
   parsed and rendered (the render happens in a thread). Then the same page again, warm.
5. *Parse time against size* (in this process, no server): HTML and JSON project pages of
   1 to `--max-mb` MB, and an HTML junk page of unclosed tags; CPU seconds and s/MB.

Nothing here asserts a timing: the script reports, a reader judges. The machine is shared:
the table says what else ran (the load average before and after).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import log, median, phase, run_benchmark
from harness.dists import project_dir
from harness.pages import project_html, project_json
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer

from synapse_pypi import index
from synapse_pypi._names import NormalizedName

JSON_V1 = "application/vnd.pypi.simple.v1+json"


def p99(xs: list[float]) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


def stats(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "median_ms": median(xs) * 1000 if xs else None, "p99_ms": p99(xs) * 1000, "max_ms": max(xs) * 1000 if xs else None}


def root_json(names: int) -> bytes:
    return json.dumps({"meta": {"api-version": "1.1"}, "projects": [{"name": f"project-{i}"} for i in range(names)]}).encode()


class Poller(threading.Thread):
    """GET /_matrix/client/versions every `interval` on a keep-alive connection."""

    def __init__(self, port: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            t0 = time.perf_counter()
            conn.request("GET", "/_matrix/client/versions")
            conn.getresponse().read()
            self.latencies.append(time.perf_counter() - t0)
            self.stop.wait(self.interval)
        conn.close()

    def __enter__(self) -> Poller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(60)


def clients(port: int, n: int, seconds: float, method: str, headers: dict[str, str]) -> list[float]:
    """`n` threads sending `method /simple/` for `seconds`; every latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            conn.request(method, "/simple/", headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status not in (200, 304):
                raise RuntimeError(f"{method} /simple/: {response.status}")
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def timed_get(port: int, path: str) -> tuple[float, int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("GET", path, headers={"Accept": JSON_V1})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - t0
    headers = {k.lower(): v for k, v in response.getheaders()}
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
    return elapsed, len(body), headers


def parse_times(max_mb: int) -> list[dict[str, Any]]:
    rows = []
    mb = 1
    while mb <= max_mb:
        for kind in ("html", "json", "junk"):
            if kind == "junk":
                body = b"<a " * (mb * 1024**2 // 3)
            else:
                per_file = len(project_json("p", 100)) / 100 if kind == "json" else len(project_html("p", 100)) / 100
                files = int(mb * 1024**2 / per_file)
                body = project_json("p", files) if kind == "json" else project_html("p", files, "https://files.example.org")
            parse = index.parse_project_json if kind == "json" else index.parse_project_html
            t0 = time.process_time()
            page = parse(body, "https://example.org/simple/p/", NormalizedName("p"))
            cpu = time.process_time() - t0
            rows.append({"kind": kind, "mb": len(body) / 1024**2, "files": len(page.files), "cpu_s": cpu, "s_per_mb": cpu / (len(body) / 1024**2)})
            log(f"parse {kind} {len(body) / 1024**2:.1f} MB: {cpu:.2f} s ({len(page.files)} files)")
            del body, page
        mb *= 2
    return rows


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"load_before": loadavg(), "names": args.names, "files": args.files, "clients": args.clients}
    root = work / "dists"
    root.mkdir()
    (root / ".page.json").write_bytes(root_json(args.names))
    (project_dir(root, "huge") / ".page.json").write_bytes(project_json("huge", args.files))
    with UpstreamServer(root, work / "upstream") as upstream:
        hs = SynapseServer(work / "hs", module_config={"upstream_url": upstream.url, "max_page_size": "200M"})
        try:
            with phase("starting Synapse"):
                hs.start()
            with phase("Matrix API idle"), Poller(hs.port) as idle:
                time.sleep(args.seconds)  # measuring for a fixed time, not synchronising
            summary["versions_idle"] = stats(idle.latencies)
            with phase("root, cold"), Poller(hs.port) as cold_poll:
                cold_s, size, headers = timed_get(hs.port, "/simple/")
            summary["root_cold"] = {"seconds": cold_s, "bytes": size, "versions": stats(cold_poll.latencies)}
            etag = headers["etag"]
            for name, method, extra in (
                ("root_warm_get", "GET", {}),
                ("root_warm_get_gzip", "GET", {"Accept-Encoding": "gzip"}),
                ("root_warm_304", "GET", {"If-None-Match": etag}),
                ("root_warm_head", "HEAD", {}),
            ):
                with phase(f"{name} x{args.clients}"), Poller(hs.port) as poll:
                    lat = clients(hs.port, args.clients, args.seconds, method, {"Accept": JSON_V1, **extra})
                summary[name] = {"requests": stats(lat), "versions": stats(poll.latencies)}
            with phase("huge page, first JSON render"), Poller(hs.port) as huge_poll:
                first_s, size, _ = timed_get(hs.port, "/simple/huge/")
            summary["huge_first"] = {"seconds": first_s, "bytes": size, "versions": stats(huge_poll.latencies)}
            with phase("huge page, warm"), Poller(hs.port) as warm_poll:
                warm = [timed_get(hs.port, "/simple/huge/")[0] for _ in range(5)]
            summary["huge_warm"] = {"seconds": median(warm), "versions": stats(warm_poll.latencies)}
            summary["rss_mb"] = hs.rss_bytes() / 2**20
        finally:
            hs.dispose()
    with phase("parse time against size"):
        summary["parse"] = parse_times(args.max_mb)
    summary["load_after"] = loadavg()
    return summary


def fmt(s: dict[str, Any] | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"median {s['median_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms (n={s['n']})"


def render_table(summary: dict[str, Any]) -> str:
    lines = [
        f"bench_pages: {summary['names']} names in the root, {summary['files']} files in the huge page, "
        f"{summary['clients']} clients; load average before {summary['load_before']}, after {summary['load_after']}",
        "",
        f"Matrix API idle (reference)        {fmt(summary['versions_idle'])}",
        f"root, cold: {summary['root_cold']['seconds']:.2f} s, {summary['root_cold']['bytes']} bytes",
        f"  Matrix API meanwhile             {fmt(summary['root_cold']['versions'])}",
    ]
    for name in ("root_warm_get", "root_warm_get_gzip", "root_warm_304", "root_warm_head"):
        lines.append(f"{name:<35}{fmt(summary[name]['requests'])}")
        lines.append(f"  Matrix API meanwhile             {fmt(summary[name]['versions'])}")
    lines.append(f"huge page, first JSON: {summary['huge_first']['seconds']:.2f} s, {summary['huge_first']['bytes']} bytes")
    lines.append(f"  Matrix API meanwhile             {fmt(summary['huge_first']['versions'])}")
    lines.append(f"huge page, warm: median {summary['huge_warm']['seconds']:.3f} s")
    lines.append(f"  Matrix API meanwhile             {fmt(summary['huge_warm']['versions'])}")
    lines.append(f"Synapse RSS at the end: {summary['rss_mb']:.0f} MB")
    lines.append("")
    lines.append("parse (CPU s; s/MB)")
    for row in summary["parse"]:
        lines.append(f"  {row['kind']:<5} {row['mb']:6.1f} MB  {row['cpu_s']:7.2f} s  {row['s_per_mb']:.3f} s/MB  ({row['files']} files)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", type=int, default=200_000)
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-mb", type=int, default=64)
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-pages-")


if __name__ == "__main__":
    sys.exit(main())
