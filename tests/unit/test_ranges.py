"""Byte ranges (RFC 9110 §14): single ranges honoured, anything else means the whole file."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from synapse_pypi._ranges import RangeNotSatisfiable, content_range, parse_range


@pytest.mark.parametrize(
    "header, size, expected",
    [
        ("bytes=0-99", 1000, (0, 99)),
        ("bytes=100-1099", 2000, (100, 1099)),
        ("bytes=100-", 1000, (100, 999)),
        ("bytes=900-5000", 1000, (900, 999)),  # the last position is clipped to the file
        ("bytes=-500", 1000, (500, 999)),
        ("bytes=-5000", 1000, (0, 999)),  # a suffix longer than the file: all of it
        ("BYTES = 1 - 2", 10, (1, 2)),
        (None, 10, None),
        ("bytes=0-1,5-6", 10, None),  # several ranges: the whole file (allowed by the RFC)
        ("items=0-1", 10, None),  # another unit
        ("bytes=5-1", 10, None),  # invalid: ignored
        ("bytes=-", 10, None),
        ("bytes=a-b", 10, None),
    ],
)
def test_ranges(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [("bytes=1010-", 1000), ("bytes=1000-1001", 1000), ("bytes=-0", 10),
                                          ("bytes=-1", 0), ("bytes=0-", 0)])  # fmt: skip
def test_unsatisfiable(header, size):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


def test_content_range():
    assert content_range(100, 1099, 200000) == "bytes 100-1099/200000"


@given(st.text(max_size=40), st.integers(min_value=0, max_value=10**9))
def test_any_header_gives_a_range_inside_the_file_or_none(header, size):
    try:
        got = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if got is not None:
        first, last = got
        assert 0 <= first <= last < size
