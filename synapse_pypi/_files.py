"""The read path of one file: local cache, else one streamed upstream download per file.

A download writes to a `*.partial` file while hashing each chunk as it arrives; every
client asking for that file meanwhile reads the partial file behind the writer (so
memory stays flat whatever the file size, and twenty clients cost one upstream
download). Only when length and sha256 match is the partial renamed into the
content-addressed cache; the last byte is held back from readers until then, so no
client ever receives the whole of a file that failed verification.
"""

import hashlib
import logging
import os
import secrets
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set

import attrs
from twisted.internet import defer

from synapse_pypi._backends import Backends
from synapse_pypi._context import fire_all
from synapse_pypi._store import Store
from synapse_pypi._upstream import (
    TooLarge,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamUnreachable,
)
from synapse_pypi.storage import StorageError

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
PARTIAL_SUFFIX = ".partial"
# Flush last-access times to the database at most this often (per blob).
TOUCH_INTERVAL_MS = 60_000


class ChecksumError(UpstreamBadResponse):
    """The bytes the upstream sent are not the file its index promised."""


@attrs.frozen
class WantedFile:
    """A file a client asked for, as the index page describes it."""

    project: str
    filename: str
    url: str
    sha256: Optional[str]
    size: Optional[int]
    # Why the upstream must not be asked for these bytes (its hash lost to the attested one).
    not_from_upstream: Optional[str] = None


class LocalCache:
    """The content-addressed local cache: `<root>/sha256/ab/cd/<hex>`, with LRU eviction.

    Args:
        root: the cache directory (created).
        store: the module's database tables.
        max_size: disk budget in bytes; least-recently-used blobs not in use are evicted.
        clock: returns milliseconds since the epoch.
    """

    def __init__(self, root: str, store: Store, max_size: int, clock: Any = None):
        self.root = root
        self.partial_dir = os.path.join(root, "partial")
        self._store = store
        self._max_size = max_size
        self._now_ms = clock or (lambda: int(time.time() * 1000))
        self._sizes: Dict[str, int] = {}
        self._last_access: Dict[str, int] = {}
        self._pending_touch: Dict[str, int] = {}
        self._in_use: Dict[str, int] = {}
        self.total_size = 0
        self._evicting = False
        # Blobs that must stay even when least recently used (e.g. not yet added to IPFS).
        self.keep: Any = lambda sha256: False
        # Bumped whenever a blob comes or goes (pages rendered from the cache's contents).
        self.generation = 0

    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "sha256", sha256[:2], sha256[2:4], sha256)

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

    async def evict(self) -> None:
        """Remove least-recently-used blobs until the cache fits its budget."""
        if self._evicting or self.total_size <= self._max_size:
            return
        self._evicting = True
        try:
            for sha256 in sorted(self._sizes, key=lambda s: self._last_access.get(s, 0)):
                if self.total_size <= self._max_size:
                    break
                if self.in_use(sha256) or self.keep(sha256):
                    continue
                await self.remove(sha256, reason="evicted (least recently used)")
        finally:
            self._evicting = False

    async def remove(self, sha256: str, reason: str) -> None:
        size = self._sizes.pop(sha256, None)
        if size is None:
            return
        self._last_access.pop(sha256, None)
        self._pending_touch.pop(sha256, None)
        self.total_size -= size
        self.generation += 1
        await self._store.remove_blob(sha256)
        try:
            os.unlink(self.blob_path(sha256))
        except FileNotFoundError:
            pass
        logger.info("%s: removed %s (%d bytes); cache now %d bytes", reason, sha256, size, self.total_size)


