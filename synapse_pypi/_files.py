"""The read chain of one file: local cache, then storage backends, then the upstream.

`FileChain.fetch` is called once per file request and hands back one `Responder`
(`_responders.py`), as Synapse's `MediaStorage.fetch_media` does for media: a cached file;
the tail of the one download in flight for that file (twenty clients cost one upstream
download); a stream-through when the disk has no room; or, for `HEAD` of a file not held,
what the index says of it (`HEAD` never starts a download).

A download writes to a `*.partial` file, hashed as the bytes arrive, off the reactor
(`_partial.py`). Only when length and sha256 match is it renamed into the
content-addressed cache; the last byte is held back from readers until then, so no client
ever receives the whole of a file that failed verification. Before a download commits to
the disk, free space is checked (least recently used files are evicted to make room); a
file that cannot be stored is streamed through instead, verified the same way, and caching
resumes by itself once there is space again.

After a commit, in the background: the storage backends queue it (IPFS), whoever listens is
told (the trust layer attests it), and a wheel's core metadata is extracted (`_metadata.py`)
so pages can offer it (PEP 658) even where the upstream does not.
"""

import errno
import hashlib
import logging
import os
import secrets
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Set, Tuple

import attrs
from twisted.internet import defer

from synapse_pypi._backends import Backends
from synapse_pypi._context import fire_all
from synapse_pypi._errors import InsufficientStorage
from synapse_pypi._metadata import NoCoreMetadata, extract_verified
from synapse_pypi._partial import DiskFull, PartialFile
from synapse_pypi._responders import FileResponder, HeadResponder, RelayResponder, Responder, TailResponder
from synapse_pypi._store import Store
from synapse_pypi._upstream import (
    StopTransfer,
    TooLarge,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamUnreachable,
)
from synapse_pypi.storage import StorageError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
METADATA_SUFFIX = ".metadata"
# A download is answered only once it is complete, or this many bytes are in, or this many
# seconds have passed. Small files (most wheels, every .metadata) are thus verified before
# the status line is sent, and a failure (a stall included, as long as the upstream timeout
# is shorter than the wait) is a clean 502/504; a large one starts streaming early, and a
# failure after that can only abort the connection. The time limit keeps a client's own
# read timeout (pip: 15 s) from firing on a slow upstream.
STREAM_AFTER_BYTES = 1024 * 1024
STREAM_AFTER_SECONDS = 10.0


class ChecksumError(UpstreamBadResponse):
    """The bytes the upstream sent are not the file its index promised."""


@attrs.frozen
class WantedFile:
    """A file a client asked for, as the index page (and the serve policy) describe it."""

    project: str
    filename: str
    url: str
    sha256: Optional[str]
    size: Optional[int]
    # Why the upstream must not be asked for these bytes (its hash lost to the attested one).
    not_from_upstream: Optional[str] = None
    # Further references (CIDs or CID paths) that may hold these bytes: a snapshot's file.
    references: Tuple[str, ...] = ()


class FileEvents(Protocol):
    """Told about verified files (the trust layer attests them)."""

    def file_verified(self, project: str, filename: str, sha256: str, size: int) -> None:
        """A file was committed after verification, or served from the cache while nothing
        vouches for it any more. Must not block: start background work and return."""
        ...


class CacheRemovals(Protocol):
    """Told when a blob leaves the local cache (the storage backends forget it too)."""

    async def blob_removed(self, sha256: str, reason: str, evicted: bool) -> None:
        """Called before the blob's file names are forgotten. `evicted`: by the cache's own
        budget (least recently used), not by an admin's purge."""
        ...


class ReferenceHints(Protocol):
    """Knows references (CIDs) for a file from others' attestations: hints, not trust."""

    async def hints(self, project: str, filename: str, sha256: str) -> List[str]:
        """CIDs that valid attestations of exactly these bytes carry, now."""
        ...


def blob_path(root: str, sha256: str) -> str:
    """Where the cache keeps the blob `sha256`: `<root>/sha256/ab/cd/<hex>`."""
    return os.path.join(root, blob_relpath(sha256))


def blob_relpath(sha256: str) -> str:
    """The blob's path relative to the cache directory (what X-Accel-Redirect names)."""
    return os.path.join("sha256", sha256[:2], sha256[2:4], sha256)


def content_type(filename: str) -> str:
    """The media type a file is served with, by its name."""
    if filename.endswith(METADATA_SUFFIX):
        return "text/plain; charset=utf-8"
    if filename.endswith((".whl", ".zip", ".egg")):
        return "application/zip"
    if filename.endswith((".tar.gz", ".tgz")):
        return "application/x-tar"  # with gzip "encoding" in the file name, not the transfer
    return "application/octet-stream"


