"""Responders: one streaming answer for a file, whichever source it comes from.

The file chain (`_files.FileChain`) hands the web layer one `Responder`, as Synapse's
`MediaStorage.fetch_media` hands its media resource one (`synapse/media/_base.py`). The
resource decides status and headers from the responder's attributes (length, type, sha256,
whether it can serve a byte range) and then calls `write_to`, which streams the body into
a `Consumer` (the HTTP response) and resolves once the body is complete or given up on.
Every responder is a context manager: leaving it releases what it holds.

* `FileResponder`: a committed file of the local cache. On plain TCP it is sent with
  `sendfile(2)`, from the page cache straight into the socket; Twisted's own path copies
  every 64 KiB through Python (about half of what the disk and loopback give). One download
  at a time sends from the reactor thread (a thread hop per burst would only slow it); while
  several do, each burst runs in the reactor's thread pool, so that the kernel's copying is
  spread over the CPUs instead of queueing on the reactor. Elsewhere (TLS) it is read in
  large chunks.
* `TailResponder`: a file still downloading, read from its partial file behind the writer,
  all but its last byte until the whole file is verified. If the download fails, or the
  source being relayed is rejected for another, the connection is cut off: a client never
  gets a complete wrong file nor bytes of two sources spliced together.
* `RelayResponder`: streamed from the upstream without touching the disk (used when the
  disk has no room), hashed on the way, its last byte likewise held back.
* `HeadResponder`: what is known without fetching anything, for `HEAD`.
"""

import errno
import hashlib
import logging
import os
from types import TracebackType
from typing import Any, Callable, Optional, Protocol, Tuple, Type

from twisted.internet import defer, tcp, threads
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from synapse_pypi._context import fire_all

logger = logging.getLogger(__name__)

# Bytes per read where the file goes through Python (TLS, or no sendfile).
READ_CHUNK = 256 * 1024
# At most this much per sendfile burst (one thread job), so that many downloads share the
# threads fairly.
SENDFILE_TURN = 8 * 1024 * 1024
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK)


class RawSocket(Protocol):
    """The client's socket, for `sendfile(2)`: only where nothing else sits in between."""

    def fileno(self) -> int:
        """A descriptor of the socket that stays valid until `release` (a duplicate: a thread
        may still be sending when the connection is closed)."""
        ...

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        """Run `fn(*args)` in a thread; the Deferred fires on the reactor."""
        ...

    def release(self) -> None: ...

    def busy(self) -> bool:
        """Whether bytes written the ordinary way (the headers) still wait to be sent."""
        ...

    def when_writable(self) -> None:
        """Have the producer's `resumeProducing` called once the socket takes more."""
        ...

    def sent(self, n: int) -> None:
        """Account for `n` body bytes sent behind the transport's back (access log)."""
        ...


