"""Real distributions for tests, built in milliseconds without a build backend.

`build_wheel` writes a wheel that real pip and uv install (binary distribution format:
METADATA, WHEEL, RECORD with sha256 hashes and sizes); `build_sdist` writes a source
distribution that setuptools can build (PKG-INFO, pyproject.toml, setup.cfg, the package).
Both are byte-for-byte deterministic for the same arguments (fixed zip/tar timestamps,
payload from a seeded generator), so a test can rebuild a file and get the same sha256.

Helpers for the sidecar files the upstream test server reads (`upstream_server.py`):
`<file>.metadata` (PEP 658 core metadata), `<file>.yanked` (PEP 592 reason) and
`<file>.provenance` (PEP 740).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.tags import parse_tag
from packaging.version import Version

__all__ = [
    "build_sdist",
    "build_wheel",
    "import_name",
    "normalize",
    "payload_bytes",
    "project_dir",
    "read_wheel_metadata",
    "sdist_filename",
    "sha256_file",
    "wheel_filename",
    "write_provenance",
    "yank",
]

# 1980-01-01 is the earliest a zip entry can say; any fixed date keeps builds reproducible.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_TAR_MTIME = 1577836800  # 2020-01-01T00:00:00Z
_CHUNK = 1024 * 1024


def normalize(name: str) -> str:
    """PEP 503 normalized project name ("Foo_Bar.baz" -> "foo-bar-baz")."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _file_name_part(name: str) -> str:
    # Binary and source distribution format specs: the name part of a filename is the
    # normalized name with "-" replaced by "_", so the filename splits cleanly on "-".
    return normalize(name).replace("-", "_")


def import_name(name: str) -> str:
    """The top-level package the built distributions contain ("my-pkg" -> "my_pkg")."""
    return _file_name_part(name)


def _version(version: str) -> str:
    return str(Version(version))


def wheel_filename(name: str, version: str, tag: str = "py3-none-any") -> str:
    """`{name}-{version}-{tag}.whl` with the name and version normalized."""
    return f"{_file_name_part(name)}-{_version(version)}-{tag}.whl"


def sdist_filename(name: str, version: str) -> str:
    """`{name}-{version}.tar.gz` with the name and version normalized."""
    return f"{_file_name_part(name)}-{_version(version)}.tar.gz"


