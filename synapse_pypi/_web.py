"""The HTTP face: `/simple/`, `/simple/<project>/` and `/simple/<project>/<file>`.

One async boundary (`render` -> `_handle`) and one error path: every failure becomes a
status with a one-line plain-text reason. File links in pages are relative
(`<file>` from `/simple/<project>/`), so a reverse proxy in front changes nothing.
"""

import gzip
import hashlib
import logging
import os
from typing import Any, Callable, List, Optional
from urllib.parse import quote, unquote

import attrs
from twisted.internet import defer
from twisted.web import http, static
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from synapse_pypi import index
from synapse_pypi._context import SingleFlight, fire_all
from synapse_pypi._files import CHUNK, Download, FileService, LocalCache, WantedFile
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize
from synapse_pypi._negotiate import Format, choose_format
from synapse_pypi._pages import PageBudget, PageService
from synapse_pypi._upstream import UpstreamError
from synapse_pypi.trust import Outcome

logger = logging.getLogger(__name__)

METADATA_SUFFIX = ".metadata"
# A download is answered only once it is complete, or this many bytes are in, or this
# many seconds have passed. Small files (most wheels, every .metadata) are thus verified
# before the status line is sent, and a failure (a stall included, as long as the
# upstream timeout is shorter than the wait) is a clean 502/504; a large one starts
# streaming early, and a failure after that can only abort the connection. The time
# limit keeps a client's own read timeout (pip: 15 s) from firing on a slow upstream.
STREAM_AFTER_BYTES = 1024 * 1024
STREAM_AFTER_SECONDS = 10.0
# Pages of more files (or a root of more names) than this are rendered in a thread: the
# first JSON render of a 200,000-file page took 2.8 s on the reactor.
THREAD_RENDER_ITEMS = 2000


