#!/usr/bin/env python3
"""Load benchmark: 200 page clients and 50 downloads of 20 MB files at once, for a fixed time,
with the Matrix API's latency measured alongside.

    .venv-test/bin/python benchmarks/bench_load.py --json out.json

Everything runs on 127.0.0.1: one real Synapse with the module (SQLite, no IPFS) and the test
upstream (tests/harness/upstream_server.py) serving `--projects` (20) small projects of three
wheels each and the big wheels of `--file-mb` (20) MB. Every process is stopped by its PID at
the end and the work directory is removed unless --keep.

1. *Set-up*: every project page is fetched once (pages are then warm, as on a busy mirror),
   and the `--warm-files` (4) big wheels are downloaded once (they are then in the cache).
2. *Matrix API idle*: `GET /_matrix/client/versions` every 100 ms for `--idle-seconds` (5),
   nothing else running: the reference.
3. *Load*, for `--seconds` (30; at most 300), all at once:
   * `--page-clients` (200) keep-alive connections asking for project pages (and the root)
     in turn, with the Accept header pip sends: wrk with a Lua script when it is installed,
     else Python threads (`--client`).
   * `--downloads` (50) download loops, each on its own keep-alive connection: `--cold` (10)
     of them each own one big wheel, download it (from the upstream, through the module),
     then purge it from the cache through the admin API, and start again (every download is
     cold); the others download the warm wheels in turn (from the cache). Every download is
     checked: status 200, length, sha256. A loop starts no download after the deadline;
     the ones under way finish and count.
   * the Matrix API poller, one `GET /_matrix/client/versions` every 100 ms (on the clock,
     not after the previous answer).
   An *error* is any answer other than 200, a socket error or timeout, or a download whose
   length or sha256 is wrong. The goal is none.

Nothing here asserts a timing: the script reports, a reader judges. The machine is shared:
the table says what else ran (the load average before and after).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import BenchError, phase, poll, run_benchmark
from harness.dists import build_wheel, project_dir, sha256_file
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer

# What pip sends (PEP 691 JSON preferred, HTML accepted).
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
MB = 1_000_000
CHUNK = 1 << 20
MAX_SECONDS = 300


# -- figures ----------------------------------------------------------------------------------


def percentile(xs: list[float], q: float) -> float | None:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else None


def stats_ms(xs: list[float]) -> dict[str, Any]:
    """n, p50, p99 and max of latencies given in seconds, in milliseconds."""
    def ms(v: float | None) -> float | None:
        return None if v is None else v * 1000

    return {"n": len(xs), "p50_ms": ms(percentile(xs, 0.5)), "p99_ms": ms(percentile(xs, 0.99)),
            "max_ms": ms(max(xs) if xs else None)}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the Matrix API poller ----------------------------------------------------------------------


class Poller(threading.Thread):
    """`GET /_matrix/client/versions` every `interval` seconds on the clock, on one keep-alive
    connection (a new one after an error)."""

    def __init__(self, port: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        tick = time.monotonic()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/_matrix/client/versions")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    self.errors.append(f"status {response.status}")
                else:
                    self.latencies.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            tick += self.interval
            self.stop.wait(max(0.0, tick - time.monotonic()))
        conn.close()

    def __enter__(self) -> Poller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(60)


# -- page clients -------------------------------------------------------------------------------

# Asks for the paths in turn, counts answers other than 200 (wrk itself counts only >= 400),
# and prints wrk's figures as one JSON line.
WRK_SCRIPT = r"""
local paths = {%(paths)s}
local threads = {}
local counter = 0
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  bad = 0
  counter = math.random(#paths)
end
function request()
  counter = counter %% #paths + 1
  return wrk.format("GET", paths[counter])
end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local non200 = 0
  for _, t in ipairs(threads) do non200 = non200 + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "non200": %%d, ' ..
    '"connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, "timeouts": %%d, ' ..
    '"p50_us": %%d, "p99_us": %%d, "max_us": %%d}\n',
    summary.requests, summary.duration, summary.bytes, non200,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


class WrkPages:
    """wrk (C, epoll) in its own process, one thread: the page clients cost the machine little."""

    def __init__(self, wrk: str, work: Path, port: int, paths: list[str], connections: int, seconds: float):
        script = work / "pages.lua"
        script.write_text(WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)})
        self.cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
                    "-H", f"Accept: {PIP_ACCEPT}", "-s", str(script), f"http://127.0.0.1:{port}/"]  # fmt: skip
        self.seconds = seconds
        self.proc: subprocess.Popen[str] | None = None
        self.name = "wrk, 1 thread"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict[str, Any]:
        assert self.proc is not None
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 60)
        finally:
            self.stop()
        line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
        if self.proc.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (rc={self.proc.returncode}):\n{out}\n{err}")
        r = json.loads(line[len("WRK_JSON ") :])
        seconds = r["duration_us"] / 1e6
        return {
            "requests": r["requests"],
            "seconds": seconds,
            "rps": r["requests"] / seconds,
            "errors": r["non200"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
            "error_detail": {k: r[k] for k in ("non200", "connect_errors", "read_errors", "write_errors", "timeouts")},
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "max_ms": r["max_us"] / 1000,
        }

    def stop(self) -> None:
        """Kill wrk by its PID if it is still running (a failed or interrupted run)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class PythonPages:
    """http.client in threads, one keep-alive connection each: the fallback without wrk. It
    holds the GIL for much of each request, so it costs the machine more than wrk."""

    name = "python http.client threads"

    def __init__(self, port: int, paths: list[str], connections: int, seconds: float):
        self.port, self.paths, self.seconds = port, paths, seconds
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._one, args=(i,), daemon=True) for i in range(connections)]
        self.t0 = 0.0

    def _one(self, first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        mine: list[float] = []
        errors: list[str] = []
        i = first
        while time.monotonic() < self.deadline:
            path = self.paths[i % len(self.paths)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Accept": PIP_ACCEPT})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    errors.append(f"{path}: status {response.status}")
                    continue
                mine.append(time.perf_counter() - t0)
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{path}: {e!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()
        with self.lock:
            self.latencies.extend(mine)
            self.errors.extend(errors)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.seconds
        for t in self.threads:
            t.start()

    def result(self) -> dict[str, Any]:
        for t in self.threads:
            t.join(self.seconds + 60)
        seconds = time.monotonic() - self.t0
        s = stats_ms(self.latencies)
        return {"requests": len(self.latencies), "seconds": seconds, "rps": len(self.latencies) / seconds,
                "errors": len(self.errors), "error_detail": self.errors[:5],
                "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "max_ms": s["max_ms"]}  # fmt: skip

    def stop(self) -> None:
        pass  # daemon threads, each bounded by the deadline and its socket timeout


# -- downloads ----------------------------------------------------------------------------------


class Big:
    """A big wheel: where the mirror serves it, and what it must be."""

    def __init__(self, project: str, path: Path):
        self.project, self.name = project, path.name
        self.url_path = f"/simple/{project}/{path.name}"
        self.size = path.stat().st_size
        self.sha256 = sha256_file(path)


class Downloads:
    """`warm + cold` download loops in threads (see the module docstring)."""

    def __init__(self, port: int, admin_token: str, warm: list[Big], cold: list[Big], warm_loops: int,
                 seconds: float, verify: bool = True):  # fmt: skip
        self.port, self.token, self.seconds, self.verify = port, admin_token, seconds, verify
        self.done: dict[str, list[float]] = {"warm": [], "cold": []}
        self.bytes = 0
        self.errors: list[str] = []
        self.purge_retries = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._warm_loop, args=(warm, i), daemon=True) for i in range(warm_loops)]
        self.threads += [threading.Thread(target=self._cold_loop, args=(big,), daemon=True) for big in cold]

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.seconds
        for t in self.threads:
            t.start()

    def result(self) -> dict[str, Any]:
        for t in self.threads:
            t.join(self.seconds + 300)
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {"wall_seconds": wall, "mb": self.bytes / MB, "mb_per_s": self.bytes / MB / wall,
                               "errors": len(self.errors), "error_detail": self.errors[:5],
                               "purge_retries": self.purge_retries}  # fmt: skip
        for kind, xs in self.done.items():
            out[kind] = stats_ms(xs)
        return out

    def _warm_loop(self, warm: list[Big], first: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        i = first
        while time.monotonic() < self.deadline:
            big = warm[i % len(warm)]
            i += 1
            conn = self._download(conn, big, "warm")
        conn.close()

    def _cold_loop(self, big: Big) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        while time.monotonic() < self.deadline:
            conn = self._download(conn, big, "cold")
            self._purge(big)
        conn.close()

    def _download(self, conn: http.client.HTTPConnection, big: Big, kind: str) -> http.client.HTTPConnection:
        """One GET of `big`, read to the end and checked; the connection to use next."""
        t0 = time.perf_counter()
        try:
            conn.request("GET", big.url_path)
            response = conn.getresponse()
            h = hashlib.sha256()
            got = 0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if self.verify:
                    h.update(chunk)
            elapsed = time.perf_counter() - t0
            if response.status != 200:
                raise BenchError(f"status {response.status}")
            if got != big.size:
                raise BenchError(f"{got} bytes, expected {big.size}")
            if self.verify and h.hexdigest() != big.sha256:
                raise BenchError("sha256 mismatch")
        except (OSError, http.client.HTTPException, BenchError) as e:
            with self.lock:
                self.errors.append(f"{kind} {big.name}: {e!r}")
            conn.close()
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        with self.lock:
            self.done[kind].append(elapsed)
            self.bytes += got
        return conn

    def _purge(self, big: Big) -> None:
        """Take `big` out of the cache so that the next download is cold again (the file may
        be held a moment longer, e.g. by core metadata extraction: 409, asked again)."""
        path = f"/_synapse/pypi/v1/projects/{big.project}/files/{big.name}"

        def purged() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("DELETE", path, headers={"Authorization": f"Bearer {self.token}"})
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            if response.status == 409:
                with self.lock:
                    self.purge_retries += 1
                return False
            if response.status != 200:
                raise BenchError(f"DELETE {path}: {response.status}")
            return True

        try:
            poll(purged, f"purging {big.name}", timeout=30)
        except (OSError, http.client.HTTPException, BenchError) as e:
            with self.lock:
                self.errors.append(f"purge {big.name}: {e!r}")


# -- the run ------------------------------------------------------------------------------------


def get(port: int, path: str, accept: str = PIP_ACCEPT) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"GET {path}: {response.status} {body[:200]!r}")
    return body


def build(root: Path, args: argparse.Namespace) -> tuple[list[str], list[Big], list[Big]]:
    """The upstream's tree: small projects, and the big wheels; (page paths, warm, cold)."""
    pages = ["/simple/"]
    for i in range(args.projects):
        name = f"load-{i}"
        for version in ("1.0", "1.1", "2.0"):
            build_wheel(project_dir(root, name), name, version, payload_size=2_000)
        pages.append(f"/simple/{name}/")
    warm, cold = [], []
    for kind, count, out in (("warm", args.warm_files, warm), ("cold", args.cold, cold)):
        for i in range(count):
            name = f"big-{kind}-{i}"
            path = build_wheel(project_dir(root, name), name, "1.0", payload_size=args.file_mb * MB)
            out.append(Big(name, path))
            pages.append(f"/simple/{name}/")
    return pages, warm, cold


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"load_before": loadavg(), "seconds": args.seconds, "page_clients": args.page_clients,
                               "downloads": args.downloads, "cold_loops": args.cold, "file_mb": args.file_mb}  # fmt: skip
    root = work / "dists"
    with phase(f"building {args.projects} projects and {args.warm_files + args.cold} wheels of {args.file_mb} MB"):
        paths, warm, cold = build(root, args)
    wrk = shutil.which("wrk") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and wrk is None:
        raise BenchError("--client wrk: wrk is not on PATH (apt-get install wrk)")
    with UpstreamServer(root, work / "upstream") as upstream:
        hs = SynapseServer(work / "hs", module_config={"upstream_url": upstream.url, "max_cache_size": "4G"})
        pages: WrkPages | PythonPages | None = None
        try:
            with phase("starting Synapse"):
                hs.start()
            assert hs.pid is not None
            _, token = hs.register_user("bench-admin", admin=True)
            with phase("warming pages and the warm wheels"):
                for path in paths:
                    get(hs.port, path)
                for big in warm:
                    get(hs.port, big.url_path)
            with phase("Matrix API idle"), Poller(hs.port, args.poll_interval) as idle:
                time.sleep(args.idle_seconds)  # measuring for a fixed time, not synchronising
            summary["versions_idle"] = {**stats_ms(idle.latencies), "errors": len(idle.errors)}

            if wrk is not None:
                pages = WrkPages(wrk, work, hs.port, paths, args.page_clients, args.seconds)
            else:
                pages = PythonPages(hs.port, paths, args.page_clients, args.seconds)
            summary["page_client"] = pages.name
            downloads = Downloads(hs.port, token, warm, cold, args.downloads - args.cold, args.seconds,
                                  verify=not args.no_verify)  # fmt: skip
            cpu0, t0 = cpu_seconds(hs.pid), time.monotonic()
            with phase(f"load for {args.seconds:.0f} s"), Poller(hs.port, args.poll_interval) as busy:
                pages.start()
                downloads.start()
                summary["pages"] = pages.result()
                summary["files"] = downloads.result()
            summary["synapse_cpu_percent"] = 100 * (cpu_seconds(hs.pid) - cpu0) / (time.monotonic() - t0)
            summary["versions_load"] = {**stats_ms(busy.latencies), "errors": len(busy.errors),
                                        "error_detail": busy.errors[:5]}  # fmt: skip
            summary["rss_mb"] = hs.rss_bytes() / 2**20
        finally:
            if pages is not None:
                pages.stop()
            hs.dispose()
    summary["load_after"] = loadavg()
    summary["errors"] = summary["pages"]["errors"] + summary["files"]["errors"] + summary["versions_load"]["errors"]
    return summary