class Consumer(Protocol):
    """Where a responder writes its body: the HTTP response, headers already set."""

    def register(self, producer: Any) -> None: ...

    def unregister(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None:
        """Cut the connection: the body sent so far must not pass for a whole one."""
        ...

    def gone(self) -> bool: ...

    def raw_socket(self) -> Optional[RawSocket]: ...


class Progress(Protocol):
    """A download in flight, as a `TailResponder` follows it."""

    attempt: int
    error: Optional[BaseException]
    source: str  # where the bytes come from: "backend" or "upstream"

    def readable(self) -> int:
        """How many bytes may be sent now."""
        ...

    def complete_length(self) -> Optional[int]:
        """The whole file's length once it is verified and committed, else None."""
        ...

    def failed(self) -> bool: ...

    def wait(self) -> "defer.Deferred[None]":
        """Fires at the next progress (bytes, success or failure)."""
        ...


class BodyReader(Protocol):
    """An upstream body being read (`_upstream._BodyReader`): `done` fires at its end."""

    done: "defer.Deferred[None]"
    transport: Any


class Responder:
    """One streaming answer. Attributes are what the web layer needs for the headers.

    Attributes:
        content_type: the media type to send.
        length: the body's length, if known.
        sha256: the file's hex sha256 (verified for a complete file, expected otherwise).
        verified: the whole file is here and verified (cacheable, conditional requests).
        ranges: `write_to` can send a byte range.
        mtime: modification time, for Last-Modified.
        cache_path: the file's path relative to the cache directory, for X-Accel-Redirect.
        source: where the body comes from, for metrics: "cache", "backend", "upstream", or
            None (no body).
    """

    content_type = "application/octet-stream"
    length: Optional[int] = None
    sha256: Optional[str] = None
    verified = False
    ranges = False
    mtime: Optional[float] = None
    cache_path: Optional[str] = None
    source: Optional[str] = None

    def write_to(self, consumer: Consumer, first: int = 0, last: Optional[int] = None) -> "defer.Deferred[None]":
        """Stream the body (bytes `first` to `last` inclusive, where `ranges`).

        Returns:
            A Deferred that fires once the response is finished or aborted, or the client
            went away. It never fails: a failure after the first byte aborts the connection.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the responder holds (descriptors, in-use marks, connections)."""

    def __enter__(self) -> "Responder":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


class HeadResponder(Responder):
    """What the index knows of a file not fetched yet: enough for `HEAD`, no body."""

    def __init__(self, content_type: str, length: Optional[int], sha256: Optional[str]):
        self.content_type = content_type
        self.length = length
        self.sha256 = sha256

    def write_to(self, consumer: Consumer, first: int = 0, last: Optional[int] = None) -> "defer.Deferred[None]":
        consumer.finish()
        return defer.succeed(None)


class _OpenFile(Responder):
    """A responder that streams from a descriptor it owns (closed, once, by `close`)."""

    def __init__(self, fd: int, on_close: Callable[[], None] = lambda: None):
        self._fd = fd
        self._on_close = on_close
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            self._on_close()


class FileResponder(_OpenFile):
    """A committed, verified file of the local cache, open already (so an eviction or a
    purge meanwhile cannot pull it away mid-response).

    Args:
        fd: the open file (closed by `close`).
        on_close: called once when the responder is done (releases the in-use mark).
    """

    verified = True
    ranges = True
    source: Optional[str] = "cache"

    def __init__(
        self,
        fd: int,
        sha256: str,
        content_type: str,
        cache_path: Optional[str],
        on_close: Callable[[], None] = lambda: None,
    ):
        super().__init__(fd, on_close)
        st = os.fstat(fd)
        self.length = st.st_size
        self.mtime = st.st_mtime
        self.sha256 = sha256
        self.content_type = content_type
        self.cache_path = cache_path

    def write_to(self, consumer: Consumer, first: int = 0, last: Optional[int] = None) -> "defer.Deferred[None]":
        assert self.length is not None
        end = self.length if last is None else last + 1
        return _Streamer(consumer, self._fd, first, _Fixed(end), self.sha256 or "").start()


class TailResponder(_OpenFile):
    """A file still being downloaded, read from its partial file behind the writer.

    Args:
        progress: the download.
        fd: the partial file, open for reading (closed by `close`).
    """

    def __init__(self, progress: Progress, fd: int, name: str, content_type: str, length: Optional[int],
                 sha256: Optional[str]):  # fmt: skip
        super().__init__(fd)
        self._progress = progress
        self._name = name
        self.content_type = content_type
        self.length = length
        self.sha256 = sha256

    # A property: the download may move on to another source while this streams.
    @property
    def source(self) -> Optional[str]:  # type: ignore[override]  # read-only here, on purpose
        return self._progress.source

    def write_to(self, consumer: Consumer, first: int = 0, last: Optional[int] = None) -> "defer.Deferred[None]":
        return _Streamer(consumer, self._fd, 0, _Follow(self._progress), self._name).start()


class RelayResponder(Responder):
    """Streams the upstream's body to one client without storing it, hashed on the way.

    Args:
        start_body: `start_body(on_data)` starts reading the body into `on_data` and returns
            the reader (its `done` fires at the end, its `transport` pauses the upstream).
        abandon: drops the upstream response unread (when the body is never asked for).
        name: the file name, for logs.
        sha256: the hash the bytes must have, or None.
        length: the length they must have, or None.
    """

    def __init__(
        self,
        start_body: Callable[[Callable[[bytes], None]], BodyReader],
        abandon: Callable[[], None],
        name: str,
        content_type: str,
        sha256: Optional[str],
        length: Optional[int],
    ):
        self._start_body = start_body
        self._abandon = abandon
        self._name = name
        self.content_type = content_type
        self.sha256 = sha256
        self.length = length
        self.source = "upstream"
        self._started = False

    def write_to(self, consumer: Consumer, first: int = 0, last: Optional[int] = None) -> "defer.Deferred[None]":
        self._started = True
        return _Relay(consumer, self).start()

    def close(self) -> None:
        if not self._started:
            self._started = True
            self._abandon()


# -- feeds: how far a streamer may read ----------------------------------------------------


class _Fixed:
    """A complete file: everything up to `end` may be sent now."""

    def __init__(self, end: int):
        self._end = end

    def limit(self) -> int:
        return self._end

    def end(self) -> Optional[int]:
        return self._end

    def broken(self, sent: int) -> Optional[str]:
        return None

    def wait(self) -> "defer.Deferred[None]":
        return defer.succeed(None)  # never asked: limit() == end()


class _Follow:
    """A download in flight: what it has verified or may expose so far."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._attempt = progress.attempt

    def limit(self) -> int:
        return self._progress.readable()

    def end(self) -> Optional[int]:
        return self._progress.complete_length()

    def broken(self, sent: int) -> Optional[str]:
        if self._progress.attempt != self._attempt:
            if sent:
                # The source we relayed was rejected; what the client has is not the file.
                return "the source being relayed was rejected for another one"
            self._attempt = self._progress.attempt
        if self._progress.failed():
            return f"the download failed ({self._progress.error})"
        return None

    def wait(self) -> "defer.Deferred[None]":
        return self._progress.wait()


@implementer(IPushProducer)
class _Streamer:
    """Sends a file's bytes from `start` to a consumer as its feed allows, then finishes
    the response (or aborts it when the feed says the bytes sent are no good).

    A push producer: it writes while the client keeps up, stops when the transport pauses
    it, waits on the feed when it has caught up with a download, and never writes to a
    client that has gone.
    """

    # Responses being sent with sendfile right now, in this process.
    sending = 0

    def __init__(self, consumer: Consumer, fd: int, start: int, feed: Any, name: str):
        self._consumer = consumer
        self._fd = fd
        self._pos = start
        self._sent = 0
        self._feed = feed
        self._name = name
        self._sock = consumer.raw_socket()
        self._job: Optional[defer.Deferred[Any]] = None
        self._paused = False
        self._pumping = False
        self._waiting = False
        self._over = False
        self._done: defer.Deferred[None] = defer.Deferred()

    def start(self) -> "defer.Deferred[None]":
        if self._sock is not None:
            _Streamer.sending += 1
        self._consumer.register(self)
        self._pump()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        # The client went away: nothing more to send, nobody to tell.
        self._end(None)

    def _on_progress(self, _: Any) -> None:
        self._waiting = False
        self._pump()

    def _pump(self) -> None:
        if self._pumping or self._over:
            return
        self._pumping = True
        try:
            while not self._paused and not self._over:
                if self._consumer.gone():
                    self._end(None)
                    return
                why = self._feed.broken(self._sent)
                if why:
                    self._end(False, why)
                    return
                limit = self._feed.limit()
                if self._pos < limit:
                    if self._send(limit) is None:
                        return  # waiting for a burst, for the socket, or the client is gone
                    continue
                end = self._feed.end()
                if end is not None and self._pos >= end:
                    self._end(True)
                    return
                if not self._waiting:
                    self._waiting = True
                    self._feed.wait().addCallback(self._on_progress)
                return
        except Exception:
            logger.exception("streaming %s failed", self._name)
            self._end(False, "internal error")
        finally:
            self._pumping = False

    def _send(self, limit: int) -> Optional[int]:
        """Send what may be sent now; the count sent, or None to wait (or stop)."""
        if self._sock is not None:
            if self._job is not None:
                return None
            if self._sock.busy():
                self._sock.when_writable()
                return None
            args = (self._sock.fileno(), self._fd, self._pos, min(limit - self._pos, SENDFILE_TURN))
            if _Streamer.sending <= 1:
                result = _sendfile_burst(*args)
                n = self._burst(result)
                if n is not None and result[1] == "more":
                    self._sock.when_writable()  # the reactor's other work gets a turn between bursts
                    return None
                return n
            job = self._sock.in_thread(_sendfile_burst, *args)
            done: list = []
            job.addBoth(done.append)
            if done:  # it ran at once
                return self._burst(done[0])
            self._job = job
            job.addCallback(lambda _: self._burst_done(done[0]))
            return None
        data = os.pread(self._fd, min(READ_CHUNK, limit - self._pos), self._pos)
        if not data:
            raise OSError(f"{self._name}: file shorter than expected at byte {self._pos}")
        self._consumer.write(data)
        return self._sent_bytes(len(data))

    def _sent_bytes(self, n: int) -> int:
        self._pos += n
        self._sent += n
        return n

    def _burst_done(self, result: Any) -> None:
        self._job = None
        if self._over:
            self._release()
            return
        if self._burst(result) is not None:
            self._pump()

    def _burst(self, result: Any) -> Optional[int]:
        """Account for a sendfile burst; the count sent, or None to wait (or stop)."""
        if isinstance(result, Failure):
            logger.error("sendfile of %s failed: %s", self._name, result.getErrorMessage())
            self._end(False, "internal error")
            return None
        assert self._sock is not None
        sent, state = result
        self._sock.sent(sent)
        self._sent_bytes(sent)
        if state == "again":
            self._sock.when_writable()
            return None
        if state == "gone":
            self._end(None)  # the client reset or closed the connection
            return None
        if state == "short":
            self._end(False, f"file shorter than expected at byte {self._pos}")
            return None
        if state == "unsupported":
            logger.info("sendfile not possible for %s; sending through Python", self._name)
            self._release()
        return sent

    def _release(self) -> None:
        if self._sock is not None:
            self._sock.release()
            self._sock = None
            _Streamer.sending -= 1

    def _end(self, complete: Optional[bool], why: str = "") -> None:
        if self._over:
            return
        self._over = True
        if self._job is None:
            self._release()  # else once the burst in flight has returned
        self._consumer.unregister()
        if complete is True:
            self._consumer.finish()
        elif complete is False:
            logger.warning("aborting response for %s after %d bytes: %s", self._name, self._sent, why)
            self._consumer.abort()
        fire_all([self._done])


def _sendfile_burst(sock: int, fd: int, pos: int, count: int) -> Tuple[int, str]:
    """In a thread: sendfile(2) up to `count` bytes of `fd` from `pos` to the (non-blocking)
    socket. (bytes sent, why it stopped): "more", "again" (the socket is full), "gone" (the
    client went away), "short" (the file ended early), "unsupported"."""
    sent = 0
    while sent < count:
        try:
            n = os.sendfile(sock, fd, pos + sent, count - sent)
        except BlockingIOError:
            return sent, "again"
        except OSError as e:
            return sent, "unsupported" if e.errno in _NO_SENDFILE else "gone"
        if n == 0:
            return sent, "short"
        sent += n
    return sent, "more"


@implementer(IPushProducer)
class _Relay:
    """The producer of a `RelayResponder`: upstream bytes to the client, one behind."""

    def __init__(self, consumer: Consumer, responder: RelayResponder):
        self._consumer = consumer
        self._r = responder
        self._hasher = hashlib.sha256()
        self._received = 0
        self._held = b""
        self._reader: Optional[BodyReader] = None
        self._over = False
        self._done: defer.Deferred[None] = defer.Deferred()

    def start(self) -> "defer.Deferred[None]":
        self._consumer.register(self)
        self._reader = self._r._start_body(self._on_data)
        self._reader.done.addCallbacks(self._body_done, self._body_failed)
        return self._done

    def _on_data(self, data: bytes) -> None:
        if self._over:
            return
        self._hasher.update(data)
        self._received += len(data)
        # All but the last byte so far: the last waits for the hash check.
        out, self._held = self._held + data[:-1], data[-1:]
        if out:
            self._consumer.write(out)

    def pauseProducing(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.resumeProducing()

    def stopProducing(self) -> None:
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.stopProducing()
        self._end(None)

    def _body_done(self, _: Any) -> None:
        got = self._hasher.hexdigest()
        r = self._r
        if r.length is not None and self._received != r.length:
            self._end(False, f"got {self._received} bytes, expected {r.length}")
        elif r.sha256 and got != r.sha256:
            logger.error("%s: sha256 mismatch, got %s, expected %s (streamed, not cached)", r._name, got, r.sha256)
            self._end(False, "sha256 mismatch")
        else:
            if self._held and not self._consumer.gone():
                self._consumer.write(self._held)
            self._end(True)

    def _body_failed(self, failure: Failure) -> None:
        self._end(False, failure.getErrorMessage())

    def _end(self, complete: Optional[bool], why: str = "") -> None:
        if self._over:
            return
        self._over = True
        self._consumer.unregister()
        if not self._consumer.gone():
            if complete is True:
                self._consumer.finish()
            elif complete is False:
                logger.warning("aborting streamed-through %s after %d bytes: %s", self._r._name, self._received, why)
                self._consumer.abort()
        fire_all([self._done])


# -- the Twisted side ----------------------------------------------------------------------


class RequestConsumer:
    """A `Consumer` over a `twisted.web` request (Synapse's `SynapseRequest`)."""

    def __init__(self, request: Any):
        self._request = request

    def register(self, producer: Any) -> None:
        self._request.registerProducer(producer, True)

    def unregister(self) -> None:
        if not self.gone():
            self._request.unregisterProducer()

    def write(self, data: bytes) -> None:
        if not self.gone():
            self._request.write(data)

    def finish(self) -> None:
        if not self.gone():
            self._request.finish()

    def abort(self) -> None:
        if not self.gone():
            self._request.transport.abortConnection()

    def gone(self) -> bool:
        return bool(self._request.finished or getattr(self._request, "_disconnected", False))

    def raw_socket(self) -> Optional[RawSocket]:
        channel = getattr(self._request, "channel", None)
        transport = getattr(channel, "transport", None)
        # Plain TCP only, with the HTTP channel as the transport's only producer: under TLS
        # the bytes must be encrypted, and anything else between us and the socket would be
        # bypassed.
        if (
            not isinstance(transport, tcp.Server)
            or ISSLTransport.providedBy(transport)
            or getattr(transport, "producer", None) is not channel
        ):
            return None
        # The headers go out the ordinary way first.
        self._request.write(b"")
        return _TransportSocket(transport, self._request)


class _TransportSocket:
    """sendfile(2) beside a Twisted TCP transport.

    Body bytes go to the socket directly while the transport's own buffer is empty. To learn
    when the socket takes more, the transport is made to watch for writability and to resume
    its producer (the HTTP channel, which resumes ours) once it has nothing of its own left
    to send: `FileDescriptor.doWrite` does exactly that for a paused producer.
    """

    def __init__(self, transport: Any, request: Any):
        self._t = transport
        self._request = request
        self._fd = os.dup(transport.fileno())

    def fileno(self) -> int:
        return self._fd

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> "defer.Deferred[Any]":
        # Not Synapse's defer_to_thread: this runs from reactor callbacks (no log context),
        # and the burst logs nothing.
        reactor = self._t.reactor
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def busy(self) -> bool:
        t = self._t
        return bool(len(t.dataBuffer) - t.offset > 0 or t._tempDataLen > 0)

    def when_writable(self) -> None:
        self._t.producerPaused = True
        self._t.startWriting()

    def sent(self, n: int) -> None:
        self._request.sentLength += n
