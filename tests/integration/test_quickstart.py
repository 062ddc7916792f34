"""The README's main job, `synapse-pypi run`: a ready homeserver with the module, a local IPFS
node, SQLite and every file under one directory; a short banner with the pip and uv commands,
then a quiet terminal (Synapse's log goes to a file); pip and uv install through it; a
moderator account on request; server name `localhost`, so aliases have no port; Ctrl-C and
SIGTERM stop everything it started; an existing data directory keeps its server name."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import pytest
import yaml
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.logcheck import log_trouble
from harness.matrix import poll
from harness.mirror import populate
from harness.synapse import free_port

from synapse_pypi._run import build_homeserver_config

pytestmark = pytest.mark.synapse

READY = "synapse-pypi is ready"


class _Output:
    """Drains a process's combined output on a thread (so the pipe never fills) and keeps it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, args=(proc,), daemon=True)
        self._thread.start()

    def finish(self) -> str:
        """All of it, once the pipe is closed (by the process and the children it started)."""
        self._thread.join(timeout=60)
        return self.text()

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


class Run:
    """One `synapse-pypi run` process, started as a user would from a shell script."""

    def __init__(self, tmp_path: Path, data: Path, *args: str, env: Optional[dict] = None) -> None:
        self.data = data
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(data), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            env={**os.environ, **(env or {})},
            # As a non-interactive shell starts a background job: with SIGINT ignored. Ctrl-C
            # (SIGINT) must still stop it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            start_new_session=True,  # its own process group: if it fails to stop, its children go too
        )
        self.out = _Output(self.proc)

    def ready(self) -> str:
        poll(lambda: READY in self.out.text() or self.proc.poll() is not None, timeout=180,
             what="`synapse-pypi run` ready")
        text = self.out.text()
        assert self.proc.poll() is None, text[-3000:]
        # The banner is printed whole, at once; wait for its last line.
        poll(lambda: "Ctrl-C stops it." in self.out.text(), what="the whole banner")
        return self.out.text()

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(pid) for pid in f.read().split()]

    def stop(self, sig: int) -> str:
        """Send `sig`; wait until it has exited; its whole output."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                # A guard against a hang, not a timing: the old SIGTERM handler took 31 s.
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group we made for it: it and its children
                self.proc.wait(timeout=30)
                raise AssertionError("`synapse-pypi run` did not stop") from None
        return self.out.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _pins(api_port: int) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/v0/pin/ls?type=recursive", method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["Keys"] or {}


def _client(port: int, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/_matrix/client/v3{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _after_banner(text: str) -> list[str]:
    """The terminal's lines after the banner, up to the stop."""
    tail = text.split("Ctrl-C stops it.\n", 1)[1]
    return [line for line in tail.split("stopping (", 1)[0].splitlines() if line.strip()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


def test_run_is_a_ready_homeserver_with_ipfs_that_pip_and_uv_install_through(upstream_factory, dists_dir, tmp_path):
    populate(dists_dir)
    upstream = upstream_factory()
    port, ipfs_port = free_port(), free_port()
    data = tmp_path / "data"
    run = Run(tmp_path, data, "--port", str(port), "--upstream", upstream.url, "--ipfs-api-port", str(ipfs_port),
              "--moderator", "mod")
    try:
        text = run.ready()
        index_url = f"http://127.0.0.1:{port}/simple/"
        banner = text.split(READY, 1)[1].split("Ctrl-C stops it.")[0]
        assert f"pip install --index-url {index_url} <package>" in banner
        assert f"uv pip install --index-url {index_url} <package>" in banner
        assert f"IPFS node (Kubo RPC) on http://127.0.0.1:{ipfs_port}" in banner
        assert "(server name localhost)" in banner and "#pypi-<project>:localhost" in banner
        log = data / "homeserver.log"
        assert f"Logs: Synapse {log}, the IPFS node {data / 'ipfs-node.log'}." in banner
        # The moderator: registered, password shown once, in the module's moderators.
        m = re.search(r"Moderator @mod:localhost registered, password (\S+); in Element, sign in with the "
                      rf"homeserver http://127\.0\.0\.1:{port}", banner)
        assert m, banner
        password = m.group(1)
        config = yaml.safe_load((data / "homeserver.yaml").read_text())
        assert config["server_name"] == "localhost"
        assert config["modules"][0]["config"]["moderators"] == ["@mod:localhost"]

        python = make_venv(tmp_path / "pip-venv")
        result = pip_install(python, index_url, "alpha")
        assert result.returncode == 0, describe(result)
        assert installed_version(python, "alpha") == "2.0" and installed_version(python, "beta") == "1.0"
        uv_python = make_venv(tmp_path / "uv-venv")
        result = uv_install(uv_python, index_url, "gamma")
        assert result.returncode == 0, describe(result)
        # The files went to the local node too, pinned.
        poll(lambda: len(_pins(ipfs_port)) >= 3, what="alpha, beta and gamma pinned in the local node")

        # The moderator signs in as from Element and finds the package room under an alias
        # without a port, where the bot gave it moderator power.
        status, login = _client(port, "POST", "/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mod"}, "password": password})
        assert status == 200, login
        token = login["access_token"]
        alias = quote("#pypi-alpha:localhost")
        room = poll(lambda: (r := _client(port, "GET", f"/directory/room/{alias}", token=token))[0] == 200 and r[1],
                    what="#pypi-alpha:localhost")["room_id"]
        poll(lambda: _client(port, "POST", f"/join/{quote(room)}", {}, token=token)[0] == 200, what="joined")
        status, levels = _client(port, "GET", f"/rooms/{quote(room)}/state/m.room.power_levels/", token=token)
        assert status == 200 and levels["users"].get("@mod:localhost") == levels["redact"] == 50, levels

        # Everything lives under the one data directory.
        assert (data / "homeserver.yaml").is_file()
        assert (data / "ipfs").is_dir()
        assert (data / "homeserver.db").is_file()
        assert len(list((data / "pypi" / "cache" / "sha256").glob("*/*/*"))) >= 3
        children = run.children()
        assert len(children) == 2
    finally:
        text = run.stop(signal.SIGINT)  # Ctrl-C
    # What it started stopped with it: nothing answers on its ports, its children are gone.
    assert run.proc.returncode == 0, text[-3000:]
    assert "stopped Synapse (exit 0)" in text and "stopped the IPFS node (exit 0)" in text, text[-3000:]
    assert all(_gone(pid) for pid in children)
    poll(lambda: _refuses(port) and _refuses(ipfs_port), timeout=60, what="homeserver and node stopped")

    # A quiet terminal: after the banner, through two installs, nothing but what needs a
    # person (none of Synapse's INFO lines, none of its log-context bookkeeping); the log
    # file has it all.
    quiet = _after_banner(text)
    assert all(re.match(r"\d\d:\d\d:\d\d (WARNING|ERROR|CRITICAL) ", line) for line in quiet), quiet
    assert not [line for line in quiet if "log context" in line or "logcontext" in line], quiet
    assert len(text.splitlines()) < 40, text
    full = log.read_text()
    assert "INFO" in full and "synapse_pypi" in full and "Synapse now listening" in full
    # The filter keeps log-context warnings off the terminal: the file shows whether there
    # were any (two installs, the attestations, the rooms, a stop). There must be none.
    assert log_trouble(full) == [], log_trouble(full)[:20]

    # Running it again reuses the directory: the config is kept, the moderator exists.
    again = Run(tmp_path, data, "--port", str(port), "--ipfs-api-port", str(ipfs_port), "--moderator", "mod")
    try:
        text = again.ready()
        assert f"using existing {data / 'homeserver.yaml'}" in text
        assert "Moderator @mod:localhost (registered before; its password is unchanged)" in text
        assert not list(data.glob("homeserver.yaml.*.bak"))  # nothing needed changing
    finally:
        text = again.stop(signal.SIGTERM)
    assert again.proc.returncode == 0, text[-3000:]
    key = subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "key", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=120,
    )
    assert key.returncode == 0 and key.stdout.startswith("ed25519:"), key.stderr


