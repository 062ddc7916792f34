#!/usr/bin/env python3
"""What core metadata extracted from cached wheels saves: requests and bytes of pip and uv.

    python benchmarks/bench_metadata.py --json out.json [--before REV]

The upstream (tests/harness/upstream_server.py) offers no PEP 658 metadata, as many
mirrors of the default index do. A small project graph makes the resolvers look at wheels
they do not install: `bench-app` needs `bench-liba` and `bench-libb`; the newest
`bench-liba` needs a `bench-libc` that does not exist, so both resolvers must read its
metadata and go back to the version before. Every wheel carries a few MB of payload, so
bytes show what a wheel read only for its metadata costs.

For each client (pip, uv) and each version of the module (`--before`, default the commit this
branch started from, exported with `git archive` and put first on Synapse's PYTHONPATH; and
the working tree), on a fresh homeserver:

* *cold*: an install into an empty venv through the empty mirror: what the mirror asked of
  the upstream (requests, bytes), and what the client asked of the mirror (requests by kind,
  bytes).
* *warm*: the same install into another empty venv once the mirror holds every file it
  fetched (and, with this branch, has extracted their metadata): what the client asked of
  the mirror.

Upstream requests are the upstream server's own hit counts; upstream bytes are those hits
times each file's size, plus the pages as the mirror asks for them. Client requests and
bytes come from Synapse's access log. Nothing here is timed: the figures are counts.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _common import BenchError, phase, poll, run_benchmark

BASE_COMMIT = "03ce646"
PAYLOAD = 3_000_000
ACCESS = re.compile(r'Processed request: .* (?P<bytes>\d+)B (?P<status>\d+)!? "(?P<method>[A-Z]+) (?P<path>\S+) HTTP')


def build_projects(root: Path) -> list[Path]:
    from harness.dists import build_wheel, project_dir

    wheels = [
        build_wheel(project_dir(root, "bench-app"), "bench-app", "1.0", requires=["bench-liba", "bench-libb"],
                    payload_size=PAYLOAD, metadata_sidecar=False),
        build_wheel(project_dir(root, "bench-liba"), "bench-liba", "1.0", requires=["bench-libc>=1"],
                    payload_size=PAYLOAD, metadata_sidecar=False),
        build_wheel(project_dir(root, "bench-liba"), "bench-liba", "1.1", requires=["bench-libc>=1"],
                    payload_size=PAYLOAD, metadata_sidecar=False),
        # The newest needs what nobody has: the resolvers must read it and go back.
        build_wheel(project_dir(root, "bench-liba"), "bench-liba", "1.2", requires=["bench-libc>=5"],
                    payload_size=PAYLOAD, metadata_sidecar=False),
        build_wheel(project_dir(root, "bench-libb"), "bench-libb", "1.0", payload_size=PAYLOAD,
                    metadata_sidecar=False),
        build_wheel(project_dir(root, "bench-libb"), "bench-libb", "2.0", payload_size=PAYLOAD,
                    metadata_sidecar=False),
        build_wheel(project_dir(root, "bench-libc"), "bench-libc", "1.0", payload_size=PAYLOAD,
                    metadata_sidecar=False),
    ]  # fmt: skip
    return wheels


def export_module(rev: str, work: Path) -> tuple[list[Path], str]:
    """`synapse_pypi/` as committed at `rev`, for Synapse's PYTHONPATH (ahead of the installed one)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", rev + "^{commit}"],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        raise BenchError(f"git rev-parse {rev}: {getattr(e, 'stderr', '') or e}") from None
    dest = work / f"module-{commit[:12]}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "synapse_pypi"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return [dest], f"commit {commit[:12]}"


def client_requests(log_text: str, since: int) -> dict[str, Any]:
    """Requests to /simple/ after offset `since` of the log, by kind, and the bytes sent."""
    kinds: Counter[str] = Counter()
    sent = 0
    for m in ACCESS.finditer(log_text, since):
        path, method, status = m["path"], m["method"], m["status"]
        if not path.startswith("/simple/"):
            continue
        sent += int(m["bytes"])
        if path.endswith("/"):
            kinds["pages"] += 1
        elif path.endswith(".metadata"):
            kinds["metadata GETs" if method == "GET" else "metadata HEADs"] += 1
        elif method == "HEAD":
            kinds["file HEADs"] += 1
        elif status == "206":
            kinds["range GETs"] += 1
        else:
            kinds["whole-file GETs"] += 1
    return {"requests": dict(kinds), "total": sum(kinds.values()), "bytes": sent}


