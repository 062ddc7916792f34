"""The module's configuration: one frozen object, built and validated in `parse_config`.

To add an option:
  1. parse and validate it in `parse_config` below (errors are `ConfigError` naming the key);
  2. give it a default that works on one machine;
  3. document it in docs/configuration.md (what it does, default, example);
  4. add it, commented, to sample_homeserver.yaml;
  5. test a good and a bad value in tests/unit/test_config.py.
"""

import importlib
import os
import re
from typing import Any, Iterable, Mapping, Optional, Tuple

import attrs

from synapse_pypi._addresses import HostPort, parse_host_port
from synapse_pypi._urls import index_url

try:
    from synapse.module_api.errors import ConfigError
except ImportError:  # pragma: no cover - only for tools that read this file without Synapse

    class ConfigError(Exception):  # type: ignore[no-redef]  # stand-in outside Synapse
        def __init__(self, msg: str, path: Optional[Iterable[str]] = None):
            super().__init__(msg)
            self.msg = msg
            self.path = path


@attrs.frozen(slots=True)
class StorageProviderConfig:
    """One entry of `storage_providers`: the backend class and its parsed config."""

    name: str  # "<index>:<module>", stable while the list is not reordered
    cls: Any
    config: Any


@attrs.frozen(slots=True)
class PyPIConfig:
    """Everything the module was configured with, already validated."""

    data_directory: str
    upstream_url: str
    page_ttl_ms: int = 10 * 60 * 1000
    upstream_timeout_s: float = 30.0
    # After the upstream was unreachable or timed out: how long pages come from what we
    # have before the upstream is asked again.
    upstream_retry_ms: int = 10_000
    # Hosts (any port, or one) that file URLs and redirects may lead to although they are
    # not global addresses; the upstream's own origin always may.
    upstream_allowed_file_hosts: Tuple[HostPort, ...] = ()
    max_page_size: int = 64 * 1024**2
    # Parsed and rendered pages in memory, in bytes.
    page_cache_size: int = 512 * 1024**2
    max_cache_size: int = 10 * 1024**3
    # Disk space left free on the cache's filesystem; a file that would need more is
    # streamed through without being cached.
    min_free_space: int = 100 * 1024**2
    # A reverse proxy's internal location for the cache directory (X-Accel-Redirect);
    # None: the homeserver sends cached files itself.
    x_accel_redirect: Optional[str] = None
    storage_providers: Tuple[StorageProviderConfig, ...] = ()
    # How often pending IPFS adds are retried while a storage backend is down.
    storage_retry_ms: int = 5000
    # A file the local cache evicts is removed (unpinned) from the storage backends too.
    unpin_evicted: bool = True
    # The trust layer (package rooms and attestations).
    bot_localpart: str = "pypi-bot"
    room_alias_prefix: str = "pypi-"
    moderators: Tuple[str, ...] = ()
    publishers: Tuple[str, ...] = ()
    moderator_power_level: int = 50
    attestation_power_level: int = 60
    trusted_key_power_level: int = 60
    # mxid -> ("ed25519:<id> <base64>", ...)
    trusted_keys: Mapping[str, Tuple[str, ...]] = attrs.field(factory=dict)
    signing_key_path: str = ""
    # project -> mxid -> ("ed25519:<id> <base64>", ...): maintainers whose attestations
    # outrank the upstream for that project.
    maintainer_keys: Mapping[str, Mapping[str, Tuple[str, ...]]] = attrs.field(factory=dict)
    # Federation: other mirrors whose package rooms we join and read.
    peers: Tuple[str, ...] = ()
    peer_timeout_s: float = 5.0
    peer_retry_s: float = 60.0
    # Peer room lookups that project page views may start, per minute (file requests always
    # ask the peers).
    peer_lookup_rate: int = 120
    # Projects whose files the upstream stops listing are kept (and served) rather than banned.
    keep_removed_files: Tuple[str, ...] = ()
    # The serve policy: independent sources a side of a disagreement needs to win on its own.
    corroboration: int = 2
    # How long CIDs learnt from others' attestations are tried, all together, before the
    # upstream is asked.
    cid_hint_timeout_s: float = 5.0
    # The Matrix queue (room creation, attestations, notices): it waits for a quiet moment
    # of this length, at most matrix_max_delay, and creates at most room_creation_rate rooms
    # a minute; it holds at most matrix_queue_size jobs.
    matrix_quiet_s: float = 0.25
    matrix_max_delay_s: float = 10.0
    room_creation_rate: int = 60
    matrix_queue_size: int = 10_000
    # Uploads (docs/publishing.md): the largest file accepted; who may upload, by project
    # name or "*" (server admins always may); names the upstream has that may have local
    # files anyway, and how they are served ("merge" or "replace").
    max_upload_size: int = 100 * 1024**2
    uploaders: Mapping[str, Tuple[str, ...]] = attrs.field(factory=dict)
    local_projects: Mapping[str, str] = attrs.field(factory=dict)


