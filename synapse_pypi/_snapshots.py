"""Snapshots served by the homeserver: `/snapshots/<CID or NAME>/simple/...` (issue 15).

A snapshot is a static simple index in one IPFS directory (`synapse-pypi snapshot` builds
them). Anyone can make one, so nothing in it is believed: every file it lists is judged
against the attestations in the project's rooms (ours and peers') before its page is served,
exactly as the upstream's hash would be:

* a file the rooms contradict (their decided hash is another one, or they are in conflict)
  refuses the whole page with `409`, naming the file and both hashes: the snapshot lies, or
  was made from a lying mirror;
* a file no valid attestation vouches for, or a banned one, is left off the page (the page
  says how many in an `X-Synapse-Pypi-Unverified` header, and the log names them);
* the rest is served as usual, through the read chain: our cache, then IPFS (our own CIDs,
  attested CIDs, and the file's path inside the snapshot), with the sha256 checked while
  streaming. Pages and files of a CID never change, so they are cached by clients for long;
  a NAME follows the newest signed CID (`_snapshot_names.py`).
"""

import collections
import logging
from typing import Any, List, Optional, OrderedDict, Tuple
from urllib.parse import quote

import attrs
from twisted.web import http

from synapse_pypi import index
from synapse_pypi._errors import HttpError
from synapse_pypi._files import METADATA_SUFFIX, WantedFile
from synapse_pypi._names import NormalizedName, is_safe_filename
from synapse_pypi._negotiate import Format
from synapse_pypi._snapshot_names import SnapshotNames, is_cid
from synapse_pypi._subindex import SubIndexResource, Wanted
from synapse_pypi.storage import StorageError
from synapse_pypi.trust import Outcome

logger = logging.getLogger(__name__)

# Parsed snapshot pages kept (a CID's pages never change).
PAGES_KEPT = 256
UNVERIFIED_HEADER = b"X-Synapse-Pypi-Unverified"


@attrs.frozen
class Judged:
    """A snapshot's project page as it may be served, and what was left off."""

    page: index.ProjectPage
    left_off: Tuple[str, ...]


class SnapshotReader:
    """Reads snapshot pages from IPFS through the first storage backend that takes CIDs.

    Args:
        backends: the module's storage backends (None: no IPFS, snapshots cannot be read).
        max_page_size: the byte cap for one page (as for the upstream's pages).
    """

    def __init__(self, backends: Any, max_page_size: int):
        self._backend = next((b for _, b in backends.backends if b.reference_kind == "cid"), None) if backends else None
        self._max = max_page_size
        self._pages: OrderedDict[Tuple[str, str], Any] = collections.OrderedDict()

    async def _read(self, cid: str, path: str) -> bytes:
        if self._backend is None:
            raise HttpError(http.SERVICE_UNAVAILABLE, "snapshots need an IPFS storage backend (storage_providers)")
        chunks: List[bytes] = []
        got = [0]

        def write(data: bytes) -> None:
            got[0] += len(data)
            if got[0] > self._max:
                raise StorageError(f"more than max_page_size ({self._max} bytes)")
            chunks.append(data)

        try:
            await self._backend.fetch("", f"{cid}/{path}", write, max_size=self._max)
        except StorageError as e:
            text = str(e)
            if "no link named" in text or "404" in text or "not found" in text.lower():
                raise HttpError(http.NOT_FOUND, f"snapshot {cid} has no {path}")
            raise HttpError(http.BAD_GATEWAY, f"snapshot {cid}: {path} could not be read from IPFS: {text}")
        return b"".join(chunks)

    def _keep(self, key: Tuple[str, str], value: Any) -> Any:
        self._pages[key] = value
        self._pages.move_to_end(key)
        while len(self._pages) > PAGES_KEPT:
            self._pages.popitem(last=False)
        return value

    async def root(self, cid: str) -> Tuple[NormalizedName, ...]:
        hit = self._pages.get((cid, ""))
        if hit is not None:
            return hit
        body = await self._read(cid, "simple/index.html")
        try:
            names = index.parse_root(body, "text/html")
        except index.MalformedPage as e:
            raise HttpError(http.BAD_GATEWAY, f"snapshot {cid}: simple/index.html is not a root list: {e}")
        return self._keep((cid, ""), tuple(sorted(set(names))))

    async def project(self, cid: str, name: NormalizedName) -> index.ProjectPage:
        hit = self._pages.get((cid, name))
        if hit is not None:
            return hit
        base = f"https://snapshot.invalid/{cid}/simple/{quote(name)}/"
        try:
            body = await self._read(cid, f"simple/{name}/index.json")
            page = index.parse_project(body, "application/vnd.pypi.simple.v1+json", base, name)
        except HttpError as e:
            if e.code != http.NOT_FOUND:
                raise
            body = await self._read(cid, f"simple/{name}/index.html")
            try:
                page = index.parse_project(body, "text/html", base, name)
            except index.MalformedPage as err:
                raise HttpError(http.BAD_GATEWAY, f"snapshot {cid}: the page of {name} is malformed: {err}")
        except index.MalformedPage as e:
            raise HttpError(http.BAD_GATEWAY, f"snapshot {cid}: the page of {name} is malformed: {e}")
        for f in page.files:
            if not f.url.startswith(base) or "/" in f.url[len(base):] or not is_safe_filename(f.filename):
                raise HttpError(http.BAD_GATEWAY, f"snapshot {cid}: {f.filename} points outside the snapshot")
        return self._keep((cid, name), page)


