"""The rules of an upload through the legacy upload API (what twine, `uv publish`, `pdm
publish` and `poetry publish` speak): reading the form, checking it against the file, who
may publish, and when a local project may carry a name the upstream also has.

Pure logic: no Twisted, no Synapse. Every refusal is an `HttpError` with a one-line reason
(the resource in `_publish.py` sends it as the status line's reason too, which is what
twine prints).
"""

import email.parser
import email.policy
import enum
import hashlib
import io
import json
import tarfile
import zipfile
import zlib
from email.message import Message
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from synapse_pypi._errors import HttpError
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize

# The upload modes an admin can give a project name (config `local_projects`).
MERGE = "merge"
REPLACE = "replace"
MODES = (MERGE, REPLACE)
FILETYPES = {"bdist_wheel": ".whl", "sdist": ""}
# The largest sdist PKG-INFO read (a long description is in it).
MAX_PKG_INFO_BYTES = 4 * 1024 * 1024
# Attestations (PEP 740) kept with an upload, at most: they are a few KB each.
MAX_ATTESTATIONS_BYTES = 256 * 1024


def bad(reason: str) -> HttpError:
    return HttpError(400, reason)


@attrs.frozen
class Form:
    """The multipart form of one upload: text fields, and the file part."""

    fields: Mapping[str, Tuple[str, ...]]
    filename: Optional[str]
    content: Optional[bytes]

    def get(self, key: str) -> Optional[str]:
        values = self.fields.get(key)
        return values[0] if values else None


def parse_form(body: bytes, content_type: str) -> Form:
    """Read a multipart/form-data body (RFC 7578). Twisted's own parse keeps no part's file
    name, which the legacy API carries only there, so the body is read again here.

    Raises:
        HttpError: 400 for a body that is not a multipart form.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad(f"expected a multipart/form-data upload, got Content-Type {content_type or 'none'}")
    head = b"MIME-Version: 1.0\r\nContent-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    if not msg.is_multipart():
        raise bad("the upload is not a readable multipart form")
    fields: Dict[str, List[str]] = {}
    filename: Optional[str] = None
    content: Optional[bytes] = None
    part: Message
    for part in msg.get_payload():  # type: ignore[assignment]  # a list for a multipart message
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if name == "content":
            if content is not None:
                raise bad("more than one 'content' file in the upload")
            filename, content = part.get_filename(), data
            continue
        try:
            fields.setdefault(name, []).append(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad(f"form field {name!r} is not UTF-8 text")
    return Form({k: tuple(v) for k, v in fields.items()}, filename, content)


@attrs.frozen
class UploadRequest:
    """A checked upload form: what is to be stored, before its bytes are looked at."""

    project: NormalizedName
    version: Version
    filename: str
    filetype: str
    # Digests the client sent: hash name ("sha256", "md5", "blake2_256") -> lower-case hex.
    digests: Mapping[str, str]
    requires_python: Optional[str]
    # PEP 740 attestations as sent (a JSON list), or None.
    attestations: Optional[str]


def check_form(form: Form) -> UploadRequest:
    """The form's fields, checked against each other and the file name.

    Raises:
        HttpError: 400 naming the first field that is wrong.
    """
    action = form.get(":action")
    if action != "file_upload":
        raise bad(f"':action' must be 'file_upload', not {action!r} (only uploads are supported here)")
    protocol = form.get("protocol_version")
    if protocol not in (None, "1"):
        raise bad(f"'protocol_version' must be 1, not {protocol!r}")
    try:
        project = normalize(form.get("name") or "")
    except InvalidName as e:
        raise bad(f"'name': {e}")
    try:
        version = Version(form.get("version") or "")
    except InvalidVersion:
        raise bad(f"'version': {form.get('version')!r} is not a valid version (PEP 440)")
    filetype = form.get("filetype") or ""
    if filetype not in FILETYPES:
        raise bad(f"'filetype' {filetype!r} is not accepted; try one of: {', '.join(FILETYPES)}")
    if form.content is None or not form.filename:
        raise bad("the upload has no 'content' file (with a file name)")
    filename = form.filename
    if not is_safe_filename(filename):
        raise bad(f"{filename!r} is not a safe file name")
    file_project, file_version = _name_and_version(filename, filetype)
    if file_project != project:
        raise bad(f"{filename}: the file name is of project {file_project!r}, the form says {project!r}")
    if file_version != version:
        raise bad(f"{filename}: the file name has version {file_version}, the form says {version}")
    digests = {}
    for key, algo in (("sha256_digest", "sha256"), ("md5_digest", "md5"), ("blake2_256_digest", "blake2_256")):
        value = form.get(key)
        if value:
            digests[algo] = value.strip().lower()
    if not digests:
        raise bad("the upload carries no digest: send 'sha256_digest'")
    attestations = form.get("attestations")
    if attestations is not None:
        attestations = _check_attestations(attestations)
    requires_python = (form.get("requires_python") or "").strip() or None
    return UploadRequest(project, version, filename, filetype, digests, requires_python, attestations)


def _name_and_version(filename: str, filetype: str) -> Tuple[NormalizedName, Version]:
    try:
        if filetype == "bdist_wheel":
            name, version, _, _ = parse_wheel_filename(filename)
        else:
            if not filename.endswith((".tar.gz", ".zip")):
                raise bad(f"{filename}: an sdist must be a .tar.gz (or a .zip)")
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename) as e:
        raise bad(f"{filename}: not a valid {'wheel' if filetype == 'bdist_wheel' else 'sdist'} file name ({e})")
    return NormalizedName(str(name)), version


def _check_attestations(text: str) -> str:
    if len(text) > MAX_ATTESTATIONS_BYTES:
        raise bad(f"'attestations' is larger than {MAX_ATTESTATIONS_BYTES} bytes")
    try:
        value = json.loads(text)
    except ValueError:
        raise bad("'attestations' is not JSON")
    if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
        raise bad("'attestations' must be a JSON list of attestation objects (PEP 740)")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def digests_of(data: bytes) -> Dict[str, str]:
    """Every digest the legacy API may carry, of `data` (CPU work: run it in a thread)."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "blake2_256": hashlib.blake2b(data, digest_size=32).hexdigest(),
    }