KNOWN_KEYS = frozenset(
    {
        "bot_localpart",
        "room_alias_prefix",
        "moderators",
        "publishers",
        "moderator_power_level",
        "attestation_power_level",
        "trusted_key_power_level",
        "trusted_keys",
        "signing_key_path",
        "maintainer_keys",
        "peers",
        "peer_timeout",
        "peer_retry_interval",
        "peer_lookup_rate",
        "corroboration",
        "keep_removed_files",
        "cid_hint_timeout",
        "matrix_quiet",
        "matrix_max_delay",
        "room_creation_rate",
        "matrix_queue_size",
        "storage_providers",
        "storage_retry_interval",
        "unpin_evicted",
        "data_directory",
        "upstream_url",
        "page_ttl",
        "upstream_timeout",
        "upstream_retry_interval",
        "upstream_allowed_file_hosts",
        "max_page_size",
        "page_cache_size",
        "max_cache_size",
        "min_free_space",
        "x_accel_redirect",
        "max_upload_size",
        "uploaders",
        "local_projects",
    }
)

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_size(value: Any, key: str) -> int:
    """Read a size in bytes: an int, or a string like "10G", "512M", "100KiB".

    Raises:
        ConfigError: naming `key` if the value is not a size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"'{key}' must be a size such as 10G or 512M, not {value!r}", path=(key,))
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"'{key}' must not be negative", path=(key,))
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    raise ConfigError(
        f"'{key}' must be a size such as 10G or 512M (units: K, M, G, T), not {value!r}",
        path=(key,),
    )


def parse_duration_ms(value: Any, key: str) -> int:
    """Read a duration: an int (milliseconds, as Synapse reads them) or "30s", "10m", "1h", "1d".

    Raises:
        ConfigError: naming `key` if the value is not a duration.
    """
    if isinstance(value, bool):
        raise ConfigError(f"'{key}' must be a duration such as 30s or 10m, not {value!r}", path=(key,))
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"'{key}' must not be negative", path=(key,))
        return int(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return int(float(m.group(1)) * _DURATION_UNITS[m.group(2) or "ms"])
    raise ConfigError(
        f"'{key}' must be a duration such as 30s or 10m (units: ms, s, m, h, d), not {value!r}",
        path=(key,),
    )


def parse_positive_duration_ms(value: Any, key: str) -> int:
    """A duration that must be greater than zero (timeouts, intervals).

    Raises:
        ConfigError: naming `key`.
    """
    ms = parse_duration_ms(value, key)
    if ms <= 0:
        raise ConfigError(f"'{key}' must be greater than zero", path=(key,))
    return ms


def check_url(value: Any, key: str) -> str:
    """An absolute http(s) URL, stripped; a ConfigError naming `key` otherwise."""
    try:
        return index_url(value, key)
    except ValueError as e:
        raise ConfigError(str(e), path=(key,)) from None


def default_upstream_url(environ: Optional[Mapping[str, str]] = None) -> str:
    """The index that pip itself is configured with on this machine.

    pip's own configuration wins (PIP_INDEX_URL, then its config files, as pip reads
    them), then pip's built-in default. Imported lazily: pip is optional at run time.
    """
    env = os.environ if environ is None else environ
    if env.get("PIP_INDEX_URL"):
        return env["PIP_INDEX_URL"].split()[0]
    try:
        from pip._internal.configuration import Configuration  # noqa: PLC0415
        from pip._internal.models.index import PyPI  # noqa: PLC0415
    except Exception:  # pragma: no cover - pip missing or its internals moved
        raise ConfigError(
            "'upstream_url' is not set and pip is not importable to find its default index; "
            "set upstream_url",
            path=("upstream_url",),
        )
    try:
        conf = Configuration(isolated=False)
        conf.load()
        for name in ("install.index-url", "global.index-url", ":env:.index-url"):
            try:
                value = conf.get_value(name)
            except Exception:
                continue
            if value:
                return str(value).split()[0]
    except Exception:
        pass  # an unreadable pip config is pip's problem; fall back to its default
    return PyPI.simple_url


def parse_config(config: Any) -> PyPIConfig:
    """Validate the module's `config:` block from homeserver.yaml.

    Raises:
        ConfigError: for the first problem found; the message names the key.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError("synapse_pypi's config must be a mapping of options")
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown option '{unknown[0]}'; try one of: {', '.join(sorted(KNOWN_KEYS))}",
            path=(unknown[0],),
        )

    data_directory = config.get("data_directory")
    if not isinstance(data_directory, str) or not data_directory.strip():
        raise ConfigError(
            "'data_directory' is required: a directory for the file cache", path=("data_directory",)
        )
    data_directory = os.path.abspath(data_directory)

    if config.get("upstream_url") is None:
        upstream_url = check_url(default_upstream_url(), "upstream_url")
    else:
        upstream_url = check_url(config["upstream_url"], "upstream_url")

    kwargs: dict = {}
    if "page_ttl" in config:
        kwargs["page_ttl_ms"] = parse_duration_ms(config["page_ttl"], "page_ttl")
    if "upstream_timeout" in config:
        kwargs["upstream_timeout_s"] = parse_positive_duration_ms(config["upstream_timeout"], "upstream_timeout") / 1000
    if "upstream_retry_interval" in config:
        kwargs["upstream_retry_ms"] = parse_duration_ms(config["upstream_retry_interval"], "upstream_retry_interval")
    if config.get("upstream_allowed_file_hosts") is not None:
        kwargs["upstream_allowed_file_hosts"] = _parse_hosts(
            config["upstream_allowed_file_hosts"], "upstream_allowed_file_hosts"
        )
    if "page_cache_size" in config:
        kwargs["page_cache_size"] = parse_size(config["page_cache_size"], "page_cache_size")
        if kwargs["page_cache_size"] < 1024**2:
            raise ConfigError("'page_cache_size' must be at least 1M", path=("page_cache_size",))
    if "max_page_size" in config:
        kwargs["max_page_size"] = parse_size(config["max_page_size"], "max_page_size")
        if kwargs["max_page_size"] < 1024:
            raise ConfigError("'max_page_size' must be at least 1K", path=("max_page_size",))
    if "max_cache_size" in config:
        kwargs["max_cache_size"] = parse_size(config["max_cache_size"], "max_cache_size")

    if "min_free_space" in config:
        kwargs["min_free_space"] = parse_size(config["min_free_space"], "min_free_space")
    if config.get("x_accel_redirect") is not None:
        kwargs["x_accel_redirect"] = _parse_internal_location(config["x_accel_redirect"], "x_accel_redirect")

    if "storage_providers" in config:
        kwargs["storage_providers"] = parse_storage_providers(config["storage_providers"])
    if "storage_retry_interval" in config:
        kwargs["storage_retry_ms"] = parse_positive_duration_ms(config["storage_retry_interval"], "storage_retry_interval")
    if "unpin_evicted" in config:
        if not isinstance(config["unpin_evicted"], bool):
            raise ConfigError(
                f"'unpin_evicted' must be true or false, not {config['unpin_evicted']!r}", path=("unpin_evicted",)
            )
        kwargs["unpin_evicted"] = config["unpin_evicted"]

    kwargs.update(_parse_trust(config))
    kwargs.update(_parse_publish(config))
    kwargs.setdefault("signing_key_path", os.path.join(data_directory, "attestation_signing.key"))
    return PyPIConfig(data_directory=data_directory, upstream_url=upstream_url, **kwargs)