class HttpError(Exception):
    """An error for the client: a status and a one-line reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


def send_error(request: Any, code: int, reason: str) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    if request.startedWriting:
        # Headers are gone already: all we can do is not pretend the body is whole.
        request.transport.abortConnection()
        return
    body = (reason.replace("\n", " ") + "\n").encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


def _query_suffix(request: Any) -> bytes:
    uri = request.uri
    return uri[uri.index(b"?"):] if b"?" in uri else b""


def redirect(request: Any, location: bytes) -> None:
    """A permanent redirect to a relative location, keeping the query string."""
    request.setResponseCode(http.MOVED_PERMANENTLY)
    request.setHeader(b"Location", location + _query_suffix(request))
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.write(b"moved to " + location + b"\n")
    request.finish()


class SimpleResource(Resource):
    """The resource registered at `/simple`.

    Args:
        pages: index pages through the cache.
        files: file bytes through the cache.
        cache: the local cache (sizes, in-use marks).
        page_max_age: seconds clients may cache a page (Cache-Control).
        run_in_background: Synapse's `run_in_background`.
        yieldable: Synapse's `make_deferred_yieldable`.
        clock: the reactor, for timers.
    """

    isLeaf = True

    def __init__(
        self,
        pages: PageService,
        files: FileService,
        cache: LocalCache,
        page_max_age: int,
        run_in_background: Callable[..., Any],
        yieldable: Callable[[Any], Any],
        clock: Any,
        trust: Any = None,
        attest: Optional[Callable[[str, str, str, int], None]] = None,
        defer_to_thread: Optional[Callable[..., Any]] = None,
        budget: Optional[PageBudget] = None,
    ):
        super().__init__()
        self._defer_to_thread = defer_to_thread
        # Rendered pages share the parsed pages' budget (page_cache_size).
        self._budget = budget if budget is not None else pages.budget
        self._renders = SingleFlight(yieldable)
        self._clock = clock
        self._trust = trust
        self._attest = attest
        self._pages = pages
        self._files = files
        self._cache = cache
        self._page_max_age = page_max_age
        self._run_in_background = run_in_background
        self._yieldable = yieldable
        self._ready = True
        self._ready_waiters: List[defer.Deferred[None]] = []

    def gate_on(self, started: "defer.Deferred[Any]") -> None:
        """Hold requests until `started` fires (the module's start-up work)."""
        self._ready = False

        def open_gate(_: Any) -> None:
            self._ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            fire_all(waiters)

        started.addBoth(open_gate)

    def render(self, request: Any) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            send_error(request, http.NOT_ALLOWED, "only GET and HEAD are supported here")
            return NOT_DONE_YET
        self._run_in_background(self._handle, request)
        return NOT_DONE_YET

    async def _handle(self, request: Any) -> None:
        try:
            if not self._ready:
                waiter: defer.Deferred[None] = defer.Deferred()
                self._ready_waiters.append(waiter)
                await self._yieldable(waiter)
            await self._route(request)
        except HttpError as e:
            send_error(request, e.code, e.reason)
        except UpstreamError as e:
            send_error(request, e.http_status, str(e))
        except Exception:
            logger.exception("error handling %r", request.uri)
            send_error(request, http.INTERNAL_SERVER_ERROR, "internal error; see the homeserver log")

    async def _route(self, request: Any) -> None:
        segments: List[bytes] = list(request.postpath)
        if not segments:
            return redirect(request, b"simple/")
        try:
            parts = [unquote(s.decode("utf-8"), errors="strict") for s in segments]
        except UnicodeDecodeError:
            raise HttpError(http.BAD_REQUEST, "path is not valid UTF-8")
        if parts == [""]:
            return await self._root(request)
        if len(parts) > 2 or (len(parts) == 2 and parts[1] == "" and len(segments) > 2):
            raise HttpError(http.NOT_FOUND, "no such page")
        raw_name = parts[0]
        try:
            name = normalize(raw_name)
        except InvalidName as e:
            raise HttpError(http.BAD_REQUEST, f"invalid project name: {e}")
        if len(parts) == 1:
            return redirect(request, quote(name).encode() + b"/")
        filename = parts[1]
        if raw_name != name:
            tail = quote(filename).encode()
            return redirect(request, b"../" + quote(name).encode() + b"/" + tail)
        if filename == "":
            return await self._project(request, name)
        if not is_safe_filename(filename):
            raise HttpError(http.BAD_REQUEST, "invalid file name")
        return await self._file(request, name, filename)

    def _negotiate(self, request: Any) -> tuple:
        accept = request.getHeader(b"accept")
        fmt_args = request.args.get(b"format")
        fmt_param = fmt_args[0].decode("utf-8", "replace") if fmt_args else None
        if fmt_param:
            # A literal "+" in a query string decodes as a space; media types have none.
            fmt_param = fmt_param.replace(" ", "+")
        chosen = choose_format(accept.decode("latin-1") if accept else None, fmt_param)
        request.setHeader(b"Vary", b"Accept, Accept-Encoding")
        if chosen is None:
            raise HttpError(
                http.NOT_ACCEPTABLE,
                "none of the accepted types is served; ask for application/vnd.pypi.simple.v1+json, "
                "application/vnd.pypi.simple.v1+html or text/html",
            )
        return chosen

    def _send_page(self, request: Any, page: "_Rendered", content_type: str, cacheable: bool) -> None:
        request.setHeader(b"Content-Type", content_type.encode())
        if cacheable:
            request.setHeader(b"Cache-Control", b"max-age=%d, public" % self._page_max_age)
        else:
            request.setHeader(b"Cache-Control", b"no-cache")
        if page.serial is not None:
            # PyPI's header, for mirrors of this mirror (bandersnatch reads it).
            request.setHeader(b"X-PyPI-Last-Serial", b"%d" % page.serial)
        # The bytes and their ETag were made once: a 304 or a HEAD costs no rendering.
        body, etag = page.body, page.etag
        if page.gzipped is not None and _accepts_gzip(request.getHeader(b"accept-encoding")):
            # A fifth of the bytes to send for a big page (what PyPI does too); the
            # representation has its own ETag.
            body, etag = page.gzipped, page.etag[:-1] + b'-gzip"'
            request.setHeader(b"Content-Encoding", b"gzip")
        if request.setETag(etag) is http.CACHED:
            request.finish()
            return
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _root(self, request: Any) -> None:
        fmt, content_type = self._negotiate(request)
        view = await self._pages.root()
        # Built once per upstream change: the key holds the root list the bytes came from.
        key = ("rendered", "", fmt, view.offline)
        render = index.render_root_json if fmt is Format.JSON_V1 else index.render_root_html
        rendered = await self._rendered(
            key, view.root, len(view.root.names), lambda: render(view.root.names, view.root.last_serial),
            view.root.last_serial,
        )
        self._send_page(request, rendered, content_type, not view.offline)

    async def _rendered(
        self, key: tuple, source: Any, items: int, render: Callable[[], bytes], serial: Optional[int]
    ) -> "_Rendered":
        """The rendered bytes kept under `key` if they were made from `source`, else
        rendered now (once for all concurrent requests; in a thread when big)."""
        hit = self._budget.get(key)
        if hit is not None and (hit.source is source or hit.source == source):
            return hit

        async def make() -> _Rendered:
            again = self._budget.get(key)
            if again is not None and (again.source is source or again.source == source):
                return again
            if self._defer_to_thread is not None and items > THREAD_RENDER_ITEMS:
                body, gzipped = await self._defer_to_thread(_render_both, render)
            else:
                body, gzipped = _render_both(render)
            rendered = _Rendered(source, body, _etag(body), serial, gzipped)
            if key[1] == "":
                # Once per upstream change and format: say so (the tests count it).
                logger.info("rendered the root list as %s: %d names, %d bytes", key[2].name, items, len(body))
            self._budget.put(key, rendered, len(body) + len(gzipped or b""))
            return rendered

        return await self._renders.run(key, make)

    async def _project(self, request: Any, name: str) -> None:
        fmt, content_type = self._negotiate(request)
        view = await self._pages.project(NormalizedName(name), wanted=lambda: not _gone(request))
        known = self._trust.known_rooms.get(name) if self._trust is not None else None
        if self._trust is not None and (known is None or known.local is None):
            # The first time a project is cached: its room is made in the background.
            self._run_in_background(self._ensure_room, name)
        # Rendering is most of a warm page's cost: keep the bytes until the page, the
        # cache's contents or the trust view change. The stamp holds the page itself,
        # so that it stays the page it was made from.
        key = ("rendered", name, fmt, view.offline)
        stamp = _Stamp(view.page, self._cache.generation, self._trust.generation if self._trust else 0)
        render = index.render_project_json if fmt is Format.JSON_V1 else index.render_project_html
        hit = self._budget.get(key)
        if hit is not None and hit.source == stamp:
            rendered = hit
        else:
            page = await self._servable_page(view.page, view.offline)
            rendered = await self._rendered(
                key, stamp, len(page.files), lambda: render(page, _relative), page.last_serial
            )
        self._send_page(request, rendered, content_type, not view.offline)

    async def _servable_page(self, page: index.ProjectPage, offline: bool) -> index.ProjectPage:
        """The page as we serve it: sizes we know filled in; offline, only the
        .metadata files we can really serve advertised (PEP 658 says advertise a file
        only where it is served)."""
        if page.quarantined:
            # PEP 792: nothing is offered (the renderers list no file either).
            return attrs.evolve(page, files=())
        # Only sizes the upstream left out, and offline pages, need to know what is cached.
        needs_cache = offline or any(f.size is None for f in page.files)
        cached = await self._files.cached_files(page.name) if needs_cache else {}
        pt = self._trust.known_rooms.get(page.name) if self._trust is not None else None
        files = []
        for f in page.files:
            changes: dict = {}
            if pt is not None and pt.records(f.filename):
                # The page carries the hash the trust layer agreed on (DESIGN §3).
                decision = self._trust.decide(pt, f.filename, f.hashes.get("sha256"), not offline)
                if decision.sha256 and decision.sha256 != f.hashes.get("sha256"):
                    changes["hashes"] = {"sha256": decision.sha256}
            if f.size is None and f.filename in cached:
                changes["size"] = cached[f.filename][1]
            if offline and f.core_metadata and (f.filename + METADATA_SUFFIX) not in cached:
                changes["core_metadata"] = False
            files.append(attrs.evolve(f, **changes) if changes else f)
        return attrs.evolve(page, files=tuple(files))

    async def _file(self, request: Any, name: str, filename: str) -> None:
        view = await self._pages.project(NormalizedName(name))
        wanted = self._wanted(view.page, name, filename)
        first = False
        if self._trust is not None and not filename.endswith(METADATA_SUFFIX):
            wanted, first = await self._apply_policy(name, filename, wanted, online=not view.offline)
        sha256 = self._files.cached_sha256(wanted)
        if first and sha256 is not None and self._attest is not None:
            # A cache hit with no valid vouch left (say a moderator redacted ours): the
            # upstream's hash decided again; vouch for it again.
            self._attest(name, filename, sha256, self._cache.size_of(sha256) or 0)
        if sha256 is None and wanted.sha256 is None:
            # An index that publishes no hash: we know the file by what we stored.
            sha256 = await self._files.cached_digest_of(name, filename)
        if sha256 is not None:
            return self._serve_cached(request, sha256, filename)
        dl = self._files.download(wanted)
        deadline = self._clock.seconds() + STREAM_AFTER_SECONDS
        while not dl.finished and (not dl.responded or dl.written < STREAM_AFTER_BYTES):
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 and dl.responded:
                break
            await self._yieldable(dl.wait(self._clock, max(remaining, 0.05) if dl.responded else None))
        if dl.error is not None:
            raise dl.error
        if dl.ok and dl.sha256:
            return self._serve_cached(request, dl.sha256, filename)
        self._serve_download(request, dl)

    async def _apply_policy(self, name: str, filename: str, wanted: WantedFile, online: bool) -> tuple:
        """The serve policy, before every serve (cache hits included): the hash to
        serve, from the attestations and the upstream; 409 on an undecidable conflict."""
        room = await self._trust.view(name)
        if room.local is None:
            # First time: make our room in the background (peers' rooms may vouch already).
            self._run_in_background(self._ensure_room, name)
        decision = self._trust.decide(room, filename, wanted.sha256, online)
        self._trust.handle_decision(name, room, filename, decision)
        self._trust.maintainer_overrules(room, filename, wanted.sha256, decision)
        if decision.outcome is Outcome.CONFLICT:
            raise HttpError(http.CONFLICT, decision.reason)
        if decision.sha256 and decision.sha256 != wanted.sha256:
            wanted = attrs.evolve(wanted, sha256=decision.sha256)
        return wanted, decision.outcome is Outcome.FIRST

    async def _ensure_room(self, name: str) -> None:
        try:
            await self._trust.ensure_room(name)
        except Exception:
            logger.exception("could not create the package room of %s", name)

    def _wanted(self, page: index.ProjectPage, name: str, filename: str) -> WantedFile:
        dist = page.file(filename)
        if dist is not None:
            return WantedFile(name, filename, dist.url, dist.hashes.get("sha256"), dist.size)
        if filename.endswith(METADATA_SUFFIX):
            dist = page.file(filename[: -len(METADATA_SUFFIX)])
            if dist is not None and dist.core_metadata:
                hashes = dist.core_metadata if isinstance(dist.core_metadata, dict) else {}
                sha = hashes.get("sha256") if hasattr(hashes, "get") else None
                return WantedFile(name, filename, dist.url + METADATA_SUFFIX, sha, None)
            raise HttpError(http.NOT_FOUND, f"{filename}: the index offers no metadata file for it")
        raise HttpError(http.NOT_FOUND, f"{filename}: no such file in project {name}")

    def _serve_cached(self, request: Any, sha256: str, filename: str) -> None:
        self._cache.acquire(sha256)
        request.notifyFinish().addBoth(lambda _: self._cache.release(sha256))
        request.setHeader(b"Cache-Control", b"max-age=31536000, immutable")
        request.setHeader(b"X-Checksum-Sha256", sha256.encode())
        if request.setETag(b'"' + sha256.encode() + b'"') is http.CACHED:
            request.finish()
            return
        resource = static.File(self._cache.blob_path(sha256), defaultType="application/octet-stream")
        resource.type = _content_type(filename)  # type: ignore[assignment]  # Twisted's stub says None
        resource.encoding = None
        body = resource.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _serve_download(self, request: Any, dl: Download) -> None:
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", _content_type(dl.wanted.filename).encode())
        if dl.length is not None:
            request.setHeader(b"Content-Length", str(dl.length).encode())
        if dl.wanted.sha256:
            request.setHeader(b"ETag", b'"' + dl.wanted.sha256.encode() + b'"')
        if request.method == b"HEAD":
            request.finish()
            return
        try:
            fd = os.open(dl.partial, os.O_RDONLY)
        except FileNotFoundError:
            # Committed (or failed) between our checks: the cache has it, or nobody does.
            if dl.ok and dl.sha256:
                fd = os.open(self._cache.blob_path(dl.sha256), os.O_RDONLY)
            else:
                raise dl.error or HttpError(http.BAD_GATEWAY, "download failed")
        _TailProducer(request, dl, fd).start()


def _gone(request: Any) -> bool:
    # Twisted sets _disconnected when the client's connection is lost.
    return bool(getattr(request, "_disconnected", False))


def _relative(f: index.DistFile) -> str:
    # Relative to /simple/<project>/, so that a reverse proxy in front changes nothing.
    return quote(f.filename)


# Pages smaller than this go out as they are: compressing them saves nothing worth it.
GZIP_FROM_BYTES = 16 * 1024


def _render_both(render: Callable[[], bytes]) -> tuple:
    """The rendered page and, when it is big enough to be worth it, its gzip form (zlib
    releases the GIL while it works, so this runs in a thread as well as anywhere)."""
    body = render()
    return body, (gzip.compress(body, 6, mtime=0) if len(body) >= GZIP_FROM_BYTES else None)


def _accepts_gzip(header: Optional[bytes]) -> bool:
    """Whether an Accept-Encoding header accepts gzip (RFC 9110: a q of 0 refuses it)."""
    if not header:
        return False
    for part in header.decode("latin-1").lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.", "0.0", "0.00", "0.000"))
    return False


def _etag(body: bytes) -> bytes:
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


@attrs.frozen(eq=False)
class _Stamp:
    """What a rendered project page was made from; equal when all of it is the same."""

    page: index.ProjectPage
    cache_generation: int
    trust_generation: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Stamp)
            and other.page is self.page
            and (other.cache_generation, other.trust_generation) == (self.cache_generation, self.trust_generation)
        )

    def __hash__(self) -> int:
        return hash((id(self.page), self.cache_generation, self.trust_generation))


