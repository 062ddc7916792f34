"""Policies' pure parts: the command grammar, what a target names, what a ban covers, and the
lock files `synapse-pypi verify` reads."""

import pytest

from synapse_pypi._maintainer import RequirementsError, parse_pylock
from synapse_pypi.trust import generate_key
from synapse_pypi.trust._bans import (
    USAGE,
    Command,
    build_policy,
    parse_command,
    policy_state_key,
    read_policy,
    resolve_target,
)


def test_commands() -> None:
    assert parse_command("hello") is None and parse_command(None) is None and parse_command("!pypix ban") is None
    assert parse_command("!pypi ban six-1.0.tar.gz  bad   bytes") == Command("ban", "six-1.0.tar.gz", "bad bytes")
    assert parse_command("!pypi unban 1.0") == Command("unban", "1.0", "")
    assert parse_command("!pypi") == USAGE and parse_command("!pypi delete six") == USAGE
    assert "needs a reason" in str(parse_command("!pypi ban six"))


@pytest.mark.parametrize(
    "target, expected",
    [
        ("Six", ("project", "six")),
        ("six-1.16.0-py2.py3-none-any.whl", ("file", "six-1.16.0-py2.py3-none-any.whl")),
        ("six-1.16.0.tar.gz", ("file", "six-1.16.0.tar.gz")),
        ("1.16.0", ("version", "1.16.0")),
    ],
)
def test_targets(target: str, expected: tuple) -> None:
    assert resolve_target("six", target) == expected


@pytest.mark.parametrize("target", ["other-1.0.tar.gz", "six-1.0.whl", "../six-1.0.tar.gz", "not a version"])
def test_bad_targets(target: str) -> None:
    assert isinstance(resolve_target("six", target), str)


def test_what_a_ban_covers_and_that_it_is_signed_for_its_slot() -> None:
    key = generate_key()
    content = build_policy(project="six", kind="version", entity="1.0", recommendation="ban", reason="x",
                           source="moderator", timestamp=1, publisher="@bot:a", signing_key=key)
    signed = read_policy(content, policy_state_key("version", "1.0", "@bot:a"), "@bot:a")
    policy = signed.policy  # type: ignore[union-attr]
    assert policy.covers("six-1.0.tar.gz", "1.0") and policy.covers("six-1.0-py3-none-any.whl", "1.0.0")
    assert not policy.covers("six-1.1.tar.gz", "1.1")
    # Someone else's slot, or a slot for another entity: never this ban.
    assert read_policy(content, policy_state_key("version", "1.0", "@eve:b"), "@eve:b")[0].name == "IMPERSONATION"
    assert read_policy(content, policy_state_key("version", "2.0", "@bot:a"), "@bot:a")[0].name == "MALFORMED"


def test_pylock_files_and_errors() -> None:
    lock = """lock-version = "1.0"
[[packages]]
name = "Six"
version = "1.16.0"
[[packages.wheels]]
url = "https://files.example/six-1.16.0-py2.py3-none-any.whl"
hashes = {sha256 = "AA%s"}
[packages.sdist]
name = "six-1.16.0.tar.gz"
hashes = {sha256 = "%s"}
""" % ("a" * 62, "b" * 64)
    files = parse_pylock(lock)
    assert [(f.project, f.filename, f.sha256) for f in files] == [
        ("six", "six-1.16.0-py2.py3-none-any.whl", "a" * 64), ("six", "six-1.16.0.tar.gz", "b" * 64)]
    for bad in ("not toml [", 'lock-version = "1.0"', 'lock-version = "1.0"\n[[packages]]\nname = "x"\n'
                '[[packages.wheels]]\nname = "x-1.whl"\n'):
        with pytest.raises(RequirementsError):
            parse_pylock(bad)
