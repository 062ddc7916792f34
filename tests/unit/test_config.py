"""Config: good values become the expected frozen object; every bad one names its key."""

import attrs
import pytest
from synapse.module_api.errors import ConfigError

from synapse_pypi._addresses import HostPort
from synapse_pypi._config import PyPIConfig, default_upstream_url, parse_config

BASE = {"data_directory": "/var/lib/x", "upstream_url": "http://127.0.0.1:9/simple"}


def test_full_config_parses_to_expected_object():
    got = parse_config(
        {
            **BASE,
            "page_ttl": "5m",
            "upstream_timeout": "2s",
            "upstream_retry_interval": "1m",
            "max_page_size": "1M",
            "page_cache_size": "64M",
            "max_cache_size": "3G",
        }
    )
    assert got == PyPIConfig(
        data_directory="/var/lib/x",
        upstream_url="http://127.0.0.1:9/simple/",
        page_ttl_ms=300_000,
        upstream_timeout_s=2.0,
        upstream_retry_ms=60_000,
        max_page_size=1024**2,
        page_cache_size=64 * 1024**2,
        max_cache_size=3 * 1024**3,
        signing_key_path="/var/lib/x/attestation_signing.key",
    )


def test_defaults():
    got = parse_config(dict(BASE))
    assert got.page_ttl_ms == 600_000
    assert got.upstream_timeout_s == 30.0
    assert got.upstream_retry_ms == 10_000
    assert got.max_cache_size == 10 * 1024**3
    assert got.max_page_size == 64 * 1024**2
    assert got.min_free_space == 100 * 1024**2
    assert got.x_accel_redirect is None
    assert got.page_cache_size == 512 * 1024**2


def test_disk_and_offload_options():
    got = parse_config({**BASE, "min_free_space": "1G", "x_accel_redirect": "/_synapse_pypi_cache"})
    assert got.min_free_space == 1024**3
    # The location always ends in "/": the blob's relative path is appended to it.
    assert got.x_accel_redirect == "/_synapse_pypi_cache/"
    assert parse_config({**BASE, "x_accel_redirect": None}).x_accel_redirect is None


def test_allowed_file_hosts():
    got = parse_config({**BASE, "upstream_allowed_file_hosts": ["Files.Internal", "10.0.0.7:8080", "[fd00::7]:81",
                                                                "files.internal"]})
    assert got.upstream_allowed_file_hosts == (
        HostPort("files.internal", None), HostPort("10.0.0.7", 8080), HostPort("fd00::7", 81))
    assert parse_config(dict(BASE)).upstream_allowed_file_hosts == ()
    assert parse_config({**BASE, "upstream_allowed_file_hosts": None}).upstream_allowed_file_hosts == ()


def test_unpin_evicted():
    assert parse_config(dict(BASE)).unpin_evicted is True
    assert parse_config({**BASE, "unpin_evicted": False}).unpin_evicted is False


def test_keep_removed_files_are_normalized():
    assert parse_config({**BASE, "keep_removed_files": ["Zope.Interface", "six"]}).keep_removed_files == (
        "six", "zope-interface")


def test_trust_and_queue_options():
    got = parse_config({**BASE, "corroboration": 3, "cid_hint_timeout": "2s", "matrix_quiet": "500ms",
                        "matrix_max_delay": "1m", "room_creation_rate": 10, "matrix_queue_size": 100})
    assert (got.corroboration, got.cid_hint_timeout_s, got.matrix_quiet_s) == (3, 2.0, 0.5)
    assert (got.matrix_max_delay_s, got.room_creation_rate, got.matrix_queue_size) == (60.0, 10, 100)
    defaults = parse_config(dict(BASE))
    assert (defaults.corroboration, defaults.cid_hint_timeout_s, defaults.matrix_quiet_s) == (2, 5.0, 0.25)
    assert (defaults.room_creation_rate, defaults.matrix_queue_size) == (60, 10_000)