def _parse_hosts(value: Any, key: str) -> Tuple[HostPort, ...]:
    """A list of "host" or "host:port" entries ("[v6]:port" for IPv6 with a port)."""
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list of host names or host:port, like files.example.org:8080", path=(key,))
    hosts = []
    for entry in value:
        try:
            hosts.append(parse_host_port(entry))
        except ValueError as e:
            raise ConfigError(f"'{key}': {e}", path=(key,)) from None
    return tuple(dict.fromkeys(hosts))


_LOCATION_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


def _parse_internal_location(value: Any, key: str) -> str:
    """A URI path such as "/_pypi_cache/" (an nginx `internal` location), ending in "/"."""
    if not isinstance(value, str) or not _LOCATION_RE.match(value) or "//" in value or "/../" in value + "/":
        raise ConfigError(
            f"'{key}' must be the path of the reverse proxy's internal location for the cache directory, "
            f"like /_synapse_pypi_cache/, not {value!r}",
            path=(key,),
        )
    return value if value.endswith("/") else value + "/"


_LOCALPART_RE = re.compile(r"^[a-z0-9._=/+-]{1,64}$")
_PREFIX_RE = re.compile(r"^[a-z0-9._=-]{0,32}$")
_SERVER_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")
_MXID_RE = re.compile(r"^@[^:\s]{1,255}:[^\s]{1,255}$")


