"""Indexes under a prefix of their own (`/snapshots/<ref>/simple/...`, `/index/<alias>/simple/...`):
one way to read such a path, with the redirects `/simple/` makes (a missing slash, a name that
is not normalized) and the same errors."""

from typing import Any, List, Optional, Tuple
from urllib.parse import quote, unquote

import attrs
from twisted.web import http

from synapse_pypi._errors import HttpError
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize
from synapse_pypi._web import SimpleResource, _etag, _render_both, _Rendered, redirect


@attrs.frozen
class Wanted:
    """What a request under a sub-index asks for: its root (`name` None), a project page
    (`filename` ""), or a file."""

    ref: str
    name: Optional[NormalizedName] = None
    filename: str = ""


class SubIndexResource(SimpleResource):
    """A resource serving simple indexes at `/<prefix>/<ref>/simple/`; subclasses answer
    `_serve(request, wanted)`."""

    #: How the first segment is described in errors ("<CID or NAME>").
    REF = "<ref>"

    async def _route(self, request: Any) -> None:
        wanted = self._parse(request)
        if wanted is not None:
            await self._serve(request, wanted)

    async def _serve(self, request: Any, wanted: Wanted) -> None:
        raise NotImplementedError

    def _parse(self, request: Any) -> Optional[Wanted]:
        """The request's Wanted, or None when a redirect answered it."""
        try:
            parts: List[str] = [unquote(s.decode("utf-8"), errors="strict") for s in request.postpath]
        except UnicodeDecodeError:
            raise HttpError(http.BAD_REQUEST, "path is not valid UTF-8")
        if not parts or parts == [""]:
            raise HttpError(http.NOT_FOUND, f"ask for {self.REF}/simple/ here")
        ref = parts[0]
        if len(parts) == 1:
            redirect(request, quote(ref, safe="").encode() + b"/simple/")
            return None
        if parts[1:] in ([""], ["simple"]):
            redirect(request, b"simple/")
            return None
        if parts[1] != "simple":
            raise HttpError(http.NOT_FOUND, "only simple/ is served here")
        rest = parts[2:]
        if rest == [""]:
            return Wanted(ref)
        try:
            name = NormalizedName(normalize(rest[0]))
        except InvalidName as e:
            raise HttpError(http.BAD_REQUEST, f"invalid project name: {e}")
        if len(rest) == 1:
            redirect(request, quote(name).encode() + b"/")
            return None
        if len(rest) > 2 or rest[0] != name:
            raise HttpError(http.NOT_FOUND, "no such page")
        if rest[1] and not is_safe_filename(rest[1]):
            raise HttpError(http.BAD_REQUEST, "invalid file name")
        return Wanted(ref, name, rest[1])

    def _send_rendered(self, request: Any, render: Any, content_type: str, cacheable: bool,
                       extra: Tuple[Tuple[bytes, bytes], ...] = ()) -> None:
        """A page rendered for this request alone (nothing kept)."""
        body, gzipped = _render_both(render)
        for key, value in extra:
            request.setHeader(key, value)
        self._send_page(request, _Rendered(None, body, _etag(body), None, gzipped), content_type, cacheable)