class Download:
    """One upstream download in flight, readable by any number of clients meanwhile."""

    def __init__(self, wanted: WantedFile, partial: str):
        self.wanted = wanted
        self.partial = partial
        self.written = 0
        # Content-Length of the upstream response, or the size the index promised.
        self.length: Optional[int] = wanted.size
        self.sha256: Optional[str] = None  # set once committed
        self.error: Optional[UpstreamError] = None
        self.finished = False
        # True once bytes may be streamed to clients (all but the last byte until the
        # whole file is verified, so a client never gets a complete wrong file).
        self.exposed = False
        self.source = "upstream"
        # True once a source started sending (or the download failed).
        self.responded = False
        # Bumped when a source is given up on and the next one starts again from byte 0:
        # a client that was already sent bytes of the old attempt must be cut off.
        self.attempt = 0
        self._waiters: List[defer.Deferred[None]] = []

    @property
    def ok(self) -> bool:
        return self.finished and self.error is None

    def readable(self) -> int:
        """How many bytes a client may be sent now: all but the last until verified."""
        if self.ok:
            return self.written
        if not self.exposed:
            return 0
        return max(0, self.written - 1)

    def wait(self, clock: Any = None, timeout: Optional[float] = None) -> "defer.Deferred[None]":
        """A Deferred that fires at the next progress (bytes written, success or failure),
        or after `timeout` seconds on `clock` if that comes first."""
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

            call = clock.callLater(timeout, expire)
            d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def restart(self, fd: int) -> None:
        """Drop what the last source wrote; the next source starts again at byte 0."""
        os.ftruncate(fd, 0)
        if self.written or self.exposed:
            self.attempt += 1
        self.written = 0
        self.exposed = False
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        fire_all(waiters)


