"""Local projects: files uploaded here (`_publish.py`), and how their pages are served.

A name with uploads is served from them alone, unless the admin's `local_projects` says
`merge` (the upstream's files and the uploads together). A name the admin set to `replace`
is served from the uploads alone even where the upstream has it. Either way a project that
is local never quietly takes the upstream's files for its name (and an upstream that later
registers the name changes nothing here): that is the dependency-confusion rule, see
docs/publishing.md.

`LocalProjects` holds the uploads (a table of its own; they are few, so they are kept in
memory too); `LocalFirstPages` is the page service with that rule in front of it.
"""

import datetime
import logging
from typing import Any, Awaitable, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

import attrs

from synapse_pypi import index
from synapse_pypi._names import NormalizedName
from synapse_pypi._pages import PageService, PageView, RootView
from synapse_pypi._store import RunDb
from synapse_pypi._upload_rules import MERGE, REPLACE
from synapse_pypi._upstream import UpstreamError, UpstreamNotFound

logger = logging.getLogger(__name__)

SCHEMA = [
    # One row per uploaded file. The bytes are in the local cache (kept there, never
    # evicted) and in the storage backends like any other file.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_uploads (
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        requires_python TEXT,
        uploader TEXT NOT NULL,
        uploaded_at BIGINT NOT NULL,
        attestations TEXT,
        PRIMARY KEY (project, filename)
    )""",
]


@attrs.frozen
class Upload:
    """One uploaded file."""

    project: str
    filename: str
    sha256: str
    size: int
    requires_python: Optional[str]
    uploader: str
    uploaded_at: int  # milliseconds since the epoch
    # PEP 740 attestations sent with the upload (a JSON list), or None.
    attestations: Optional[str] = None


def provenance_path(project: str, filename: str) -> str:
    """Where the PEP 740 provenance of an upload is served, relative to its project page."""
    return f"../../legacy/provenance/{project}/{filename}"


class LocalProjects:
    """The uploaded files, by project, and the pages they make.

    Args:
        run_db: `ModuleApi.run_db_interaction`.
        modes: the admin's `local_projects`: name -> "merge" or "replace".
    """

    def __init__(self, run_db: RunDb, modes: Mapping[str, str]):
        self._run_db = run_db
        self._modes = modes
        self._files: Dict[str, Dict[str, Upload]] = {}
        self._blobs: Set[str] = set()
        self._pages: Dict[str, index.ProjectPage] = {}
        self._merged: Dict[str, Tuple[index.ProjectPage, index.ProjectPage]] = {}
        self._root: Optional[Tuple[index.RootPage, index.RootPage]] = None
        self.ready = False

    async def start(self) -> None:
        def txn(t: Any) -> list:
            for stmt in SCHEMA:
                t.execute(stmt)
            t.execute(
                "SELECT project, filename, sha256, size, requires_python, uploader, uploaded_at, attestations"
                " FROM synapse_pypi_uploads"
            )
            return t.fetchall()

        for row in await self._run_db("synapse_pypi_uploads_load", txn):
            self._remember(Upload(row[0], row[1], row[2], int(row[3]), row[4], row[5], int(row[6]), row[7]))
        self.ready = True
        if self._files:
            logger.info("local projects: %d files in %d projects", len(self._blobs), len(self._files))

    # -- what is uploaded ------------------------------------------------------------------

    def has(self, project: str) -> bool:
        return project in self._files

    def names(self) -> Iterable[str]:
        return self._files.keys()

    def file(self, project: str, filename: str) -> Optional[Upload]:
        return self._files.get(project, {}).get(filename)

    def keeps(self, sha256: str) -> bool:
        """Whether a cached blob is an upload (the cache must never evict it)."""
        return sha256 in self._blobs

    def configured_mode(self, project: str) -> Optional[str]:
        return self._modes.get(project)

    def serve_mode(self, project: str) -> Optional[str]:
        """How `project`'s page is made: "merge", "replace" (uploads only), or None (the
        upstream's page as usual)."""
        mode = self._modes.get(project)
        if mode is not None:
            return mode
        return REPLACE if project in self._files else None

    async def add(self, upload: Upload) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_uploads (project, filename, sha256, size, requires_python, uploader,"
                " uploaded_at, attestations) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    upload.project, upload.filename, upload.sha256, upload.size, upload.requires_python,
                    upload.uploader, upload.uploaded_at, upload.attestations,
                ),
            )

        # Kept before the bytes are committed, so the cache's eviction passes them over.
        self._blobs.add(upload.sha256)
        try:
            await self._run_db("synapse_pypi_add_upload", txn)
        except Exception:
            if not any(u.sha256 == upload.sha256 for files in self._files.values() for u in files.values()):
                self._blobs.discard(upload.sha256)
            raise
        self._remember(upload)

    def _remember(self, upload: Upload) -> None:
        self._files.setdefault(upload.project, {})[upload.filename] = upload
        self._blobs.add(upload.sha256)
        self._pages.pop(upload.project, None)
        self._merged.pop(upload.project, None)
        self._root = None

    # -- pages -----------------------------------------------------------------------------

    def page(self, project: str) -> Optional[index.ProjectPage]:
        """The page of the uploads of `project` (the same object until the next upload)."""
        files = self._files.get(project)
        if not files:
            return None
        page = self._pages.get(project)
        if page is None:
            dists = tuple(_dist(u) for _, u in sorted(files.items()))
            page = index.ProjectPage(
                name=NormalizedName(project),
                files=dists,
                versions=index.versions_from_filenames(f.filename for f in dists),
            )
            self._pages[project] = page
        return page

    def merged(self, project: str, upstream: index.ProjectPage) -> index.ProjectPage:
        """The upstream's page with the uploads added (an upload never has a file name the
        upstream lists with other bytes: the upload is refused; with the same bytes the
        upstream's entry stays)."""
        local = self.page(project)
        if local is None:
            return upstream
        kept = self._merged.get(project)
        if kept is not None and kept[0] is upstream:
            return kept[1]
        listed = {f.filename for f in upstream.files}
        files = upstream.files + tuple(f for f in local.files if f.filename not in listed)
        page = attrs.evolve(
            upstream, files=files, versions=index.versions_from_filenames(f.filename for f in files)
        )
        self._merged[project] = (upstream, page)
        return page

    def root(self, upstream: index.RootPage) -> index.RootPage:
        """The root list with the local projects in it (the same object while neither changes)."""
        if not self._files:
            return upstream
        if self._root is not None and self._root[0] is upstream:
            return self._root[1]
        names = sorted(set(upstream.names) | {NormalizedName(n) for n in self._files})
        root = index.RootPage(names, upstream.last_serial)
        self._root = (upstream, root)
        return root


