"""Real pip and uv, run against an index URL into throwaway virtual environments.

Nothing from this machine's configuration may leak into a test: this machine's pip config
adds extra indexes, find-links and a constraints file. `pip --isolated` ignores environment
variables and the *user* config file but still reads the global ones (/etc/pip.conf,
/etc/xdg/pip/pip.conf), so PIP_CONFIG_FILE is also set to os.devnull, which makes pip skip
every config file. uv gets `--no-config`, `UV_NO_CONFIG=1` and no inherited UV_* variables.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "ClientError",
    "installed_version",
    "make_venv",
    "pip_install",
    "run_client",
    "uv_bin",
    "uv_install",
]

DEFAULT_TIMEOUT = 180.0


class ClientError(AssertionError):
    """A client run that was expected to succeed failed; the message has its output."""


def uv_bin() -> str:
    """The uv executable installed alongside the test dependencies."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except ImportError:
        candidate = Path(sys.executable).with_name("uv")
        if candidate.exists():
            return str(candidate)
        raise


def _clean_env(extra: Mapping[str, str] | None = None) -> dict:
    env = {
        k: v for k, v in os.environ.items() if not (k.startswith(("PIP_", "UV_")) or k in ("PYTHONPATH", "VIRTUAL_ENV"))
    }
    env["PIP_CONFIG_FILE"] = os.devnull
    env["UV_NO_CONFIG"] = "1"
    env["UV_PYTHON_DOWNLOADS"] = "never"
    # Test traffic is loopback only; an environment proxy must never see it.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


def run_client(
    cmd: list, *, timeout: float = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Run a client command with a clean environment, output captured as text.

    The result carries `.seconds` (wall time) and a readable `str()` via `describe`.
    """
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(env),
            check=False,  # the caller (or `check` below) judges the exit code
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise ClientError(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{out}\n{err}") from None
    proc.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    if check and proc.returncode != 0:
        raise ClientError(describe(proc))
    return proc


def describe(proc: subprocess.CompletedProcess) -> str:
    """Command, exit code and output, for assertion messages."""
    return (
        f"$ {' '.join(map(str, proc.args))}\nexit code {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def make_venv(path: Path) -> Path:
    """Create an empty virtual environment (no pip inside) and return its python.

    `uv venv` takes about 0.1 s; pip installs into it from outside with `pip --python`.
    """
    path = Path(path)
    run_client([uv_bin(), "venv", "--no-config", "--python", sys.executable, "--quiet", path], check=True, timeout=60)
    python = path / "bin" / "python"
    if not python.exists():
        raise ClientError(f"uv venv did not create {python}")
    return python


def pip_install(
    python: Path,
    index_url: str,
    *reqs: str,
    extra_args: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`pip install` with the test venv's pip into the environment of `python`.

    pip 23.2 supports `--python` (since 22.3): the outer pip installs into the target.
    The result's `.returncode`, `.stdout`, `.stderr` and `.seconds` are for assertions.
    """
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "--isolated",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "install",
        "--progress-bar",
        "off",
        "--index-url",
        index_url,
        *extra_args,
        *reqs,
    ]
    return run_client(cmd, timeout=timeout, check=check)


def uv_install(
    python: Path,
    index_url: str,
    *reqs: str,
    extra_args: Iterable[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`uv pip install` into the environment of `python`, with no config and no cache."""
    cmd = [
        uv_bin(),
        "pip",
        "install",
        "--python",
        python,
        "--index-url",
        index_url,
        "--no-cache",
        "--no-config",
        *extra_args,
        *reqs,
    ]
    return run_client(cmd, timeout=timeout, env=env, check=check)


def installed_version(python: Path, dist_name: str) -> str | None:
    """The installed version of `dist_name` in `python`'s environment, or None."""
    code = (
        "import sys, importlib.metadata as m\n"
        "try:\n    print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError:\n    sys.exit(3)\n"
    )
    proc = run_client([python, "-c", code, dist_name], timeout=60)
    if proc.returncode == 3:
        return None
    if proc.returncode != 0:
        raise ClientError(describe(proc))
    return proc.stdout.strip()


def slow_reader(url: str) -> socket.socket:
    """A client that asks for a file and then stops reading (a tiny receive window), so the
    server is still sending it until the socket is closed."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s