@attrs.frozen(eq=False)
class _Rendered:
    """A page's bytes as sent, with their ETag, and what they were rendered from."""

    source: Any
    body: bytes
    etag: bytes
    serial: Optional[int]
    gzipped: Optional[bytes] = None


def _content_type(filename: str) -> str:
    if filename.endswith(METADATA_SUFFIX):
        return "text/plain; charset=utf-8"
    if filename.endswith((".whl", ".zip", ".egg")):
        return "application/zip"
    if filename.endswith((".tar.gz", ".tgz")):
        return "application/x-tar"  # with gzip "encoding" in the file name, not the transfer
    return "application/octet-stream"


class _TailProducer:
    """Streams a file that is still being downloaded, following the writer.

    A push producer: it writes while the client keeps up, stops when the transport
    pauses it, waits on the download when it has caught up with the writer, and aborts
    the connection if the download fails, so the client never mistakes a cut-off body
    for a whole one.
    """

    def __init__(self, request: Any, dl: Download, fd: int):
        self._request = request
        self._dl = dl
        self._fd = fd
        self._pos = 0
        self._attempt = dl.attempt
        self._paused = False
        self._done = False
        self._pumping = False
        self._waiting = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._pump()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if not self._done:
            self._done = True
            os.close(self._fd)

    def _on_progress(self, _: Any) -> None:
        self._waiting = False
        self._pump()

    def _pump(self) -> None:
        if self._pumping or self._done:
            return
        self._pumping = True
        try:
            while not self._paused and not self._done:
                if self._dl.attempt != self._attempt:
                    if self._pos:
                        # The source we were relaying turned out bad; the bytes sent are
                        # not the file's. Cut the client off rather than splice sources.
                        self._finish(False)
                        return
                    self._attempt = self._dl.attempt
                limit = self._dl.readable()
                if self._pos < limit:
                    data = os.pread(self._fd, min(CHUNK, limit - self._pos), self._pos)
                    if not data:
                        raise OSError("partial file shorter than written")
                    self._pos += len(data)
                    self._request.write(data)
                    continue
                if self._dl.finished:
                    self._finish(self._dl.ok and self._pos == self._dl.written)
                    return
                if not self._waiting:
                    self._waiting = True
                    self._dl.wait().addCallback(self._on_progress)
                return
        except Exception:
            logger.exception("streaming %s failed", self._dl.wanted.filename)
            self._finish(False)
        finally:
            self._pumping = False

    def _finish(self, complete: bool) -> None:
        self._close()
        request = self._request
        request.unregisterProducer()
        if getattr(request, "_disconnected", False) or request.finished:
            return
        if complete:
            request.finish()
        else:
            logger.warning(
                "aborting response for %s after %d bytes: %s", self._dl.wanted.filename, self._pos, self._dl.error
            )
            request.transport.abortConnection()
