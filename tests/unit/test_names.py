"""Project names (PEP 503/508) and safe file names."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_pypi._names import (
    MAX_NAME_LENGTH,
    InvalidName,
    NormalizedName,
    is_safe_filename,
    normalize,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo", "foo"),
        ("Foo", "foo"),
        ("FOO", "foo"),
        ("zope.interface", "zope-interface"),
        ("Foo.Bar_baz--qux", "foo-bar-baz-qux"),
        ("foo._-bar", "foo-bar"),
        ("A", "a"),
        ("7", "7"),
        ("a1-B2", "a1-b2"),
        ("x" * MAX_NAME_LENGTH, "x" * MAX_NAME_LENGTH),
    ],
)
def test_normalize(name: str, expected: str) -> None:
    result = normalize(name)
    assert result == expected
    assert type(result) is NormalizedName


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("-foo", "not a valid project name"),
        ("foo-", "not a valid project name"),
        (".foo", "not a valid project name"),
        ("foo_", "not a valid project name"),
        ("foo bar", "not a valid project name"),
        ("foo/bar", "not a valid project name"),
        ("f\u00f6o", "not a valid project name"),
        ("foo\n", "not a valid project name"),
        ("foo\x00", "not a valid project name"),
        ("x" * (MAX_NAME_LENGTH + 1), f"longer than {MAX_NAME_LENGTH}"),
    ],
)
def test_normalize_rejects(name: str, fragment: str) -> None:
    with pytest.raises(InvalidName) as info:
        normalize(name)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(InvalidName, match="must be a string"):
        normalize(42)  # type: ignore[arg-type]


def test_invalid_name_is_a_value_error() -> None:
    # Callers that only know ValueError still catch it.
    assert issubclass(InvalidName, ValueError)


VALID_NAMES = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,40}[A-Za-z0-9])?", fullmatch=True)


@given(VALID_NAMES)
def test_normalize_properties(name: str) -> None:
    result = normalize(name)
    # PEP 503 form: lower case, single dashes, no dots or underscores.
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", result)
    assert normalize(result) == result
    assert normalize(name.upper()) == result
    assert len(result) <= len(name)


@given(st.text(max_size=200))
def test_normalize_only_raises_invalid_name(name: str) -> None:
    try:
        result = normalize(name)
    except InvalidName:
        return
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", result)


@pytest.mark.parametrize(
    ("filename", "safe"),
    [
        ("pkg-1.0.tar.gz", True),
        ("pkg-1.0-py3-none-any.whl", True),
        ("pkg-1.0-py3-none-any.whl.metadata", True),
        ("caf\u00e9-1.0.tar.gz", True),
        ("with space.zip", True),
        ("x" * 255, True),
        ("x" * 256, False),
        ("", False),
        (".", False),
        ("..", False),
        (".hidden", False),
        ("a/b.whl", False),
        ("../etc/passwd", False),
        ("a\\b.whl", False),
        ("a\x00b", False),
        ("a\nb", False),
        ("a\tb", False),
        ("a\x7fb", False),
        ("a\x85b", False),  # C1 control character
    ],
)
def test_is_safe_filename(filename: str, safe: bool) -> None:
    assert is_safe_filename(filename) is safe


def test_is_safe_filename_non_string() -> None:
    assert is_safe_filename(None) is False  # type: ignore[arg-type]


@given(st.text(), st.sampled_from(["/", "\\", "\x00", "\n", "\r", "\x1b"]), st.text())
def test_filenames_with_separators_or_controls_are_unsafe(before: str, bad: str, after: str) -> None:
    assert not is_safe_filename(before + bad + after)
