"""The configured storage backends: background adds after commit, reads by reference,
removals when a file leaves the local cache.

Adds are queued in the database (synapse_pypi_pending) when a file is committed and
worked off in the background, so nothing is lost when a backend's service is down or
Synapse restarts: the queue is retried every `storage_retry_interval` until it is empty.
While a service is down, it is tried again after twice as long each time (up to 15 minutes),
and every such round counts as a failed attempt of each add waiting for it: after
MAX_ATTEMPTS the add is given up and logged, so that the queue cannot grow for ever.

A blob that leaves the local cache (evicted, or purged by an admin) is no longer waited
for: an add still pending is dropped with a warning (the file never reached that store),
and a backend that holds it is asked to remove it (for IPFS: unpin), so that pins do not
outgrow `max_cache_size`. Removals are queued in the database (synapse_pypi_removals) too
and retried until the backend confirms. With `unpin_evicted: false`, evicted blobs stay in
the backends (and their references stay usable); an admin's purge always removes.
"""

import logging
import os
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Set, Tuple

from synapse_pypi._config import StorageProviderConfig
from synapse_pypi._store import Store
from synapse_pypi.storage import BackendContext, StorageBackend, StorageError, StorageUnavailable

logger = logging.getLogger(__name__)

# A pending add that failed this often is dropped (logged). A round in which the backend's
# service could not be reached at all counts as one attempt for every add waiting for it;
# with the backoff below and the default 5 s retry interval, an add waits about two hours
# for a service that is down before it is given up.
MAX_ATTEMPTS = 16
# The longest wait between two tries of a backend that is down (the wait doubles from
# `storage_retry_interval` with each failed round); also how long it may take at worst to
# notice that it is back.
MAX_BACKOFF_MS = 15 * 60 * 1000


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
        retry_ms: `storage_retry_interval`, the first wait before a backend that is down is
            tried again.
        unpin_evicted: remove blobs the local cache evicts from the backends too (an admin's
            purge always does).
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
        retry_ms: int = 5000,
        unpin_evicted: bool = True,
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
        # backend name -> (failed rounds in this outage, when to try it again in ms)
        self._backoff: Dict[str, Tuple[int, int]] = {}
        self._retry_ms = retry_ms
        self._unpin_evicted = unpin_evicted
        # sha256 -> backends it still has to be added to.
        self._pending: Dict[str, Set[str]] = {}
        # Whether synapse_pypi_removals may hold rows.
        self._removing = False
        # No drain before `start` has read the queue (the cache evicts during its own start).
        self._started = False
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
        self._removing = bool(await self._store.removals(limit=1))
        self._started = True
        if self._pending:
            logger.info("storage: %d files still to add from before the restart", len(self._pending))
        if self._pending or self._removing:
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

    async def blob_removed(self, sha256: str, reason: str, evicted: bool) -> None:
        """A blob left the local cache (`LocalCache.remove`, before it forgets the blob's
        file names): its pending adds are dropped, and the backends that hold it are asked
        to remove it (unless it was evicted and `unpin_evicted` is off)."""
        self._pending.pop(sha256, None)
        unstore = self._unpin_evicted or not evicted
        dropped = await self._store.forget_stored(sha256, unstore, self._now())
        if dropped:
            by_name = dict(self.backends)
            files = await self._files_of(sha256)
            for name in dropped:
                where = by_name[name].describe() if name in by_name else name
                logger.warning("%s (sha256 %s) never reached %s: %s before it was added", files, sha256, where, reason)
        if unstore:
            self._removing = True
            self.kick()

    async def _files_of(self, sha256: str) -> str:
        names = await self._store.files_for_blob(sha256)
        return ", ".join(f"{project}/{filename}" for project, filename in names) or "a file"

    def kick(self) -> None:
        """Work off the pending queue in the background (no-op if already at it)."""
        if not self._started:
            return
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
        # Backends that are down and not due for another try yet.
        now = self._now()
        unavailable = {name for name, (_, due) in self._backoff.items() if now < due}
        if self._removing:
            await self._remove_queued(by_name, unavailable)
        for sha256, name, attempts in await self._store.pending(limit=1000):
            backend = by_name.get(name)
            if backend is None or name in unavailable:
                continue
            if name not in self._pending.get(sha256, ()):
                continue  # it left the local cache after the rows were read
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
                await self._went_down(name, backend, e)
                continue
            except StorageError as e:
                logger.error("adding %s to %s failed: %s", sha256, backend.describe(), e)
                if attempts + 1 >= MAX_ATTEMPTS:
                    await self._store.drop_pending(sha256, name)
                    self._done(sha256, name)
                    await self._gave_up(sha256, backend, f"after {MAX_ATTEMPTS} failed attempts")
                else:
                    await self._store.count_attempt(sha256, name)
                continue
            self._came_back(name, backend)
            if name not in self._pending.get(sha256, ()):
                # The blob left the local cache while it was being added: what was just
                # stored is removed again, as it would have been a moment later.
                if self._unpin_evicted:
                    await self._store.queue_removal(sha256, name, reference, self._now())
                    self._removing = self._drain_again = True
                    continue
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

    async def _remove_queued(self, by_name: Dict[str, StorageBackend], unavailable: Set[str]) -> None:
        """Ask the backends to remove the blobs queued for removal."""
        # Cleared before reading, so that a removal queued meanwhile is not lost.
        self._removing = False
        limit = 1000
        rows = await self._store.removals(limit=limit)
        left = len(rows)
        for sha256, name, reference, attempts in rows:
            backend = by_name.get(name)
            if backend is None:
                logger.warning("not removing %s from %s: no such backend configured now", reference, name)
                await self._store.drop_removal(sha256, name)
                left -= 1
                continue
            if name in unavailable:
                continue
            try:
                await backend.remove(sha256, reference)
            except StorageUnavailable as e:
                # Kept however long the outage lasts: dropping it would leave the pin for ever.
                unavailable.add(name)
                await self._went_down(name, backend, e)
                continue
            except StorageError as e:
                logger.error("removing %s (%s) from %s failed: %s", sha256, reference, backend.describe(), e)
                if attempts + 1 >= MAX_ATTEMPTS:
                    logger.error(
                        "gave up removing %s (%s) from %s after %d failed attempts; it stays there",
                        sha256, reference, backend.describe(), MAX_ATTEMPTS,
                    )  # fmt: skip
                    await self._store.drop_removal(sha256, name)
                    left -= 1
                else:
                    await self._store.count_removal_attempt(sha256, name)
                continue
            self._came_back(name, backend)
            await self._store.drop_removal(sha256, name)
            left -= 1
            logger.info("removed %s (%s) from %s: no longer in the local cache", sha256, reference, backend.describe())
        if left > 0 or len(rows) == limit:
            self._removing = True

    async def _gave_up(self, sha256: str, backend: StorageBackend, why: str) -> None:
        files = await self._files_of(sha256)
        logger.error("gave up adding %s (sha256 %s) to %s %s; it stays in the local cache only", files, sha256,
                     backend.describe(), why)  # fmt: skip

    async def retry(self) -> None:
        """Called periodically: retry pending adds and removals (after an outage, or
        failures); a backend that is down only once its backoff is over."""
        if self._pending or self._removing or self._down:
            self.kick()

    async def _went_down(self, name: str, backend: StorageBackend, e: Exception) -> None:
        """A try of `name` found its service unreachable: one failed round of this outage."""
        now = self._now()
        # One warning per outage, not one per file or per retry.
        if name not in self._down:
            self._down[name] = now
            logger.warning(
                "storage backend %s is unavailable (%s); serving from cache and upstream, "
                "and adding pending files once it is back",
                backend.describe(),
                e,
            )
        rounds = self._backoff.get(name, (0, 0))[0] + 1
        self._backoff[name] = (rounds, now + min(self._retry_ms * 2 ** (rounds - 1), MAX_BACKOFF_MS))
        for sha256 in await self._store.count_outage(name, MAX_ATTEMPTS):
            self._done(sha256, name)
            await self._gave_up(sha256, backend, f"after {MAX_ATTEMPTS} tries while it was unavailable")

    def _came_back(self, name: str, backend: StorageBackend) -> None:
        self._backoff.pop(name, None)
        since = self._down.pop(name, None)
        if since is not None:
            logger.info("storage backend %s is back after %.1fs", backend.describe(), (self._now() - since) / 1000)

    def readers_for(self, refs: Dict[str, str]) -> List[Tuple[StorageBackend, str]]:
        """(backend, reference) pairs that could fetch a blob with these references."""
        return [(b, refs[b.reference_kind]) for _, b in self.backends if b.reference_kind in refs]


def _size(path: str) -> int:
    return os.stat(path).st_size