def test_sigterm_stops_everything_it_started(tmp_path):
    port, ipfs_port = free_port(), free_port()
    run = Run(tmp_path, tmp_path / "data", "--port", str(port), "--ipfs-api-port", str(ipfs_port),
              "--upstream", "http://127.0.0.1:9/simple/")
    try:
        run.ready()
        children = run.children()
        node_pid = json.loads((tmp_path / "data" / "ipfs-node.json").read_text())["pid"]
        assert node_pid in children and len(children) == 2
    finally:
        text = run.stop(signal.SIGTERM)  # as `docker stop` or systemd would
    assert run.proc.returncode == 0, text[-3000:]
    assert "A moderator account: run again with --moderator NAME" in text
    # Each process stopped on its own after SIGTERM; none had to be killed, none is left.
    assert "stopping (SIGTERM)..." in text
    assert "stopped Synapse (exit 0)" in text and "stopped the IPFS node (exit 0)" in text, text[-3000:]
    assert "killed" not in text
    assert all(_gone(pid) for pid in children)
    assert _refuses(port) and _refuses(ipfs_port)


def test_an_old_data_directory_keeps_its_server_name(tmp_path):
    # As `synapse-pypi run` wrote it before: server name with the port, Synapse's log on the
    # terminal (no log_config), a comment of the user's.
    port = free_port()
    data = tmp_path / "old"
    data.mkdir()
    old = build_homeserver_config(str(data), port, "http://127.0.0.1:9/simple/", ipfs_api_port=None,
                                  server_name=f"localhost:{port}")
    del old["log_config"]
    original = "# my own notes\n" + yaml.safe_dump(old, sort_keys=False)
    (data / "homeserver.yaml").write_text(original)

    refused = subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(data), "--server-name", "localhost"],
        capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and f"belongs to server name 'localhost:{port}'" in refused.stderr
    assert (data / "homeserver.yaml").read_text() == original

    run = Run(tmp_path, data, "--moderator", "mod")
    try:
        text = run.ready()
        assert f"(server name localhost:{port})" in text
        assert f"Moderator @mod:localhost:{port} registered" in text
        config = yaml.safe_load((data / "homeserver.yaml").read_text())
        assert config["server_name"] == f"localhost:{port}"
        assert config["log_config"] == str(data / "log_config.yaml")
        assert config["modules"][0]["config"]["moderators"] == [f"@mod:localhost:{port}"]
        # The user's file is kept as it was before it was rewritten.
        (backup,) = data.glob("homeserver.yaml.*.bak")
        assert backup.read_text() == original
        assert f"the previous one is kept as {backup}" in text
    finally:
        text = run.stop(signal.SIGTERM)
    assert run.proc.returncode == 0, text[-3000:]

    # Without the flag, the banner names the moderators the config lists.
    again = Run(tmp_path, data)
    try:
        text = again.ready()
        assert f"Moderators: @mod:localhost:{port}; another: run again with --moderator NAME" in text
    finally:
        text = again.stop(signal.SIGTERM)
    assert again.proc.returncode == 0, text[-3000:]


@pytest.mark.parametrize("args, words", [
    (["--upstream", "not a url"], "--upstream"),
    (["--server-name", "no spaces please"], "not a Matrix server name"),
    (["--moderator", "Bad Name"], "a user name may have only"),
    (["--moderator", "@mod:elsewhere.example"], "is not a user of this homeserver"),
])
def test_run_says_what_is_wrong_with_its_options(tmp_path, args, words):
    result = subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "run", "--data-dir", str(tmp_path / "d"), "--port",
         str(free_port()), "--no-ipfs", *args],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # nothing bad is kept
