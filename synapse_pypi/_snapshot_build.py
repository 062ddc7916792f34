"""`synapse-pypi snapshot`: a static simple index of what the mirror verified, as one IPFS
directory (IPWHL's model: `pip install --index-url http://GATEWAY/ipfs/<CID>/simple/ ...`).

The tree, the same bytes for the same input (sorted, no time stamps):

    simple/index.html              PEP 503 root list (what a gateway serves for simple/)
    simple/index.json              the same as PEP 691 JSON
    simple/<project>/index.html    PEP 503 project page, relative links with #sha256=
    simple/<project>/index.json    the same as PEP 691 JSON (api-version 1.1: every size known)
    simple/<project>/<file>        the file itself
    simple/<project>/<file>.metadata   its PEP 658 core metadata, where the mirror offers it

Every file comes from the mirror's own `/simple/`, which applies the trust layer before every
serve: a file the rooms contradict (409) or a ban (404) keeps it out, and its bytes are checked
against the hash on the mirror's page. Runs without Synapse (stdlib HTTP only).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from synapse_pypi import index
from synapse_pypi._maintainer import (
    Homeserver,
    LockedFile,
    MaintainerError,
    PinnedRequirement,
    Progress,
    dist_name,
)
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize

ADMIN = "/_synapse/pypi/v1"
JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
# The directory added to IPFS; its CID is the snapshot's.
TOP = "snapshot"
_CHUNK = 1 << 20
_TIMEOUT_S = 120.0


class SnapshotError(MaintainerError):
    """The snapshot cannot be built as asked: the message says why."""


@attrs.frozen
class Selection:
    """What goes in: whole projects, pinned requirements, lock-file entries, or everything.

    Attributes:
        projects: projects whose every file on the mirror's page goes in.
        pins: requirements pinned to a version (their hashes, if any, narrow the files).
        locked: exact files of a lock file.
        everything: every file the mirror holds (its cache), of every project it knows.
        latest_only: per project and platform, only the newest version's files.
    """

    projects: tuple[NormalizedName, ...] = ()
    pins: tuple[PinnedRequirement, ...] = ()
    locked: tuple[LockedFile, ...] = ()
    everything: bool = False
    latest_only: bool = False


@attrs.frozen
class Entry:
    """One file of the snapshot, as its page will show it."""

    dist: index.DistFile
    metadata_sha256: str | None


@attrs.frozen
class Result:
    """What was built: the root CID, the files, and what was left out and why."""

    cid: str
    projects: int
    files: int
    bytes: int
    left_out: tuple[str, ...]


class _Mirror:
    """The mirror's public `/simple/` (pages and files) and its admin API."""

    def __init__(self, homeserver: Homeserver) -> None:
        self.admin = homeserver
        self.url = homeserver.url

    def page(self, project: str) -> index.ProjectPage | None:
        url = f"{self.url}/simple/{urllib.parse.quote(project)}/"
        req = urllib.request.Request(url, headers={"Accept": JSON_ACCEPT})
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
                body, ctype = resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise SnapshotError(f"{url}: {e.code} {_reason(e)}") from None
        except (urllib.error.URLError, OSError) as e:
            raise SnapshotError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None
        try:
            return index.parse_project(body, ctype, url, NormalizedName(project))
        except index.MalformedPage as e:
            raise SnapshotError(f"{url}: not a project page: {e}") from None

    def download(self, project: str, filename: str, dest: Path, sha256: str, size: int | None,
                 progress: Progress) -> str | None:
        """Fetch one file into `dest`; None when it matches `sha256`, else why it was left out."""
        url = f"{self.url}/simple/{urllib.parse.quote(project)}/{urllib.parse.quote(filename)}"
        digest, got = hashlib.sha256(), 0
        limit = size if size is not None else None
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp, open(dest, "wb") as out:
                while chunk := resp.read(_CHUNK):
                    got += len(chunk)
                    if limit is not None and got > limit:
                        return f"{filename}: the mirror sent more than the {limit} bytes its page gives"
                    digest.update(chunk)
                    out.write(chunk)
                    progress.advance(len(chunk))
        except urllib.error.HTTPError as e:
            dest.unlink(missing_ok=True)
            return f"{filename}: the mirror refuses it ({e.code} {_reason(e)})"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            dest.unlink(missing_ok=True)
            return f"{filename}: download broke off: {getattr(e, 'reason', e)}"
        if digest.hexdigest() != sha256:
            dest.unlink(missing_ok=True)
            return f"{filename}: the bytes' sha256 {digest.hexdigest()} is not the {sha256} of the mirror's page"
        return None

    def held_projects(self) -> list[NormalizedName]:
        projects = self.admin.call("GET", f"{ADMIN}/projects", what="list the mirror's projects")["projects"]
        return sorted(NormalizedName(p["name"]) for p in projects)

    def held_files(self, project: str) -> set[str]:
        answer = self.admin.call("GET", f"{ADMIN}/projects/{urllib.parse.quote(project)}/cached",
                                 what=f"list the cached files of {project}")
        return {f["filename"] for f in answer["files"]}