def _user_list(config: Mapping[str, Any], key: str) -> Tuple[str, ...]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(u, str) and _MXID_RE.match(u) for u in value):
        raise ConfigError(f"'{key}' must be a list of Matrix user ids like '@alice:example.org'", path=(key,))
    return tuple(value)


def _power(config: Mapping[str, Any], key: str) -> Optional[int]:
    if key not in config:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ConfigError(f"'{key}' must be a power level from 0 to 100", path=(key,))
    return value


def _user_keys(value: Any, key: str) -> dict:
    """{mxid: ("ed25519:<id> <base64>", ...)}, every key parsed."""
    from synapse_pypi.trust import KeyFormatError, parse_public_key  # noqa: PLC0415

    if not isinstance(value, dict):
        raise ConfigError(
            f"'{key}' must map Matrix user ids to lists of keys ('ed25519:<id> <base64>')", path=tuple(key.split("."))
        )
    keys: dict = {}
    for user, entries in value.items():
        if not isinstance(user, str) or not _MXID_RE.match(user):
            raise ConfigError(f"'{key}': {user!r} is not a Matrix user id", path=tuple(key.split(".")))
        if isinstance(entries, str):
            entries = [entries]
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"'{key}.{user}' must be a list of keys", path=(*key.split("."), user))
        for entry in entries:
            try:
                parse_public_key(entry if isinstance(entry, str) else "")
            except KeyFormatError as e:
                raise ConfigError(f"'{key}.{user}': {e}", path=(*key.split("."), user))
        keys[user] = tuple(entries)
    return keys


