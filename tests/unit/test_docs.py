"""The documentation keeps up with the code: every option is documented in
docs/configuration.md and shown in sample_homeserver.yaml, and the sample is a config the
module accepts."""

import re
from pathlib import Path

import pytest
import yaml

from synapse_pypi._config import KNOWN_KEYS, parse_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
SAMPLE = ROOT / "sample_homeserver.yaml"


def _module_config() -> dict:
    config = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    entries = [m for m in config.get("modules") or [] if m.get("module") == "synapse_pypi.PyPIModule"]
    assert len(entries) == 1, "sample_homeserver.yaml must enable synapse_pypi.PyPIModule once"
    return entries[0].get("config") or {}


@pytest.mark.parametrize("key", sorted(KNOWN_KEYS))
def test_every_option_has_a_section_in_configuration_md(key):
    text = CONFIGURATION_MD.read_text(encoding="utf-8")
    assert re.search(rf"^### `{re.escape(key)}`\s*$", text, re.MULTILINE), (
        f"docs/configuration.md has no '### `{key}`' section"
    )


@pytest.mark.parametrize("key", sorted(KNOWN_KEYS))
def test_every_option_appears_in_the_sample(key):
    text = SAMPLE.read_text(encoding="utf-8")
    # Set (`key: value`) or shown commented out (`#key: value`).
    assert re.search(rf"^\s*#?\s*{re.escape(key)}:", text, re.MULTILINE), (
        f"sample_homeserver.yaml does not mention '{key}'"
    )


def test_the_sample_sets_only_known_options():
    assert set(_module_config()) <= KNOWN_KEYS


def test_the_sample_module_config_parses(monkeypatch):
    # upstream_url is left to its default in the sample: make that default independent of
    # how pip is configured on this machine.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    module_config = _module_config()
    parsed = parse_config(module_config)
    assert parsed.data_directory == module_config["data_directory"]
    assert parsed.upstream_url == "http://127.0.0.1:9/simple/"
    # The values the sample spells out are the defaults.
    defaults = parse_config({"data_directory": module_config["data_directory"]})
    for field in (
        "bot_localpart",
        "room_alias_prefix",
        "moderator_power_level",
        "attestation_power_level",
        "trusted_key_power_level",
        "peers",
        "peer_timeout_s",
        "peer_retry_s",
        "page_ttl_ms",
        "upstream_timeout_s",
        "max_page_size",
        "max_cache_size",
        "storage_retry_ms",
        "signing_key_path",
    ):
        assert getattr(parsed, field) == getattr(defaults, field), field


EXAMPLE_KEYS = ("moderators", "publishers", "trusted_keys", "maintainer_keys", "signing_key_path")


def _uncomment_examples(text: str) -> str:
    """Uncomment `#key: ...` for the example keys, with the `#  ...` lines that continue them."""
    out = []
    inside = False
    for line in text.splitlines():
        m = re.match(r"^(\s*)#(\S.*)$", line)
        if m and m.group(2).split(":", 1)[0] in EXAMPLE_KEYS:
            inside = True
            out.append(m.group(1) + m.group(2))
            continue
        m = re.match(r"^(\s*)#(  .*)$", line)
        if inside and m:
            out.append(m.group(1) + m.group(2))
            continue
        inside = False
        out.append(line)
    return "\n".join(out) + "\n"


def test_commented_examples_in_the_sample_parse(monkeypatch):
    # The commented-out examples are what an admin uncomments: they must be valid too.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    config = yaml.safe_load(_uncomment_examples(SAMPLE.read_text(encoding="utf-8")))
    module_config = next(m for m in config["modules"] if m["module"] == "synapse_pypi.PyPIModule")["config"]
    for key in EXAMPLE_KEYS:
        assert key in module_config, key
    parsed = parse_config(module_config)
    assert parsed.moderators and parsed.publishers and parsed.trusted_keys and parsed.maintainer_keys


def test_every_test_the_trust_model_names_exists():
    """docs/trust-model.md backs each scenario with a named test: the names must be real."""
    text = (ROOT / "docs" / "trust-model.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`((?:, `::\w+`)*)", text)
    assert len(named) >= 10
    for path, first, more in named:
        source = (ROOT / path).read_text(encoding="utf-8")
        for name in [first, *re.findall(r"::(\w+)", more)]:
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{path} has no test {name}"

