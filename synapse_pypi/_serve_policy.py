"""The file path's view of the trust layer: which hash to serve, and verified files to vouch for.

The web layer asks `ServePolicy.hash_to_serve` before every file is served (cache hits
included); the file chain tells `file_verified` (`_files.FileEvents`) when a file was
committed or served while our bot has not vouched for it, asks `hints`
(`_files.ReferenceHints`) for CIDs others attested, and the storage backends tell
`blob_stored` (`_backends.StoredListener`) when a CID is known. `TrustServePolicy` adapts
`TrustService` to these calls. None of them waits for a Matrix write: attestations go to the
Matrix queue.
"""

import logging
from typing import Any, List, Optional, Protocol

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
        first: our bot has not vouched for these bytes yet: once served, they are.
        not_from_upstream: why the upstream must not be asked for the bytes (its hash lost
            to the attested one), or None.
        size: the size the attestations agree on, where the upstream's word does not count.
    """

    sha256: Optional[str]
    first: bool = False
    not_from_upstream: Optional[str] = None
    size: Optional[int] = None


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


    async def refusal(self, project: str, filename: str) -> Optional[str]:
        """Why the file must not be served (a ban), or None."""
        ...


class PagesForTrust(Protocol):
    async def cached(self, name: str) -> Optional[index.ProjectPage]: ...


class TrustServePolicy:
    """`ServePolicy`, `FileEvents`, `ReferenceHints` and `StoredListener` over `TrustService`.

    Args:
        trust: the trust service.
        pages: the page service (the upstream URL and metadata attested with a file).
        store: the module's tables (which files a blob is).
    """

    def __init__(self, trust: Any, pages: PagesForTrust, store: Store):
        self._trust = trust
        self._pages = pages
        self._store = store

    async def hash_to_serve(
        self, project: str, filename: str, upstream_sha256: Optional[str], online: bool
    ) -> ServeHash:
        pt = await self._trust.view_for_serve(project)
        decision = self._trust.decide(pt, filename, upstream_sha256, online)
        self._trust.handle_decision(project, pt, filename, decision)
        if decision.outcome is Outcome.CONFLICT:
            raise HttpError(http.CONFLICT, decision.reason)
        sha256 = decision.sha256 or upstream_sha256
        first = sha256 is not None and not self._trust.attested(project, filename, sha256)
        if decision.upstream_lost is None:
            return ServeHash(sha256, first)
        size = self._trust.attested_details(pt, filename, decision.sha256)[0]
        why = (
            f"the upstream now publishes other bytes for this file (sha256 {decision.upstream_lost}) than the "
            f"attested sha256 {decision.sha256}, which the cache and the storage backends do not have; "
            "the upstream's bytes are not served"
        )
        return ServeHash(sha256, first, not_from_upstream=why, size=size)

    async def refusal(self, project: str, filename: str) -> Optional[str]:
        pt = await self._trust.view_for_serve(project)
        return self._trust.refusal(pt, project, filename)

    async def hints(self, project: str, filename: str, sha256: str) -> List[str]:
        """CIDs that valid attestations of exactly these bytes carry, now (a redacted
        attestation's CID is gone with it)."""
        pt = await self._trust.view(project)
        return list(self._trust.cid_hints(pt, filename, sha256))

    def file_verified(self, project: str, filename: str, sha256: str, size: int) -> None:
        self._trust.run_background("synapse_pypi_attest", self._attest, project, filename, sha256, size, False)

    async def blob_stored(self, sha256: str, size: int, kind: str, reference: str) -> None:
        """A backend stored a blob: refresh our attestations with its CID."""
        if kind != "cid":
            return
        for project, filename in await self._store.files_for_blob(sha256):
            await self._attest(project, filename, sha256, size, True)

    async def _attest(self, project: str, filename: str, sha256: str, size: int, stored: bool) -> None:
        """Hand this server's attestation of verified bytes to the Matrix queue (not for
        .metadata files)."""
        if filename.endswith(".metadata"):
            return
        page = await self._pages.cached(project)
        dist = page.file(filename) if page is not None else None
        upstream_sha = dist.hashes.get("sha256") if dist is not None and dist.url else None
        if dist is None:
            dist = index.DistFile(filename=filename, url="", hashes={"sha256": sha256})
        uploaded = self._uploaded(project, filename, sha256)
        if stored:
            self._trust.stored(project, dist, sha256, size, uploaded, upstream_sha)
        else:
            self._trust.served(project, dist, sha256, size, upstream_sha, uploaded=uploaded)

    def _uploaded(self, project: str, filename: str, sha256: str) -> bool:
        """Whether these bytes were uploaded here (docs/publishing.md): attested as such, so
        that peers serve the project from the rooms rather than from their upstream."""
        local = getattr(self._pages, "local", None)
        upload = local.file(project, filename) if local is not None else None
        return upload is not None and upload.sha256 == sha256
