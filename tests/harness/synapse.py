"""`SynapseServer`: a real Synapse process started from the repository's sample_homeserver.yaml.

The config is the sample file with only these changed: paths (into the server's work dir),
the listener port and server_name, the database (SQLite, or a fresh PostgreSQL database
with C collation), a log file, a known registration secret, test-friendly rate limits and
`bcrypt_rounds`, and the module's config merged with the test's overrides. Anything else a
test needs goes in `extra_config` (deep-merged over the result).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import yaml

from .logcheck import log_trouble
from .processes import stop_process
from .upstream import http_request

__all__ = [
    "MODULE_NAME",
    "SAMPLE_CONFIG",
    "SynapseServer",
    "free_port",
    "postgres_available",
]

SAMPLE_CONFIG = Path(__file__).parents[2] / "sample_homeserver.yaml"
MODULE_NAME = "synapse_pypi.PyPIModule"

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"

# Where the module would fetch from if a test forgot to say: the discard port on loopback,
# so a forgotten upstream_url fails fast instead of reaching out of the machine.
NOWHERE_UPSTREAM = "http://127.0.0.1:9/simple/"


def free_port() -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_connect(dbname: str = "postgres") -> Any:
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


_pg_status: tuple[bool, str] | None = None


def postgres_available() -> tuple[bool, str]:
    """(True, "") when PostgreSQL answers on 127.0.0.1:5432 as user postgres, else (False, why)."""
    global _pg_status
    if _pg_status is None:
        try:
            import psycopg2  # noqa: F401
        except ImportError as e:
            _pg_status = (False, f"psycopg2 is not installed ({e})")
        else:
            try:
                _pg_connect().close()
                _pg_status = (True, "")
            except Exception as e:  # noqa: BLE001 - any connect failure means "not reachable"
                _pg_status = (False, str(e).strip() or type(e).__name__)
    return _pg_status


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _tls_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (federation on loopback)."""
    tls = directory / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    cert, key = tls / "cert.pem", tls / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "30", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=60,
        )
    return cert, key


def _log_config(log_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {
            "precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}
        },
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_path),
                "filters": ["context"],
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


# (server work directory, lines) for every disposed server whose log had log-context warnings
# or tracebacks it did not expect; tests/conftest.py fails the test that was running.
LOG_TROUBLE: list[tuple[Path, list[str]]] = []