def _dist(upload: Upload) -> index.DistFile:
    uploaded = datetime.datetime.fromtimestamp(upload.uploaded_at / 1000, tz=datetime.timezone.utc)
    return index.DistFile(
        filename=upload.filename,
        url="",
        hashes={"sha256": upload.sha256},
        requires_python=upload.requires_python,
        size=upload.size,
        upload_time=uploaded.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        provenance=provenance_path(upload.project, upload.filename) if upload.attestations else None,
    )


class LocalFirstPages(PageService):
    """The page service, with local projects in front: their pages are made from the
    uploads (merged with the upstream's where the admin said `merge`), and the root list
    names them too.

    Args:
        local: the uploads.
        (the rest as `PageService`)
    """

    def __init__(self, *args: Any, local: LocalProjects, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.local = local
        # A peer's uploads (their attestations say so): pages from the rooms.
        self.uploaded_elsewhere: Optional[Callable[[str], Awaitable[Optional[index.ProjectPage]]]] = None
        # Merged projects' page tokens (`fresh_entry`), one per project the admin lists.
        self._merge_tokens: Dict[str, Tuple[Any, Any]] = {}

    async def project(self, name: NormalizedName, wanted: Any = None) -> PageView:
        mode = self.local.serve_mode(name)
        if mode is None:
            if self.uploaded_elsewhere is not None:
                page = await self.uploaded_elsewhere(name)
                if page is not None:
                    return PageView(page, False)
            return await super().project(name, wanted)
        page = self.local.page(name)
        if mode == REPLACE:
            if page is None:
                raise UpstreamNotFound(name, "no files have been uploaded to this local project yet")
            return PageView(page, False)
        assert mode == MERGE
        try:
            view = await super().project(name, wanted)
        except UpstreamNotFound:
            if page is None:
                raise
            return PageView(page, False)
        except UpstreamError:
            if page is None:
                raise
            # The uploads are here whatever the upstream does; its files are not.
            return PageView(page, True)
        return PageView(self.local.merged(name, view.page), view.offline)

    def fresh_entry(self, name: str) -> Tuple[Any, int]:
        mode = self.local.serve_mode(name)
        if mode is None:
            return super().fresh_entry(name)
        # The uploads' page is the same object until the next upload.
        uploads = self.local.page(name)
        if mode == REPLACE:
            return uploads, (self.now_ms() + 1000 if uploads is not None else 0)
        entry, until = super().fresh_entry(name)
        if entry is None:
            return None, 0
        # The same tuple while both are the same objects (tokens are compared with `is`).
        token = self._merge_tokens.get(name)
        if token is None or token[0] is not entry or token[1] is not uploads:
            token = self._merge_tokens[name] = (entry, uploads)
        return token, until

    async def upstream_project(self, name: NormalizedName) -> PageView:
        """The upstream's page of `name`, without the uploads (what an upload is checked against)."""
        return await super().project(name)

    async def root(self) -> RootView:
        view = await super().root()
        return RootView(self.local.root(view.root), view.offline)
