"""`KuboNodeProcess`: a real Kubo node (the installed `synapse_pypi_node` over libkubo) in its
own process, plus a small stdlib HTTP client that shows the wire format as it is.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

#: How a node process is started: the installed package, as `synapse-pypi run` starts it.
#: (benchmarks/bench_ipfs.py --rev points this at a commit's copy.)
NODE_COMMAND: List[str] = [sys.executable, "-m", "synapse_pypi_node"]
#: Put first on the node's PYTHONPATH (for NODE_COMMAND pointing at a copy of the package).
NODE_PYTHONPATH: List[str] = []

Params = Sequence[Tuple[str, str]]


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def json_lines(self) -> List[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return "<Reply %d %r>" % (self.status, self.body[:200])


def request(
    port: int,
    method: str,
    path: str,
    params: Params = (),
    body: Union[None, bytes, Iterable[bytes]] = None,
    headers: Optional[Mapping[str, str]] = None,
    timeout: float = 60,
) -> Reply:
    """One request on a fresh connection; a non-bytes body is sent chunked."""
    if params:
        path = path + "?" + urllib.parse.urlencode(params)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=dict(headers or {}),
                     encode_chunked=chunked)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, resp.headers, data)
    finally:
        conn.close()


def multipart(files: Sequence[Tuple[str, bytes]], boundary: Optional[str] = None
              ) -> Tuple[bytes, str]:
    """A multipart/form-data body with one `file` part per (filename, content)."""
    boundary = boundary or uuid.uuid4().hex
    out = bytearray()
    for name, content in files:
        out += b"--%s\r\n" % boundary.encode()
        out += b'Content-Disposition: form-data; name="file"; filename="%s"\r\n' % (
            urllib.parse.quote(name).encode())
        out += b"Content-Type: application/octet-stream\r\n\r\n"
        out += content + b"\r\n"
    out += b"--%s--\r\n" % boundary.encode()
    return bytes(out), "multipart/form-data; boundary=" + boundary


class KuboNodeProcess:
    """One node process. `start()` waits for its port file; `stop()` ends it by PID."""

    def __init__(self, repo: Path, work: Path, gateway: bool = True,
                 extra_args: Sequence[str] = ()) -> None:
        self.repo = repo
        self.work = work
        self.gateway = gateway
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.info: Dict[str, Any] = {}
        self.log_path = work / "node.log"
        self._starts = 0

    # -- lifecycle

    def start(self, timeout: float = 60) -> KuboNodeProcess:
        self.work.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        port_file = self.work / ("ports-%d.json" % self._starts)
        # A restart comes back on the same ports, as a restarted daemon would.
        cmd = [
            *NODE_COMMAND, "--repo", str(self.repo),
            "--api-port", str(self.info.get("api") or 0),
            "--swarm-port", str(self.info.get("swarm") or 0), "--port-file", str(port_file),
        ]
        if self.gateway:
            cmd += ["--gateway-port", str(self.info.get("gateway") or 0)]
        cmd += self.extra_args
        log = open(self.log_path, "ab")
        try:
            # The node's own GC setting is what is tested, not the caller's.
            env = {k: v for k, v in os.environ.items() if k != "GOGC"}
            if NODE_PYTHONPATH:
                env["PYTHONPATH"] = os.pathsep.join([*NODE_PYTHONPATH, env.get("PYTHONPATH", "")])
            # Started in its work directory, so that `-m` finds the installed package, not a
            # checkout that happens to be the current directory.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.work)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError("kubo node exited with %s:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("kubo node not ready after %ss:\n%s"
                                   % (timeout, self.log_tail()))
            time.sleep(0.02)  # polling interval for the port file, not synchronisation
        self.info = json.loads(port_file.read_text())
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> Optional[int]:
        """Signal the node's PID and wait for it; SIGKILL if it does not go. Returns its code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    # -- addresses

    @property
    def api_port(self) -> int:
        return int(self.info["api"])

    @property
    def gateway_port(self) -> int:
        return int(self.info["gateway"])

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def multiaddr(self) -> str:
        return str(self.info["multiaddr"])

    # -- RPC

    def rpc(self, command: str, params: Params = (), **kwargs: Any) -> Reply:
        return request(self.api_port, "POST", "/api/v0/" + command, params, **kwargs)

    def add(self, content: bytes, name: str = "file.bin", params: Params = ()) -> Dict[str, Any]:
        body, ctype = multipart([(name, content)])
        reply = self.rpc("add", params, body=body, headers={"Content-Type": ctype})
        assert reply.status == 200, reply
        (line,) = reply.json_lines()
        return dict(line)

    def cat(self, cid: str, params: Params = ()) -> Reply:
        return self.rpc("cat", [("arg", cid), *params])