class FileService:
    """Finds the bytes of a wanted file: local cache, else the single upstream download.

    Args:
        cache: the local cache.
        upstream: the upstream client.
        run_background: `ModuleApi.run_as_background_process`.
    """

    def __init__(
        self,
        cache: LocalCache,
        store: Store,
        upstream: UpstreamClient,
        run_background: Any,
        backends: Optional[Backends] = None,
    ):
        self._cache = cache
        self._store = store
        self._backends = backends
        # Called (in the background) with (project, filename, sha256, size) after a commit.
        self.on_committed: Optional[Any] = None
        # Called (awaited) with (project, filename, sha256) before the storage backends are
        # asked, once per download: references learnt elsewhere (attestations) are recorded.
        self.learn_references: Optional[Callable[[str, str, str], Awaitable[None]]] = None
        self._upstream = upstream
        self._run_background = run_background
        self._downloads: Dict[tuple, Download] = {}
        self.upstream_downloads = 0  # counter, for the admin API and logs
        self._tasks: Set[Any] = set()

    def cached_sha256(self, wanted: WantedFile) -> Optional[str]:
        if wanted.sha256 and self._cache.has(wanted.sha256):
            return wanted.sha256
        return None

    async def cached_digest_of(self, project: str, filename: str) -> Optional[str]:
        """The sha256 of our cached copy of a file, looked up by name."""
        sha256 = await self._store.file_digest(project, filename)
        return sha256 if sha256 and self._cache.has(sha256) else None

    async def cached_files(self, project: str) -> Dict[str, tuple]:
        """filename -> (sha256, size) of the files of `project` in the local cache."""
        rows = await self._store.cached_files(project)
        return {name: row for name, row in rows.items() if self._cache.has(row[0])}

    def download(self, wanted: WantedFile) -> Download:
        """The download of `wanted`, started now unless one is already in flight."""
        key = (wanted.project, wanted.filename)
        dl = self._downloads.get(key)
        if dl is not None:
            return dl
        dl = Download(wanted, self._cache.new_partial())
        self._downloads[key] = dl
        self.upstream_downloads += 1

        async def run() -> None:
            try:
                await self._fetch(dl)
            finally:
                self._downloads.pop(key, None)

        # A background process, not the first client's request: the download finishes
        # (and warms the cache) even if that client goes away.
        self._run_background("synapse_pypi_download", run)
        return dl

    async def _fetch(self, dl: Download) -> None:
        wanted = dl.wanted
        fd = os.open(dl.partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            got = None
            if wanted.sha256 and self._backends is not None:
                if self.learn_references is not None:
                    await self.learn_references(wanted.project, wanted.filename, wanted.sha256)
                got = await self._from_backends(dl, fd)
            if got is None:
                got = await self._from_upstream(dl, fd)
            os.close(fd)
            fd = -1
            await self._cache.commit(dl.partial, wanted, got, dl.written)
            dl.sha256 = got
            dl.finished = True
            dl._notify()
            if self._backends is not None:
                await self._backends.committed(got)
            if self.on_committed is not None:
                self._run_background(
                    "synapse_pypi_on_committed", self.on_committed, wanted.project, wanted.filename, got, dl.written
                )
        except UpstreamError as e:
            logger.warning("download of %s failed: %s", wanted.url or wanted.filename, e)
            self._fail(dl, e)
        except Exception as e:
            logger.exception("download of %s failed", wanted.url or wanted.filename)
            self._fail(dl, UpstreamBadResponse(wanted.url, f"internal error: {e.__class__.__name__}"))
        finally:
            if fd >= 0:
                os.close(fd)

    async def _from_backends(self, dl: Download, fd: int) -> Optional[str]:
        """Try each storage backend that has a reference; the sha256 of a verified
        copy, or None (after logging why) to fall through to the upstream."""
        wanted = dl.wanted
        assert wanted.sha256 is not None and self._backends is not None
        refs = await self._store.refs_for(wanted.sha256)
        # A backend (or whoever recorded the reference) may send anything: no more bytes
        # than the file has, or than could ever be cached, reach the disk.
        limit = wanted.size if wanted.size is not None else self._cache.max_size
        for backend, reference in self._backends.readers_for(refs):
            hasher = hashlib.sha256()
            dl.restart(fd)
            dl.source = backend.describe()

            def on_data(data: bytes, hasher: Any = hasher) -> None:
                if dl.written + len(data) > limit:
                    raise TooLarge(f"more than the {limit} bytes expected")
                hasher.update(data)
                os.pwrite(fd, data, dl.written)
                dl.written += len(data)
                # Streamed as it comes, as from the upstream: the last byte waits for the
                # hash check, and a bad copy cuts off whoever was being sent it.
                dl.exposed = True
                dl.responded = True
                dl._notify()

            try:
                await backend.fetch(wanted.sha256, reference, on_data, max_size=limit)
            except (StorageError, TooLarge) as e:
                logger.warning("%s: %s could not give %s: %s", wanted.filename, backend.describe(), reference, e)
                continue
            except Exception:
                # Someone else's backend failing in its own way: the next source still gets its turn.
                logger.exception("%s: %s failed fetching %s", wanted.filename, backend.describe(), reference)
                continue
            got = hasher.hexdigest()
            if got != wanted.sha256 or (wanted.size is not None and dl.written != wanted.size):
                logger.error(
                    "%s: content of %s from %s rejected: sha256 %s (%d bytes), expected %s; trying the next source",
                    wanted.filename,
                    reference,
                    backend.describe(),
                    got,
                    dl.written,
                    wanted.sha256,
                )
                continue
            logger.info("%s: fetched from %s as %s (%d bytes)", wanted.filename, backend.describe(), reference, dl.written)
            return got
        dl.restart(fd)
        return None

    async def _from_upstream(self, dl: Download, fd: int) -> str:
        wanted = dl.wanted
        if wanted.not_from_upstream:
            raise UpstreamUnreachable(wanted.filename, wanted.not_from_upstream)
        if not wanted.url:
            raise UpstreamUnreachable(
                wanted.filename, "no upstream URL is known for this file and no storage backend could give it"
            )
        hasher = hashlib.sha256()
        response = await self._upstream.open_file(wanted.url)
        lengths = response.headers.getRawHeaders("content-length") or []
        if lengths and lengths[0].isdigit():
            length = int(lengths[0])
            if wanted.size is not None and wanted.size != length:
                raise ChecksumError(
                    wanted.url,
                    f"{wanted.filename}: size mismatch, upstream sends {length} bytes, index says {wanted.size}",
                )
            dl.length = length
        dl.exposed = True
        dl.responded = True
        dl._notify()

        def on_data(data: bytes) -> None:
            hasher.update(data)
            os.write(fd, data)
            dl.written += len(data)
            dl._notify()

        # Without a size from the index or the response, a file larger than the whole cache
        # could never be kept: stop there rather than fill the disk.
        limit = dl.length if dl.length is not None else self._cache.max_size
        await self._upstream.read_body(wanted.url, response, on_data, max_size=limit)
        got = hasher.hexdigest()
        if dl.length is not None and dl.written != dl.length:
            raise ChecksumError(wanted.url, f"{wanted.filename}: got {dl.written} bytes, expected {dl.length}")
        if wanted.sha256 and got != wanted.sha256:
            logger.error("%s: sha256 mismatch, got %s, expected %s; not caching", wanted.filename, got, wanted.sha256)
            raise ChecksumError(
                wanted.url, f"{wanted.filename}: sha256 mismatch, got {got}, expected {wanted.sha256}"
            )
        return got

    def _fail(self, dl: Download, err: UpstreamError) -> None:
        dl.error = err
        dl.finished = True
        try:
            os.unlink(dl.partial)
        except FileNotFoundError:
            pass
        dl.responded = True
        dl._notify()
