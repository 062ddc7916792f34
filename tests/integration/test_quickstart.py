"""The README's main job, `synapse-pypi run`: a ready homeserver with the module, a local IPFS
node, SQLite and every file under one directory; it prints the pip and uv commands, pip and uv
install through it, and Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.matrix import poll
from harness.mirror import populate
from harness.synapse import free_port

pytestmark = pytest.mark.synapse


class _Output:
    """Drains a process's combined output on a thread (so the pipe never fills) and keeps it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)

    def text(self) -> str:
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue.Empty:
                return "".join(self.lines)


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _pins(api_port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v0/pin/ls?type=recursive", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["Keys"] or {}


def test_run_is_a_ready_homeserver_with_ipfs_that_pip_and_uv_install_through(upstream_factory, dists_dir, tmp_path):
    populate(dists_dir)
    upstream = upstream_factory()
    port, ipfs_port = free_port(), free_port()
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(data), "--port", str(port),
         "--upstream", upstream.url, "--ipfs-api-port", str(ipfs_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        # As a non-interactive shell starts a background job: with SIGINT ignored. Ctrl-C
        # (SIGINT) must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        start_new_session=True,  # its own process group: if it fails to stop, its children go too
    )
    out = _Output(proc)
    try:
        poll(lambda: "synapse-pypi is ready" in out.text() or proc.poll() is not None, timeout=180,
             what="`synapse-pypi run` ready")
        text = out.text()
        assert proc.poll() is None, text[-3000:]
        index_url = f"http://127.0.0.1:{port}/simple/"
        assert f"pip install --index-url {index_url} <package>" in text
        assert f"uv pip install --index-url {index_url} <package>" in text
        assert f"IPFS node (Kubo RPC) on http://127.0.0.1:{ipfs_port}" in text

        python = make_venv(tmp_path / "pip-venv")
        result = pip_install(python, index_url, "alpha")
        assert result.returncode == 0, describe(result)
        assert installed_version(python, "alpha") == "2.0" and installed_version(python, "beta") == "1.0"
        uv_python = make_venv(tmp_path / "uv-venv")
        result = uv_install(uv_python, index_url, "gamma")
        assert result.returncode == 0, describe(result)
        # The files went to the local node too, pinned.
        poll(lambda: len(_pins(ipfs_port)) >= 3, what="alpha, beta and gamma pinned in the local node")

        # Everything lives under the one data directory.
        assert (data / "homeserver.yaml").is_file()
        assert (data / "ipfs").is_dir()
        assert (data / "homeserver.db").is_file()
        assert len(list((data / "pypi" / "cache" / "sha256").glob("*/*/*"))) >= 3
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group we made for it: it and its children
                proc.wait(timeout=30)
                raise AssertionError("`synapse-pypi run` did not stop on Ctrl-C") from None
    # What it started stopped with it: nothing answers on its ports any more.
    poll(lambda: _refuses(port) and _refuses(ipfs_port), timeout=60, what="homeserver and node stopped")
    assert proc.returncode == 0, out.text()[-3000:]

    # Running it again reuses the directory: the config is kept.
    again = subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "key", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert again.returncode == 0 and again.stdout.startswith("ed25519:"), again.stderr


def test_run_says_what_is_wrong_with_a_bad_upstream(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(tmp_path / "d"), "--port",
         str(free_port()), "--upstream", "not a url", "--no-ipfs"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "--upstream" in result.stderr and "not a url" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "homeserver.yaml").exists()  # nothing bad is kept

