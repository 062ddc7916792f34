"""Core metadata (PEP 658) from a wheel this mirror holds: its `.dist-info/METADATA`.

The mirror serves it as `<wheel>.metadata` when the upstream offers none, so pip and uv
resolve without downloading whole wheels. Blocking file work: run it in a thread. Every
way a file can be broken or hostile ends in `NoCoreMetadata` with a one-line reason, never
in unbounded memory or time:

* the wheel's bytes are hashed again first, so only the verified file is read;
* the zip's central directory is measured from its end record before `zipfile` reads it
  (a directory of millions of entries would otherwise be parsed into memory);
* `METADATA` is read with a byte limit whatever its header claims (a zip bomb stops there);
* exactly one top-level `.dist-info` directory of the wheel's own project, as pip requires.

Pure: no Twisted, no Synapse.
"""

import email.parser
import email.policy
import hashlib
import os
import struct
import zipfile
import zlib
from typing import BinaryIO, Tuple

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

# Larger than any METADATA seen on PyPI (long descriptions included), small enough to hold.
MAX_METADATA_BYTES = 8 * 1024 * 1024
MAX_ENTRIES = 100_000
MAX_CENTRAL_DIRECTORY = 32 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024

_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF


class NoCoreMetadata(Exception):
    """The wheel yields no core metadata; the message says why in one line."""


def extract_verified(path: str, filename: str, sha256: str, max_size: int = MAX_METADATA_BYTES) -> bytes:
    """The METADATA of the wheel at `path`, once its bytes are checked to be `sha256`.

    Args:
        path: the wheel on disk.
        filename: its file name (which project and version it must describe).
        sha256: the hex sha256 the file was verified to have.
        max_size: the largest METADATA accepted.

    Raises:
        NoCoreMetadata: the file changed, is not a readable wheel, or has no usable METADATA.
    """
    with open(path, "rb") as f:
        digest = hashlib.sha256()
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise NoCoreMetadata(f"{filename}: the cached file no longer has sha256 {sha256}")
        f.seek(0)
        return wheel_metadata(f, filename, max_size)


def wheel_metadata(f: BinaryIO, filename: str, max_size: int = MAX_METADATA_BYTES) -> bytes:
    """The METADATA of the wheel open as `f` (seekable), read within the bounds above.

    Raises:
        NoCoreMetadata: with the reason.
    """
    try:
        name = parse_wheel_filename(filename)[0]
    except InvalidWheelFilename as e:
        raise NoCoreMetadata(f"{filename}: not a wheel file name ({e})")
    try:
        entries, directory_size = _central_directory(f)
        if entries > MAX_ENTRIES:
            raise NoCoreMetadata(f"{filename}: {entries} zip entries, more than the {MAX_ENTRIES} accepted")
        if directory_size > MAX_CENTRAL_DIRECTORY:
            raise NoCoreMetadata(f"{filename}: zip directory of {directory_size} bytes is too large")
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            return _read_metadata(zf, filename, name, max_size)
    except NoCoreMetadata:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, struct.error, ValueError) as e:
        raise NoCoreMetadata(f"{filename}: broken zip ({e.__class__.__name__}: {e})")
    except (NotImplementedError, RuntimeError) as e:
        # An unsupported compression method or an encrypted entry.
        raise NoCoreMetadata(f"{filename}: unreadable zip entry ({e})")


def _read_metadata(zf: zipfile.ZipFile, filename: str, name: str, max_size: int) -> bytes:
    dist_infos = {n.split("/", 1)[0] for n in zf.namelist() if "/" in n and n.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_infos) != 1:
        raise NoCoreMetadata(f"{filename}: {len(dist_infos)} .dist-info directories, expected exactly one")
    dist_info = dist_infos.pop()
    stem = dist_info[: -len(".dist-info")]
    if canonicalize_name(stem.rpartition("-")[0] or stem) != canonicalize_name(name):
        raise NoCoreMetadata(f"{filename}: {dist_info} is not the .dist-info of {name}")
    try:
        info = zf.getinfo(dist_info + "/METADATA")
    except KeyError:
        raise NoCoreMetadata(f"{filename}: no {dist_info}/METADATA")
    if info.file_size > max_size:
        raise NoCoreMetadata(f"{filename}: METADATA of {info.file_size} bytes, more than the {max_size} accepted")
    with zf.open(info) as member:
        # The header's size is the archive's word only: read no more than the limit.
        data = member.read(max_size + 1)
    if len(data) > max_size:
        raise NoCoreMetadata(f"{filename}: METADATA inflates past {max_size} bytes")
    _check_names(data, filename, name)
    return data


def _check_names(data: bytes, filename: str, name: str) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoCoreMetadata(f"{filename}: METADATA is not UTF-8")
    headers = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text, headersonly=True)
    declared = headers.get("Name")
    if not headers.get("Metadata-Version") or not declared:
        raise NoCoreMetadata(f"{filename}: METADATA lacks Metadata-Version or Name")
    if canonicalize_name(str(declared).strip()) != canonicalize_name(name):
        raise NoCoreMetadata(f"{filename}: METADATA names project {str(declared).strip()!r}")


def _central_directory(f: BinaryIO) -> Tuple[int, int]:
    """(number of entries, size in bytes) of the zip's central directory, from its end
    record (and the zip64 one where the classic fields overflow)."""
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    tail_size = min(file_size, _EOCD_SIZE + _MAX_COMMENT)
    f.seek(file_size - tail_size)
    tail = f.read(tail_size)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise NoCoreMetadata("no zip end-of-central-directory record")
    (_, _, _, _, entries, size, _, _) = struct.unpack("<4sHHHHIIH", tail[at : at + _EOCD_SIZE])
    if entries != 0xFFFF and size != 0xFFFFFFFF:
        return entries, size
    # Zip64: the locator sits right before the classic record and points at the zip64 one.
    locator_at = file_size - tail_size + at - 20
    if locator_at < 0:
        raise NoCoreMetadata("zip64 end record missing")
    f.seek(locator_at)
    locator = f.read(20)
    if locator[:4] != _EOCD64_LOCATOR:
        raise NoCoreMetadata("zip64 end record locator missing")
    (offset,) = struct.unpack("<Q", locator[8:16])
    f.seek(offset)
    record = f.read(56)
    if record[:4] != _EOCD64 or len(record) < 56:
        raise NoCoreMetadata("zip64 end record unreadable")
    (entries64, size64) = struct.unpack("<QQ", record[32:48])
    return entries64, size64