def test_config_is_frozen():
    got = parse_config(dict(BASE))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        got.page_ttl_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "change, key, words",
    [
        ({"data_directory": None}, "data_directory", "required"),
        ({"data_directory": 3}, "data_directory", "required"),
        ({"upstream_url": "ftp://x/simple/"}, "upstream_url", "http"),
        ({"upstream_url": "not a url"}, "upstream_url", "absolute"),
        ({"upstream_url": 5}, "upstream_url", "URL"),
        ({"page_ttl": "soon"}, "page_ttl", "duration"),
        ({"page_ttl": -1}, "page_ttl", "negative"),
        ({"page_ttl": True}, "page_ttl", "duration"),
        ({"upstream_timeout": "0s"}, "upstream_timeout", "greater than zero"),
        ({"upstream_timeout": "200ms x"}, "upstream_timeout", "duration"),
        ({"upstream_retry_interval": "soon"}, "upstream_retry_interval", "duration"),
        ({"upstream_retry_interval": -1}, "upstream_retry_interval", "negative"),
        ({"page_cache_size": "100K"}, "page_cache_size", "at least 1M"),
        ({"page_cache_size": "lots"}, "page_cache_size", "page_cache_size"),
        ({"max_cache_size": "lots"}, "max_cache_size", "size"),
        ({"max_cache_size": -5}, "max_cache_size", "negative"),
        ({"max_page_size": "12"}, "max_page_size", "at least 1K"),
        ({"min_free_space": "plenty"}, "min_free_space", "size"),
        ({"min_free_space": -1}, "min_free_space", "negative"),
        ({"x_accel_redirect": "_cache/"}, "x_accel_redirect", "internal location"),
        ({"x_accel_redirect": "/a b/"}, "x_accel_redirect", "internal location"),
        ({"x_accel_redirect": "/x/../etc/"}, "x_accel_redirect", "internal location"),
        ({"x_accel_redirect": 5}, "x_accel_redirect", "internal location"),
        ({"colour": "blue"}, "colour", "try one of"),
        ({"corroboration": 0}, "corroboration", "from 1 to 100"),
        ({"corroboration": "two"}, "corroboration", "whole number"),
        ({"corroboration": True}, "corroboration", "whole number"),
        ({"room_creation_rate": 0}, "room_creation_rate", "whole number"),
        ({"matrix_queue_size": 5}, "matrix_queue_size", "from 10"),
        ({"matrix_quiet": "soon"}, "matrix_quiet", "duration"),
        ({"matrix_max_delay": "0s"}, "matrix_max_delay", "greater than zero"),
        ({"cid_hint_timeout": "0s"}, "cid_hint_timeout", "greater than zero"),
        ({"peer_lookup_rate": -1}, "peer_lookup_rate", "whole number"),
        ({"keep_removed_files": "six"}, "keep_removed_files", "list of project names"),
        ({"unpin_evicted": "no"}, "unpin_evicted", "true or false"),
        ({"unpin_evicted": 0}, "unpin_evicted", "true or false"),
        ({"keep_removed_files": ["no such name!"]}, "keep_removed_files", "keep_removed_files"),
        ({"upstream_allowed_file_hosts": "files.internal"}, "upstream_allowed_file_hosts", "list of host names"),
        ({"upstream_allowed_file_hosts": ["http://files.internal/"]}, "upstream_allowed_file_hosts", "host name"),
        ({"upstream_allowed_file_hosts": ["files.internal:0"]}, "upstream_allowed_file_hosts", "port"),
    ],
)
def test_bad_values_name_their_key(change, key, words):
    config = {**BASE, **change}
    with pytest.raises(ConfigError) as e:
        parse_config(config)
    assert f"'{key}'" in str(e.value)
    assert words in str(e.value)
    assert tuple(e.value.path) == (key,)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(["data_directory"])


def test_upstream_defaults_to_pips_configured_index(tmp_path, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://127.0.0.1:7/configured/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    got = parse_config({"data_directory": "/x"})
    assert got.upstream_url == "http://127.0.0.1:7/configured/simple/"


def test_upstream_env_wins(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:8/env/simple/")
    assert default_upstream_url() == "http://127.0.0.1:8/env/simple/"


def test_upstream_falls_back_to_pips_builtin_default(tmp_path, monkeypatch):
    from pip._internal.models.index import PyPI

    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "missing.conf"))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path))
    # Site-wide pip.conf files may exist on a machine; isolate from them too.
    monkeypatch.setattr("pip._internal.configuration.get_configuration_files", lambda: {})
    assert default_upstream_url() == PyPI.simple_url


def test_upload_options():
    got = parse_config({**BASE, "max_upload_size": "20M", "uploaders": {"Corp.Tools": ["@a:hs"], "*": ["@ci:hs"]},
                        "local_projects": {"Requests": {"mode": "merge"}, "x": {"mode": "replace"}}})
    assert got.max_upload_size == 20 * 1024**2
    assert got.uploaders == {"corp-tools": ("@a:hs",), "*": ("@ci:hs",)}
    assert got.local_projects == {"requests": "merge", "x": "replace"}
    defaults = parse_config(dict(BASE))
    assert (defaults.max_upload_size, defaults.uploaders, defaults.local_projects) == (100 * 1024**2, {}, {})


@pytest.mark.parametrize(
    "change, words, path",
    [
        ({"max_upload_size": "1"}, "'max_upload_size' must be at least 1K", ("max_upload_size",)),
        ({"uploaders": ["@a:hs"]}, "'uploaders' must map", ("uploaders",)),
        ({"uploaders": {"x": "@a:hs"}}, "'uploaders.x' must be a list of Matrix user ids", ("uploaders.x",)),
        ({"uploaders": {"no such!": []}}, "'uploaders'", ("uploaders", "no such!")),
        ({"local_projects": ["x"]}, "'local_projects' must map", ("local_projects",)),
        ({"local_projects": {"x": {"mode": "shadow"}}}, "try one of: merge, replace", ("local_projects", "x")),
        ({"local_projects": {"x": "merge"}}, "'local_projects.x' must be {mode: ...}", ("local_projects", "x")),
    ],
)
def test_bad_upload_options_name_their_key(change, words, path):
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, **change})
    assert words in str(e.value)
    assert tuple(e.value.path) == path