def check_digests(filename: str, sent: Mapping[str, str], actual: Mapping[str, str]) -> None:
    """Raises: HttpError 400 when a digest the client sent is not the file's."""
    for algo, value in sent.items():
        if actual[algo] != value:
            raise bad(f"{filename}: {algo} mismatch, the form says {value}, the file has {actual[algo]}")


def check_core_metadata(
    filename: str, metadata: bytes, project: str, version: Version, what: str = "METADATA"
) -> Optional[str]:
    """The Requires-Python of a wheel's METADATA (an sdist's PKG-INFO: `what`), once its
    Name and Version are the upload's.

    Raises:
        HttpError: 400 when they differ or cannot be read.
    """
    try:
        msg = email.parser.HeaderParser().parsestr(metadata.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad(f"{filename}: {what} is not UTF-8")
    name, meta_version = msg.get("Name"), msg.get("Version")
    try:
        if name is None or normalize(str(name).strip()) != project:
            raise bad(f"{filename}: {what} names project {name!r}, the upload is of {project!r}")
    except InvalidName:
        raise bad(f"{filename}: {what} names project {name!r}, the upload is of {project!r}")
    try:
        ok = meta_version is not None and Version(str(meta_version).strip()) == version
    except InvalidVersion:
        ok = False
    if not ok:
        raise bad(f"{filename}: {what} has version {meta_version!r}, the upload is of {version}")
    requires = msg.get("Requires-Python")
    return (str(requires).strip() or None) if requires is not None else None


def sdist_pkg_info(data: bytes, filename: str) -> bytes:
    """The PKG-INFO at the top of an sdist (`<name>-<version>/PKG-INFO`), read within
    `MAX_PKG_INFO_BYTES` (CPU and I/O work on the upload: run it in a thread).

    Raises:
        HttpError: 400 for an archive that cannot be read or has no PKG-INFO there.
    """
    try:
        if filename.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/PKG-INFO")]
                if len(names) != 1:
                    raise bad(f"{filename}: no <name>-<version>/PKG-INFO at the top of the sdist")
                with zf.open(names[0]) as member:
                    found = member.read(MAX_PKG_INFO_BYTES + 1)
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                members = [m for m in tf.getmembers() if m.isfile() and m.name.count("/") == 1
                           and m.name.endswith("/PKG-INFO")]
                if len(members) != 1:
                    raise bad(f"{filename}: no <name>-<version>/PKG-INFO at the top of the sdist")
                member_file = tf.extractfile(members[0])
                assert member_file is not None  # a regular file
                found = member_file.read(MAX_PKG_INFO_BYTES + 1)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise bad(f"{filename}: not a readable sdist ({e.__class__.__name__}: {e})")
    if len(found) > MAX_PKG_INFO_BYTES:
        raise bad(f"{filename}: PKG-INFO is larger than {MAX_PKG_INFO_BYTES} bytes")
    return found


def may_publish(
    user: str,
    project: str,
    is_admin: bool,
    uploaders: Mapping[str, Sequence[str]],
    room_power: Optional[int],
    needed_power: int,
) -> bool:
    """Whether `user` may upload files of `project`: a server admin always; a user the
    config lists for the project (or for "*"); a user with at least the attestation power
    level in the project's room."""
    if is_admin:
        return True
    if user in uploaders.get(project, ()) or user in uploaders.get("*", ()):
        return True
    return room_power is not None and room_power >= needed_power


class Admission(enum.Enum):
    """What the upload's project name allows (dependency confusion: a local name must not
    quietly shadow a public one)."""

    LOCAL = "local"  # a name the upstream does not have, or one that is local already
    MERGE = MERGE  # allowed by the admin: local files are served with the upstream's
    REPLACE = REPLACE  # allowed by the admin: only local files are served for the name


def admit(project: str, configured_mode: Optional[str], has_uploads: bool, upstream_has: Optional[bool]) -> Admission:
    """Whether files may be uploaded under `project`.

    Args:
        configured_mode: the admin's `local_projects` mode for the name, or None.
        has_uploads: files were uploaded under the name before (it is local already).
        upstream_has: whether the upstream has the name; None when it could not be asked.

    Raises:
        HttpError: 403 for a name the upstream has and the admin did not allow; 503 when
            the upstream cannot tell us for a new name.
    """
    if configured_mode is not None:
        return Admission(configured_mode)
    if has_uploads:
        return Admission.LOCAL
    if upstream_has is None:
        raise HttpError(
            503,
            f"cannot tell whether the upstream index has a project named {project!r} (it is unreachable); "
            "a new local project is only created once it can be asked",
        )
    if upstream_has:
        raise HttpError(
            403,
            f"the upstream index has a project named {project!r}: a local upload would shadow it "
            "(dependency confusion); the server admin must allow the name in local_projects",
        )
    return Admission.LOCAL


def provenance(uploader: str, attestations: Any) -> Dict[str, Any]:
    """The PEP 740 provenance object of an upload's attestations."""
    return {
        "version": 1,
        "attestation_bundles": [
            {"publisher": {"kind": "synapse-pypi-upload", "uploader": uploader}, "attestations": attestations}
        ],
    }
