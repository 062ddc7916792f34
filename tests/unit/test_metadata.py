"""Core metadata from cached wheels: the real METADATA, or a clean "no metadata" for every
broken or hostile file, within bounded memory."""

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synapse_pypi import _metadata
from synapse_pypi._metadata import NoCoreMetadata, extract_verified, wheel_metadata

META = b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n\nA demo.\n"
NAME = "demo_pkg-1.0-py3-none-any.whl"


def wheel(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def good() -> bytes:
    return wheel([("demo_pkg/__init__.py", b""), ("demo_pkg-1.0.dist-info/METADATA", META),
                  ("demo_pkg-1.0.dist-info/WHEEL", b"Wheel-Version: 1.0\n")])  # fmt: skip


def test_metadata_of_a_wheel():
    assert wheel_metadata(io.BytesIO(good()), NAME) == META


def test_verified_against_its_sha256(tmp_path: Path):
    path = tmp_path / NAME
    path.write_bytes(good())
    sha = hashlib.sha256(good()).hexdigest()
    assert extract_verified(str(path), NAME, sha) == META
    with pytest.raises(NoCoreMetadata, match="no longer has sha256"):
        extract_verified(str(path), NAME, "0" * 64)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"not a zip at all", "end-of-central-directory"),
        (good()[: len(good()) // 2], "end-of-central-directory"),
        (wheel([("demo_pkg/__init__.py", b"")]), "0 .dist-info"),
        (wheel([("a-1.0.dist-info/METADATA", META), ("demo_pkg-1.0.dist-info/METADATA", META)]), "2 .dist-info"),
        (wheel([("other-1.0.dist-info/METADATA", META)]), "is not the .dist-info of demo-pkg"),
        (wheel([("demo_pkg-1.0.dist-info/RECORD", b"")]), "no demo_pkg-1.0.dist-info/METADATA"),
        (wheel([("demo_pkg-1.0.dist-info/METADATA", b"\xff\xfe")]), "not UTF-8"),
        (wheel([("demo_pkg-1.0.dist-info/METADATA", b"Summary: x\n")]), "lacks Metadata-Version or Name"),
        (wheel([("demo_pkg-1.0.dist-info/METADATA", META.replace(b"demo-pkg", b"evil"))]), "names project"),
    ],
)
def test_broken_wheels_have_no_metadata(data, words):
    with pytest.raises(NoCoreMetadata, match=words):
        wheel_metadata(io.BytesIO(data), NAME)


def test_not_a_wheel_name():
    with pytest.raises(NoCoreMetadata, match="not a wheel file name"):
        wheel_metadata(io.BytesIO(good()), "demo-1.0.tar.gz")


def test_a_corrupt_entry_is_no_metadata():
    raw = wheel([("demo_pkg-1.0.dist-info/METADATA", META)], compression=zipfile.ZIP_STORED)
    broken = raw.replace(b"A demo.", b"A dEmo.")  # the CRC no longer matches
    with pytest.raises(NoCoreMetadata, match="broken zip"):
        wheel_metadata(io.BytesIO(broken), NAME)


def test_metadata_over_the_limit(monkeypatch):
    big = META + b"x" * 5000
    data = wheel([("demo_pkg-1.0.dist-info/METADATA", big)])
    with pytest.raises(NoCoreMetadata, match="more than the 1000 accepted"):
        wheel_metadata(io.BytesIO(data), NAME, max_size=1000)


def test_a_zip_bomb_stops_at_the_limit():
    # The entry claims 100 bytes but inflates to 50 MB: the read stops at the limit.
    bomb_body = META + b"\0" * 50_000_000
    data = bytearray(wheel([("demo_pkg-1.0.dist-info/METADATA", bomb_body)]))
    real = len(bomb_body).to_bytes(4, "little")
    lie = (100).to_bytes(4, "little")
    # Uncompressed size in the local header (offset 22) and the central directory (offset 24).
    data[22:26] = lie
    cd = data.rindex(b"PK\x01\x02")
    assert data[cd + 24 : cd + 28] == real
    data[cd + 24 : cd + 28] = lie
    with pytest.raises(NoCoreMetadata):
        wheel_metadata(io.BytesIO(bytes(data)), NAME, max_size=10_000)


def test_too_many_entries(monkeypatch):
    monkeypatch.setattr(_metadata, "MAX_ENTRIES", 2)
    with pytest.raises(NoCoreMetadata, match="3 zip entries"):
        wheel_metadata(io.BytesIO(good()), NAME)


def test_zip64_end_record_is_read():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        zf.writestr("demo_pkg-1.0.dist-info/METADATA", META)
    data = bytearray(buf.getvalue())
    # Rewrite the classic end record's counts as "see zip64" and add a zip64 record + locator.
    eocd = data.rindex(b"PK\x05\x06")
    cd_size = int.from_bytes(data[eocd + 12 : eocd + 16], "little")
    cd_offset = int.from_bytes(data[eocd + 16 : eocd + 20], "little")
    z64_at = eocd
    z64 = (b"PK\x06\x06" + (44).to_bytes(8, "little") + b"\x2d\x00\x2d\x00" + b"\0" * 8
           + (1).to_bytes(8, "little") + (1).to_bytes(8, "little") + cd_size.to_bytes(8, "little")
           + cd_offset.to_bytes(8, "little"))  # fmt: skip
    locator = b"PK\x06\x07" + b"\0" * 4 + z64_at.to_bytes(8, "little") + (1).to_bytes(4, "little")
    classic = bytearray(data[eocd:])
    classic[8:10] = classic[10:12] = b"\xff\xff"
    patched = bytes(data[:eocd]) + z64 + locator + bytes(classic)
    assert _metadata._central_directory(io.BytesIO(patched)) == (1, cd_size)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_junk_is_always_a_clean_no(junk):
    try:
        wheel_metadata(io.BytesIO(junk), NAME)
    except NoCoreMetadata:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=4))
def test_damaged_wheels_are_a_clean_no_or_the_metadata(at, garbage):
    data = bytearray(good())
    at = at % len(data)
    data[at : at + len(garbage)] = garbage
    try:
        assert wheel_metadata(io.BytesIO(bytes(data)), NAME) == META
    except NoCoreMetadata:
        pass
