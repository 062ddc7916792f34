"""Real clients (pip, uv, poetry, pdm, pip-compile), run against an index URL into
throwaway virtual environments.

The versions the tests run are named here, in `CLIENTS`, and nowhere else. Each client is
installed from the package index (with the machine's own installer configuration) into a
venv of its own under a cache directory that outlives the test run
(`$SYNAPSE_PYPI_CLIENT_CACHE`, default `~/.cache/synapse-pypi/clients`), once per Python,
so a CI run pays for the installs only the first time. No test uses the pip or uv of the
test environment itself: which pip the README's `python3 -m venv` gives depends on the
machine (Debian 12's is 23.0.1).

Nothing from this machine's configuration may leak into a client run: this machine's pip
config adds extra indexes, find-links and a constraints file. `pip --isolated` ignores
environment variables and the *user* config file but still reads the global ones
(/etc/pip.conf, /etc/xdg/pip/pip.conf), so PIP_CONFIG_FILE is also set to os.devnull, which
makes pip skip every config file. uv gets `--no-config`, `UV_NO_CONFIG=1` and no inherited
UV_* variables; poetry and pdm get their own empty config, cache and data directories.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "CLIENTS",
    "ClientError",
    "PIP",
    "TWINE",
    "UV",
    "tool_python",
    "client_python",
    "installed_version",
    "make_venv",
    "pip_install",
    "run_client",
    "tool_bin",
    "uv_bin",
    "uv_install",
]

DEFAULT_TIMEOUT = 180.0

# Every client version the tests run, in one place: tool name -> requirements of its venv.
# Bump the "newest" ones by hand. pip 22.3 is the oldest with `--python`; 23.0.1 is
# Debian 12's; 24.0 is Ubuntu 24.04's. uv 0.9.14 is about a year older than the newest.
CLIENTS: dict[str, tuple[str, ...]] = {
    "pip-22.3": ("pip==22.3",),
    "pip-23.0.1": ("pip==23.0.1",),
    "pip-24.0": ("pip==24.0",),
    "pip-26.3": ("pip==26.3",),
    "uv-0.9.14": ("uv==0.9.14",),
    "uv-0.13.9": ("uv==0.13.9",),
    "poetry-2.5.1": ("poetry==2.5.1",),
    # pdm 2.29.4 breaks with hishel 2 (AttributeError: ... SyncSqliteStorage).
    "pdm-2.29.4": ("pdm==2.29.4", "hishel[httpx2]>=1.4,<2"),
    "pip-tools-7.6.2": ("pip-tools==7.6.2",),
    # Uploads (issue 16): the legacy upload API's reference client.
    "twine-7.0.0": ("twine==7.0.0",),
}
# Clients that do not run on newer Pythons (pip before 23.1 uses pkgutil.ImpImporter, gone in
# 3.12): their venvs, and the environments they install into, use that version, found on the
# machine by uv (Debian 12's /usr/bin/python3.11, say) when the tests run on a newer one.
PYTHON_AT_MOST: dict[str, tuple[int, int]] = {"pip-22.3": (3, 11), "pip-23.0.1": (3, 11)}
# What tests use when they do not test a client version on purpose.
PIP = "pip-26.3"
UV = "uv-0.13.9"
TWINE = "twine-7.0.0"


class ClientError(AssertionError):
    """A client run that was expected to succeed failed; the message has its output."""


def _installer_uv() -> str:
    """The uv that installs the clients (and makes empty venvs); never a client under test."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except ImportError:
        candidate = Path(sys.executable).with_name("uv")
        if candidate.exists():
            return str(candidate)
        raise


def _cache_root() -> Path:
    configured = os.environ.get("SYNAPSE_PYPI_CLIENT_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "synapse-pypi" / "clients"


def client_python(tool: str) -> str:
    """The interpreter `tool` runs under: this one, or an older one it needs (a uv request)."""
    most = PYTHON_AT_MOST.get(tool)
    if most is None or sys.version_info[:2] <= most:
        return sys.executable
    return f"{most[0]}.{most[1]}"


def tool_env(tool: str) -> Path:
    """The venv of `tool` (a key of `CLIENTS`), installed on first use and kept.

    Several test processes may ask at once: the first builds it under a lock, the others
    wait for it; a venv left half-built by a killed run is built again.
    """
    requirements = CLIENTS[tool]
    # A venv belongs to one interpreter: key it by the interpreter and the requirements.
    python = client_python(tool)
    key = hashlib.sha256(f"{os.path.realpath(sys.executable)}\0{sys.version}\0{python}\0{requirements}".encode()).hexdigest()[:12]
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"{tool}-py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    ready = venv / ".ready"
    if ready.exists():
        return venv
    with open(root / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the with block closes the file
        if ready.exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        uv = _installer_uv()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["UV_PYTHON_DOWNLOADS"] = "never"
        for cmd in (
            [uv, "venv", "--python", python, "--quiet", str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *requirements],
        ):
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=600)
            if proc.returncode != 0:
                raise ClientError(f"could not install {tool} for the tests:\n{describe(proc)}")
        ready.write_text(" ".join(requirements) + "\n")
    return venv


def tool_bin(tool: str, name: str) -> str:
    """An executable of `tool`'s venv, e.g. tool_bin("poetry-2.5.1", "poetry")."""
    path = tool_env(tool) / "bin" / name
    if not path.exists():
        raise ClientError(f"{tool} has no {name} in {path.parent}")
    return str(path)


def tool_python(tool: str) -> str:
    """The python of `tool`'s venv (to run `python -m pip` of a given pip)."""
    return tool_bin(tool, "python")


def uv_bin(tool: str = UV) -> str:
    """The uv executable of a uv client version (default: the newest)."""
    return tool_bin(tool, "uv")


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
    cmd: list,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    cwd: Path | None = None,
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
            cwd=cwd,
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


def make_venv(path: Path, python: str | None = None) -> Path:
    """Create an empty virtual environment (no pip inside) and return its python.

    `uv venv` takes about 0.1 s; pip installs into it from outside with `pip --python`.
    `python`: another interpreter (`client_python` of a client that needs one).
    """
    path = Path(path)
    run_client(
        [_installer_uv(), "venv", "--no-config", "--python", python or sys.executable, "--quiet", path],
        check=True, timeout=60,
    )
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
    pip: str = PIP,
) -> subprocess.CompletedProcess:
    """`pip install` with a given pip (a key of `CLIENTS`) into the environment of `python`.

    Every pip in `CLIENTS` has `--python` (since 22.3): the outer pip installs into the
    target. The result's `.returncode`, `.stdout`, `.stderr` and `.seconds` are for
    assertions.
    """
    cmd = [
        tool_python(pip),
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
    uv: str = UV,
) -> subprocess.CompletedProcess:
    """`uv pip install` (uv a key of `CLIENTS`) into the environment of `python`, with no
    config and no cache."""
    cmd = [
        uv_bin(uv),
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