class SynapseServer:
    """One Synapse process with synapse-pypi loaded.

    When disposed, its log is checked: log-context warnings and tracebacks are recorded in
    `LOG_TROUBLE` unless a regular expression in `expected_log_trouble` matches them (for a
    test that provokes a known Synapse behaviour, which it names).

    Args:
        work_dir: everything of this server lives here (config, DB, keys, logs, module data).
        module_config: merged over the sample's module config (None values delete a key).
            `data_directory` defaults to `<work_dir>/pypi`; `upstream_url` to a dead
            loopback port unless given.
        db: "sqlite" or "postgres".
        extra_config: deep-merged over the final homeserver config.
        port: listener port; a free one is picked when omitted.
        python_path: directories put on Synapse's PYTHONPATH (e.g. a test's own
            storage backend module); the checkout itself never is.
        metrics: also serve Prometheus metrics on a `metrics` listener (`metrics_url`).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        module_config: Mapping[str, Any] | None = None,
        db: str = "sqlite",
        extra_config: Mapping[str, Any] | None = None,
        port: int | None = None,
        python_path: Sequence[Path] = (),
        federation_port: int | None = None,
        federation_names: Sequence[str] = (),
        metrics: bool = False,
    ) -> None:
        # With metrics, Synapse serves Prometheus metrics (its own and the module's) on a
        # `metrics` listener of its own, at `metrics_url`.
        self.metrics_port = free_port() if metrics else None
        self.python_path = [str(p) for p in python_path]
        # With a federation port, the server is named after it (localhost:<port>: no
        # .well-known, no SRV) and serves federation over TLS there (SYNAPSE-FACTS section 3).
        self.federation_port = federation_port
        self.federation_names = list(federation_names)
        if db not in ("sqlite", "postgres"):
            raise ValueError(f"db must be 'sqlite' or 'postgres', not {db!r}")
        self.work_dir = Path(work_dir).resolve()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.db = db
        self.port = port or free_port()
        self.server_name = f"localhost:{federation_port or self.port}"
        self.registration_secret = secrets.token_hex(16)
        self.config_path = self.work_dir / "homeserver.yaml"
        self.log_path = self.work_dir / "homeserver.log"
        self.stdout_path = self.work_dir / "stdout.log"
        self.stderr_path = self.work_dir / "stderr.log"
        self.pg_database: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self.expected_log_trouble: list[str] = []
        self._disposed = False
        if db == "postgres":
            self._create_pg_database()
        self.config = self._build_config(module_config or {}, extra_config or {})
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        (self.work_dir / "log_config.yaml").write_text(yaml.safe_dump(_log_config(self.log_path), sort_keys=False))

    # -- config ----------------------------------------------------------------------

    def _build_config(self, module_overrides: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
        cfg: dict[str, Any] = yaml.safe_load(SAMPLE_CONFIG.read_text())
        d = self.work_dir
        cfg["server_name"] = self.server_name
        listeners = cfg.get("listeners") or []
        client = [
            lst for lst in listeners if any("client" in (r.get("names") or []) for r in lst.get("resources") or [])
        ]
        if not client:
            raise RuntimeError(f"{SAMPLE_CONFIG}: no listener with the client resource")
        client[0]["port"] = self.port
        client[0]["bind_addresses"] = ["127.0.0.1"]
        if self.federation_port:
            cert, key = _tls_pair(d)
            listeners.append(
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "resources": [{"names": ["federation"]}],
                }
            )
            cfg["listeners"] = listeners
            cfg["tls_certificate_path"] = str(cert)
            cfg["tls_private_key_path"] = str(key)
            cfg["federation_verify_certificates"] = False
            cfg["ip_range_whitelist"] = ["127.0.0.0/8", "::1/128"]
            cfg["federation_domain_whitelist"] = sorted({self.server_name, *self.federation_names})
            cfg["federation"] = {"destination_min_retry_interval": "1s", "destination_max_retry_interval": "2s"}
        if self.metrics_port:
            cfg["enable_metrics"] = True
            listeners.append({"port": self.metrics_port, "bind_addresses": ["127.0.0.1"], "type": "metrics"})
            cfg["listeners"] = listeners
        if self.db == "postgres":
            cfg["database"] = {
                "name": "psycopg2",
                "args": {
                    "user": PG_USER,
                    "dbname": self.pg_database,
                    "host": PG_HOST,
                    "port": PG_PORT,
                    "cp_min": 1,
                    "cp_max": 5,
                },
            }
        else:
            cfg["database"] = {"name": "sqlite3", "args": {"database": str(d / "homeserver.db")}}
        cfg["media_store_path"] = str(d / "media_store")
        cfg["signing_key_path"] = str(d / "signing.key")
        cfg["log_config"] = str(d / "log_config.yaml")
        cfg["registration_shared_secret"] = self.registration_secret
        cfg["report_stats"] = False
        cfg["trusted_key_servers"] = []
        # Test-friendly extras (SYNAPSE-FACTS.md section 1).
        cfg["bcrypt_rounds"] = 4
        cfg["rc_message"] = {"per_second": 1000, "burst_count": 1000}
        cfg["rc_registration"] = {"per_second": 1000, "burst_count": 1000}
        cfg["rc_joins"] = {
            "local": {"per_second": 1000, "burst_count": 1000},
            "remote": {"per_second": 1000, "burst_count": 1000},
        }
        cfg["rc_joins_per_room"] = {"per_second": 1000, "burst_count": 1000}
        cfg["rc_login"] = {
            "address": {"per_second": 1000, "burst_count": 1000},
            "account": {"per_second": 1000, "burst_count": 1000},
            "failed_attempts": {"per_second": 1000, "burst_count": 1000},
        }

        modules = cfg.get("modules") or []
        entries = [m for m in modules if m.get("module") == MODULE_NAME]
        if not entries:
            raise RuntimeError(f"{SAMPLE_CONFIG}: no modules entry for {MODULE_NAME}")
        mcfg = dict(entries[0].get("config") or {})
        mcfg["data_directory"] = str(d / "pypi")
        mcfg.setdefault("upstream_url", NOWHERE_UPSTREAM)
        # The sample points at a Kubo node on 5001; tests that want IPFS start their own
        # node and pass storage_providers explicitly.
        mcfg["storage_providers"] = []
        entries[0]["config"] = _deep_merge(mcfg, module_overrides)
        return _deep_merge(cfg, extra)

    @property
    def module_config(self) -> dict[str, Any]:
        return next(m for m in self.config["modules"] if m.get("module") == MODULE_NAME)["config"]

    @property
    def data_directory(self) -> Path:
        return Path(self.module_config["data_directory"])

    # -- PostgreSQL --------------------------------------------------------------------

    def _create_pg_database(self) -> None:
        ok, why = postgres_available()
        if not ok:
            raise RuntimeError(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT}: {why}")
        name = f"synapse_pypi_test_{secrets.token_hex(6)}"
        conn = _pg_connect()
        try:
            with conn.cursor() as cur:
                # Synapse refuses any collation but C (IncorrectDatabaseSetup); template0
                # because template1 here has C.UTF-8.
                cur.execute(f"CREATE DATABASE {name} ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0")
        finally:
            conn.close()
        self.pg_database = name

    def _drop_pg_database(self) -> None:
        if not self.pg_database:
            return
        conn = _pg_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {self.pg_database} WITH (FORCE)")
        finally:
            conn.close()
        self.pg_database = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (the client listener; the module's /simple/ is under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The metrics listener's URL (Prometheus text format), for a server made with metrics."""
        if not self.metrics_port:
            raise RuntimeError("this SynapseServer was made without metrics=True")
        return f"http://127.0.0.1:{self.metrics_port}/_synapse/metrics"

    @property
    def index_url(self) -> str:
        """The module's index URL to give pip or uv."""
        return f"{self.url}/simple/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60) -> SynapseServer:
        """Start Synapse and poll /_matrix/client/versions every 50 ms until it answers 200.

        Raises:
            RuntimeError: with the log tail, if the process exits or is not ready in time.
        """
        if self._disposed:
            raise RuntimeError("this SynapseServer was disposed")
        if self.running:
            raise RuntimeError(f"Synapse already running (pid {self.pid})")
        env = dict(os.environ)
        # Synapse must import the *installed* synapse_pypi: run from the work dir so the
        # repository checkout is not on sys.path (python -m puts the cwd first).
        env.pop("PYTHONPATH", None)
        if self.python_path:
            env["PYTHONPATH"] = os.pathsep.join(self.python_path)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.monotonic()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
                cwd=self.work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"Synapse exited with rc={rc} during start-up:\n{self.log_tail()}")
            try:
                status, _, _ = http_request(self.url + "/_matrix/client/versions", timeout=2)
                if status == 200:
                    self.start_seconds = time.monotonic() - t0
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"Synapse not ready after {timeout}s:\n{tail}")
            time.sleep(0.05)  # polling interval (SYNAPSE-FACTS.md section 5), not synchronisation

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM our own process, wait, SIGKILL it if it does not exit."""
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)

    def restart(self, timeout: float = 60) -> SynapseServer:
        self.stop()
        return self.start(timeout)

    def dispose(self) -> None:
        """Stop the process and drop the PostgreSQL database (idempotent)."""
        try:
            self.stop()
        finally:
            if not self._disposed:
                self._disposed = True
                self._drop_pg_database()
                trouble = [line for line in log_trouble(self.log_text())
                           if not any(re.search(p, line) for p in self.expected_log_trouble)]
                if trouble:
                    LOG_TROUBLE.append((self.work_dir, trouble))

    def __enter__(self) -> SynapseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # -- observation -------------------------------------------------------------------

    def log_text(self) -> str:
        """homeserver.log plus stderr (start-up tracebacks land there)."""
        parts = []
        for p in (self.log_path, self.stderr_path):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log output)"

    def rss_bytes(self) -> int:
        """Resident memory of the Synapse process (VmRSS)."""
        if not self.running:
            raise RuntimeError("Synapse is not running")
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    # -- HTTP --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to this server. Returns (status, lower-case headers, body)."""
        hdrs = dict(headers or {})
        body = None
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        return http_request(self.url + path, method=method, headers=hdrs, body=body, timeout=timeout)

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Like `request`, but requires a 200 and returns the decoded JSON."""
        status, _, body = self.request(method, path, **kwargs)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {body[:500]!r}")
        return json.loads(body)

    def register_user(self, localpart: str, admin: bool = False, password: str | None = None) -> tuple[str, str]:
        """Create a user with shared-secret registration. Returns (user_id, access_token)."""
        password = password or secrets.token_hex(8)
        path = "/_synapse/admin/v1/register"
        nonce = self.request_json("GET", path)["nonce"]
        mac = hmac.new(self.registration_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\0".join([nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"])
        )
        body = self.request_json(
            "POST",
            path,
            json_body={
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        return body["user_id"], body["access_token"]
