"""The upstream index, spoken with treq: conditional page GETs and streamed file bodies.

Every failure is one of the `UpstreamError` subclasses below, each of which knows the
HTTP status a client of ours should get for it (404, 502 or 504) and says in one line
what went wrong and with which upstream URL.
"""

import logging
from typing import Any, Callable, Optional

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet import error as internet_error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import HTTPConnectionPool, ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IResponse

from synapse_pypi._addresses import AddressPolicy
from synapse_pypi._guarded_agent import ForbiddenAddress, GuardedAgent
from synapse_pypi._metrics import upstream_timer
from synapse_pypi._version import __version__

logger = logging.getLogger(__name__)

USER_AGENT = f"synapse-pypi/{__version__}"

# PEP 691: ask for JSON first, then the HTML forms; the parser takes whichever comes.
PAGE_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, "
    "application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.1"
)


class UpstreamError(Exception):
    """The upstream could not give us what we asked for. `http_status` is ours to send."""

    http_status = 502

    def __init__(self, url: str, reason: str):
        super().__init__(f"upstream {url}: {reason}")
        self.url = url
        self.reason = reason


class UpstreamNotFound(UpstreamError):
    http_status = 404


class UpstreamTimeout(UpstreamError):
    http_status = 504


class UpstreamBadResponse(UpstreamError):
    """A status we cannot use, a reset, a truncated or over-long body."""


class UpstreamTooLarge(UpstreamBadResponse):
    """A body larger than we accept (a page over max_page_size, a file over its size)."""


class NobodyWaits(UpstreamError):
    """The page was being fetched for requests that have all gone: the work stopped."""


class UpstreamUnreachable(UpstreamError):
    """Could not connect at all: the upstream is down (serve from cache if we can)."""


class UpstreamForbidden(UpstreamError):
    """A URL from the upstream (or a redirect) leads to an address we do not fetch from:
    loopback, private, link-local, ... (see _addresses.py). Nothing was sent there."""


@attrs.frozen
class PageResponse:
    body: bytes
    content_type: str
    etag: Optional[str]
    last_modified: Optional[str]
    url: str  # after redirects, for resolving relative links


class NotModified(Exception):
    """The upstream answered 304 to a conditional request."""


class _Timeout(Exception):
    pass


class StopTransfer(Exception):
    """Raised by a body consumer that cannot take more (the disk is full, say): the
    transfer stops there, without a traceback in the log."""


class TooLarge(StopTransfer):
    """Raised by a body consumer that has had more bytes than the file can have."""


class _BodyReader(Protocol):
    """Feeds a response body to `on_data`, with an idle timeout and a size cap.

    `done` fires with None on a complete body and fails with an UpstreamError on
    anything else (reset, truncation, idle timeout, too large).
    """

    def __init__(
        self,
        url: str,
        on_data: Callable[[bytes], None],
        clock: IReactorTime,
        idle_timeout: float,
        max_size: Optional[int],
    ):
        self.url = url
        self.on_data = on_data
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_size = max_size
        self.received = 0
        self.done: defer.Deferred[None] = defer.Deferred()
        self._timer: Optional[IDelayedCall] = None
        self._failed: Optional[UpstreamError] = None

    def connectionMade(self) -> None:
        self._arm()

    def pause(self) -> None:
        """Stop reading for now (the consumer is behind); the idle timeout waits too."""
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]  # the response's transport is a producer
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()  # type: ignore[attr-defined]  # the response's transport is a producer
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.idle_timeout)
        else:
            self._timer = self.clock.callLater(self.idle_timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self._fail(UpstreamTimeout(self.url, f"no data for {self.idle_timeout:g}s while reading the body"))

    def _fail(self, err: UpstreamError) -> None:
        if self._failed is None and not self.done.called:
            self._failed = err
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]  # the response's transport is a producer

    def dataReceived(self, data: bytes) -> None:
        if self._failed is not None:
            return
        self.received += len(data)
        if self.max_size is not None and self.received > self.max_size:
            self._fail(UpstreamTooLarge(self.url, f"body larger than {self.max_size} bytes"))
            return
        self._arm()
        try:
            self.on_data(data)
        except StopTransfer as e:
            self._fail(UpstreamBadResponse(self.url, str(e)))
        except Exception as e:
            logger.exception("error consuming body of %s", self.url)
            self._fail(UpstreamBadResponse(self.url, f"could not store the body: {e}"))

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]  # Twisted's idiom
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.done.called:
            return
        if self._failed is not None:
            self.done.errback(self._failed)
        elif reason.check(ResponseDone):
            self.done.callback(None)
        elif reason.check(http.PotentialDataLoss):
            # No Content-Length and the server closed: that is how HTTP/1.0 bodies end.
            self.done.callback(None)
        else:
            self.done.errback(
                UpstreamBadResponse(
                    self.url,
                    f"connection lost after {self.received} bytes of the body ({_describe(reason)})",
                )
            )