# -- the report ---------------------------------------------------------------------------------


def fmt(s: dict[str, Any]) -> str:
    if not s.get("n", 1) or s.get("p50_ms") is None:
        return "-"
    n = f" (n={s['n']})" if "n" in s else ""
    return f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms{n}"


def render_table(summary: dict[str, Any]) -> str:
    p, f = summary["pages"], summary["files"]
    return "\n".join([
        f"bench_load: {summary['seconds']:.0f} s, {summary['page_clients']} page clients ({summary['page_client']}), "
        f"{summary['downloads']} download loops of {summary['file_mb']} MB files ({summary['cold_loops']} cold); "
        f"load average before {summary['load_before']}, after {summary['load_after']}",
        "",
        f"errors, all kinds (goal 0)       {summary['errors']}",
        f"pages                            {p['requests']} requests, {p['rps']:.0f}/s, {p['errors']} errors; {fmt(p)}",
        f"downloads, warm (from the cache) {fmt(f['warm'])}",
        f"downloads, cold (from upstream)  {fmt(f['cold'])}",
        f"downloads, all                   {f['mb']:.0f} MB in {f['wall_seconds']:.1f} s = {f['mb_per_s']:.0f} MB/s, "
        f"{f['errors']} errors ({f['purge_retries']} purges asked again after 409)",
        f"Matrix API idle (reference)      {fmt(summary['versions_idle'])}",
        f"Matrix API under load            {fmt(summary['versions_load'])}, {summary['versions_load']['errors']} errors",
        f"Synapse CPU under load           {summary['synapse_cpu_percent']:.0f} % of one core; RSS at the end "
        f"{summary['rss_mb']:.0f} MB",
    ])  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=30.0, help=f"length of the load phase (at most {MAX_SECONDS})")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--page-clients", type=int, default=200)
    p.add_argument("--downloads", type=int, default=50, help="concurrent download loops, --cold of them cold")
    p.add_argument("--cold", type=int, default=10)
    p.add_argument("--warm-files", type=int, default=4)
    p.add_argument("--file-mb", type=int, default=20)
    p.add_argument("--projects", type=int, default=20)
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-verify", action="store_true", help="check downloads by length only, not sha256")
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    if not 1 <= args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be from 1 to {MAX_SECONDS}")
    if not 0 <= args.cold <= args.downloads <= 200 or not 1 <= args.page_clients <= 1000:
        p.error("need 0 <= --cold <= --downloads <= 200 and 1 <= --page-clients <= 1000")
    if args.downloads > args.cold and args.warm_files < 1:
        p.error("warm download loops need --warm-files >= 1")
    if not 1 <= args.file_mb <= 500 or not 0 < args.poll_interval <= 10:
        p.error("--file-mb must be from 1 to 500 and --poll-interval from 0 to 10 s")
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-load-")


if __name__ == "__main__":
    sys.exit(main())