# --------------------------------------------------------------------------------------------
# Hand-made UnixFS DAGs, written straight into a repo's blockstore. Written from the specs
# (dag-pb, UnixFS v1, go-ds-flatfs) independently of synapse_pypi_node's reader, so that a
# mistake shared by the writer and the reader cannot hide: tests/kubo also checks that Kubo
# itself serves these blocks to another node over bitswap.

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: Union[int, bytes]) -> bytes:
    if isinstance(value, int):
        return _uvarint(number << 3) + _uvarint(value)
    return _uvarint(number << 3 | 2) + _uvarint(len(value)) + value


class DagBuilder:
    """Blocks of UnixFS files made by hand: `blocks` maps a block's multihash to its bytes.

    Each method returns `(cid_text, file_size)` of the node it made.
    """

    def __init__(self) -> None:
        self.blocks: Dict[bytes, bytes] = {}
        self._binary: Dict[str, bytes] = {}

    def _put(self, block: bytes, codec: Optional[int]) -> str:
        import hashlib

        mh = b"\x12\x20" + hashlib.sha256(block).digest()
        self.blocks[mh] = block
        if codec is None:  # CIDv0: base58btc of the bare multihash, always dag-pb
            n, text = int.from_bytes(mh, "big"), ""
            while n:
                n, r = divmod(n, 58)
                text = _B58[r] + text
            binary = mh
        else:  # CIDv1 in base32
            import base64

            binary = b"\x01" + _uvarint(codec) + mh
            text = "b" + base64.b32encode(binary).decode().rstrip("=").lower()
        self._binary[text] = binary
        return text

    def raw_leaf(self, data: bytes) -> Tuple[str, int]:
        """A raw block (CIDv1, codec 0x55), as Kubo makes with raw-leaves."""
        return self._put(data, 0x55), len(data)

    def file(self, children: Sequence[Tuple[str, int]], data: bytes = b"",
             declared_size: Optional[int] = None, blocksizes: bool = True) -> Tuple[str, int]:
        """A dag-pb UnixFS File node (CIDv0) over `children`, in order."""
        size = len(data) + sum(s for _c, s in children)
        fs = _field(1, 2)  # Type = File
        if data:
            fs += _field(2, data)
        fs += _field(3, size if declared_size is None else declared_size)
        if blocksizes:
            for _cid, s in children:
                fs += _field(4, s)
        node = b"".join(
            _field(2, _field(1, self._binary[cid]) + _field(2, b"") + _field(3, s))
            for cid, s in children
        )
        node += _field(1, fs)
        return self._put(node, None), size

    def write_into(self, repo: Path) -> None:
        """Put the blocks into a (stopped) node's flatfs blockstore, as Kubo lays them out:
        `blocks/<next-to-last 2 chars>/<base32 of the multihash>.data`."""
        import base64

        sharding = (repo / "blocks" / "SHARDING").read_text().strip()
        assert sharding == "/repo/flatfs/shard/v1/next-to-last/2", sharding
        for mh, block in self.blocks.items():
            key = base64.b32encode(mh).decode().rstrip("=")
            path = repo / "blocks" / key[-3:-1] / (key + ".data")
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(block)
            os.replace(tmp, path)


def repeated_leaf_dag(leaf: bytes, fanout: int = 1000, levels: int = 3) -> Tuple[DagBuilder, str, int]:
    """A file that is `leaf` fanout**levels times over, in levels + 1 blocks: a DAG whose
    expanded size is huge (1000**3 x 256 KiB = 262 TB). Returns (builder, root CID, size)."""
    dag = DagBuilder()
    ref = dag.raw_leaf(leaf)
    for _ in range(levels):
        ref = dag.file([ref] * fanout)
    return dag, ref[0], ref[1]


def blockstore_bytes(repo: Path) -> int:
    """What the node's blocks take on disk (file sizes under `<repo>/blocks`)."""
    return sum(p.stat().st_size for p in (repo / "blocks").rglob("*.data"))


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's VmHWM of `pid` to its current RSS; False where that is not allowed."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRss:
    """The peak RSS (kB) of a process over a `with` block: the kernel's VmHWM where it can be
    reset, and VmRSS sampled every 10 ms on a thread (which also catches it elsewhere)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> PeakRss:
        import threading

        self.hwm = reset_peak_rss(self.pid)
        self.before = rss_kb(self.pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):  # sampling interval, not synchronisation
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, KeyError):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm:
            self.peak = max(self.peak, rss_kb(self.pid, "VmHWM"))
        self.after = rss_kb(self.pid)

    @property
    def growth_kb(self) -> int:
        return self.peak - self.before


def random_file(path: Path, size_mb: int) -> str:
    """Write `size_mb` MiB of random bytes to `path`, a MiB at a time; their sha256."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mb):
            chunk = os.urandom(1024 * 1024)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()