def _describe(reason: Failure) -> str:
    if reason.check(ResponseFailed):
        reasons = getattr(reason.value, "reasons", None) or []
        return "; ".join(_describe(r) for r in reasons) or "response failed"
    if reason.check(http._DataLoss):
        return "body shorter than its Content-Length"
    return reason.getErrorMessage() or reason.type.__name__


class UpstreamClient:
    """One shared treq client for the upstream index.

    Args:
        reactor: the reactor to connect and schedule with.
        timeout: seconds to wait for a response's headers, and between body chunks.
        max_page_size: the largest page body accepted.
        yieldable: wraps treq's Deferreds so that awaiting them keeps the caller's
            log context (Synapse's `make_deferred_yieldable`).
        policy: where requests may go: every URL and redirect hop outside the upstream's
            own origin and the allowed hosts must lead to a global address (without one,
            every URL must).
    """

    def __init__(
        self,
        reactor: Any,
        timeout: float,
        max_page_size: int,
        yieldable: Callable[[Any], Any] = lambda d: d,
        policy: Optional[AddressPolicy] = None,
    ):
        self._reactor = reactor
        self._yieldable = yieldable
        self._timeout = timeout
        self._max_page_size = max_page_size
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        policy = policy if policy is not None else AddressPolicy(upstream=None)
        self._http = HTTPClient(GuardedAgent(reactor, policy, pool, connect_timeout=timeout))

    async def _request(self, url: str, headers: dict) -> IResponse:
        headers = {"User-Agent": USER_AGENT, **headers}
        try:
            return await self._yieldable(
                self._http.get(
                    url,
                    headers=headers,
                    unbuffered=True,
                    timeout=self._timeout,
                    allow_redirects=True,
                    reactor=self._reactor,
                )
            )
        except (defer.CancelledError, internet_error.TimeoutError, ResponseNeverReceived) as e:
            if isinstance(e, ResponseNeverReceived) and not _is_timeout(e):
                raise UpstreamBadResponse(url, f"connection closed before a response ({_never_received(e)})")
            raise UpstreamTimeout(url, f"no response within {self._timeout:g}s")
        except internet_error.ConnectError as e:
            raise UpstreamUnreachable(url, f"cannot connect ({e.__class__.__name__})")
        except internet_error.DNSLookupError:
            raise UpstreamUnreachable(url, "host name does not resolve")
        except ResponseFailed as e:
            raise UpstreamBadResponse(url, f"bad response ({_describe(Failure(e))})")
        except ForbiddenAddress as e:
            # e.url is the hop that was refused: the file's own URL or where it redirected.
            raise UpstreamForbidden(
                e.url, f"refused: the upstream pointed at a forbidden address ({e.reason}; "
                "see upstream_allowed_file_hosts)"
            )

    async def get_page(
        self,
        url: str,
        etag: Optional[str] = None,
        last_modified: Optional[str] = None,
        stop: Optional[Callable[[], bool]] = None,
    ) -> PageResponse:
        """Fetch an index page, conditionally when we have validators.

        Args:
            stop: asked as the body arrives; when it says True, the download stops
                (nobody wants the page any more) with `NobodyWaits`.

        Raises:
            NotModified: the upstream answered 304.
            UpstreamError: anything else that is not a usable 200.
        """
        headers = {"Accept": PAGE_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        with upstream_timer("page", self._reactor):
            response = await self._request(url, headers)
        if response.code == 304:
            await _discard(response)
            raise NotModified()
        self._check_status(url, response)
        chunks: list = []

        def on_data(data: bytes) -> None:
            if stop is not None and stop():
                raise TooLarge("nobody waits for this page any more")
            chunks.append(data)

        try:
            await self.read_body(url, response, on_data, max_size=self._max_page_size)
        except UpstreamBadResponse:
            if stop is not None and stop():
                raise NobodyWaits(url, "stopped: nobody waits for this page any more")
            raise
        hdrs = response.headers
        return PageResponse(
            body=b"".join(chunks),
            content_type=(hdrs.getRawHeaders("content-type") or ["text/html"])[0],
            etag=(hdrs.getRawHeaders("etag") or [None])[0],
            last_modified=(hdrs.getRawHeaders("last-modified") or [None])[0],
            url=response.request.absoluteURI.decode("ascii") if response.request else url,
        )

    async def open_file(self, url: str) -> IResponse:
        """Start a file download; read the body with `read_body`.

        Raises:
            UpstreamError: the file cannot be had (status, connection, timeout).
        """
        with upstream_timer("file", self._reactor):
            response = await self._request(url, {"Accept": "*/*", "Accept-Encoding": "identity"})
        self._check_status(url, response)
        return response

    def _check_status(self, url: str, response: IResponse) -> None:
        if response.code == 200:
            return
        response.deliverBody(_Discard())
        if response.code in (404, 410):
            raise UpstreamNotFound(url, f"not found ({response.code})")
        if response.code in (502, 503, 504):
            # The upstream's own gateway gave up: as good as unreachable for us.
            raise UpstreamUnreachable(url, f"answered {response.code} {response.phrase.decode('latin-1', 'replace')}")
        raise UpstreamBadResponse(url, f"answered {response.code} {response.phrase.decode('latin-1', 'replace')}")

    async def read_body(
        self,
        url: str,
        response: IResponse,
        on_data: Callable[[bytes], None],
        max_size: Optional[int] = None,
    ) -> int:
        """Stream `response`'s body into `on_data`; returns the number of bytes.

        Raises:
            UpstreamError: reset, truncated, idle for longer than the timeout, or too large.
        """
        reader = self.stream_body(url, response, on_data, max_size)
        await self._yieldable(reader.done)
        return reader.received

    def body_reader(self, url: str, on_data: Callable[[bytes], None], max_size: Optional[int] = None) -> _BodyReader:
        """A reader for a response body, with this client's idle timeout: give it to
        `response.deliverBody`, then await its `done` (it can be paused and resumed)."""
        return _BodyReader(url, on_data, self._reactor, self._timeout, max_size)

    def stream_body(
        self, url: str, response: IResponse, on_data: Callable[[bytes], None], max_size: Optional[int] = None
    ) -> _BodyReader:
        """Start reading `response`'s body into `on_data`; the reader's `done` fires at the end."""
        reader = self.body_reader(url, on_data, max_size)
        response.deliverBody(reader)
        return reader

    @staticmethod
    def abandon(response: IResponse) -> None:
        """Drop a response without reading its body (the connection is closed)."""
        response.deliverBody(_Abandon())


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]  # the response's transport is a producer

    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]  # Twisted's idiom
        pass


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = ResponseDone()) -> None:  # type: ignore[assignment]  # Twisted's idiom
        pass


async def _discard(response: IResponse) -> None:
    response.deliverBody(_Discard())


def _is_timeout(e: Exception) -> bool:
    return any(r.check(defer.CancelledError, internet_error.TimeoutError) for r in getattr(e, "reasons", []))


def _never_received(e: Exception) -> str:
    return "; ".join(_describe(r) for r in getattr(e, "reasons", [])) or "no reason given"
