#!/usr/bin/env python3
"""Memory and stop time of the one-machine set-up (`synapse-pypi run`), all on 127.0.0.1.

    python benchmarks/bench_run.py --json out.json [--compare-rev REV]

1. Homeserver RSS just after start: a plain Synapse (the sample config without `modules`)
   against the same Synapse with the module (no storage backends), started one after the
   other, `--rounds` times, each read after `--settle` seconds idle. Goal: at most 30 MB more.
2. The `synapse-pypi run` wrapper process itself, once it has printed its banner, against a
   bare `python -c pass` of the same interpreter; and its children (Synapse, the IPFS node).
3. The IPFS node (synapse_pypi_node) while it adds a `--file-mb` file (a streamed upload), while
   it `cat`s it whole, while it `cat`s it with `length` (as the module asks), and a second node
   while it `cat`s it from the first over bitswap: each node's RSS before and its peak (VmHWM,
   reset through /proc/<pid>/clear_refs, and VmRSS sampled every 20 ms). Goal: growth at most
   30 MB.
4. Stop time: from SIGTERM, and from SIGINT, to the wrapper's exit, `--rounds` times each,
   with everything it started gone (it reports each child stopped).

With `--compare-rev REV`, sections 2-4 are also measured for that commit's code (exported with
`git archive`, first on PYTHONPATH), interleaved with the working tree's, so that before and
after come from the same run on the same machine. Nothing here asserts anything: it reports.
MB = 2^20 bytes here (RSS is counted in kB pages). Every process it starts is stopped by PID;
the work directory is removed unless --keep. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import BenchError, export_commit, log, median, phase, poll, read_status_kb, run_benchmark
from harness.kubo import KuboNodeProcess, PeakRss, random_file
from harness.synapse import NOWHERE_UPSTREAM, SynapseServer, free_port

MB = 1024 * 1024
GOAL_MB = 30
READY_LINE = "Ctrl-C stops it."


# -- measuring -----------------------------------------------------------------------------------


def peak_result(peak: PeakRss) -> dict[str, Any]:
    """A PeakRss reading in bytes."""
    return {"before": peak.before * 1024, "peak": peak.peak * 1024, "after": peak.after * 1024,
            "growth": peak.growth_kb * 1024, "hwm": peak.hwm}


def settle_rss(pid: int, seconds: float) -> int:
    time.sleep(seconds)  # idle time before reading, as SYNAPSE-FACTS measured (not a synchronisation)
    return read_status_kb(pid, "VmRSS")


# -- 1. homeserver -------------------------------------------------------------------------------


def homeserver_rss(work: Path, rounds: int, settle: float) -> dict[str, Any]:
    plain: list[int] = []
    module: list[int] = []
    for i in range(rounds):
        # Alternate which goes first, so that the machine's drift falls on both.
        order = [("plain", plain), ("module", module)]
        if i % 2:
            order.reverse()
        for kind, out in order:
            extra = {"modules": None} if kind == "plain" else {}
            hs = SynapseServer(work / f"hs-{kind}-{i}", module_config={"storage_providers": []}, extra_config=extra)
            try:
                hs.start()
                if kind == "module":
                    poll(lambda hs=hs: "synapse_pypi" in hs.log_text(), what="module loaded")
                out.append(settle_rss(hs.pid or 0, settle))
            finally:
                hs.dispose()
            log(f"  round {i + 1}: {kind} {out[-1] / MB:.0f} MB")
    diff = [m - p for p, m in zip(plain, module)]
    return {"plain": plain, "module": module, "difference": diff, "median_plain": median(plain),
            "median_module": median(module), "median_difference": median(module) - median(plain)}


# -- 2 and 4. the run wrapper --------------------------------------------------------------------


class Wrapper:
    """One `synapse-pypi run` (the working tree's, or an export's on PYTHONPATH)."""

    def __init__(self, work: Path, name: str, python_path: Path | None) -> None:
        self.data = work / name
        self.port, self.ipfs_port = free_port(), free_port()
        self.out_path = work / f"{name}.out"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if python_path is not None:
            env["PYTHONPATH"] = str(python_path)
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(self.data), "--port", str(self.port),
             "--ipfs-api-port", str(self.ipfs_port), "--upstream", NOWHERE_UPSTREAM],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work, env=env,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")

    def ready(self) -> None:
        poll(lambda: READY_LINE in self.text() or self.proc.poll() is not None, what="synapse-pypi run ready",
             timeout=180)
        if self.proc.poll() is not None:
            raise BenchError(f"synapse-pypi run exited: {self.text()[-2000:]}")

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(p) for p in f.read().split()]

    def stop(self, sig: int, timeout: float = 120) -> float:
        """Send `sig`; seconds until the wrapper exited."""
        t0 = time.perf_counter()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"synapse-pypi run did not stop within {timeout:.0f} s of {signal.Signals(sig).name}")
        return time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.out.close()


def bare_python_rss() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let it finish starting (a reading, not a synchronisation)
        return read_status_kb(proc.pid, "VmRSS")
    finally:
        proc.communicate(b"")


def wrapper_runs(work: Path, rounds: int, sources: dict[str, Path | None], settle: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sources:
        out[name] = {"wrapper_rss": [], "synapse_rss": [], "node_rss": [], "stop_s": {"SIGTERM": [], "SIGINT": []},
                     "left_behind": 0, "killed": 0}
    n = 0
    for i in range(rounds):
        for sig in (signal.SIGTERM, signal.SIGINT):
            names = list(sources)
            if (i + (sig == signal.SIGINT)) % 2:
                names.reverse()
            for name in names:
                n += 1
                w = Wrapper(work, f"run-{name}-{n}", sources[name])
                try:
                    w.ready()
                    children = w.children()
                    rss = {pid: settle_rss(pid, 0) for pid in children}
                    out[name]["wrapper_rss"].append(settle_rss(w.proc.pid, settle))
                    node_pid = json.loads((w.data / "ipfs-node.json").read_text())["pid"]
                    out[name]["node_rss"].append(rss.get(node_pid, 0))
                    out[name]["synapse_rss"].append(sum(v for pid, v in rss.items() if pid != node_pid))
                    seconds = w.stop(sig)
                finally:
                    w.kill()
                out[name]["stop_s"][signal.Signals(sig).name].append(seconds)
                out[name]["left_behind"] += sum(1 for pid in children if os.path.exists(f"/proc/{pid}"))
                out[name]["killed"] += w.text().count("killed")
                log(f"  {name}: {signal.Signals(sig).name} stopped it in {seconds:.2f} s; wrapper RSS "
                    f"{out[name]['wrapper_rss'][-1] / MB:.0f} MB")
    for r in out.values():
        r["median_wrapper_rss"] = median(r["wrapper_rss"])
        r["median_synapse_rss"] = median(r["synapse_rss"])
        r["median_node_rss"] = median(r["node_rss"])
        r["median_stop_s"] = {k: median(v) for k, v in r["stop_s"].items()}
    return out


# -- 3. the node ---------------------------------------------------------------------------------


def add(node: KuboNodeProcess, path: Path) -> str:
    """`add` of a file as a streamed multipart upload with a Content-Length (as treq sends a
    file), read from disk in 1 MB pieces; the CID."""
    boundary = uuid.uuid4().hex.encode()
    head = (b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" % boundary)
    tail = b"\r\n--%s--\r\n" % boundary
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=600)
    try:
        conn.putrequest("POST", "/api/v0/add")
        conn.putheader("Content-Type", "multipart/form-data; boundary=" + boundary.decode())
        conn.putheader("Content-Length", str(len(head) + path.stat().st_size + len(tail)))
        conn.endheaders()
        conn.send(head)
        with open(path, "rb") as f:
            while chunk := f.read(MB):
                conn.send(chunk)
        conn.send(tail)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise BenchError(f"add: {resp.status} {body[:300]!r}")
    return str(json.loads(body.splitlines()[-1])["Hash"])


def cat(node: KuboNodeProcess, cid: str, length: int | None = None) -> tuple[str, int, float]:
    """(sha256, bytes, seconds) of a `cat` read in 1 MB chunks."""
    query = f"arg={cid}&timeout=10m" + (f"&length={length}" if length is not None else "")
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=600)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/api/v0/cat?" + query)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"cat: {resp.status} {resp.read(300)!r}")
        h, n = hashlib.sha256(), 0
        while chunk := resp.read(MB):
            h.update(chunk)
            n += len(chunk)
    finally:
        conn.close()
    return h.hexdigest(), n, time.perf_counter() - t0


def node_memory(work: Path, name: str, data: Path, sha: str) -> dict[str, Any]:
    size = data.stat().st_size
    a = KuboNodeProcess(work / f"{name}-a" / "repo", work / f"{name}-a", gateway=False)
    b = KuboNodeProcess(work / f"{name}-b" / "repo", work / f"{name}-b", gateway=False)
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(a.stop)
        stack.callback(b.stop)
        a.start()
        b.start()
        with PeakRss(a.pid) as peak:
            t0 = time.perf_counter()
            cid = add(a, data)
            seconds = time.perf_counter() - t0
        out["add"] = {**peak_result(peak), "seconds": seconds}
        for label, length in (("cat", None), ("cat_length", size + 1)):
            with PeakRss(a.pid) as peak:
                got, n, seconds = cat(a, cid, length)
            if (got, n) != (sha, size):
                raise BenchError(f"{label}: {n} bytes, sha256 {got}; expected {size}, {sha}")
            out[label] = {**peak_result(peak), "seconds": seconds}
        if b.rpc("swarm/connect", [("arg", a.multiaddr)]).status != 200:
            raise BenchError("swarm/connect failed")
        with PeakRss(b.pid) as peak:
            got, n, seconds = cat(b, cid, size + 1)
        if (got, n) != (sha, size):
            raise BenchError(f"cat from a peer: {n} bytes, sha256 {got}")
        out["cat_from_peer"] = {**peak_result(peak), "seconds": seconds}
    for label, r in out.items():
        log(f"  {name}: {label} RSS {r['before'] / MB:.0f} -> peak {r['peak'] / MB:.0f} MB in {r['seconds']:.1f} s")
    return out


# -- output --------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / MB:.0f}"


def render_table(s: dict[str, Any]) -> str:
    env, hs = s["environment"], s["homeserver"]
    out = [
        "",
        f"synapse-pypi run: memory and stop time (Synapse {env['synapse']}, Python {env['python']}, "
        f"{env['cpus']} CPUs, SQLite); MB = 2^20 bytes; goal: at most {GOAL_MB} MB more",
        f"code: {', '.join(f'{k} = {v}' for k, v in env['sources'].items())}",
        "",
        f"1. Homeserver RSS {s['settle_s']:g} s after start, {len(hs['plain'])} rounds (alternating)",
        f"   plain Synapse (no modules):      median {mb(hs['median_plain'])} MB   runs {', '.join(map(mb, hs['plain']))}",
        f"   Synapse with synapse-pypi:       median {mb(hs['median_module'])} MB   runs {', '.join(map(mb, hs['module']))}",
        f"   the module's share:              median {mb(hs['median_difference'])} MB   per round "
        f"{', '.join(map(mb, hs['difference']))}",
        "",
        f"2. The `synapse-pypi run` wrapper, {s['settle_s']:g} s after its banner (bare python: {mb(s['bare_python'])} MB)",
    ]
    for name, r in s["wrappers"].items():
        out.append(f"   {name:14} wrapper {mb(r['median_wrapper_rss'])} MB ({', '.join(map(mb, r['wrapper_rss']))}); "
                   f"its Synapse {mb(r['median_synapse_rss'])} MB, its IPFS node {mb(r['median_node_rss'])} MB")
    out += ["", f"3. The IPFS node and a {s['file_mb']} MB file (RSS before -> peak; growth)"]
    for name, r in s["node"].items():
        for label, title in (("add", "add (upload)"), ("cat", "cat, whole"), ("cat_length", "cat, length=size+1"),
                             ("cat_from_peer", "cat from a peer (bitswap)")):
            x = r[label]
            out.append(f"   {name:14} {title:28} {mb(x['before']):>5} -> {mb(x['peak']):>5} MB   "
                       f"+{mb(x['growth']):>4} MB   {x['seconds']:6.1f} s")
    out += ["", "4. Stop time, from the signal to the wrapper's exit (median; runs)"]
    for name, r in s["wrappers"].items():
        for sig, runs in r["stop_s"].items():
            out.append(f"   {name:14} {sig:8} {r['median_stop_s'][sig]:6.2f} s   "
                       f"({', '.join(f'{x:.2f}' for x in runs)}); children left behind: {r['left_behind']}, "
                       f"killed: {r['killed']}")
    out += ["", f"total time {s['seconds']:.0f} s", ""]
    return "\n".join(out)


# -- the run -------------------------------------------------------------------------------------


@contextmanager
def big_file(work: Path, size_mb: int) -> Iterator[tuple[Path, str]]:
    path = work / "big.bin"
    sha = random_file(path, size_mb)
    try:
        yield path, sha
    finally:
        path.unlink()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import importlib.metadata

    import harness.kubo

    t0 = time.monotonic()
    sources: dict[str, Path | None] = {"working tree": None}
    described = {"working tree": subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                                                capture_output=True, text=True).stdout.strip()}
    exported: dict[str, tuple[Path, bool]] = {}
    if args.compare_rev:
        dest = work / "compare-src"
        commit, has_node = export_commit(args.compare_rev, dest)
        name = commit[:8]
        sources[name] = dest
        described[name] = f"commit {commit[:12]} (git archive)"
        exported[name] = (dest, has_node)
    summary: dict[str, Any] = {
        "environment": {"synapse": importlib.metadata.version("matrix-synapse"), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "sources": described},
        "settle_s": args.settle, "file_mb": args.file_mb,
    }
    with phase("1. homeserver RSS, plain and with the module"):
        summary["homeserver"] = homeserver_rss(work, args.rounds, args.settle)
    summary["bare_python"] = bare_python_rss()
    with phase("2 and 4. the run wrapper: RSS and stop time"):
        summary["wrappers"] = wrapper_runs(work, args.rounds, sources, args.settle)
    summary["node"] = {}
    with phase(f"3. the IPFS node and a {args.file_mb} MB file"), big_file(work, args.file_mb) as (data, sha):
        command, path = list(harness.kubo.NODE_COMMAND), list(harness.kubo.NODE_PYTHONPATH)
        for name in sources:
            harness.kubo.NODE_COMMAND[:], harness.kubo.NODE_PYTHONPATH[:] = command, path
            if name in exported:
                from _common import use_node_from

                use_node_from(*exported[name])
            summary["node"][name] = node_memory(work, name.replace(" ", "-"), data, sha)
        harness.kubo.NODE_COMMAND[:], harness.kubo.NODE_PYTHONPATH[:] = command, path
    summary["seconds"] = time.monotonic() - t0
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default 3)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds idle before reading RSS (default 5)")
    p.add_argument("--file-mb", type=int, default=200, help="size of the node's file in MB (default 200)")
    p.add_argument("--compare-rev", help="also measure the wrapper and the node of this commit")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) for a look")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-run-")


if __name__ == "__main__":
    sys.exit(main())
