"""The file path's view of the trust layer: which hash to serve, and verified files to vouch for.

The web layer asks `ServePolicy.hash_to_serve` before every file is served (cache hits
included); the file chain tells `file_verified` (`_files.FileEvents`) when a file was
committed or served while nothing vouches for it, and the storage backends tell
`blob_stored` (`_backends.StoredListener`) when a CID is known. `TrustServePolicy` adapts
today's `TrustService` to these three calls; the trust layer can change behind them.
"""

import logging
from typing import Any, Callable, Optional, Protocol

import attrs
from twisted.web import http

from synapse_pypi import index
from synapse_pypi._errors import HttpError
from synapse_pypi._store import Store
from synapse_pypi.trust import Outcome

logger = logging.getLogger(__name__)


@attrs.frozen
class ServeHash:
    """What the serve policy decided for one file.

    Attributes:
        sha256: the hash the bytes served must have (None: nobody knows one).
        first: no valid attestation vouches for the file yet (trust on first use): once
            served it is to be vouched for.
    """

    sha256: Optional[str]
    first: bool = False


class ServePolicy(Protocol):
    async def hash_to_serve(
        self, project: str, filename: str, upstream_sha256: Optional[str], online: bool
    ) -> ServeHash:
        """The hash to serve for a file, before every serve.

        Args:
            upstream_sha256: what the upstream's page says (possibly a cached page).
            online: whether that page is the upstream's current word.

        Raises:
            HttpError: 409 when attestations conflict and nobody can settle it.
        """
        ...


class PagesForTrust(Protocol):
    async def cached(self, name: str) -> Optional[index.ProjectPage]: ...


class TrustServePolicy:
    """`ServePolicy`, `FileEvents` and `StoredListener` over `TrustService`.

    Args:
        trust: the trust service.
        pages: the page service (the upstream URL and metadata attested with a file).
        store: the module's tables (which files a blob is).
        run_background: `ModuleApi.run_as_background_process` (room creation, attestations:
            work that outlives the request, so it gets its own log context).
    """

    def __init__(
        self,
        trust: Any,
        pages: PagesForTrust,
        store: Store,
        run_background: Callable[..., Any],
    ):
        self._trust = trust
        self._pages = pages
        self._store = store
        self._run_background = run_background

    async def hash_to_serve(
        self, project: str, filename: str, upstream_sha256: Optional[str], online: bool
    ) -> ServeHash:
        room = await self._trust.view(project)
        if room.local is None:
            # First time: make our room in the background (peers' rooms may vouch already).
            self._run_background("synapse_pypi_ensure_room", self._ensure_room, project)
        decision = self._trust.decide(room, filename, upstream_sha256, online)
        self._trust.handle_decision(project, room, filename, decision)
        self._trust.maintainer_overrules(room, filename, upstream_sha256, decision)
        if decision.outcome is Outcome.CONFLICT:
            raise HttpError(http.CONFLICT, decision.reason)
        return ServeHash(decision.sha256 or upstream_sha256, first=decision.outcome is Outcome.FIRST)

    async def _ensure_room(self, project: str) -> None:
        try:
            await self._trust.ensure_room(project)
        except Exception:
            logger.exception("could not create the package room of %s", project)

    def file_verified(self, project: str, filename: str, sha256: str, size: int) -> None:
        self._run_background("synapse_pypi_attest", self._attest, project, filename, sha256, size)

    async def blob_stored(self, sha256: str, size: int, kind: str, reference: str) -> None:
        """A backend stored a blob: refresh our attestations with its CID."""
        if kind != "cid":
            return
        for project, filename in await self._store.files_for_blob(sha256):
            await self._attest(project, filename, sha256, size)

    async def _attest(self, project: str, filename: str, sha256: str, size: int) -> None:
        """Publish this server's attestation for a verified file (not for .metadata)."""
        if filename.endswith(".metadata"):
            return
        page = await self._pages.cached(project)
        dist = page.file(filename) if page is not None else None
        if dist is None:
            dist = index.DistFile(filename=filename, url="", hashes={"sha256": sha256})
        try:
            await self._trust.attest(project, dist, sha256, size)
        except Exception:
            logger.exception("could not attest %s/%s", project, filename)
