"""The configured storage backends: background adds after commit, reads by reference.

Adds are queued in the database (synapse_pypi_pending) when a file is committed and
worked off in the background, so nothing is lost when a backend's service is down or
Synapse restarts: the queue is retried every `storage_retry_interval` until it is empty.
"""

import logging
import os
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Set, Tuple

from synapse_pypi._config import StorageProviderConfig
from synapse_pypi._store import Store
from synapse_pypi.storage import BackendContext, StorageBackend, StorageError, StorageUnavailable

logger = logging.getLogger(__name__)

# A pending add that failed this often for another reason than an outage is dropped.
MAX_ATTEMPTS = 5


class StoredListener(Protocol):
    """Told when a backend has stored a blob (the trust layer refreshes its attestations
    with the new CID)."""

    async def blob_stored(self, sha256: str, size: int, kind: str, reference: str) -> None: ...


class Backends:
    """All storage backends of the module, in config order.

    Args:
        providers: the parsed `storage_providers` entries.
        context: what each backend is built with.
        store: the module's tables.
        blob_path: sha256 -> path of the committed file in the local cache.
        run_background: `ModuleApi.run_as_background_process`.
        listener: told (in the background) after a backend stored a blob.
        clock: milliseconds since the epoch.
    """

    def __init__(
        self,
        providers: Tuple[StorageProviderConfig, ...],
        context: BackendContext,
        store: Store,
        blob_path: Callable[[str], str],
        run_background: Callable[..., Any],
        listener: Optional[StoredListener] = None,
        clock: Optional[Callable[[], int]] = None,
        quiet_moment: Optional[Callable[[float], Awaitable[None]]] = None,
        seconds: Callable[[], float] = time.time,
    ):
        # Each add waits for a moment without requests (as Matrix writes do, and at most as
        # long): a node's add takes CPU that a cold install is waiting for.
        self._quiet_moment = quiet_moment
        self._seconds = seconds
        self._drain_since = 0.0
        self._store = store
        self._blob_path = blob_path
        self._run_background = run_background
        self._now = clock or (lambda: int(time.time() * 1000))
        self.backends: List[Tuple[str, StorageBackend]] = [
            (p.name, p.cls(p.config, context)) for p in providers
        ]
        self._down: Dict[str, float] = {}  # backend name -> outage start (ms)
        # sha256 -> backends it still has to be added to; such blobs are never evicted.
        self._pending: Dict[str, Set[str]] = {}
        self._draining = False
        self._drain_again = False
        self._listener = listener

    @property
    def writable(self) -> List[Tuple[str, StorageBackend]]:
        return [(name, b) for name, b in self.backends if not b.read_only]

    def has_pending(self, sha256: str) -> bool:
        return sha256 in self._pending

    @property
    def pending_adds(self) -> int:
        """Blobs still to be added to some backend (read by the metrics, from their thread)."""
        return len(self._pending)

    async def start(self) -> None:
        for _name, backend in self.backends:
            try:
                await backend.start()
            except Exception:
                logger.exception("storage backend %s failed to start", backend.describe())
        known = {name for name, _ in self.backends}
        for sha256, name, _ in await self._store.pending(limit=1_000_000):
            if name in known:
                self._pending.setdefault(sha256, set()).add(name)
            else:
                logger.warning("dropping a pending add of %s to %s: no such backend configured now", sha256, name)
                await self._store.drop_pending(sha256, name)
        if self._pending:
            logger.info("storage: %d files still to add from before the restart", len(self._pending))
            self.kick()

    async def committed(self, sha256: str) -> None:
        """Queue a freshly committed blob for every writable backend that does not hold
        it already (a copy just fetched back from IPFS is not added again)."""
        held = await self._store.stored_in(sha256)
        names = [name for name, _ in self.writable if name not in held]
        if not names:
            return
        await self._store.queue_stores(sha256, names, self._now())
        self._pending.setdefault(sha256, set()).update(names)
        self.kick()

    def kick(self) -> None:
        """Work off the pending queue in the background (no-op if already at it)."""
        if self._draining:
            self._drain_again = True
            return
        self._run_background("synapse_pypi_storage_drain", self._drain)

    async def _drain(self) -> None:
        self._draining = True
        try:
            self._drain_since = self._seconds()
            while True:
                self._drain_again = False
                await self._drain_once()
                if not self._drain_again:
                    break
        finally:
            self._draining = False

    async def _drain_once(self) -> None:
        by_name = dict(self.backends)
        unavailable: Set[str] = set()
        for sha256, name, attempts in await self._store.pending(limit=1000):
            backend = by_name.get(name)
            if backend is None or name in unavailable:
                continue
            path = self._blob_path(sha256)
            if self._quiet_moment is not None:
                await self._quiet_moment(self._drain_since)
            try:
                size = _size(path)
                reference = await backend.store(path, sha256, size)
            except FileNotFoundError:
                logger.warning("not adding %s to %s: no longer in the local cache", sha256, backend.describe())
                await self._store.drop_pending(sha256, name)
                self._done(sha256, name)
                continue
            except StorageUnavailable as e:
                unavailable.add(name)
                self._went_down(name, backend, e)
                continue
            except StorageError as e:
                logger.error("adding %s to %s failed: %s", sha256, backend.describe(), e)
                if attempts + 1 >= MAX_ATTEMPTS:
                    await self._store.drop_pending(sha256, name)
                    self._done(sha256, name)
                else:
                    await self._store.count_attempt(sha256, name)
                continue
            self._came_back(name, backend)
            await self._store.record_stored(sha256, name, backend.reference_kind, reference, self._now())
            logger.info("stored %s in %s as %s", sha256, backend.describe(), reference)
            if self._listener is not None:
                self._run_background(
                    "synapse_pypi_on_stored", self._listener.blob_stored, sha256, size, backend.reference_kind, reference
                )
            self._done(sha256, name)

    def _done(self, sha256: str, backend: str) -> None:
        left = self._pending.get(sha256)
        if left is not None:
            left.discard(backend)
            if not left:
                del self._pending[sha256]

    async def retry(self) -> None:
        """Called periodically: retry pending adds (after an outage, or failures)."""
        if self._pending or self._down:
            self.kick()

    def _went_down(self, name: str, backend: StorageBackend, e: Exception) -> None:
        # One warning per outage, not one per file or per retry.
        if name not in self._down:
            self._down[name] = self._now()
            logger.warning(
                "storage backend %s is unavailable (%s); serving from cache and upstream, "
                "and adding pending files once it is back",
                backend.describe(),
                e,
            )

    def _came_back(self, name: str, backend: StorageBackend) -> None:
        since = self._down.pop(name, None)
        if since is not None:
            logger.info("storage backend %s is back after %.1fs", backend.describe(), (self._now() - since) / 1000)

    def readers_for(self, refs: Dict[str, str]) -> List[Tuple[StorageBackend, str]]:
        """(backend, reference) pairs that could fetch a blob with these references."""
        return [(b, refs[b.reference_kind]) for _, b in self.backends if b.reference_kind in refs]


def _size(path: str) -> int:
    return os.stat(path).st_size
