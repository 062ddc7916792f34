"""`RecordingListener`: a tiny HTTP server inside the test process that counts every
connection made to it (and answers any GET with one fixed body), for checking that nothing
reaches an address the mirror must not fetch from."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RecordingListener"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listener: RecordingListener, address: tuple[str, int]) -> None:
        self.listener = listener
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Counted on accept, before a byte is read: a connection that sends nothing counts too.
        with self.listener.lock:
            self.listener.connections += 1
        super().process_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        listener = self.server.listener
        with listener.lock:
            listener.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(listener.body)))
        self.end_headers()
        self.wfile.write(listener.body)


class RecordingListener:
    """An HTTP listener on `host` (a free port) that records connections and request paths.

    Args:
        host: the address to bind, e.g. "127.0.0.2" (any 127/8 address is loopback on Linux).
        body: what every GET gets.
    """

    def __init__(self, host: str, body: bytes = b"") -> None:
        self.host = host
        self.body = body
        self.lock = threading.Lock()
        self.connections = 0
        self.paths: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RecordingListener:
        # The socket listens from the constructor on: connections wait in its backlog until
        # the thread accepts them, so there is nothing to wait for.
        self._server = _Server(self, (self.host, 0))
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"listener-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> RecordingListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