def _reason(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(300).decode("utf-8", "replace").strip() or str(e.reason)
    except OSError:
        return str(e.reason)


# -- choosing the files -------------------------------------------------------------------------


def _wanted_files(page: index.ProjectPage, selection: Selection, held: set[str] | None) -> list[index.DistFile]:
    name = page.name
    pins = [p for p in selection.pins if p.name == name]
    locked = {f.filename: f.sha256 for f in selection.locked if f.project == name}
    files = [f for f in page.files if f.hashes.get("sha256")]
    if held is not None:
        files = [f for f in files if f.filename in held]
    elif pins or locked:
        chosen = []
        for f in files:
            if f.filename in locked:
                chosen.append(f)
                continue
            version = _version_of(f.filename)
            for pin in pins:
                if version is not None and pin.version is not None and _same(version, pin.version) and (
                    not pin.hashes or f.hashes["sha256"] in pin.hashes
                ):
                    chosen.append(f)
                    break
        files = chosen if name not in selection.projects else files
    if selection.latest_only:
        files = _latest(files)
    return sorted(files, key=lambda f: f.filename)


def _unmatched(page: index.ProjectPage, selection: Selection, files: Sequence[index.DistFile]) -> list[str]:
    """The pins and locked files of this project that no file chosen answers."""
    chosen = {f.filename: f.hashes.get("sha256") for f in files}
    out = [
        f"{f.filename}: pinned by the lock file but not offered by the mirror with sha256 {f.sha256}"
        for f in selection.locked
        if f.project == page.name and chosen.get(f.filename) != f.sha256
    ]
    for pin in selection.pins:
        if pin.name != page.name or pin.version is None:
            continue
        versions = [_version_of(name) for name in chosen]
        if not any(v is not None and _same(v, pin.version) for v in versions):
            out.append(f"{pin.text}: no file of that version on the mirror's page")
    return out


def _version_of(filename: str) -> str | None:
    try:
        return dist_name(filename).version
    except MaintainerError:
        return None


def _same(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _platform(filename: str) -> str:
    """What IPWHL keeps one version of: a wheel's tags, or "sdist"."""
    if not filename.endswith(".whl"):
        return "sdist"
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return filename
    return ".".join(sorted(str(t) for t in tags))


def _latest(files: Iterable[index.DistFile]) -> list[index.DistFile]:
    """Per platform, the newest version that is not yanked."""
    best: dict[str, tuple[Version, list[index.DistFile]]] = {}
    for f in files:
        if f.yanked:
            continue
        try:
            version = Version(_version_of(f.filename) or "")
        except InvalidVersion:
            continue
        key = _platform(f.filename)
        have = best.get(key)
        if have is None or version > have[0]:
            best[key] = (version, [f])
        elif version == have[0]:
            have[1].append(f)
    return [f for _, fs in best.values() for f in fs]


def _project_names(selection: Selection, mirror: _Mirror) -> list[NormalizedName]:
    if selection.everything:
        return mirror.held_projects()
    names = set(selection.projects) | {p.name for p in selection.pins} | {f.project for f in selection.locked}
    return sorted(names)


# -- the tree -----------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _page_for(name: NormalizedName, entries: Sequence[Entry]) -> index.ProjectPage:
    files = tuple(
        attrs.evolve(
            e.dist,
            url=e.dist.filename,
            core_metadata={"sha256": e.metadata_sha256} if e.metadata_sha256 else False,
            provenance=None,
        )
        for e in entries
    )
    return index.ProjectPage(name=name, files=files, versions=index.versions_from_filenames(f.filename for f in files))


def _relative(f: index.DistFile) -> str:
    return urllib.parse.quote(f.filename)


def build_tree(
    homeserver: Homeserver,
    selection: Selection,
    root: Path,
    *,
    stream: IO[str],
    show_progress: bool,
) -> tuple[list[tuple[NormalizedName, list[Entry]]], list[str]]:
    """Write the snapshot's tree under `root/snapshot/`; the projects with their files, and
    what was left out (one line each)."""
    mirror = _Mirror(homeserver)
    simple = root / TOP / "simple"
    simple.mkdir(parents=True)
    names = _project_names(selection, mirror)
    done: list[tuple[NormalizedName, list[Entry]]] = []
    left_out: list[str] = []
    for number, name in enumerate(names, 1):
        page = mirror.page(name)
        if page is None or page.quarantined:
            left_out.append(f"{name}: {'no such project on the mirror' if page is None else 'quarantined'}")
            continue
        held = mirror.held_files(name) if selection.everything else None
        files = _wanted_files(page, selection, held)
        left_out += _unmatched(page, selection, files)
        total = sum(f.size or 0 for f in files)
        stream.write(f"[{number}/{len(names)}] {name}: {len(files)} files\n")
        stream.flush()
        progress = Progress(total, stream, show_progress and total > 0)
        entries = []
        for f in files:
            if not is_safe_filename(f.filename):
                left_out.append(f"{f.filename}: not a safe file name")
                continue
            progress.start(f.filename)
            why = mirror.download(name, f.filename, simple / name / f.filename, f.hashes["sha256"], f.size,
                                  progress) if _mkdir(simple / name) else None
            if why is not None:
                left_out.append(why)
                continue
            size = (simple / name / f.filename).stat().st_size
            metadata = _metadata(mirror, name, f, simple / name, progress, left_out)
            entries.append(Entry(attrs.evolve(f, size=size, hashes={"sha256": f.hashes["sha256"]}), metadata))
        progress.finish()
        if not entries:
            shutil.rmtree(simple / name, ignore_errors=True)
            left_out.append(f"{name}: no file of it could go in")
            continue
        page_out = _page_for(name, entries)
        _write(simple / name / "index.html", index.render_project_html(page_out, _relative))
        _write(simple / name / "index.json", index.render_project_json(page_out, _relative))
        done.append((name, entries))
    names_in = [name for name, _ in done]
    _write(simple / "index.html", index.render_root_html(names_in))
    _write(simple / "index.json", index.render_root_json(names_in))
    return done, left_out


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


def _metadata(mirror: _Mirror, name: str, f: index.DistFile, directory: Path, progress: Progress,
              left_out: list[str]) -> str | None:
    """The file's core metadata next to it, where the mirror offers one with a hash."""
    hashes = f.core_metadata if isinstance(f.core_metadata, dict) else {}
    sha = hashes.get("sha256") if hasattr(hashes, "get") else None
    if not f.core_metadata or not sha:
        return None
    why = mirror.download(name, f.filename + ".metadata", directory / (f.filename + ".metadata"), sha, None, progress)
    if why is not None:
        left_out.append(why)
        return None
    return str(sha)


# -- adding it to IPFS --------------------------------------------------------------------------


def _parts(top: Path) -> list[tuple[str, Path | None]]:
    """(relative name, file path or None for a directory) depth first, as Kubo's multipart
    reader needs them: each directory's part, then its entries (sorted) together."""
    out: list[tuple[str, Path | None]] = []

    def walk(directory: Path, name: str) -> None:
        out.append((name, None))
        for entry in sorted(directory.iterdir(), key=lambda p: p.name):
            if entry.is_dir():
                walk(entry, f"{name}/{entry.name}")
            else:
                out.append((f"{name}/{entry.name}", entry))

    walk(top, top.name)
    return out


def _part_header(boundary: str, name: str, is_dir: bool) -> bytes:
    ctype = "application/x-directory" if is_dir else "application/octet-stream"
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{urllib.parse.quote(name, safe="")}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()


def add_directory(api_url: str, top: Path, progress: Progress | None = None) -> str:
    """Add the tree under `top` to IPFS through the Kubo RPC API, pinned; its root CID.

    The body is Kubo's multipart directory upload (one part per directory and file, names
    URL-encoded relative paths), streamed from disk with its length known in advance.
    """
    boundary = uuid.uuid4().hex
    parts = _parts(top)
    length = len(f"--{boundary}--\r\n")
    for name, path in parts:
        length += len(_part_header(boundary, name, path is None)) + 2 + (path.stat().st_size if path else 0)

    def body() -> Iterator[bytes]:
        for name, path in parts:
            yield _part_header(boundary, name, path is None)
            if path is not None:
                with open(path, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        if progress is not None:
                            progress.advance(len(chunk))
                        yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    url = urllib.parse.urlsplit(api_url.rstrip("/"))
    if url.scheme != "http" or not url.hostname:
        raise SnapshotError(f"--ipfs-api must be an http:// URL, not {api_url!r}")
    query = "pin=true&cid-version=1&raw-leaves=true&progress=false&quieter=false"
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=_TIMEOUT_S)
    try:
        conn.request("POST", f"{url.path}/api/v0/add?{query}", body=body(), headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise SnapshotError(f"cannot add the snapshot to the IPFS node at {api_url}: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        message = raw[:300].decode("utf-8", "replace")
        try:
            message = json.loads(raw).get("Message", message)
        except (ValueError, AttributeError):
            pass
        raise SnapshotError(f"the IPFS node at {api_url} refused the snapshot: {message}")
    root = None
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("Name") == top.name and isinstance(item.get("Hash"), str):
            root = item["Hash"]
    if root is None:
        raise SnapshotError(f"the IPFS node at {api_url} answered without the snapshot's CID")
    return str(root)


# -- the command --------------------------------------------------------------------------------


def snapshot(
    homeserver: Homeserver,
    selection: Selection,
    ipfs_api: str,
    *,
    stream: IO[str],
    show_progress: bool,
    keep: Path | None = None,
    check: Callable[[list[str]], None] | None = None,
) -> Result:
    """Build the snapshot, add it to IPFS and return what was built.

    Args:
        keep: write the tree there (a new or empty directory) and leave it; else a
            temporary directory, removed afterwards.
        check: called with what was left out before anything is added to IPFS; raises to
            stop (a lock file whose files did not all go in).
    """
    if keep is not None:
        if keep.exists() and any(keep.iterdir()):
            raise SnapshotError(f"--out {keep}: not empty")
        keep.mkdir(parents=True, exist_ok=True)
        root = keep
    else:
        root = Path(tempfile.mkdtemp(prefix="synapse-pypi-snapshot-"))
    try:
        done, left_out = build_tree(homeserver, selection, root, stream=stream, show_progress=show_progress)
        if not done:
            raise SnapshotError("nothing to put in the snapshot" + (": " + "; ".join(left_out) if left_out else ""))
        if check is not None:
            check(left_out)
        total = sum(p.stat().st_size for p in (root / TOP).rglob("*") if p.is_file())
        stream.write(f"adding {_count(done)} files ({total} bytes) to IPFS at {ipfs_api}\n")
        progress = Progress(total, stream, show_progress)
        progress.start("adding to IPFS")
        cid = add_directory(ipfs_api, root / TOP, progress)
        progress.finish()
        return Result(cid, len(done), _count(done), total, tuple(left_out))
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _count(done: Sequence[tuple[NormalizedName, list[Entry]]]) -> int:
    return sum(len(entries) for _, entries in done)


def publish(homeserver: Homeserver, name: str, cid: str) -> dict[str, Any]:
    """Name the snapshot: the mirror's bot states the CID, signed, in the index's room."""
    return dict(homeserver.call("POST", f"{ADMIN}/snapshots/{urllib.parse.quote(name)}", {"cid": cid},
                                what=f"publish the snapshot as {name}"))


def project_names(raw: Sequence[str]) -> tuple[NormalizedName, ...]:
    out = []
    for text in raw:
        try:
            out.append(normalize(text))
        except InvalidName as e:
            raise SnapshotError(f"{text!r}: not a project name ({e})") from None
    return tuple(NormalizedName(n) for n in out)