class SnapshotJudge:
    """Judges a snapshot's files by the project's rooms, as the mirror judges the upstream."""

    def __init__(self, trust: Any):
        self._trust = trust

    async def judge(self, cid: str, page: index.ProjectPage) -> Judged:
        pt = await self._trust.view_for_serve(page.name)
        banned = self._trust.refusal(pt, page.name, None)
        if banned is not None:
            return Judged(attrs.evolve(page, files=(), status=index.ProjectStatus.QUARANTINED,
                                       status_reason=banned), ())
        kept, left_off, lies = [], [], []
        for f in page.files:
            sha = f.hashes.get("sha256")
            refused = self._trust.refusal(pt, page.name, f.filename)
            if sha is None or refused is not None:
                left_off.append(f"{f.filename}: {'no sha256 in the snapshot' if sha is None else refused}")
                continue
            decision = self._trust.decide(pt, f.filename, sha, True)
            if decision.outcome is Outcome.FIRST:
                left_off.append(f"{f.filename}: no valid attestation vouches for it")
            elif decision.outcome is Outcome.CONFLICT or decision.sha256 != sha:
                lies.append(f"{f.filename} has sha256 {sha} in the snapshot, but the rooms "
                            f"{'attest ' + decision.sha256 if decision.sha256 else 'disagree'} ({decision.reason})")
            else:
                kept.append(f)
        if lies:
            raise HttpError(http.CONFLICT, f"snapshot {cid} is refused: " + "; ".join(lies))
        if left_off:
            logger.info("snapshot %s, %s: left off %s", cid, page.name, "; ".join(left_off))
        return Judged(attrs.evolve(page, files=tuple(kept)), tuple(left_off))


class SnapshotResource(SubIndexResource):
    """The resource registered at `/snapshots`: `/snapshots/<CID or NAME>/simple/...`."""

    REF = "/snapshots/<CID or NAME>"

    def __init__(self, *args: Any, reader: SnapshotReader, judge: SnapshotJudge, names: SnapshotNames,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._reader = reader
        self._judge = judge
        self._names = names

    async def _serve(self, request: Any, wanted: Wanted) -> None:
        cid, immutable = await self._cid(wanted.ref)
        if wanted.name is None:
            return await self._snapshot_root(request, cid, immutable)
        if wanted.filename == "":
            return await self._snapshot_project(request, cid, wanted.name, immutable)
        return await self._snapshot_file(request, cid, wanted.name, wanted.filename)

    async def _cid(self, ref: str) -> Tuple[str, bool]:
        """The CID a reference means, and whether it is one (immutable) rather than a name."""
        if is_cid(ref):
            return ref, True
        named = await self._names.resolve(ref)
        return named.cid, False

    async def _snapshot_root(self, request: Any, cid: str, immutable: bool) -> None:
        fmt, content_type = self._negotiate(request)
        names = await self._reader.root(cid)
        render = index.render_root_json if fmt is Format.JSON_V1 else index.render_root_html
        self._send_rendered(request, lambda: render(names), content_type, immutable)

    async def _snapshot_project(self, request: Any, cid: str, name: NormalizedName, immutable: bool) -> None:
        fmt, content_type = self._negotiate(request)
        judged = await self._judge.judge(cid, await self._reader.project(cid, name))
        page = judged.page
        render = index.render_project_json if fmt is Format.JSON_V1 else index.render_project_html
        left_off = ((UNVERIFIED_HEADER, b"%d" % len(judged.left_off)),) if judged.left_off else ()
        self._send_rendered(request, lambda: render(page, _relative), content_type, immutable, left_off)

    async def _snapshot_file(self, request: Any, cid: str, name: NormalizedName, filename: str) -> None:
        judged = await self._judge.judge(cid, await self._reader.project(cid, name))
        base = filename[: -len(METADATA_SUFFIX)] if filename.endswith(METADATA_SUFFIX) else filename
        dist = judged.page.file(base)
        if dist is None:
            why = next((w for w in judged.left_off if w.startswith(base + ":")), None)
            raise HttpError(http.NOT_FOUND, why or f"{filename}: not in snapshot {cid}")
        if filename == base:
            sha: Optional[str] = dist.hashes["sha256"]
            size = dist.size
        else:
            meta = dist.core_metadata if isinstance(dist.core_metadata, dict) else {}
            sha = meta.get("sha256") if hasattr(meta, "get") else None
            if not dist.core_metadata or not sha:
                raise HttpError(http.NOT_FOUND, f"{filename}: the snapshot offers no metadata file for it")
            size = None
        wanted = WantedFile(name, filename, "", sha, size, not_from_upstream="a snapshot's file comes from IPFS",
                            references=(f"{cid}/simple/{name}/{filename}",))
        responder = await self._files.fetch(wanted, body=request.method != b"HEAD")
        with responder:
            await self._respond(request, responder)


def _relative(f: index.DistFile) -> str:
    return quote(f.filename)

