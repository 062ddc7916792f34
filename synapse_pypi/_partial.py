"""A download's `*.partial` file, written and hashed off the reactor thread.

Bytes arrive on the reactor (from the upstream or a storage backend) and are queued; one
writer coroutine hands each batch of queued chunks to a thread, which hashes and writes
them in order. So neither disk writes nor sha256 of a multi-GB wheel ever hold up the
reactor, and a slow disk cannot make memory grow without bound: above `high_water` queued
bytes the source is asked to pause, below `low_water` to go on.

Readers (the clients streamed a file while it downloads) may read up to `durable`: the
bytes the thread has written. A write the disk refuses (ENOSPC, EDQUOT, a short write that
makes no progress) fails the file with `DiskFull`; the caller throws the partial away.
"""

import errno
import hashlib
import logging
import os
from typing import Any, Awaitable, Callable, List, Optional, Tuple

from twisted.internet import defer

from synapse_pypi._context import fire_all

logger = logging.getLogger(__name__)

HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(OSError):
    """The disk took fewer bytes than it was given: nothing of this file may be kept."""


class PartialFile:
    """One `*.partial` file of a download, written in order by a thread.

    Args:
        path: the file to create (it must not exist).
        defer_to_thread: `await defer_to_thread(fn, *args)` runs `fn` in a thread.
        yieldable: wraps a Deferred before it is awaited (Synapse's log contexts).
        on_progress: called on the reactor whenever more bytes are durable, or the file failed.
        high_water / low_water: queued bytes at which the source is paused / resumed.
    """

    def __init__(
        self,
        path: str,
        defer_to_thread: Callable[..., Awaitable[Any]],
        yieldable: Callable[[Any], Any],
        on_progress: Callable[[], None],
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
    ):
        self.path = path
        self._defer_to_thread = defer_to_thread
        self._yieldable = yieldable
        self._on_progress = on_progress
        self._high = high_water
        self._low = low_water
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self._hasher = hashlib.sha256()
        # Bytes handed to `write` (for this source) and bytes the thread put on disk.
        self.received = 0
        self.durable = 0
        self.error: Optional[BaseException] = None
        self._queue: List[bytes] = []
        self._queued = 0
        self._writing = False
        self._wake: Optional[defer.Deferred[None]] = None
        self._idle: List[defer.Deferred[None]] = []
        self._pause: Optional[Callable[[], None]] = None
        self._resume: Optional[Callable[[], None]] = None
        self._paused = False
        self._closed = False
        self._task: Optional[defer.Deferred[None]] = None

    # -- the reactor side --------------------------------------------------------------

    def flow(self, pause: Optional[Callable[[], None]], resume: Optional[Callable[[], None]]) -> None:
        """How to slow the current source down (None: it cannot be slowed)."""
        self._pause, self._resume = pause, resume
        self._paused = False

    def write(self, data: bytes) -> None:
        """Queue `data` for the writer; it is on disk once `durable` has grown past it.

        Raises:
            DiskFull: an earlier write failed (the source should stop).
        """
        if self.error is not None:
            raise self.error
        if not data:
            return
        self._queue.append(data)
        self._queued += len(data)
        self.received += len(data)
        if self._queued > self._high and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()
        self._kick()

    def start(self, run_in_background: Callable[..., Any]) -> None:
        """Start the writer coroutine (in the caller's log context: `stopped` must be
        awaited before that context ends)."""
        self._task = run_in_background(self._writer)

    async def stopped(self) -> None:
        """Close the file (if not yet) and wait until the writer coroutine has returned."""
        self.close()
        if self._task is not None:
            # run_in_background's Deferred fires once the coroutine is off the stack.
            await self._yieldable(self._task)

    async def settle(self) -> None:
        """Wait until every queued byte is on disk.

        Raises:
            DiskFull: or another OSError from the writer.
        """
        while self._writing or self._queue:
            if self.error is not None:
                break
            d: defer.Deferred[None] = defer.Deferred()
            self._idle.append(d)
            await self._yieldable(d)
        if self.error is not None:
            raise self.error

    async def reset(self) -> None:
        """Forget what the last source wrote: the next one starts again at byte 0."""
        try:
            await self.settle()
        except OSError:
            pass  # the next source gets a clean file either way
        await self._defer_to_thread(os.ftruncate, self.fd, 0)
        self._hasher = hashlib.sha256()
        self.received = self.durable = 0
        self.error = None
        self._queue, self._queued = [], 0
        self.flow(None, None)

    async def finish(self) -> Tuple[str, int]:
        """(sha256 hex, length) of everything written, once it is all on disk."""
        await self.settle()
        return self._hasher.hexdigest(), self.durable

    def close(self) -> None:
        """Stop the writer and close the file (it stays on disk: commit or `discard` it).

        Bytes still queued are dropped. A write in flight finishes first: the descriptor is
        closed only after it, so a reused descriptor number never receives our bytes."""
        if self._closed:
            return
        self._closed = True
        self._queue, self._queued = [], 0
        if not self._writing:
            self._close_fd()
        self._kick()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """Close and remove the file."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _kick(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            fire_all([wake])

    # -- the writer --------------------------------------------------------------------

    async def _writer(self) -> None:
        while not self._closed:
            if not self._queue or self.error is not None:
                # Set before telling the idle waiters: one of them may write (or close) at once.
                wake = self._wake = defer.Deferred()
                idle, self._idle = self._idle, []
                fire_all(idle)
                await self._yieldable(wake)
                continue
            batch, self._queue = self._queue, []
            size = sum(len(b) for b in batch)
            self._writing = True
            try:
                await self._defer_to_thread(_write_all, self.fd, self.durable, batch, self._hasher)
            except OSError as e:
                self.error = e if isinstance(e, DiskFull) or e.errno not in _DISK_FULL else DiskFull(e.errno, str(e))
                logger.warning("writing %s failed after %d bytes: %s", self.path, self.durable, e)
            else:
                self.durable += size
            finally:
                self._writing = False
                self._queued = max(0, self._queued - size)
            if self._closed:
                break
            if self._paused and self._queued < self._low and self._resume is not None:
                self._paused = False
                self._resume()
            self._on_progress()
        self._close_fd()
        idle, self._idle = self._idle, []
        fire_all(idle)


def _write_all(fd: int, offset: int, batch: List[bytes], hasher: Any) -> None:
    """In a thread: hash and write `batch` at `offset`, checking every write went in whole."""
    for chunk in batch:
        hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:
                raise DiskFull(errno.ENOSPC, f"short write: the disk took 0 of {len(view)} bytes")
            offset += n
            view = view[n:]