class LocalCache:
    """The content-addressed local cache: `<root>/sha256/ab/cd/<hex>`, with LRU eviction.

    Args:
        root: the cache directory (created).
        store: the module's database tables.
        max_size: disk budget in bytes; least-recently-used blobs not in use are evicted
            (also those still waiting to be added to a storage backend: the budget holds
            while a backend is down).
        min_free: bytes of the disk to leave free; a download needs its size on top.
        clock: returns milliseconds since the epoch.
        on_removed: told of every blob that leaves the cache (the storage backends).
    """

    def __init__(
        self,
        root: str,
        store: Store,
        max_size: int,
        min_free: int = 0,
        clock: Optional[Callable[[], int]] = None,
        on_removed: Optional[CacheRemovals] = None,
        keep: Callable[[str], bool] = lambda sha256: False,
    ):
        self.root = root
        # Blobs that are never evicted (uploads: the cache is where they live).
        self._keep = keep
        self.partial_dir = os.path.join(root, "partial")
        self._store = store
        self._max_size = max_size
        self._on_removed = on_removed
        self._min_free = min_free
        self._now_ms = clock or (lambda: int(time.time() * 1000))
        self._sizes: Dict[str, int] = {}
        self._last_access: Dict[str, int] = {}
        self._pending_touch: Dict[str, int] = {}
        self._in_use: Dict[str, int] = {}
        self.total_size = 0
        self._evicting = False
        # Bytes promised to downloads in flight, not yet on disk.
        self._reserved = 0
        # Bumped whenever a blob comes or goes (pages rendered from the cache's contents).
        self.generation = 0

    def blob_path(self, sha256: str) -> str:
        return blob_path(self.root, sha256)

    async def start(self) -> None:
        """Sweep leftover partial files and reconcile the database with the disk."""
        os.makedirs(self.partial_dir, exist_ok=True)
        swept = 0
        for name in os.listdir(self.partial_dir):
            if name.endswith(PARTIAL_SUFFIX):
                os.unlink(os.path.join(self.partial_dir, name))
                swept += 1
        if swept:
            logger.info("swept %d leftover partial downloads", swept)
        blobs = await self._store.all_blobs()
        for sha256, (size, last_access) in blobs.items():
            path = self.blob_path(sha256)
            try:
                on_disk = os.stat(path).st_size
            except FileNotFoundError:
                on_disk = -1
            if on_disk != size:
                # Removed or damaged behind our back: forget it, it will be fetched again.
                logger.warning("cached blob %s missing or wrong size on disk; forgetting it", sha256)
                if on_disk >= 0:
                    os.unlink(path)
                await self._store.remove_blob(sha256)
                continue
            self._sizes[sha256] = size
            self._last_access[sha256] = last_access
        self.total_size = sum(self._sizes.values())
        logger.info("local cache: %d files, %d bytes in %s", len(self._sizes), self.total_size, self.root)
        await self.evict()

    def has(self, sha256: str) -> bool:
        return sha256 in self._sizes

    @property
    def max_size(self) -> int:
        """The disk budget: no file larger than this can be cached."""
        return self._max_size

    def size_of(self, sha256: str) -> Optional[int]:
        return self._sizes.get(sha256)

    def new_partial(self) -> str:
        return os.path.join(self.partial_dir, secrets.token_hex(12) + PARTIAL_SUFFIX)

    def open(self, sha256: str, filename: str) -> Optional[FileResponder]:
        """A responder for a cached blob (marked in use until it is closed), or None."""
        if sha256 not in self._sizes:
            return None
        try:
            fd = os.open(self.blob_path(sha256), os.O_RDONLY)
        except FileNotFoundError:
            logger.warning("cached blob %s vanished from disk", sha256)
            return None
        self.acquire(sha256)
        return FileResponder(
            fd, sha256, content_type(filename), blob_relpath(sha256), on_close=lambda: self.release(sha256)
        )

    # -- disk space --------------------------------------------------------------------

    def free_bytes(self) -> int:
        """Free space on the cache's filesystem for us, less what downloads have promised."""
        st = os.statvfs(self.partial_dir)
        return st.f_bavail * st.f_frsize - self._reserved

    async def make_room(self, size: int) -> bool:
        """Whether `size` more bytes fit on the disk (leaving `min_free`), evicting least
        recently used blobs not in use to make them fit if need be."""
        need = size + self._min_free
        free = self.free_bytes()
        if free >= need:
            return True
        candidates = self._eviction_order()
        if free + sum(self._sizes[s] for s in candidates) < need:
            return False  # even an empty cache would not make it fit: keep what we have
        for sha256 in candidates:
            if self.free_bytes() >= need:
                break
            await self.remove(sha256, reason="evicted to make room on a full disk", evicted=True)
        return self.free_bytes() >= need

    def reserve(self, size: int) -> None:
        """Count `size` bytes a download will still write as taken (see `free_bytes`)."""
        self._reserved += size

    def unreserve(self, size: int) -> None:
        """The download is over: its bytes are on disk, or were never written."""
        self._reserved = max(0, self._reserved - size)

    # -- commits and LRU ---------------------------------------------------------------

    async def commit(self, partial: str, wanted: WantedFile, sha256: str, size: int) -> None:
        """Move a verified partial file into place and record it."""
        path = self.blob_path(sha256)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(partial, path)
        now = self._now_ms()
        await self._store.add_blob(wanted.project, wanted.filename, sha256, size, now)
        if sha256 not in self._sizes:
            self.total_size += size
        self._sizes[sha256] = size
        self.generation += 1
        self._last_access[sha256] = now
        logger.info("cached %s/%s (%d bytes, sha256 %s)", wanted.project, wanted.filename, size, sha256)
        await self.evict()

    def acquire(self, sha256: str) -> None:
        """Mark a blob as being served: eviction passes it over until `release`."""
        self._in_use[sha256] = self._in_use.get(sha256, 0) + 1
        now = self._now_ms()
        self._last_access[sha256] = now
        self._pending_touch[sha256] = now

    def release(self, sha256: str) -> None:
        left = self._in_use.get(sha256, 0) - 1
        if left > 0:
            self._in_use[sha256] = left
        else:
            self._in_use.pop(sha256, None)

    def in_use(self, sha256: str) -> bool:
        return sha256 in self._in_use

    async def flush_touches(self) -> None:
        if self._pending_touch:
            pending, self._pending_touch = self._pending_touch, {}
            await self._store.touch_blobs(pending)

    def _eviction_order(self) -> List[str]:
        ordered = sorted(self._sizes, key=lambda s: self._last_access.get(s, 0))
        return [s for s in ordered if not self.in_use(s) and not self._keep(s)]

    async def evict(self) -> None:
        """Remove least-recently-used blobs until the cache fits its budget."""
        if self._evicting or self.total_size <= self._max_size:
            return
        self._evicting = True
        try:
            for sha256 in self._eviction_order():
                if self.total_size <= self._max_size:
                    break
                if self.in_use(sha256):
                    continue  # a client started reading it while an earlier removal was awaited
                await self.remove(sha256, reason="evicted (least recently used)", evicted=True)
        finally:
            self._evicting = False

    async def remove(self, sha256: str, reason: str, evicted: bool = False) -> None:
        """Take a blob out of the cache (`evicted`: by the budget, not by an admin)."""
        size = self._sizes.pop(sha256, None)
        if size is None:
            return
        self._last_access.pop(sha256, None)
        self._pending_touch.pop(sha256, None)
        self.total_size -= size
        self.generation += 1
        if self._on_removed is not None:
            await self._on_removed.blob_removed(sha256, reason, evicted)
        await self._store.remove_blob(sha256)
        try:
            os.unlink(self.blob_path(sha256))
        except FileNotFoundError:
            pass
        logger.info("%s: removed %s (%d bytes); cache now %d bytes", reason, sha256, size, self.total_size)