def upstream_figures(upstream: Any, sizes: dict[str, int]) -> dict[str, Any]:
    hits = upstream.hits()
    files = {p: n for p, n in hits.items() if p.startswith("/files/")}
    pages = {p: n for p, n in hits.items() if p.startswith("/simple/")}
    return {
        "requests": sum(hits.values()),
        "file_requests": sum(files.values()),
        "page_requests": sum(pages.values()),
        "bytes": sum(n * sizes.get(p, 0) for p, n in hits.items()),
        "files": files,
    }


def one_run(client: str, version: str, python_path: list[Path], work: Path, dists: Path,
            sizes: dict[str, int], wheels: int) -> dict[str, Any]:  # fmt: skip
    from harness.clients import describe, make_venv, pip_install, uv_install
    from harness.synapse import SynapseServer
    from harness.upstream import UpstreamServer

    install = pip_install if client == "pip" else uv_install
    upstream = UpstreamServer(dists, work / "upstream").start()
    hs = SynapseServer(work / "hs", module_config={"upstream_url": upstream.url}, python_path=python_path)
    try:
        hs.start(timeout=120)
        upstream.reset_hits()
        out: dict[str, Any] = {}
        for phase_name in ("cold", "warm"):
            mark = len(hs.log_text())
            result = install(make_venv(work / f"venv-{phase_name}"), hs.index_url, "bench-app")
            if result.returncode != 0:
                raise BenchError(f"{client} install ({version}, {phase_name}) failed:\n{describe(result)}")
            # Access log lines are written as responses finish; one more request, logged
            # after all of the install's, marks the end.
            marker = f"/_matrix/client/versions?end-of={client}-{version}-{phase_name}"
            hs.request("GET", marker)
            poll(lambda marker=marker: marker in hs.log_text(), what="the marker request logged")
            out[phase_name] = {"client": client_requests(hs.log_text(), mark), "upstream": upstream_figures(upstream, sizes)}
            if phase_name == "cold" and version != "before":
                # The extraction runs after each commit, in the background: wait for all.
                poll(lambda: hs.log_text().count("extracted core metadata of") >= out["cold"]["upstream"]["file_requests"],
                     what="core metadata of every cached wheel", timeout=120)  # fmt: skip
            upstream.reset_hits()
        out["wheels"] = wheels
        return out
    finally:
        hs.dispose()
        upstream.stop()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from harness.clients import uv_bin

    t0 = time.monotonic()
    dists = work / "dists"
    with phase("building wheels"):
        wheels = build_projects(dists)
    sizes = {f"/files/{w.parent.name}/{w.name}": w.stat().st_size for w in wheels}
    before_path, before_desc = export_module(args.before, work)
    versions = {"before": (before_path, before_desc), "after": ([], "working tree")}
    results: dict[str, Any] = {"versions": {k: v[1] for k, v in versions.items()}, "runs": {}}
    for client in ("pip", "uv"):
        for version, (python_path, desc) in versions.items():
            with phase(f"{client}, {version} ({desc})"):
                results["runs"][f"{client}/{version}"] = one_run(
                    client, version, python_path, work / f"{client}-{version}", dists, sizes, len(wheels)
                )
    from harness.clients import PIP, tool_python

    # The pip the installs ran (the harness's default), not the one of this interpreter.
    pip_version = subprocess.run([tool_python(PIP), "-m", "pip", "--version"], capture_output=True, text=True).stdout
    uv_version = subprocess.run([uv_bin(), "--version"], capture_output=True, text=True).stdout
    results["clients"] = {"pip": pip_version.split(" from ")[0].strip(), "uv": uv_version.strip()}
    results["seconds"] = time.monotonic() - t0
    return results


def render_table(s: dict[str, Any]) -> str:
    out = [
        "",
        f"core metadata benchmark: {s['clients']['pip']}, {s['clients']['uv']}; MB = 10^6 bytes",
        f"before = {s['versions']['before']}, after = {s['versions']['after']}",
        "",
        f"   {'':16} {'upstream req':>12} {'upstream MB':>11} {'client req':>10} {'client MB':>9}   client requests by kind",
    ]
    for key, run_ in s["runs"].items():
        for phase_name in ("cold", "warm"):
            r = run_[phase_name]
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["client"]["requests"].items()))
            out.append(
                f"   {key + ' ' + phase_name:16} {r['upstream']['requests']:>12} {r['upstream']['bytes'] / 1e6:>11.1f} "
                f"{r['client']['total']:>10} {r['client']['bytes'] / 1e6:>9.1f}   {kinds}"
            )
    out += ["", f"total time {s['seconds']:.0f} s", ""]
    return "\n".join(out)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    p.add_argument("--before", default=BASE_COMMIT, help=f"the commit to compare with (default {BASE_COMMIT})")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(parse_args(list(sys.argv[1:] if argv is None else argv)), run, render_table,
                         "synapse-pypi-bench-metadata-")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
