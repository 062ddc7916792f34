"""`UpstreamServer`: runs `upstream_server.py` as a subprocess and drives its control API."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .processes import stop_process

__all__ = ["UpstreamServer", "http_request"]

SCRIPT = Path(__file__).with_name("upstream_server.py")

# Loopback only: never let an environment proxy see test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_RAW_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def http_request(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30,
    follow_redirects: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to 127.0.0.1 without any proxy; errors come back as statuses.

    Returns:
        (status, headers with lower-case names, body).
    """
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = _OPENER if follow_redirects else _RAW_OPENER
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        data = e.read() if e.fp else b""
        return e.code, {k.lower(): v for k, v in e.headers.items()}, data


class UpstreamServer:
    """A real PEP 503/691 index over `root`, in its own process, bound to 127.0.0.1.

    Args:
        root: the tree `<normalized project>/<files>` to serve (read on every request).
        work_dir: where the port file and the server's log go.
        formats: which page formats the server offers ("json", "html").
        relative_urls: link files relative to the page instead of absolutely.
        port: a fixed port; 0 (the default) lets the OS choose on the first start.
    """

    def __init__(
        self,
        root: Path,
        work_dir: Path,
        *,
        formats: Iterable[str] = ("json", "html"),
        relative_urls: bool = False,
        port: int = 0,
    ) -> None:
        self.root = Path(root)
        self.work_dir = Path(work_dir)
        self.formats = tuple(formats)
        self.relative_urls = relative_urls
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / "upstream.log"
        self._port_file = self.work_dir / "upstream.port"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 20) -> UpstreamServer:
        """Start the server (again on the same port after `stop`) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"upstream already running (pid {self.proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--root",
            str(self.root),
            "--port",
            str(self.port),
            "--port-file",
            str(self._port_file),
            "--formats",
            ",".join(self.formats),
        ]
        if self.relative_urls:
            cmd.append("--relative-urls")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir
            )
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self._port_file.exists():
                self.port = int(self._port_file.read_text())
                try:
                    status, _, _ = http_request(self.base_url + "/_control/hits", timeout=2)
                    if status == 200:
                        return self
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"upstream did not become ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)  # polling interval, not synchronisation

    def stop(self, timeout: float = 10) -> None:
        """Terminate our own process (by its PID) and wait for it."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def __enter__(self) -> UpstreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            raise RuntimeError(f"upstream server exited (rc={rc}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- addresses -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The index URL to give pip, uv or the module: http://127.0.0.1:PORT/simple/"""
        return f"{self.base_url}/simple/"

    def file_path(self, project: str, filename: str) -> str:
        """The request path a file is served at (what `hits()` and `fault()` use)."""
        return f"/files/{project}/{filename}"

    def file_url(self, project: str, filename: str) -> str:
        return self.base_url + self.file_path(project, filename)

    # -- control API -----------------------------------------------------------------

    def _control(self, method: str, name: str, payload: dict[str, Any] | None = None) -> Any:
        self._check_alive()
        body = json.dumps(payload).encode() if payload is not None else (b"" if method == "POST" else None)
        status, _, data = http_request(
            f"{self.base_url}/_control/{name}",
            method=method,
            body=body,
            headers={"Content-Type": "application/json"} if body is not None else {},
            timeout=10,
        )
        if status != 200:
            raise RuntimeError(f"upstream control {name}: {status} {data!r}")
        return json.loads(data)

    def hits(self) -> dict[str, int]:
        """{request path: count} since the start or the last `reset_hits`."""
        return dict(self._control("GET", "hits"))

    def hit_count(self, path: str) -> int:
        return self.hits().get(path, 0)

    def reset_hits(self) -> None:
        self._control("POST", "reset")

    def fault(self, path: str, kind: str, **params: Any) -> dict[str, Any]:
        """Inject a fault; see upstream_server.py's docstring for kinds and parameters.

        Example: `upstream.fault("/simple/*", "status", status=503, count=1)`.
        For kind "replace", `content=` bytes is accepted and sent base64-encoded;
        the answer carries the new sha256 and size.
        """
        payload: dict[str, Any] = {"path": path, "kind": kind, **params}
        if "content" in payload:
            payload["content_b64"] = base64.b64encode(payload.pop("content")).decode()
        if "body" in payload:
            payload["body_b64"] = base64.b64encode(payload.pop("body")).decode()
        return dict(self._control("POST", "fault", payload))

    def clear_faults(self) -> None:
        """Remove all faults and replacements; requests hung by a timeout fault are released."""
        self._control("POST", "clear-faults")

    def wait_for_hits(self, path: str, count: int = 1, timeout: float = 10) -> int:
        """Poll until `path` has been requested at least `count` times."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.hit_count(path)
            if n >= count:
                return n
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} requested {n} times, expected {count} within {timeout}s: {self.hits()}")
            time.sleep(0.02)  # polling interval
