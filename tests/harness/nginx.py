"""`NginxServer`: a real nginx in its own process, on 127.0.0.1, for tests and benchmarks.

Everything it writes (config, pid file, logs, temp directories) stays under its work
directory. It runs in the foreground (`daemon off`) as our own child and is stopped by its
PID. As root, its workers run as root too (`user root`), so that they can read files under
pytest's private temporary directories.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .processes import stop_process

__all__ = ["NginxServer", "nginx_binary"]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


TEMPLATE = """
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    log_format test '$request_method "$request_uri" $status $body_bytes_sent "$sent_http_content_type"';
    access_log {work}/access.log test;
    server {{
        listen 127.0.0.1:{port};
{body}
    }}
}}
"""


class NginxServer:
    """nginx with one `server` block whose inside is `server_body`.

    Args:
        work_dir: config, logs and temp files.
        server_body: nginx directives inside `server { listen ...; }` (locations).
        port: the port to listen on.
        workers: worker processes.
    """

    def __init__(self, work_dir: Path, server_body: str, port: int, workers: int = 1):
        self.work_dir = Path(work_dir)
        self.port = port
        self.server_body = server_body
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.work_dir / "access.log"

    def start(self, timeout: float = 20) -> NginxServer:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx)")
        (self.work_dir / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.work_dir / "nginx.conf"
        conf.write_text(
            TEMPLATE.format(
                workers=self.workers,
                work=self.work_dir,
                port=self.port,
                body=self.server_body,
                user="user root;" if os.geteuid() == 0 else "",
            )
        )
        with open(self.work_dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.work_dir)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited (rc={self.proc.returncode}): {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx not listening after {timeout}s: {self.log_tail()}")
            time.sleep(0.02)  # polling interval, not synchronisation

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (fast shutdown) to our own master process by its PID; it stops its workers."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def log_tail(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            p = self.work_dir / name
            if p.exists():
                parts.append(p.read_text(errors="replace")[-2000:])
        return "\n".join(parts) or "(no log)"
