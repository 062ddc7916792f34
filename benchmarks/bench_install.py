#!/usr/bin/env python3
"""Benchmark a cold install through the mirror and how long its rooms take to catch up.

    .venv-test/bin/python benchmarks/bench_install.py [--client pip|uv|both] [--ipfs] [--json out.json]

The project graph is the competitor benchmark's (`../shared/bench/make_upstream.py`: 15 apps
that resolve to 40 distributions, with `<2` pins and `Requires-Python: >=4.0` decoys), served
by the tests' real upstream (`tests/harness/upstream_server.py`, PEP 691 and PEP 503). For
each client, on a fresh homeserver (SQLite; `--ipfs` adds a real Kubo node stand-in as its
storage backend, as `synapse-pypi run` has): a cold `pip install` (or `uv pip install`) of the
15 apps into an empty venv, timed; then the script waits until every file the mirror fetched
has the bot's valid attestation in its project's room, and reports how long after the install
ended the last one landed. A thread samples the Matrix queue's length (the admin API's
`/trust`) every `--sample` seconds from before the install until the last attestation.

This measures the module's side of issue 11 (the room catching up after the install); the
install time against proxpi and nginx comes from `../shared/bench/bench.py`, which runs them
side by side. Nothing is asserted; every process is stopped by its PID (the harness classes)
and the work directory removed unless --keep.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import BenchError, log, phase, poll, run_benchmark
from harness.clients import make_venv, pip_install, uv_install
from harness.kubo import KuboNodeProcess
from harness.matrix import Client
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer

APPS = [f"synb-app-{i:02d}" for i in range(15)]


def synthetic_upstream(bench_dir: Path, work: Path) -> Path:
    """The competitor benchmark's projects, laid out as the test upstream serves them."""
    generator = bench_dir / "make_upstream.py"
    if not generator.exists():
        raise BenchError(f"{generator} not found (--bench-dir names ../shared/bench)")
    out = work / "generated"
    subprocess.run([sys.executable, str(generator), "--out", str(out)], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    dists = work / "dists"
    for wheel in sorted((out / "packages").glob("*/*.whl")):
        project = dists / wheel.parent.name
        project.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheel, project / wheel.name)
    return dists


