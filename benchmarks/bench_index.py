#!/usr/bin/env python3
"""Benchmark synapse-pypi's /simple/ against a Twisted static file server, all on 127.0.0.1.

    /work/venv/bin/python benchmarks/bench_index.py --json out.json

Starts a real upstream index (tests/harness/upstream_server.py), a real Synapse with the
module (tests/harness/synapse.py) and, as the reference, `twisted.web.static.File` in its own
process (this script, run as `bench_index.py _static-server`). Synapse is Twisted too and
serves cached files with `static.File` itself, so the reference is what the homeserver would
be with nothing of Synapse or the module in the way. Then it measures, in one run:

1. Synapse's RSS while a client downloads a large wheel through it, cold (streamed from the
   upstream while cached) and warm (from the local cache): before, peak (VmRSS sampled every
   20 ms, with VmHWM as a cross-check) and after.
2. Requests per second for a warm `/simple/<project>/` page at 16 connections, homeserver
   and reference serving the same bytes, with wrk when installed (else a Python client).
3. MB/s for a warm 100 MB wheel, one stream and 8 parallel streams, from the homeserver's
   cache and from nginx serving the same file from disk with sendfile (the physical limit
   here), with the Twisted static server alongside (what the homeserver used to do); curl is
   the client, as in ../shared/bench/.

Timings are repeated and the median reported; every ratio compares figures taken in this
run, interleaved, because the machine may be shared and noisy. Nothing here asserts a
timing: the script reports, a reader judges. Sizes are in MB = 10^6 bytes.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
# The harness is imported as a top-level package, as tests/conftest.py does.
sys.path.insert(0, str(REPO / "tests"))
# _common sits next to this script, whose directory Python puts first on sys.path.
from _common import BenchError, log, phase, read_status_kb, reset_hwm, run_benchmark

MB = 1_000_000
JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
PAGE_TYPES = {"json": JSON_V1, "html": HTML_V1}
RSS_TARGET_MB = 30.0
SAMPLE_INTERVAL = 0.02
# After the last byte, keep sampling this long: memory freed (or not) once the response
# is finished shows up in "after". A measuring window, not synchronisation.
SETTLE_SECONDS = 0.5
READ_CHUNK = 1024 * 1024
BIG_PROJECT = "bench-big"
PAGE_PROJECT = "bench-page"


# -- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid`, all its threads (Synapse's database pool included)."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name, which is in parentheses and may hold spaces;
        # utime and stime are fields 14 and 15 of proc(5), 12th and 13th after it.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """Samples VmRSS of `pid` every `interval` seconds in a thread; `peak` is the largest."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL):
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append(read_status_kb(self.pid, "VmRSS"))
            except (OSError, BenchError):
                return  # the process is gone; the caller notices
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> RssSampler:  # noqa: PYI034 - typing.Self needs Python 3.11; we run on 3.10+
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


# -- HTTP clients ----------------------------------------------------------------------------


def download(url: str, *, hasher: Any = None, timeout: float = 300) -> tuple[int, float]:
    """GET `url` and discard the body in 1 MB chunks (read into one reused buffer).

    Args:
        url: an http://127.0.0.1 URL.
        hasher: optional hashlib object fed with the body.
        timeout: socket timeout in seconds.

    Returns:
        (body bytes, seconds from sending the request to the last byte).

    Raises:
        BenchError: on a status other than 200 or a body shorter than Content-Length.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    buf = memoryview(bytearray(READ_CHUNK))
    try:
        t0 = time.perf_counter()
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {url}: {resp.status} {resp.read(500)!r}")
        length = resp.getheader("Content-Length")
        total = 0
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            if hasher is not None:
                hasher.update(buf[:n])
            total += n
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    if length is not None and int(length) != total:
        raise BenchError(f"GET {url}: got {total} bytes, Content-Length said {length}")
    return total, seconds


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# Counts non-200 answers (wrk itself only counts >= 400) and prints wrk's figures as one
# JSON line. Rounds last a fixed time, not a fixed number of requests: wrk's main thread
# sleeps for the whole -d duration whatever the threads do (`wrk.thread:stop()` included),
# and measures the run over that duration.
WRK_SCRIPT = r"""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  bad = 0
end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local non200 = 0
  for _, t in ipairs(threads) do non200 = non200 + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non200": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, non200,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