def _parse_trust(config: Mapping[str, Any]) -> dict:
    """The trust-layer options; see docs/configuration.md."""
    out: dict = {}
    if "bot_localpart" in config:
        value = config["bot_localpart"]
        if not isinstance(value, str) or not _LOCALPART_RE.match(value):
            raise ConfigError(
                "'bot_localpart' must be a Matrix user localpart (lower-case letters, digits, ._=/+-)",
                path=("bot_localpart",),
            )
        out["bot_localpart"] = value
    if "room_alias_prefix" in config:
        value = config["room_alias_prefix"]
        if not isinstance(value, str) or not _PREFIX_RE.match(value):
            raise ConfigError(
                "'room_alias_prefix' must be up to 32 lower-case letters, digits or ._=-", path=("room_alias_prefix",)
            )
        out["room_alias_prefix"] = value
    for key in ("moderators", "publishers"):
        if key in config:
            out[key] = _user_list(config, key)
    for key, field in (
        ("moderator_power_level", "moderator_power_level"),
        ("attestation_power_level", "attestation_power_level"),
        ("trusted_key_power_level", "trusted_key_power_level"),
    ):
        level = _power(config, key)
        if level is not None:
            out[field] = level
    if "trusted_keys" in config:
        out["trusted_keys"] = _user_keys(config["trusted_keys"], "trusted_keys")
    if "maintainer_keys" in config:
        value = config["maintainer_keys"]
        if not isinstance(value, dict):
            raise ConfigError(
                "'maintainer_keys' must map project names to {user id: [keys]}", path=("maintainer_keys",)
            )
        pinned: dict = {}
        for project, users in value.items():
            from synapse_pypi._names import InvalidName, normalize  # noqa: PLC0415

            try:
                name = normalize(str(project))
            except InvalidName as e:
                raise ConfigError(f"'maintainer_keys': {e}", path=("maintainer_keys", str(project)))
            pinned[name] = _user_keys(users, f"maintainer_keys.{project}")
        out["maintainer_keys"] = pinned
    if "peers" in config:
        value = config["peers"]
        if not isinstance(value, list) or not all(isinstance(p, str) and _SERVER_RE.match(p) for p in value):
            raise ConfigError(
                "'peers' must be a list of homeserver names like 'mirror.example.org' or 'localhost:8448'",
                path=("peers",),
            )
        out["peers"] = tuple(dict.fromkeys(value))
    for key, field in (
        ("peer_timeout", "peer_timeout_s"),
        ("peer_retry_interval", "peer_retry_s"),
        ("cid_hint_timeout", "cid_hint_timeout_s"),
        ("matrix_max_delay", "matrix_max_delay_s"),
    ):
        if key in config:
            out[field] = parse_positive_duration_ms(config[key], key) / 1000
    if "keep_removed_files" in config:
        from synapse_pypi._names import InvalidName, normalize  # noqa: PLC0415

        value = config["keep_removed_files"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("'keep_removed_files' must be a list of project names", path=("keep_removed_files",))
        try:
            out["keep_removed_files"] = tuple(sorted({normalize(v) for v in value}))
        except InvalidName as e:
            raise ConfigError(f"'keep_removed_files': {e}", path=("keep_removed_files",))
    if "matrix_quiet" in config:
        out["matrix_quiet_s"] = parse_duration_ms(config["matrix_quiet"], "matrix_quiet") / 1000
    for key, low, high in (("corroboration", 1, 100), ("room_creation_rate", 1, 1_000_000),
                           ("peer_lookup_rate", 1, 1_000_000),
                           ("matrix_queue_size", 10, 10_000_000)):
        if key in config:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"'{key}' must be a whole number from {low} to {high}", path=(key,))
            out[key] = value
    if "signing_key_path" in config:
        value = config["signing_key_path"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError("'signing_key_path' must be a file path", path=("signing_key_path",))
        out["signing_key_path"] = os.path.abspath(value)
    return out


def parse_storage_providers(value: Any) -> Tuple[StorageProviderConfig, ...]:
    """Load each `{module: dotted.path.Class, config: {...}}` and parse its config.

    Raises:
        ConfigError: naming `storage_providers` and the entry's position.
    """
    key = "storage_providers"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list of {{module: ..., config: ...}} entries", path=(key,))
    out = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
            raise ConfigError(f"'{where}' must be a mapping with a 'module' string", path=(key, str(i)))
        extra = sorted(set(entry) - {"module", "config"})
        if extra:
            raise ConfigError(f"'{where}': unknown key '{extra[0]}'; try one of: module, config", path=(key, str(i)))
        dotted = entry["module"]
        module_name, _, class_name = dotted.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(
                f"'{where}.module': cannot load {dotted!r} ({e.__class__.__name__}: {e})",
                path=(key, str(i), "module"),
            )
        parse = getattr(cls, "parse_config", None)
        try:
            parsed = parse(entry.get("config") or {}) if parse else entry.get("config") or {}
        except ConfigError as e:
            inner = ".".join(e.path) if e.path else ""
            raise ConfigError(
                f"'{where}.config{'.' + inner if inner else ''}': {e.msg}",
                path=(key, str(i), "config", *(e.path or ())),
            )
        out.append(StorageProviderConfig(name=f"{i}:{dotted}", cls=cls, config=parsed))
    return tuple(out)


def _parse_publish(config: Mapping[str, Any]) -> dict:
    """`max_upload_size`, `uploaders` and `local_projects` (docs/publishing.md)."""
    from synapse_pypi._names import InvalidName, normalize  # noqa: PLC0415
    from synapse_pypi._upload_rules import MODES  # noqa: PLC0415

    out: dict = {}
    if "max_upload_size" in config:
        out["max_upload_size"] = parse_size(config["max_upload_size"], "max_upload_size")
        if out["max_upload_size"] < 1024:
            raise ConfigError("'max_upload_size' must be at least 1K", path=("max_upload_size",))
    uploaders = config.get("uploaders")
    if uploaders is not None:
        if not isinstance(uploaders, dict):
            raise ConfigError(
                "'uploaders' must map project names (or '*') to lists of Matrix user ids", path=("uploaders",)
            )
        parsed = {}
        for project, users in uploaders.items():
            try:
                name = "*" if project == "*" else normalize(str(project))
            except InvalidName as e:
                raise ConfigError(f"'uploaders': {e}", path=("uploaders", str(project)))
            parsed[name] = _user_list({f"uploaders.{project}": users}, f"uploaders.{project}")
        out["uploaders"] = parsed
    local = config.get("local_projects")
    if local is not None:
        if not isinstance(local, dict):
            raise ConfigError(
                "'local_projects' must map project names to {mode: merge} or {mode: replace}", path=("local_projects",)
            )
        modes = {}
        for project, entry in local.items():
            where = ("local_projects", str(project))
            try:
                name = normalize(str(project))
            except InvalidName as e:
                raise ConfigError(f"'local_projects': {e}", path=where)
            mode = entry.get("mode") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or set(entry) - {"mode"} or mode not in MODES:
                raise ConfigError(
                    f"'local_projects.{project}' must be {{mode: ...}}; try one of: {', '.join(MODES)}", path=where
                )
            modes[name] = mode
        out["local_projects"] = modes
    return out