class QueueSampler(threading.Thread):
    """Samples the Matrix queue's length through the admin API until stopped."""

    def __init__(self, admin: Client, t0: float, interval: float):
        super().__init__(daemon=True)
        self.admin, self.t0, self.interval = admin, t0, interval
        self.samples: list[tuple[float, int]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                queue = self.admin.call("GET", "/_synapse/pypi/v1/trust")["queue"]
                self.samples.append((round(time.monotonic() - self.t0, 2), queue["length"] + queue["running"]))
            except Exception as e:  # a sample lost under load is reported, not fatal
                log(f"  queue sample failed: {e}")
            self.stop_event.wait(self.interval)


def fetched_files(upstream: UpstreamServer) -> list[tuple[str, str]]:
    """(project, file name) of every file the mirror fetched from the upstream."""
    files = []
    for path in upstream.hits():
        parts = path.split("?")[0].strip("/").split("/")  # /files/<project>/<file>
        if len(parts) == 3 and parts[0] == "files" and not parts[2].endswith(".metadata"):
            files.append((parts[1], parts[2]))
    return sorted(set(files))


def attested_by_bot(admin: Client, bot: str, project: str, filename: str) -> bool:
    status = admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")
    return any(a["publisher"] == bot and a["verdict"] == "valid" for a in status["attestations"])


def one_client(args: argparse.Namespace, work: Path, dists: Path, client: str) -> dict[str, Any]:
    with ExitStack() as stack:
        upstream = UpstreamServer(dists, work / f"upstream-{client}")
        stack.callback(upstream.stop)
        with phase(f"{client}: starting the upstream and a fresh homeserver"):
            upstream.start()
            module: dict[str, Any] = {"upstream_url": upstream.url}
            if args.ipfs:
                node = KuboNodeProcess(work / f"kubo-{client}" / "repo", work / f"kubo-{client}")
                stack.callback(node.stop)
                node.start()
                module["storage_providers"] = [{"module": "synapse_pypi.storage.KuboStorage",
                                                "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}]
            hs = SynapseServer(work / f"hs-{client}", module_config=module)
            stack.callback(hs.dispose)
            hs.start()
            admin = Client.register(hs, "admin", admin=True)
            bot = f"@pypi-bot:{hs.server_name}"
        python = make_venv(work / f"venv-{client}")
        t0 = time.monotonic()
        sampler = QueueSampler(admin, t0, args.sample)
        sampler.start()
        try:
            with phase(f"{client}: cold install of {len(APPS)} apps"):
                install = pip_install if client == "pip" else uv_install
                result = install(python, hs.index_url, *APPS, timeout=600)
                installed_s = time.monotonic() - t0
                if result.returncode != 0:
                    raise BenchError(f"{client} install failed:\n{result.stdout}\n{result.stderr}")
            files = fetched_files(upstream)
            upstream_requests = sum(upstream.hits().values())
            log(f"  installed in {installed_s:.2f} s; the mirror fetched {len(files)} files "
                f"({upstream_requests} upstream requests)")
            with phase(f"{client}: waiting for the bot's attestation of each of the {len(files)} files"):
                pending = set(files)
                landed: dict[tuple[str, str], float] = {}

                def all_landed() -> bool | None:
                    for item in sorted(pending):
                        if attested_by_bot(admin, bot, *item):
                            landed[item] = time.monotonic() - t0
                            pending.discard(item)
                    return not pending or None

                poll(all_landed, what="every file's attestation", timeout=args.timeout)
        finally:
            sampler.stop_event.set()
            sampler.join()
    last = max(landed.values())
    return {
        "client": client,
        "install_s": installed_s,
        "files": len(files),
        "upstream_requests": upstream_requests,
        "last_attestation_after_install_s": max(0.0, last - installed_s),
        "attestations_landed_during_install": sum(1 for t in landed.values() if t <= installed_s),
        "queue_max": max((n for _, n in sampler.samples), default=0),
        "queue_samples": sampler.samples,
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    with phase("generating the synthetic upstream"):
        dists = synthetic_upstream(args.bench_dir, work)
    clients = ["pip", "uv"] if args.client == "both" else [args.client]
    return {"ipfs": args.ipfs, "runs": [one_client(args, work, dists, c) for c in clients]}


def render_table(s: dict[str, Any]) -> str:
    rows = ["| client | cold install | files | upstream requests | attested during install "
            "| last attestation after install | queue max |",
            "|---|---|---|---|---|---|---|"]
    for r in s["runs"]:
        rows.append(f"| {r['client']} | {r['install_s']:.2f} s | {r['files']} | {r['upstream_requests']} "
                    f"| {r['attestations_landed_during_install']} | {r['last_attestation_after_install_s']:.1f} s "
                    f"| {r['queue_max']} |")
    lines = ["\n".join(rows), ""]
    for r in s["runs"]:
        # The queue's length over time, thinned to about 30 points.
        step = max(1, len(r["queue_samples"]) // 30)
        points = ", ".join(f"{t:.1f}s:{n}" for t, n in r["queue_samples"][::step])
        lines.append(f"{r['client']} queue length (time since the install started: jobs): {points}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--client", choices=["pip", "uv", "both"], default="both")
    p.add_argument("--ipfs", action="store_true", help="give the homeserver a Kubo node, as synapse-pypi run does")
    p.add_argument("--bench-dir", type=Path, default=REPO.parent / "shared" / "bench",
                   help="the competitor benchmark's directory (for make_upstream.py)")
    p.add_argument("--sample", type=float, default=0.25, help="seconds between queue samples (default 0.25)")
    p.add_argument("--timeout", type=float, default=300, help="give up waiting for attestations after this")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-install-")


if __name__ == "__main__":
    sys.exit(main())