class LoadClient:
    """Sends GETs over `connections` keep-alive connections for `seconds`."""

    name = "abstract"

    def run(self, url: str, seconds: float, connections: int, accept: str) -> dict[str, Any]:
        raise NotImplementedError


class WrkClient(LoadClient):
    """wrk (C, epoll): cheap enough per request that the server, not the client, is measured."""

    def __init__(self, wrk: str, script_path: Path, threads: int = 1):
        self.wrk = wrk
        self.script_path = script_path
        # One wrk thread leaves the other core of a 2-core machine to the server.
        self.threads = threads
        script_path.write_text(WRK_SCRIPT)
        proc = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        first = (proc.stdout or proc.stderr).splitlines()
        self.name = first[0].split(" Copyright")[0].strip() if first else "wrk"

    def run(self, url: str, seconds: float, connections: int, accept: str) -> dict[str, Any]:
        cmd = [
            self.wrk,
            f"-t{self.threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-H",
            f"Accept: {accept}",
            "-s",
            str(self.script_path),
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
        if proc.returncode != 0 or line is None:
            raise BenchError(f"wrk failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        r = json.loads(line[len("WRK_JSON ") :])
        errors = r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"]
        if r["non200"] or errors:
            raise BenchError(f"wrk against {url}: {r['non200']} non-200 answers, {errors} socket errors: {r}")
        elapsed = r["duration_us"] / 1e6
        return {
            "requests": r["requests"],
            "seconds": elapsed,
            "rps": r["requests"] / elapsed,
            "latency_p50_ms": r["latency_p50_us"] / 1000,
            "latency_p99_ms": r["latency_p99_us"] / 1000,
        }


class PythonClient(LoadClient):
    """http.client in threads, one keep-alive connection each: the fallback without wrk.

    It holds the GIL for most of each request, so it can cap the figure for a fast server;
    the output says which client was used.
    """

    name = "python http.client threads (keep-alive)"

    def run(self, url: str, seconds: float, connections: int, accept: str) -> dict[str, Any]:
        parts = urlsplit(url)
        deadline = 0.0  # set once every thread is connected and waiting
        latencies: list[float] = []
        failures: list[str] = []
        start = threading.Barrier(connections + 1)

        def worker() -> None:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            mine: list[float] = []
            try:
                start.wait()
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    conn.request("GET", parts.path, headers={"Accept": accept})
                    resp = conn.getresponse()
                    resp.read()
                    mine.append(time.perf_counter() - t0)
                    if resp.status != 200:
                        failures.append(f"status {resp.status}")
            except Exception as e:  # noqa: BLE001 - reported below, the run is then invalid
                failures.append(repr(e))
            finally:
                conn.close()
                latencies.extend(mine)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        start.wait()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if failures:
            raise BenchError(f"python client against {url}: {len(failures)} failures, first: {failures[0]}")
        latencies.sort()
        return {
            "requests": len(latencies),
            "seconds": elapsed,
            "rps": len(latencies) / elapsed,
            "latency_p50_ms": latencies[len(latencies) // 2] * 1000,
            "latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        }


def pick_client(choice: str, work: Path) -> LoadClient:
    wrk = shutil.which("wrk")
    if choice == "wrk" and wrk is None:
        raise BenchError("--client wrk: wrk is not on PATH (apt-get install wrk)")
    if choice in ("auto", "wrk") and wrk is not None:
        return WrkClient(wrk, work / "bounded.lua")
    return PythonClient()


# -- the reference server ------------------------------------------------------------------


def static_server_main(argv: Sequence[str]) -> int:
    """`bench_index.py _static-server --root DIR --port-file FILE`: twisted.web.static.File."""
    p = argparse.ArgumentParser(prog="bench_index.py _static-server")
    p.add_argument("--root", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--default-type", default=JSON_V1)
    args = p.parse_args(argv)

    from twisted.internet import reactor
    from twisted.web.server import Site
    from twisted.web.static import File

    class QuietSite(Site):
        # No access log: the reference is the strongest plain Twisted server. Synapse logs
        # every request; that cost is part of what the comparison shows.
        def log(self, request: Any) -> None:
            pass

    site = QuietSite(File(args.root, defaultType=args.default_type))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port.getHost().port))
    os.replace(tmp, args.port_file)
    reactor.run()  # type: ignore[attr-defined]  # SIGTERM stops it
    return 0


class StaticServer:
    """The reference server in its own process (this script's `_static-server` mode)."""

    def __init__(self, root: Path, work_dir: Path, default_type: str):
        self.root = root
        self.work_dir = work_dir
        self.default_type = default_type
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("static server is not running")
        return self.proc.pid

    def start(self, timeout: float = 30) -> StaticServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        port_file = self.work_dir / "static.port"
        port_file.unlink(missing_ok=True)
        with open(self.work_dir / "static.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "_static-server", "--root", str(self.root),
                 "--port-file", str(port_file), "--default-type", self.default_type],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"static server exited (rc={self.proc.returncode}); see {self.work_dir}/static.log")
            if port_file.exists():
                self.port = int(port_file.read_text())
                try:
                    get(self.url + "/")
                    return self
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"static server not ready after {timeout}s")
            time.sleep(0.02)  # polling interval, not synchronisation

    def stop(self, timeout: float = 10) -> None:
        from harness.processes import stop_process

        proc, self.proc = self.proc, None
        stop_process(proc, timeout)


NGINX_FILES = """
        location /simple/ {{
            alias {root}/simple/;
            types {{ }}
            default_type application/octet-stream;
        }}
"""

# curl turns the backslash-n into a newline itself.
CURL_FORMAT = "%{http_code} %{size_download} %{time_total}\\n"


def curl_at_once(urls: Sequence[str], size: int, timeout: float = 300) -> float:
    """Start one curl per URL at the same moment; MB/s. For one URL: size over curl's own
    time_total (the start of a process is not the server's); for several, the aggregate:
    bytes of all over the wall time from the first start to the last end, as
    ../shared/bench/ measures them.

    Raises:
        BenchError: a download that is not a 200 of `size` bytes.
    """
    curl = shutil.which("curl")
    if curl is None:
        raise BenchError("curl is not installed (apt-get install curl)")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([curl, "-sS", "-o", "/dev/null", "--max-time", str(int(timeout)), "-w",
                          CURL_FORMAT, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for url in urls
    ]  # fmt: skip
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout + 30)
        outs.append((out.decode().split(), err.decode().strip()))
    wall = time.perf_counter() - t0
    for fields, err in outs:
        if len(fields) < 3 or fields[0] != "200" or int(float(fields[1])) != size:
            raise BenchError(f"curl: {fields} {err}")
    if len(urls) == 1:
        return size / MB / float(outs[0][0][2])
    return len(urls) * size / MB / wall


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def file_speed(servers: dict[str, str], size: int, single_rounds: int, par_rounds: int, streams: int,
               log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Warm-file MB/s of each server, 1 stream and `streams` at once, the servers' order
    rotated every round so that the machine's drift falls on all alike."""
    names = list(servers)
    figures: dict[str, dict[str, list[float]]] = {n: {"single": [], "parallel": []} for n in names}
    load = [loadavg()]
    for kind, rounds, count in (("single", single_rounds, 1), ("parallel", par_rounds, streams)):
        for i in range(rounds):
            order = names[i % len(names):] + names[: i % len(names)]
            for name in order:
                figures[name][kind].append(curl_at_once([servers[name]] * count, size))
            log(f"  files {kind} round {i + 1}/{rounds}: "
                + ", ".join(f"{n} {figures[n][kind][-1]:.0f}" for n in names))  # fmt: skip
            load.append(loadavg())
    out: dict[str, Any] = {"file_bytes": size, "streams": streams, "loadavg": load, "client": "curl, -o /dev/null"}
    for name in names:
        out[name] = {kind: {"rounds": figures[name][kind], "median": statistics.median(figures[name][kind])}
                     for kind in ("single", "parallel")}  # fmt: skip
    for kind in ("single", "parallel"):
        out[f"ratio_{kind}"] = out["synapse"][kind]["median"] / out["nginx"][kind]["median"]
        # Per-round ratios (same round, adjacent runs): how noisy the comparison was.
        out[f"round_ratios_{kind}"] = [a / b for a, b in zip(figures["synapse"][kind], figures["nginx"][kind])]
    return out


# -- measurements ----------------------------------------------------------------------------


def measure_download_rss(pid: int, url: str, size: int, sha256: str) -> dict[str, Any]:
    """Download `url` once while sampling the RSS of `pid`; check length and sha256."""
    before = read_status_kb(pid, "VmRSS")
    hwm_ok = reset_hwm(pid)
    hasher = hashlib.sha256()
    with RssSampler(pid) as sampler:
        got, seconds = download(url, hasher=hasher)
        time.sleep(SETTLE_SECONDS)  # see SETTLE_SECONDS
    after = read_status_kb(pid, "VmRSS")
    if got != size or hasher.hexdigest() != sha256:
        raise BenchError(f"{url}: got {got} bytes sha256 {hasher.hexdigest()}, expected {size} bytes {sha256}")
    peak = max(sampler.peak, before, after)
    hwm = read_status_kb(pid, "VmHWM") if hwm_ok else None
    return {
        "before_bytes": before,
        "peak_bytes": peak,
        "after_bytes": after,
        "hwm_bytes": hwm,
        "increase_mb": (peak - before) / MB,
        "hwm_increase_mb": (hwm - before) / MB if hwm is not None else None,
        "samples": len(sampler.samples),
        "seconds": seconds,
        "mb_per_s": size / MB / seconds,
    }


def summarize_memory(runs: list[dict[str, Any]]) -> dict[str, Any]:
    increases = [r["increase_mb"] for r in runs]
    hwms = [r["hwm_increase_mb"] for r in runs if r["hwm_increase_mb"] is not None]
    return {
        "runs": runs,
        "median_increase_mb": statistics.median(increases),
        "max_increase_mb": max(increases),
        "max_hwm_increase_mb": max(hwms) if hwms else None,
        # Memory is not noisy the way timings are: judge the worst run, not the median.
        "under_target": max(increases) < RSS_TARGET_MB,
        "median_mb_per_s": statistics.median(r["mb_per_s"] for r in runs),
    }


def alternating(rounds: int) -> Iterator[tuple[int, tuple[str, str]]]:
    """Round numbers with the order of the two servers swapped every round, so a drift in
    the machine's load does not always land on the same one."""
    for i in range(rounds):
        yield i, (("synapse", "reference") if i % 2 == 0 else ("reference", "synapse"))


def compare(label: str, rounds: int, measure: Callable[[str], float], log: Callable[[str], None]) -> dict[str, Any]:
    """Run `measure(server)` for both servers, interleaved; medians and their ratio."""
    values: dict[str, list[float]] = {"synapse": [], "reference": []}
    for i, order in alternating(rounds):
        for server in order:
            values[server].append(measure(server))
        log(f"  {label} round {i + 1}/{rounds}: synapse-pypi {values['synapse'][-1]:.1f}, "
            f"reference {values['reference'][-1]:.1f}")  # fmt: skip
    med = {k: statistics.median(v) for k, v in values.items()}
    return {
        "synapse": {"rounds": values["synapse"], "median": med["synapse"]},
        "reference": {"rounds": values["reference"], "median": med["reference"]},
        "ratio": med["synapse"] / med["reference"],
    }


# -- output ------------------------------------------------------------------------------------


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.1f}"


def render_table(s: dict[str, Any]) -> str:
    env, mem, pages, files = s["environment"], s["memory"], s["pages"], s["files"]
    out = [
        "",
        (
            f"synapse-pypi benchmark ({env['synapse']}, Twisted {env['twisted']}, Python {env['python']}, "
            f"{env['cpus']} CPUs, {env['db']}); MB = 10^6 bytes"
        ),
        f"code: commit {env['code']['commit']}"
        + (f", uncommitted changes in {', '.join(env['code']['uncommitted'])}" if env["code"]["uncommitted"] else ""),
        f"Synapse RSS after start-up and warm-up: {fmt_mb(env['synapse_rss_start_bytes'])} MB",
        "",
        (
            f"1. Synapse RSS while one client downloads a {mem['file_bytes'] / MB:.0f} MB wheel "
            f"(VmRSS every {SAMPLE_INTERVAL * 1000:.0f} ms; increase = peak - before)"
        ),
        f"   {'':6} {'run':>3} {'before':>8} {'peak':>8} {'after':>8} {'increase':>9} {'VmHWM+':>7} {'MB/s':>7}",
    ]
    for kind in ("cold", "warm"):
        for i, r in enumerate(mem[kind]["runs"], 1):
            hwm = "-" if r["hwm_increase_mb"] is None else f"{r['hwm_increase_mb']:.1f}"
            out.append(
                f"   {kind if i == 1 else '':6} {i:>3} {fmt_mb(r['before_bytes']):>8} {fmt_mb(r['peak_bytes']):>8} "
                f"{fmt_mb(r['after_bytes']):>8} {r['increase_mb']:>9.1f} {hwm:>7} {r['mb_per_s']:>7.0f}"
            )
    for kind in ("cold", "warm"):
        m = mem[kind]
        verdict = "yes" if m["under_target"] else "NO"
        out.append(
            f"   {kind}: increase median {m['median_increase_mb']:.1f} MB, worst {m['max_increase_mb']:.1f} MB "
            f"-> under {RSS_TARGET_MB:.0f} MB: {verdict}"
        )
    out.append("   (VmHWM+ = kernel peak-RSS over 'before', reset before each run: catches spikes between samples)")
    out += [
        "",
        (
            f"2. Warm /simple/{PAGE_PROJECT}/ ({pages['format']}, {pages['page_bytes']} bytes, "
            f"{pages['page_files']} files): requests/s at {pages['connections']} connections, "
            f"{pages['rounds']} rounds of {pages['seconds_per_round']} s per server"
        ),
        f"   client: {pages['client']}",
        f"   {'':16} {'median req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'CPU %':>6} {'CPU ms/req':>10}   rounds",
    ]
    for key, label in (("synapse", "synapse-pypi"), ("reference", "twisted static")):
        r = pages[key]
        rounds = ", ".join(f"{x:.0f}" for x in r["rounds"])
        out.append(
            f"   {label:16} {r['median']:>12.0f} {r['latency_p50_ms']:>7.2f} {r['latency_p99_ms']:>7.2f} "
            f"{r['server_cpu_percent']:>6.0f} {r['server_cpu_ms_per_request']:>10.3f}   {rounds}"
        )
    out.append(f"   ratio synapse-pypi / reference: {pages['ratio']:.3f}")
    out += [
        "",
        (
            f"3. Warm {files['file_bytes'] / MB:.0f} MB wheel from the cache: MB/s, 1 stream and {files['streams']} "
            "at once (aggregate)"
        ),
        f"   client: {files['client']}",
        f"   {'':24} {'1 stream':>9} {str(files['streams']) + ' streams':>11}   rounds (1 / {files['streams']})",
    ]
    labels = (("synapse", "synapse-pypi"), ("nginx", "nginx (sendfile)"), ("reference", "twisted static.File"))
    for key, label in labels:
        r = files[key]
        rounds = " / ".join(", ".join(f"{x:.0f}" for x in r[kind]["rounds"]) for kind in ("single", "parallel"))
        out.append(f"   {label:24} {r['single']['median']:>9.0f} {r['parallel']['median']:>11.0f}   {rounds}")
    for kind in ("single", "parallel"):
        spread = files[f"round_ratios_{kind}"]
        out.append(
            f"   ratio synapse-pypi / nginx, {kind}: {files[f'ratio_{kind}']:.2f} "
            f"(per round {min(spread):.2f}-{max(spread):.2f})"
        )
    out.append("   load average during the file rounds: " + ", ".join(f"{x[0]:.2f}" for x in files["loadavg"]))
    out += ["", f"total time {s['seconds']:.0f} s", ""]
    return "\n".join(out)


# -- the run -----------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    """The commit and the uncommitted changes the measured code came from (the package is
    installed editable, so the working tree is what Synapse imports)."""

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, check=False)
        # Only the trailing newline: porcelain lines start with a meaningful space.
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "synapse_pypi").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": dirty}


def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import synapse
    import twisted
    from harness.dists import build_wheel, project_dir, sha256_file
    from harness.nginx import NginxServer
    from harness.synapse import SynapseServer, free_port
    from harness.upstream import UpstreamServer

    t_start = time.monotonic()
    code = git_state()
    dists = work / "dists"
    accept = PAGE_TYPES[args.page_format]

    with phase("building wheels"):
        page_dir = project_dir(dists, PAGE_PROJECT)
        for i in range(args.page_files):
            build_wheel(page_dir, PAGE_PROJECT, f"1.{i}", requires=["bench-big>=1"], requires_python=">=3.8")
        big_dir = project_dir(dists, BIG_PROJECT)
        # One distinct wheel per cold run: the cache is content-addressed, so a cold
        # download needs bytes it has never seen.
        big = []
        for i in range(args.cold_runs):
            path = build_wheel(big_dir, BIG_PROJECT, f"{i + 1}.0", payload_size=args.file_size)
            big.append((path, path.stat().st_size, sha256_file(path)))
        speed = build_wheel(big_dir, BIG_PROJECT, "100.0", payload_size=args.speed_size)

    # The reference serves the same bytes under the same paths: /simple/<project>/ is an
    # `index` file (written below, once the homeserver has rendered the page) and the
    # wheel is the upstream's own file.
    ref_root = work / "reference"
    link_or_copy(big[0][0], ref_root / "simple" / BIG_PROJECT / big[0][0].name)
    link_or_copy(speed, ref_root / "simple" / BIG_PROJECT / speed.name)

    upstream = UpstreamServer(dists, work / "upstream")
    reference = StaticServer(ref_root, work / "static", accept)
    nginx = NginxServer(work / "nginx", NGINX_FILES.format(root=ref_root), free_port(), workers=2)
    hs: SynapseServer | None = None
    try:
        with phase("starting upstream, Synapse and the reference server"):
            upstream.start()  # first: its URL, with the port it bound, goes into Synapse's config
            hs = SynapseServer(
                work / "hs",
                db=args.db,
                # A long page_ttl: the benchmark measures the warm path, never a revalidation.
                module_config={"upstream_url": upstream.url, "page_ttl": "1h"},
            )
            hs.start(timeout=120)
            reference.start()
            nginx.start()
        assert hs.pid is not None
        pid = hs.pid
        page_path = f"/simple/{PAGE_PROJECT}/"

        status, _, page = get(hs.url + page_path, {"Accept": accept})
        if status != 200:
            raise BenchError(f"GET {page_path} from Synapse: {status} {page[:300]!r}")
        index_file = ref_root / "simple" / PAGE_PROJECT / "index"
        index_file.parent.mkdir(parents=True, exist_ok=True)
        index_file.write_bytes(page)
        status, _, ref_page = get(reference.url + page_path, {"Accept": accept})
        if status != 200 or ref_page != page:
            raise BenchError(f"reference serves different bytes for {page_path} ({status}, {len(ref_page)} bytes)")
        status, _, body = get(hs.url + f"/simple/{BIG_PROJECT}/", {"Accept": accept})
        if status != 200:
            raise BenchError(f"GET /simple/{BIG_PROJECT}/ from Synapse: {status} {body[:300]!r}")
        rss_start = read_status_kb(pid, "VmRSS")

        def file_url(base: str, path: Path) -> str:
            return f"{base}/simple/{BIG_PROJECT}/{path.name}"

        # 1. Memory.
        memory: dict[str, Any] = {"file_bytes": big[0][1], "target_mb": RSS_TARGET_MB}
        with phase("memory, cold"):
            memory["cold"] = summarize_memory(
                [measure_download_rss(pid, file_url(hs.url, p), size, sha) for p, size, sha in big[: args.cold_runs]]
            )
        with phase("memory, warm"):
            p, size, sha = big[0]
            memory["warm"] = summarize_memory(
                [measure_download_rss(pid, file_url(hs.url, p), size, sha) for _ in range(args.warm_runs)]
            )
        memory["hwm_available"] = memory["cold"]["runs"][0]["hwm_bytes"] is not None

        # 2. Pages.
        client = pick_client(args.client, work)
        urls = {"synapse": hs.url + page_path, "reference": reference.url + page_path}
        with phase(f"pages ({client.name})"):
            for url in urls.values():  # warm-up: connections, caches, first-call paths
                client.run(url, 1, args.connections, accept)
            details: dict[str, list[dict[str, Any]]] = {"synapse": [], "reference": []}

            pids = {"synapse": pid, "reference": reference.pid}

            def page_round(server: str) -> float:
                cpu0 = cpu_seconds(pids[server])
                r = client.run(urls[server], args.page_seconds, args.connections, accept)
                cpu = cpu_seconds(pids[server]) - cpu0
                # Whether the server was the bottleneck (near 100% of a core for a
                # single-threaded reactor) and what one request costs it.
                r["server_cpu_percent"] = 100 * cpu / r["seconds"]
                r["server_cpu_ms_per_request"] = 1000 * cpu / r["requests"]
                details[server].append(r)
                return float(r["rps"])

            pages = compare("pages req/s", args.rounds, page_round, log)
            for server in ("synapse", "reference"):
                pages[server]["latency_p50_ms"] = statistics.median(r["latency_p50_ms"] for r in details[server])
                for key in ("latency_p99_ms", "server_cpu_percent", "server_cpu_ms_per_request"):
                    pages[server][key] = statistics.median(r[key] for r in details[server])
                pages[server]["details"] = details[server]
            pages.update(
                client=client.name,
                connections=args.connections,
                seconds_per_round=args.page_seconds,
                rounds=args.rounds,
                format=accept,
                page_bytes=len(page),
                page_files=args.page_files,
            )

        # 3. File throughput, against nginx.
        speed_size = speed.stat().st_size
        furls = {
            "synapse": file_url(hs.url, speed),
            "nginx": file_url(nginx.url, speed),
            "reference": file_url(reference.url, speed),
        }
        with phase("file throughput (curl)"):
            for url in furls.values():  # warm-up: the homeserver caches it, then all from the page cache
                download(url)
            files = file_speed(furls, speed_size, args.file_rounds, args.par_rounds, args.streams, log)

        if not hs.running:
            raise BenchError(f"Synapse exited during the benchmark:\n{hs.log_tail()}")
        return {
            "environment": {
                "synapse": f"Synapse {synapse.__version__}",
                "twisted": twisted.__version__,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "kernel": platform.release(),
                "db": args.db,
                "synapse_start_seconds": hs.start_seconds,
                "synapse_rss_start_bytes": rss_start,
                "code": code,
            },
            "memory": memory,
            "pages": pages,
            "files": files,
            "seconds": time.monotonic() - t_start,
        }
    finally:
        nginx.stop()
        reference.stop()
        if hs is not None:
            hs.dispose()
        upstream.stop()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    p.add_argument("--file-size", type=int, default=200_000_000, help="payload bytes of the big wheel (default 200 MB)")
    p.add_argument("--cold-runs", type=int, default=3, help="cold downloads, one fresh wheel each (default 3)")
    p.add_argument("--warm-runs", type=int, default=3, help="warm downloads for the memory figure (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the page comparison (default 5)")
    # A 100 MB download takes a fraction of a second here, so file rounds are many and cheap.
    p.add_argument("--file-rounds", type=int, default=9, help="single-stream downloads per server (default 9)")
    p.add_argument("--par-rounds", type=int, default=5, help="rounds of parallel downloads per server (default 5)")
    p.add_argument("--streams", type=int, default=8, help="parallel downloads per round (default 8)")
    p.add_argument("--speed-size", type=int, default=100_000_000,
                   help="payload bytes of the wheel for MB/s (default 100 MB)")  # fmt: skip
    p.add_argument("--page-seconds", type=int, default=3, help="seconds per server per page round (default 3)")
    p.add_argument("--connections", type=int, default=16, help="concurrent page clients (default 16)")
    p.add_argument("--page-files", type=int, default=40, help="files listed on the benchmarked page (default 40)")
    p.add_argument("--page-format", choices=sorted(PAGE_TYPES), default="json", help="page format (default json)")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="page load client: wrk when installed (auto), or force one")  # fmt: skip
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite", help="Synapse's database (default sqlite)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = p.parse_args(argv)
    for name in ("cold_runs", "warm_runs", "rounds", "file_rounds", "page_seconds", "connections", "file_size",
                 "par_rounds", "streams", "speed_size"):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_static-server"]:
        return static_server_main(argv[1:])
    return run_benchmark(parse_args(argv), run, render_table, "synapse-pypi-bench-", json_on_stdout=True)


if __name__ == "__main__":
    sys.exit(main())
