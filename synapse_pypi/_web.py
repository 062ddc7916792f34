"""The HTTP face: `/simple/`, `/simple/<project>/` and `/simple/<project>/<file>`.

One async boundary (`render` -> `_handle`) and one error path: every failure becomes a
status with a one-line plain-text reason. File links in pages are relative
(`<file>` from `/simple/<project>/`), so a reverse proxy in front changes nothing.
"""

import gzip
import hashlib
import logging
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import quote, unquote

import attrs
from twisted.internet import defer
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from synapse_pypi import _metrics, index
from synapse_pypi._context import SingleFlight, fire_all
from synapse_pypi._errors import HttpError
from synapse_pypi._files import METADATA_SUFFIX, FileChain, WantedFile
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize
from synapse_pypi._negotiate import Format, accepts_gzip, choose_format
from synapse_pypi._pages import PageBudget, PageService
from synapse_pypi._ranges import RangeNotSatisfiable, content_range, parse_range
from synapse_pypi._ready_answers import ReadyAnswers
from synapse_pypi._responders import RequestConsumer, Responder
from synapse_pypi._serve_policy import ServePolicy
from synapse_pypi._upstream import UpstreamError

__all__ = ["HttpError", "SimpleResource", "redirect", "send_error"]

logger = logging.getLogger(__name__)