class Download:
    """One download in flight, readable by any number of clients meanwhile."""

    def __init__(self, wanted: WantedFile, clock: Any):
        self.wanted = wanted
        self._clock = clock
        self.partial: Optional[PartialFile] = None
        # Content-Length of the upstream response, or the size the index promised.
        self.length: Optional[int] = wanted.size
        self.sha256: Optional[str] = None  # set once committed
        self.path: Optional[str] = None  # the committed blob
        self.error: Optional[BaseException] = None
        self.finished = False
        # True once bytes may be streamed to clients (all but the last byte until the
        # whole file is verified, so a client never gets a complete wrong file).
        self.exposed = False
        # True once a source started sending (or the download failed).
        self.responded = False
        # Bumped when a source is given up on and the next one starts again from byte 0:
        # a client that was already sent bytes of the old attempt must be cut off.
        self.attempt = 0
        # Where the bytes come from now ("backend", then "upstream" if no backend had them).
        self.source = "upstream"
        self._waiters: List[defer.Deferred[None]] = []

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    @property
    def durable(self) -> int:
        """Bytes of the current attempt on disk."""
        return self.partial.durable if self.partial is not None else 0

    def readable(self) -> int:
        """How many bytes a client may be sent now: all but the last until verified."""
        if self.ok:
            return self.durable
        if not self.exposed:
            return 0
        return max(0, self.durable - 1)

    def complete_length(self) -> Optional[int]:
        return self.durable if self.ok else None

    def failed(self) -> bool:
        return self.error is not None

    def wait(self, timeout: Optional[float] = None) -> "defer.Deferred[None]":
        """A Deferred that fires at the next progress (bytes written, success or failure),
        or after `timeout` seconds if that comes first."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.finished:
            d.callback(None)
            return d
        self._waiters.append(d)
        if timeout is not None:

            def expire() -> None:
                if d in self._waiters:
                    self._waiters.remove(d)
                    fire_all([d])

            call = self._clock.callLater(timeout, expire)
            d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def restart(self) -> None:
        """The next source starts again at byte 0 (the partial file was reset)."""
        if self.exposed:
            self.attempt += 1
        self.exposed = False
        self.notify()

    def expose(self) -> None:
        """A source started sending: clients may be sent its bytes (all but the last)."""
        if not self.exposed:
            self.exposed = self.responded = True
            self.notify()

    def committed(self, sha256: str, path: str) -> None:
        """The file is verified and in the cache at `path`."""
        self.sha256, self.path = sha256, path
        self.finished = True
        self.notify()

    def fail(self, error: BaseException) -> None:
        """No source could give the file; `error` says why (clients being sent it are cut off)."""
        self.error = error
        self.finished = self.responded = True
        self.notify()

    def notify(self) -> None:
        """Wake everyone waiting for progress."""
        waiters, self._waiters = self._waiters, []
        fire_all(waiters)

    async def answerable(self, yieldable: Callable[[Any], Any]) -> None:
        """Wait until a client should be answered (see STREAM_AFTER_BYTES)."""
        deadline = self._clock.seconds() + STREAM_AFTER_SECONDS
        while not self.finished and (not self.responded or self.durable < STREAM_AFTER_BYTES):
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 and self.responded:
                break
            await yieldable(self.wait(max(remaining, 0.05) if self.responded else None))


class FileChain:
    """Finds the bytes of a wanted file: local cache, storage backends, the upstream.

    Args:
        cache: the local cache.
        store: the module's tables.
        upstream: the upstream client.
        backends: the storage backends, if any are configured.
        references: CIDs from others' attestations, tried after our own references.
        hint_timeout: how long all those CIDs together are tried before the next source.
        events: told about verified files.
        run_background: `ModuleApi.run_as_background_process`.
        run_in_background: Synapse's `run_in_background`.
        defer_to_thread: `ModuleApi.defer_to_thread`.
        yieldable: `make_deferred_yieldable`.
        clock: the reactor.
    """

    def __init__(
        self,
        cache: LocalCache,
        store: Store,
        upstream: UpstreamClient,
        *,
        run_background: Callable[..., Any],
        run_in_background: Callable[..., Any],
        defer_to_thread: Callable[..., Awaitable[Any]],
        yieldable: Callable[[Any], Any],
        clock: Any,
        backends: Optional[Backends] = None,
        references: Optional[ReferenceHints] = None,
        events: Optional[FileEvents] = None,
        hint_timeout: float = 5.0,
    ):
        self._hint_timeout = hint_timeout
        self._cache = cache
        self._store = store
        self._upstream = upstream
        self._backends = backends
        self._references = references
        self._events = events
        self._run_background = run_background
        self._run_in_background = run_in_background
        self._defer_to_thread = defer_to_thread
        self._yieldable = yieldable
        self._clock = clock
        # One download per file and decided hash: a request for other bytes under the same
        # name (the policy decided otherwise meanwhile) is never handed this one's.
        self._downloads: Dict[Tuple[str, str, Optional[str]], Download] = {}
        self._disk_full_since: Optional[float] = None
        self._metadata_queue: List[Tuple[str, str, str]] = []
        self._metadata_queued: Set[Tuple[str, str]] = set()
        self._metadata_running = False

    # -- what the pages need to know -------------------------------------------------------

    @property
    def generation(self) -> int:
        """Bumped whenever a file comes or goes (pages rendered from the cache depend on it)."""
        return self._cache.generation

    async def cached_digest_of(self, project: str, filename: str) -> Optional[str]:
        """The sha256 of our cached copy of a file, looked up by name."""
        sha256 = await self._store.file_digest(project, filename)
        return sha256 if sha256 and self._cache.has(sha256) else None

    async def cached_files(self, project: str) -> Dict[str, Tuple[str, int]]:
        """filename -> (sha256, size) of the files of `project` in the local cache (core
        metadata extracted here included, as `<wheel>.metadata`)."""
        rows = await self._store.cached_files(project)
        return {name: row for name, row in rows.items() if self._cache.has(row[0])}

    async def start(self) -> None:
        """Extract core metadata of cached wheels that have none yet (in the background)."""
        for project, filename, sha256 in await self._store.wheels_without_metadata():
            self._queue_metadata(project, filename, sha256)

    # -- the chain -----------------------------------------------------------------------

    async def fetch(self, wanted: WantedFile, body: bool = True, first: bool = False) -> Responder:
        """The responder for `wanted`.

        Args:
            wanted: the file, with the hash the serve policy decided.
            body: False for HEAD: nothing is fetched for a file not held.
            first: no attestation vouches for the file any more; a cache hit is reported
                to `events` so that it is vouched for again.

        Raises:
            UpstreamError: the file could not be had from any source (404, 502, 504).
            InsufficientStorage: no room to cache it and nowhere to stream it from (507).
        """
        hit = await self._cached(wanted)
        if hit is not None:
            if first and self._events is not None and not wanted.filename.endswith(METADATA_SUFFIX):
                assert hit.sha256 is not None and hit.length is not None
                self._events.file_verified(wanted.project, wanted.filename, hit.sha256, hit.length)
            return hit
        key = (wanted.project, wanted.filename, wanted.sha256)
        dl = self._downloads.get(key)
        if not body:
            length = dl.length if dl is not None else wanted.size
            return HeadResponder(content_type(wanted.filename), length, wanted.sha256)
        if dl is None:
            if wanted.size is not None and not await self._cache.make_room(wanted.size):
                return await self._relay(wanted)
            # make_room may have waited on the database: someone else may have started it.
            dl = self._downloads.get(key) or self._start(wanted)
        await dl.answerable(self._yieldable)
        if dl.error is not None:
            if isinstance(dl.error, InsufficientStorage):
                return await self._relay(wanted)
            raise dl.error
        if dl.ok and dl.sha256 is not None:
            hit = self._cache.open(dl.sha256, wanted.filename)
            if hit is not None:
                hit.source = dl.source  # downloaded for this request, not a cache hit
                return hit
        return self._tail(dl)

    async def _cached(self, wanted: WantedFile) -> Optional[Responder]:
        sha256 = wanted.sha256
        if sha256 is None:
            # An index that publishes no hash: we know the file by what we stored.
            sha256 = await self.cached_digest_of(wanted.project, wanted.filename)
        if sha256 is None or not self._cache.has(sha256):
            return None
        return self._cache.open(sha256, wanted.filename)

    def _tail(self, dl: Download) -> Responder:
        assert dl.partial is not None
        wanted = dl.wanted
        try:
            fd = os.open(dl.partial.path, os.O_RDONLY)
        except FileNotFoundError:
            # Committed (or failed) between our checks: the cache has it, or nobody does.
            if dl.ok and dl.sha256 is not None:
                hit = self._cache.open(dl.sha256, wanted.filename)
                if hit is not None:
                    hit.source = dl.source
                    return hit
            raise dl.error or UpstreamBadResponse(wanted.url, "download failed")
        return TailResponder(dl, fd, wanted.filename, content_type(wanted.filename), dl.length, wanted.sha256)

    def _start(self, wanted: WantedFile) -> Download:
        key = (wanted.project, wanted.filename, wanted.sha256)
        dl = Download(wanted, self._clock)
        self._downloads[key] = dl

        async def run() -> None:
            try:
                await self._run(dl)
            finally:
                self._forget(dl)

        # A background process, not the first client's request: the download finishes
        # (and warms the cache) even if that client goes away.
        self._run_background("synapse_pypi_download", run)
        return dl

    async def _run(self, dl: Download) -> None:
        wanted = dl.wanted
        reserved = [wanted.size or 0]
        self._cache.reserve(reserved[0])
        partial: Optional[PartialFile] = None
        try:
            partial = PartialFile(self._cache.new_partial(), self._defer_to_thread, self._yieldable, dl.notify)
            partial.start(self._run_in_background)
            dl.partial = partial
            got = None
            if wanted.sha256 and self._backends is not None:
                dl.source = "backend"
                got = await self._from_backends(dl, partial)
            if got is None:
                dl.source = "upstream"
                got = await self._from_upstream(dl, partial, reserved)
            sha256, size = got
            partial.close()
            await self._cache.commit(partial.path, wanted, sha256, size)
            self._space_back()
            self._forget(dl)
            dl.committed(sha256, self._cache.blob_path(sha256))
            await self._after_commit(wanted, sha256, size)
        except (DiskFull, InsufficientStorage) as e:
            err = e if isinstance(e, InsufficientStorage) else InsufficientStorage(
                f"{wanted.filename}: the disk filled up while caching it ({e})"
            )
            self._disk_full(wanted, err)
            self._fail(dl, partial, err)
        except UpstreamError as e:
            logger.warning("download of %s failed: %s", wanted.url or wanted.filename, e)
            self._fail(dl, partial, e)
        except Exception as e:
            logger.exception("download of %s failed", wanted.url or wanted.filename)
            self._fail(dl, partial, UpstreamBadResponse(wanted.url, f"internal error: {e.__class__.__name__}"))
        finally:
            self._cache.unreserve(reserved[0])
            if partial is not None:
                # The writer runs in this background process's log context: let it end first.
                await partial.stopped()

    async def commit_upload(self, wanted: WantedFile, data: bytes) -> None:
        """Store bytes that were uploaded (the caller checked that they are `wanted.sha256`)
        as a download's are, followed by what follows every commit: the storage backends
        add them, the trust layer attests them, a wheel's core metadata is extracted.

        Raises:
            InsufficientStorage: no room for them on the disk (507).
        """
        assert wanted.sha256 is not None
        if not await self._cache.make_room(len(data)):
            raise InsufficientStorage(f"{wanted.filename}: not enough free disk space to store it")
        partial = self._cache.new_partial()
        try:
            await self._defer_to_thread(_write_new, partial, data)
            await self._cache.commit(partial, wanted, wanted.sha256, len(data))
        finally:
            if os.path.exists(partial):  # not committed
                os.unlink(partial)
        await self._after_commit(wanted, wanted.sha256, len(data))

    async def _after_commit(self, wanted: WantedFile, sha256: str, size: int) -> None:
        if self._backends is not None:
            await self._backends.committed(sha256)
        if wanted.filename.endswith(METADATA_SUFFIX):
            return
        if self._events is not None:
            self._events.file_verified(wanted.project, wanted.filename, sha256, size)
        if wanted.filename.endswith(".whl"):
            self._queue_metadata(wanted.project, wanted.filename, sha256)

    def _fail(self, dl: Download, partial: Optional[PartialFile], error: BaseException) -> None:
        if partial is not None:
            partial.discard()
        self._forget(dl)
        dl.fail(error)

    def _forget(self, dl: Download) -> None:
        """No longer the download of its file: the next request starts afresh (at once, not
        only after the clean-up that follows, or it would be told the old failure)."""
        key = (dl.wanted.project, dl.wanted.filename, dl.wanted.sha256)
        if self._downloads.get(key) is dl:
            del self._downloads[key]

    async def _from_backends(self, dl: Download, partial: PartialFile) -> Optional[Tuple[str, int]]:
        """Try our own references first, then CIDs others attested for these bytes (all of
        those within `hint_timeout` in total, so that a publisher's dead or slow CID never
        holds a reachable upstream for longer); (sha256, size) of a verified copy, or None
        (after logging why) to fall through to the upstream."""
        wanted = dl.wanted
        assert wanted.sha256 is not None and self._backends is not None
        refs = await self._store.own_refs_for(wanted.sha256)
        sources = [(backend, reference, False) for backend, reference in self._backends.readers_for(refs)]
        if self._references is not None:
            hints = await self._references.hints(wanted.project, wanted.filename, wanted.sha256)
            tried = {reference for _, reference, _ in sources}
            for cid in hints:
                if cid not in tried:
                    sources += [(backend, cid, True) for backend, cid in self._backends.readers_for({"cid": cid})]
        # References the caller knows (a snapshot's file by its path): not others' hints, no deadline.
        for ref in wanted.references:
            sources += [(backend, ref, False) for backend, ref in self._backends.readers_for({"cid": ref})]
        deadline = self._clock.seconds() + self._hint_timeout
        for backend, reference, hint in sources:
            remaining = deadline - self._clock.seconds() if hint else None
            if remaining is not None and remaining <= 0:
                logger.warning("%s: gave up on the CIDs others attested after %gs", wanted.filename, self._hint_timeout)
                break
            got = await self._try_backend(dl, partial, backend, reference, remaining)
            if got is not None:
                return got
        await partial.reset()
        dl.restart()
        return None

    async def _try_backend(
        self, dl: Download, partial: PartialFile, backend: Any, reference: str, timeout: Optional[float]
    ) -> Optional[Tuple[str, int]]:
        """One backend, one reference: the verified copy, or None (logged)."""
        wanted = dl.wanted
        assert wanted.sha256 is not None
        # A backend (or whoever recorded the reference) may send anything: no more bytes
        # than the file has, or than could ever be cached, reach the disk.
        limit = wanted.size if wanted.size is not None else self._cache.max_size
        await partial.reset()
        dl.restart()

        def on_data(data: bytes) -> None:
            if partial.received + len(data) > limit:
                raise TooLarge(f"more than the {limit} bytes expected")
            _write(partial, data)
            # Streamed as it comes, as from the upstream: the last byte waits for the hash
            # check, and a bad copy cuts off whoever was being sent it.
            dl.expose()

        timed_out: List[float] = []

        def on_timeout(result: Any, after: float) -> Any:
            timed_out.append(after)  # a backend may report the cancellation as its own error
            return result

        try:
            fetching = self._run_in_background(backend.fetch, wanted.sha256, reference, on_data, max_size=limit)
            if timeout is not None:
                fetching.addTimeout(timeout, self._clock, onTimeoutCancel=on_timeout)
            await self._yieldable(fetching)
            got, size = await partial.finish()
        except DiskFull:
            raise
        except Exception as e:
            if partial.error is not None:
                raise partial.error
            if timed_out:
                logger.warning(
                    "%s: %s gave nothing usable for %s within the time left for others' CIDs (%gs)",
                    wanted.filename, backend.describe(), reference, timed_out[0],
                )
            elif isinstance(e, (StorageError, TooLarge, StopTransfer)):
                logger.warning("%s: %s could not give %s: %s", wanted.filename, backend.describe(), reference, e)
            else:
                # Someone else's backend failing in its own way: the next source still gets its turn.
                logger.exception("%s: %s failed fetching %s", wanted.filename, backend.describe(), reference)
            return None
        if got != wanted.sha256 or (wanted.size is not None and size != wanted.size):
            logger.error(
                "%s: content of %s from %s rejected: sha256 %s (%d bytes), expected %s; trying the next source",
                wanted.filename, reference, backend.describe(), got, size, wanted.sha256,
            )
            return None
        logger.info("%s: fetched from %s as %s (%d bytes)", wanted.filename, backend.describe(), reference, size)
        return got, size

    async def _from_upstream(self, dl: Download, partial: PartialFile, reserved: List[int]) -> Tuple[str, int]:
        wanted = dl.wanted
        if wanted.not_from_upstream:
            raise UpstreamUnreachable(wanted.filename, wanted.not_from_upstream)
        if not wanted.url:
            raise UpstreamUnreachable(
                wanted.filename, "no upstream URL is known for this file and no storage backend could give it"
            )
        response = await self._upstream.open_file(wanted.url)
        length = self._response_length(wanted, response)
        if wanted.size is None:
            # Only now is the size known (or still not): check the disk for it.
            if not await self._cache.make_room(length or 0):
                self._upstream.abandon(response)
                raise InsufficientStorage(f"{wanted.filename}: not enough free disk space to cache it")
            reserved[0] += length or 0
            self._cache.reserve(length or 0)
        dl.length = length
        # Without a size from the index or the response, a file larger than the whole cache
        # could never be kept: stop there rather than fill the disk.
        limit = length if length is not None else self._cache.max_size
        reader = self._upstream.body_reader(wanted.url, lambda data: _write(partial, data), limit)
        partial.flow(reader.pause, reader.resume)
        dl.expose()
        response.deliverBody(reader)
        try:
            await self._yieldable(reader.done)
        except UpstreamError:
            if partial.error is not None:
                raise partial.error
            raise
        got, size = await partial.finish()
        if length is not None and size != length:
            raise ChecksumError(wanted.url, f"{wanted.filename}: got {size} bytes, expected {length}")
        if wanted.sha256 and got != wanted.sha256:
            logger.error("%s: sha256 mismatch, got %s, expected %s; not caching", wanted.filename, got, wanted.sha256)
            raise ChecksumError(wanted.url, f"{wanted.filename}: sha256 mismatch, got {got}, expected {wanted.sha256}")
        return got, size

    @staticmethod
    def _response_length(wanted: WantedFile, response: Any) -> Optional[int]:
        # Twisted's client keeps Content-Length out of `headers` (a connection-control
        # header) and gives it as `length`; reading the headers instead is why first
        # downloads used to go out chunked whenever the index had no size.
        length = response.length
        if not isinstance(length, int):
            return wanted.size
        if wanted.size is not None and wanted.size != length:
            raise ChecksumError(
                wanted.url,
                f"{wanted.filename}: size mismatch, upstream sends {length} bytes, index says {wanted.size}",
            )
        return length

    # -- stream-through when the disk is full ------------------------------------------------

    async def _relay(self, wanted: WantedFile) -> Responder:
        """The file from the upstream to this one client, not cached (the disk has no room)."""
        free = self._cache.free_bytes()
        if not wanted.url:
            raise InsufficientStorage(
                f"{wanted.filename}: no disk space to fetch it from a storage backend ({max(free, 0)} bytes free)"
            )
        self._disk_full(wanted, None)
        response = await self._upstream.open_file(wanted.url)
        length = self._response_length(wanted, response)
        limit = length if length is not None else self._cache.max_size
        return RelayResponder(
            lambda on_data: self._upstream.stream_body(wanted.url, response, on_data, limit),
            lambda: self._upstream.abandon(response),
            wanted.filename,
            content_type(wanted.filename),
            wanted.sha256,
            length,
        )

    def _disk_full(self, wanted: WantedFile, error: Optional[BaseException]) -> None:
        # One warning per episode, not one per file: the admin needs to know it started.
        if self._disk_full_since is None:
            self._disk_full_since = self._clock.seconds()
            logger.warning(
                "disk full in %s (%d bytes free): files are streamed through without caching until there "
                "is room again (first: %s%s)",
                self._cache.root,
                max(self._cache.free_bytes(), 0),
                wanted.filename,
                f": {error}" if error else "",
            )

    def _space_back(self) -> None:
        if self._disk_full_since is not None:
            logger.info(
                "disk space is back after %.1fs: caching files again", self._clock.seconds() - self._disk_full_since
            )
            self._disk_full_since = None

    # -- core metadata ---------------------------------------------------------------------

    def _queue_metadata(self, project: str, filename: str, sha256: str) -> None:
        if (project, filename) in self._metadata_queued:
            return
        self._metadata_queued.add((project, filename))
        self._metadata_queue.append((project, filename, sha256))
        if not self._metadata_running:
            self._metadata_running = True
            self._run_background("synapse_pypi_core_metadata", self._drain_metadata)

    async def _drain_metadata(self) -> None:
        # One wheel at a time: a thread each, and never a burst of them.
        try:
            while self._metadata_queue:
                project, filename, sha256 = self._metadata_queue.pop(0)
                try:
                    await self._extract_metadata(project, filename, sha256)
                except Exception:
                    logger.exception("extracting core metadata of %s failed", filename)
                finally:
                    self._metadata_queued.discard((project, filename))
        finally:
            self._metadata_running = False

    async def _extract_metadata(self, project: str, filename: str, sha256: str) -> None:
        name = filename + METADATA_SUFFIX
        if await self.cached_digest_of(project, name) is not None or not self._cache.has(sha256):
            return
        self._cache.acquire(sha256)  # not evicted while it is read
        try:
            data = await self._defer_to_thread(extract_verified, self._cache.blob_path(sha256), filename, sha256)
        except NoCoreMetadata as e:
            logger.info("no core metadata for %s/%s: %s", project, filename, e)
            return
        finally:
            self._cache.release(sha256)
        digest = hashlib.sha256(data).hexdigest()
        if not await self._cache.make_room(len(data)):
            logger.info("not storing core metadata of %s: no disk space", filename)
            return
        partial = self._cache.new_partial()
        try:
            await self._defer_to_thread(_write_new, partial, data)
            await self._cache.commit(partial, WantedFile(project, name, "", digest, len(data)), digest, len(data))
        except OSError as e:
            logger.warning("could not store core metadata of %s: %s", filename, e)
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            return
        logger.info("extracted core metadata of %s/%s (%d bytes, sha256 %s)", project, filename, len(data), digest)


def _write(partial: PartialFile, data: bytes) -> None:
    try:
        partial.write(data)
    except DiskFull as e:
        # Stops the transfer without a traceback; the download then fails with the disk's error.
        raise StopTransfer(f"disk full: {e}")


def _write_new(path: str, data: bytes) -> None:
    """In a thread: write a small file whole, or not at all."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            if n <= 0:
                raise DiskFull(errno.ENOSPC, "short write")
            view = view[n:]
    finally:
        os.close(fd)