def project_dir(root: Path, name: str) -> Path:
    """`root/<normalized name>`, created if missing: where the upstream server looks."""
    path = Path(root) / normalize(name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def payload_bytes(name: str, version: str, size: int) -> Iterator[bytes]:
    """Deterministic, incompressible bytes (in chunks) for big-file tests.

    The seed depends on the name and version so two versions never share a payload.
    """
    rng = random.Random(f"synapse-pypi-test-payload:{normalize(name)}:{_version(version)}")
    remaining = size
    while remaining > 0:
        n = min(_CHUNK, remaining)
        yield rng.randbytes(n)
        remaining -= n


def _metadata(
    name: str,
    version: str,
    requires: Iterable[str],
    requires_python: str | None,
    summary: str | None = None,
) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {_version(version)}",
        f"Summary: {summary or f'Test distribution {name} {version}'}",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    lines.extend(f"Requires-Dist: {req}" for req in requires)
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _init_py(name: str, version: str) -> bytes:
    return (
        f'"""Test package {name}, built by tests/harness/dists.py."""\n__version__ = "{_version(version)}"\n'
    ).encode()


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    requires_python: str | None = None,
    payload_size: int = 0,
    tag: str = "py3-none-any",
    metadata_sidecar: bool = True,
) -> Path:
    """Write a valid wheel into `out_dir` and return its path.

    The wheel holds `<import_name>/__init__.py` (with `__version__`), optionally
    `<import_name>/payload.bin` of `payload_size` incompressible bytes, and a
    `.dist-info` directory with METADATA, WHEEL and RECORD.

    Args:
        out_dir: directory to write into (created if missing).
        name: project name as published (any case/separators).
        version: a PEP 440 version.
        requires: Requires-Dist lines ("beta>=2", "gamma; python_version<'3'").
        requires_python: Requires-Python specifier, e.g. ">=3.8".
        payload_size: size in bytes of the payload file; 0 for none.
        tag: compressed tag set, e.g. "py3-none-any" or "py2.py3-none-any".
        metadata_sidecar: also write `<wheel>.metadata` (PEP 658), which makes the
            upstream server advertise core metadata for this file.

    Returns:
        The path of the wheel.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pkg = import_name(name)
    ver = _version(version)
    dist_info = f"{pkg}-{ver}.dist-info"
    tags = sorted({str(t) for t in parse_tag(tag)})
    pure = tag.endswith("-any")
    metadata = _metadata(name, version, requires, requires_python)
    wheel_meta = (
        "Wheel-Version: 1.0\n"
        "Generator: synapse-pypi-tests (tests/harness/dists.py)\n"
        f"Root-Is-Purelib: {'true' if pure else 'false'}\n" + "".join(f"Tag: {t}\n" for t in tags)
    ).encode("ascii")

    path = out_dir / wheel_filename(name, version, tag)
    tmp = path.with_name(path.name + ".partial")
    record: list[str] = []

    def info(arcname: str) -> zipfile.ZipInfo:
        zi = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
        zi.external_attr = 0o644 << 16
        zi.compress_type = zipfile.ZIP_DEFLATED
        return zi

    with zipfile.ZipFile(tmp, "w") as zf:

        def add(arcname: str, data: bytes) -> None:
            zf.writestr(info(arcname), data)
            record.append(f"{arcname},{_record_hash(data)},{len(data)}")

        add(f"{pkg}/__init__.py", _init_py(name, version))
        if payload_size:
            zi = info(f"{pkg}/payload.bin")
            # Random bytes do not compress; storing them keeps big builds fast.
            zi.compress_type = zipfile.ZIP_STORED
            h = hashlib.sha256()
            with zf.open(zi, "w", force_zip64=payload_size > 2**31) as f:
                for chunk in payload_bytes(name, version, payload_size):
                    h.update(chunk)
                    f.write(chunk)
            b64 = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")
            record.append(f"{pkg}/payload.bin,sha256={b64},{payload_size}")
        add(f"{dist_info}/METADATA", metadata)
        add(f"{dist_info}/WHEEL", wheel_meta)
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(info(f"{dist_info}/RECORD"), ("\n".join(record) + "\n").encode("utf-8"))
    tmp.replace(path)

    if metadata_sidecar:
        Path(str(path) + ".metadata").write_bytes(metadata)
    return path


def build_sdist(
    out_dir: Path,
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    requires_python: str | None = None,
) -> Path:
    """Write a valid `.tar.gz` source distribution (setuptools backend) and return its path.

    Layout: one top-level `<name>-<version>/` directory with PKG-INFO, pyproject.toml,
    setup.cfg and `<import_name>/__init__.py`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    requires = list(requires)
    pkg = import_name(name)
    ver = _version(version)
    top = f"{pkg}-{ver}"
    pyproject = '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
    setup_cfg = [
        "[metadata]",
        f"name = {name}",
        f"version = {ver}",
        f"description = Test distribution {name} {version}",
        "",
        "[options]",
        f"packages = {pkg}",
    ]
    if requires_python:
        setup_cfg.append(f"python_requires = {requires_python}")
    if requires:
        setup_cfg.append("install_requires =")
        setup_cfg.extend(f"    {req}" for req in requires)
    members = {
        "PKG-INFO": _metadata(name, version, requires, requires_python),
        "pyproject.toml": pyproject.encode("utf-8"),
        "setup.cfg": ("\n".join(setup_cfg) + "\n").encode("utf-8"),
        f"{pkg}/__init__.py": _init_py(name, version),
    }

    path = out_dir / sdist_filename(name, version)
    tmp = path.with_name(path.name + ".partial")
    # mtime=0 in the gzip header and fixed tar mtimes make the archive reproducible.
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        dirs = sorted({top} | {f"{top}/{m.rsplit('/', 1)[0]}" for m in members if "/" in m})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = _TAR_MTIME
            tf.addfile(ti)
        for member, data in members.items():
            ti = tarfile.TarInfo(f"{top}/{member}")
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = _TAR_MTIME
            tf.addfile(ti, io.BytesIO(data))
    tmp.replace(path)
    return path


def read_wheel_metadata(path: Path) -> bytes:
    """The METADATA bytes inside a wheel."""
    with zipfile.ZipFile(path) as zf:
        for n in zf.namelist():
            parts = n.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                return zf.read(n)
    raise ValueError(f"{path}: no .dist-info/METADATA")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def yank(path: Path, reason: str = "") -> Path:
    """Mark a distribution file as yanked (PEP 592) for the upstream server."""
    sidecar = Path(str(path) + ".yanked")
    sidecar.write_text(reason, encoding="utf-8")
    return sidecar


def write_provenance(path: Path, content: bytes = b'{"version": 1, "attestation_bundles": []}') -> Path:
    """Give a distribution file a PEP 740 provenance object the upstream server links to."""
    sidecar = Path(str(path) + ".provenance")
    sidecar.write_bytes(content)
    return sidecar