# The request header a reverse proxy sets to say it serves X-Accel-Redirect answers
# itself (nginx: `proxy_set_header X-Sendfile-Type X-Accel-Redirect;`, as Rack::Sendfile
# reads it). Without it the file is sent as usual, so a client that reaches the homeserver
# another way (the federation listener, say) still gets the bytes.
SENDFILE_TYPE = b"x-accel-redirect"
# Pages of more files (or a root of more names) than this are rendered in a thread: the
# first JSON render of a 200,000-file page took 2.8 s on the reactor.
THREAD_RENDER_ITEMS = 2000


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
        files: the read chain of files (cache, storage backends, upstream).
        page_max_age: seconds clients may cache a page (Cache-Control).
        run_in_background: Synapse's `run_in_background`.
        yieldable: Synapse's `make_deferred_yieldable`.
        clock: the reactor, for timers.
        trust: the trust service (package rooms; pages show the hash it agreed on).
        policy: decides the hash to serve before every file is served.
        x_accel_redirect: the reverse proxy's internal location of the cache directory,
            for offloading cached files (None: the homeserver sends them itself).
    """

    isLeaf = True

    def __init__(
        self,
        pages: PageService,
        files: FileChain,
        page_max_age: int,
        run_in_background: Callable[..., Any],
        yieldable: Callable[[Any], Any],
        clock: Any,
        trust: Any = None,
        policy: Optional[ServePolicy] = None,
        x_accel_redirect: Optional[str] = None,
        gauge: Any = None,
        defer_to_thread: Optional[Callable[..., Any]] = None,
        budget: Optional[PageBudget] = None,
    ):
        super().__init__()
        # Counts requests in flight, which the Matrix queue yields to.
        self._gauge = gauge
        self._defer_to_thread = defer_to_thread
        # Rendered pages share the parsed pages' budget (page_cache_size).
        self._budget = budget if budget is not None else pages.budget
        self._renders = SingleFlight(yieldable)
        self._clock = clock
        self._trust = trust
        self._policy = policy
        self._x_accel_redirect = x_accel_redirect
        self._pages = pages
        self._files = files
        self._page_max_age = page_max_age
        self._run_in_background = run_in_background
        self._yieldable = yieldable
        self._ready = True
        self._ready_waiters: List[defer.Deferred[None]] = []
        # Warm pages answered moments ago, given again at once (_ready_answers.py).
        self.ready_answers = ReadyAnswers(pages.now_ms, self._sources, self._still_held)

    def gate_on(self, started: "defer.Deferred[Any]") -> None:
        """Hold requests until `started` fires (the module's start-up work)."""
        self._ready = False

        def open_gate(_: Any) -> None:
            self._ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            fire_all(waiters)

        started.addBoth(open_gate)

    def answer_now(self, request: Any, finish: Callable[[Any], None]) -> bool:
        """Give a warm page's answer at once, before Synapse sets up its per-request work,
        when the same request was answered moments ago and nothing it was made from has
        changed since (`_ready_answers.py`); whether it was answered (finished with
        `finish`). Requests with a query string always go the full way."""
        if request.method not in (b"GET", b"HEAD") or not self._ready or b"?" in request.uri:
            return False
        answer = self.ready_answers.find(request)
        if answer is None:
            return False
        request.setHeader(b"Vary", b"Accept, Accept-Encoding")
        self._send_page(request, answer.rendered, answer.content_type, True, finish)
        if self._gauge is not None:
            self._gauge.started()
            self._gauge.finished()
        return True

    def _sources(self, name: str) -> Tuple[Any, ...]:
        """What a project page's answer is made from now (`ReadyAnswers`)."""
        token, _ = self._pages.fresh_entry(name)
        return (token, self._files.generation, self._trust.project_generation(name) if self._trust else ())

    def _still_held(self, key: Any, rendered: Any) -> bool:
        return self._budget.get(key) is rendered

    def render(self, request: Any) -> Any:
        _metrics.track_request(request, _metrics.route_of(list(request.postpath)))
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            send_error(request, http.NOT_ALLOWED, "only GET and HEAD are supported here")
            return NOT_DONE_YET
        self._run_in_background(self._handle, request)
        return NOT_DONE_YET

    async def _handle(self, request: Any) -> None:
        if self._gauge is not None:
            self._gauge.started()
            request.notifyFinish().addBoth(lambda _: self._gauge.finished())
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

    def _send_page(
        self,
        request: Any,
        page: "_Rendered",
        content_type: str,
        cacheable: bool,
        finish: Optional[Callable[[Any], None]] = None,
    ) -> None:
        finish = finish or _finish
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
        if page.gzipped is not None and accepts_gzip(request.getHeader(b"accept-encoding")):
            # A fifth of the bytes to send for a big page (what PyPI does too); the
            # representation has its own ETag.
            body, etag = page.gzipped, page.etag[:-1] + b'-gzip"'
            request.setHeader(b"Content-Encoding", b"gzip")
        if request.setETag(etag) is http.CACHED:
            finish(request)
            return
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        finish(request)

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
        # What the page came from, read before anything else can change it.
        token, fresh_until = self._pages.fresh_entry(name)
        if self._trust is not None:
            # The rooms' views (read once; no Matrix writes): the page carries the hashes the
            # trust layer agreed on, the ones the files will be served with. Rooms are made
            # when files are served, not for page views.
            await self._trust.view_for_page(name)
        # Rendering is most of a warm page's cost: keep the bytes until the page, the
        # cache's contents or the trust view change. The stamp holds the page itself,
        # so that it stays the page it was made from.
        key = ("rendered", name, fmt, view.offline)
        stamp = _Stamp(view.page, self._files.generation, self._trust.project_generation(name) if self._trust else ())
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
        if not view.offline and rendered.source == stamp:
            # (Bytes another request's render made from other sources are not remembered.)
            sources = (token, stamp.cache_generation, stamp.trust_generation)
            self.ready_answers.remember(request, name, key, rendered, content_type, sources, fresh_until)

    async def _servable_page(self, page: index.ProjectPage, offline: bool) -> index.ProjectPage:
        """The page as we serve it: sizes we know filled in; core metadata we extracted
        from a cached wheel offered where the upstream offers none; offline, only the
        .metadata files we can really serve advertised (PEP 658 says advertise a file
        only where it is served)."""
        if page.quarantined:
            # PEP 792: nothing is offered (the renderers list no file either).
            return attrs.evolve(page, files=())
        pt = self._trust.known_rooms.get(page.name) if self._trust is not None else None
        banned = self._trust.refusal(pt, page.name, None) if self._trust is not None else None
        if banned is not None:
            # A ban of the whole project (issue 14): offered as PEP 792 quarantined.
            return attrs.evolve(page, files=(), status=index.ProjectStatus.QUARANTINED, status_reason=banned)
        if pt is not None and pt.bans():
            page = attrs.evolve(page, files=tuple(
                f for f in page.files if self._trust.refusal(pt, page.name, f.filename) is None
            ))
        # Only sizes and metadata the upstream left out, and offline pages, need to know
        # what is cached.
        needs_cache = offline or any(
            f.size is None or (not f.core_metadata and f.filename.endswith(".whl")) for f in page.files
        )
        cached = await self._files.cached_files(page.name) if needs_cache else {}
        files = []
        for f in page.files:
            changes: dict = {}
            if pt is not None and pt.records(f.filename):
                # The page carries the hash the trust layer agreed on (DESIGN §3), and no
                # hash where nobody can tell (a client asking gets the 409 that says why).
                decision = self._trust.decide(pt, f.filename, f.hashes.get("sha256"), not offline)
                if decision.sha256 != f.hashes.get("sha256"):
                    changes["hashes"] = {"sha256": decision.sha256} if decision.sha256 else {}
                    changes["size"] = self._trust.attested_details(pt, f.filename, decision.sha256)[0]
            if f.size is None and f.filename in cached:
                changes["size"] = cached[f.filename][1]
            own_metadata = cached.get(f.filename + METADATA_SUFFIX)
            if not f.core_metadata and own_metadata is not None and f.filename.endswith(".whl"):
                changes["core_metadata"] = {"sha256": own_metadata[0]}
            if offline and f.core_metadata and (f.filename + METADATA_SUFFIX) not in cached:
                changes["core_metadata"] = False
            files.append(attrs.evolve(f, **changes) if changes else f)
        return attrs.evolve(page, files=tuple(files))

    async def _file(self, request: Any, name: str, filename: str) -> None:
        view = await self._pages.project(NormalizedName(name))
        if view.page.quarantined:
            # PEP 792: a quarantined project's files are not served, cached copies included.
            why = f": {view.page.status_reason}" if view.page.status_reason else ""
            raise HttpError(http.NOT_FOUND, f"{filename}: the project {name} is quarantined{why}")
        if self._policy is not None:
            # A ban (issue 14) refuses the file, its .metadata and cached copies alike.
            refused = await self._policy.refusal(name, filename)
            if refused is not None:
                raise HttpError(http.NOT_FOUND, f"{filename}: {refused}")
        wanted = await self._wanted(view.page, name, filename)
        first = False
        if self._policy is not None and not filename.endswith(METADATA_SUFFIX):
            served = await self._policy.hash_to_serve(name, filename, wanted.sha256, not view.offline)
            first = served.first
            changes: dict = {}
            if served.sha256 and served.sha256 != wanted.sha256:
                changes["sha256"] = served.sha256
            if served.not_from_upstream is not None:
                # Nothing the losing upstream says of the file holds, its size included.
                changes.update(url="", size=served.size, not_from_upstream=served.not_from_upstream)
            if changes:
                wanted = attrs.evolve(wanted, **changes)
        route = "metadata" if filename.endswith(METADATA_SUFFIX) else "file"
        try:
            responder = await self._files.fetch(wanted, body=request.method != b"HEAD", first=first)
        except Exception:
            _metrics.file_missed(route)
            raise
        with responder:
            try:
                await self._respond(request, responder)
            finally:
                # sentLength counts the body only, sendfile's included; 0 for a HEAD, a 304
                # or a file left to the reverse proxy (X-Accel-Redirect).
                _metrics.file_served(route, responder.source, request.sentLength)

    async def _respond(self, request: Any, responder: Responder) -> None:
        """Status and headers from what the responder knows; then its body."""
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", responder.content_type.encode())
        etag = b'"' + responder.sha256.encode() + b'"' if responder.sha256 else None
        if responder.verified and etag is not None:
            request.setHeader(b"Cache-Control", b"max-age=31536000, immutable")
            request.setHeader(b"X-Checksum-Sha256", etag[1:-1])
            if request.setETag(etag) is http.CACHED:
                request.finish()
                return
            if responder.mtime is not None and request.setLastModified(responder.mtime) is http.CACHED:
                request.finish()
                return
        elif etag is not None:
            request.setHeader(b"ETag", etag)
        first, last, length = 0, None, responder.length
        if responder.ranges and length is not None:
            request.setHeader(b"Accept-Ranges", b"bytes")
            if self._offload(request, responder):
                return
            wanted = request.getHeader(b"range")
            if_range = request.getHeader(b"if-range")
            # If-Range with another validator (an older ETag, or a date): the whole file.
            if wanted is not None and (if_range is None or if_range.strip() == etag):
                try:
                    span = parse_range(wanted.decode("latin-1"), length)
                except RangeNotSatisfiable as e:
                    request.setHeader(b"Content-Range", b"bytes */%d" % length)
                    raise HttpError(http.REQUESTED_RANGE_NOT_SATISFIABLE, f"range not satisfiable: {e}")
                if span is not None:
                    first, last = span
                    request.setResponseCode(http.PARTIAL_CONTENT)
                    request.setHeader(b"Content-Range", content_range(first, last, length).encode())
                    length = last - first + 1
        if length is not None:
            request.setHeader(b"Content-Length", str(length).encode())
        if request.method == b"HEAD":
            request.finish()
            return
        await self._yieldable(responder.write_to(RequestConsumer(request), first, last))

    def _offload(self, request: Any, responder: Responder) -> bool:
        """Leave a cached file to the reverse proxy (X-Accel-Redirect), where it said it can."""
        if self._x_accel_redirect is None or responder.cache_path is None:
            return False
        said = request.getHeader(b"x-sendfile-type")
        if said is None or said.strip().lower() != SENDFILE_TYPE:
            return False
        location = self._x_accel_redirect + quote(responder.cache_path)
        request.setHeader(b"X-Accel-Redirect", location.encode())
        request.setHeader(b"Content-Length", b"0")
        request.finish()
        return True

    async def _wanted(self, page: index.ProjectPage, name: str, filename: str) -> WantedFile:
        dist = page.file(filename)
        if dist is not None:
            return WantedFile(name, filename, dist.url, dist.hashes.get("sha256"), dist.size)
        if filename.endswith(METADATA_SUFFIX):
            dist = page.file(filename[: -len(METADATA_SUFFIX)])
            if dist is not None and dist.core_metadata:
                hashes = dist.core_metadata if isinstance(dist.core_metadata, dict) else {}
                sha = hashes.get("sha256") if hasattr(hashes, "get") else None
                return WantedFile(name, filename, dist.url + METADATA_SUFFIX, sha, None)
            if dist is not None:
                # The upstream offers none: the one we extracted from the cached wheel.
                own = await self._files.cached_digest_of(name, filename)
                if own is not None:
                    return WantedFile(name, filename, "", own, None)
            raise HttpError(http.NOT_FOUND, f"{filename}: the index offers no metadata file for it")
        raise HttpError(http.NOT_FOUND, f"{filename}: no such file in project {name}")


def _finish(request: Any) -> None:
    request.finish()


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


def _etag(body: bytes) -> bytes:
    return b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


@attrs.frozen(eq=False)
class _Stamp:
    """What a rendered project page was made from; equal when all of it is the same."""

    page: index.ProjectPage
    cache_generation: int
    trust_generation: Tuple[int, ...]

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
