"""`/legacy/`: uploads through the legacy upload API (twine, `uv publish`, `pdm publish`,
`poetry publish`), and `/legacy/provenance/<project>/<file>`, the PEP 740 provenance of an
upload that came with attestations.

An upload is a `POST` of a multipart form with HTTP Basic auth: user `__token__`, password a
Matrix access token. It is checked (`_upload_rules.py`: the form, who may publish, the
project name against the upstream's, digests, the wheel's METADATA, the file name against
files already there), then committed to the local cache through the file chain like a
download (so the storage backends add it, the bot attests it and its core metadata is
extracted) and recorded as an upload (`_local.py`), which makes it appear on the pages.
Nothing is stored when a check fails.

Answers: 200 stored (also for the same bytes under the same name again); 400 a bad form or
file; 401 no or a bad token; 403 not allowed (the user, or a name the upstream has); 409 the
file name exists with other bytes; 413 over `max_upload_size`; 503 the upstream cannot say
whether it has a new name.
"""

import base64
import binascii
import io
import json
import logging
import os
import time
from typing import Any, Callable, Optional, Set
from urllib.parse import unquote

from synapse.module_api import ModuleApi
from synapse.module_api.errors import SynapseError
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from synapse_pypi._config import PyPIConfig
from synapse_pypi._errors import HttpError
from synapse_pypi._files import FileChain, LocalCache, WantedFile
from synapse_pypi._local import LocalFirstPages, LocalProjects, Upload
from synapse_pypi._metadata import NoCoreMetadata, wheel_metadata
from synapse_pypi._multipart_gate import form_type
from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize
from synapse_pypi._upload_rules import (
    Form,
    UploadRequest,
    admit,
    bad,
    check_core_metadata,
    check_digests,
    check_form,
    digests_of,
    may_publish,
    parse_form,
    provenance,
    sdist_pkg_info,
)
from synapse_pypi._upstream import UpstreamError, UpstreamNotFound
from synapse_pypi._web import send_error

logger = logging.getLogger(__name__)

TOKEN_USER = "__token__"


async def user_of_token(api: ModuleApi, token: str) -> str:
    """The Matrix user whose access token this is.

    The ModuleApi validates only a token its request carries as `Authorization: Bearer`;
    upload clients send HTTP Basic, so the token is checked with the same `Auth` that
    Synapse's client API uses (an internal attribute: this is the one place it is used).

    Raises:
        HttpError: 401 for a token Synapse does not know (or an expired one).
    """
    auth = api._hs.get_auth()  # noqa: SLF001 - see the docstring
    try:
        requester = await auth.get_user_by_access_token(token)
    except SynapseError as e:  # InvalidClientTokenError, AuthError (an expired token)
        raise HttpError(http.UNAUTHORIZED, f"the access token is not valid ({e.msg})")
    return requester.user.to_string()


def token_from_header(header: Optional[bytes]) -> str:
    """The access token of an `Authorization` header: Basic with user `__token__` (what
    upload clients send), or Bearer.

    Raises:
        HttpError: 401 for a missing or unusable header.
    """
    if not header:
        raise HttpError(http.UNAUTHORIZED, "log in with user __token__ and a Matrix access token as the password")
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip().decode("latin-1")
    if scheme.lower() != b"basic":
        raise HttpError(http.UNAUTHORIZED, "use HTTP Basic auth: user __token__, a Matrix access token as password")
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise HttpError(http.UNAUTHORIZED, "the Authorization header is not valid Basic auth")
    if user != TOKEN_USER or not password:
        raise HttpError(http.UNAUTHORIZED, f"log in as user {TOKEN_USER} with a Matrix access token as the password")
    return password


class LegacyUploadResource(Resource):
    """Registered at `/legacy` (`/legacy` and `/legacy/` both take uploads).

    Args:
        api: the module API (auth, admin check, room state).
        config: the module's config (`max_upload_size`, `uploaders`, powers, the room prefix).
        local: the uploads.
        pages: the page service (the upstream's view of a name).
        files: the file chain (commits an upload like a download).
        cache: the local cache (partial files).
        run_in_background: Synapse's `run_in_background`.
        defer_to_thread: `ModuleApi.defer_to_thread`.
        clock: milliseconds since the epoch.
    """

    isLeaf = True

    def __init__(
        self,
        api: ModuleApi,
        config: PyPIConfig,
        local: LocalProjects,
        pages: LocalFirstPages,
        files: FileChain,
        cache: LocalCache,
        run_in_background: Callable[..., Any],
        defer_to_thread: Callable[..., Any],
        clock: Optional[Callable[[], int]] = None,
    ):
        super().__init__()
        self._api = api
        self._config = config
        self._local = local
        self._pages = pages
        self._files = files
        self._cache = cache
        self._run_in_background = run_in_background
        self._defer_to_thread = defer_to_thread
        self._now = clock or (lambda: int(time.time() * 1000))
        # (project, filename) of uploads in progress: a second one at once is refused.
        self._busy: Set[Any] = set()

    def render(self, request: Any) -> Any:
        parts = [p for p in request.postpath if p]
        if request.method in (b"GET", b"HEAD") and len(parts) == 3 and parts[0] == b"provenance":
            self._run_in_background(self._answer, request, self._provenance, parts[1], parts[2])
            return NOT_DONE_YET
        if parts or request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            send_error(request, http.NOT_ALLOWED, "POST uploads here (the legacy upload API)")
            return NOT_DONE_YET
        self._run_in_background(self._answer, request, self._upload)
        return NOT_DONE_YET

    async def _answer(self, request: Any, handler: Callable[..., Any], *args: Any) -> None:
        try:
            await handler(request, *args)
        except HttpError as e:
            _refuse(request, e.code, e.reason)
        except Exception:
            logger.exception("error handling %r", request.uri)
            _refuse(request, http.INTERNAL_SERVER_ERROR, "internal error; see the homeserver log")

    async def _provenance(self, request: Any, raw_project: bytes, raw_filename: bytes) -> None:
        try:
            project = normalize(unquote(raw_project.decode("utf-8"), errors="strict"))
            filename = unquote(raw_filename.decode("utf-8"), errors="strict")
        except (UnicodeDecodeError, InvalidName):
            raise HttpError(http.NOT_FOUND, "no such upload")
        upload = self._local.file(project, filename) if is_safe_filename(filename) else None
        if upload is None or upload.attestations is None:
            raise HttpError(http.NOT_FOUND, f"{filename}: no attestations were uploaded with it")
        body = json.dumps(provenance(upload.uploader, json.loads(upload.attestations))).encode()
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", b"application/vnd.pypi.integrity.v1+json")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _upload(self, request: Any) -> None:
        if not self._local.ready:
            raise HttpError(http.SERVICE_UNAVAILABLE, "the index is starting up; try again in a moment")
        user = await user_of_token(self._api, token_from_header(request.getHeader(b"authorization")))
        form = await self._read_form(request)
        want = check_form(form)
        await self._check_allowed(user, want)
        assert form.content is not None
        key = (want.project, want.filename)
        if key in self._busy:
            raise HttpError(http.CONFLICT, f"{want.filename}: another upload of this file is in progress")
        self._busy.add(key)
        try:
            stored = await self._store(user, want, form.content)
        finally:
            self._busy.discard(key)
        body = f"OK: {stored}\n".encode()
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def _read_form(self, request: Any) -> Form:
        """The form, once its size is known to be within `max_upload_size`.

        Synapse has read the body already (its own cap on request bodies comes first:
        the larger of 200 * 64 KiB and the media repository's `max_upload_size`), and
        nobody has parsed it (`_multipart_gate.py`)."""
        limit = self._config.max_upload_size
        declared = request.getHeader(b"content-length")
        size = request.content.seek(0, os.SEEK_END)
        if (declared is not None and declared.isdigit() and int(declared) > limit) or size > limit:
            raise HttpError(
                http.REQUEST_ENTITY_TOO_LARGE, f"the upload is larger than max_upload_size ({limit} bytes)"
            )
        request.content.seek(0)
        body = request.content.read()
        content_type = form_type(request).decode("latin-1")
        return await self._defer_to_thread(parse_form, body, content_type)

    async def _check_allowed(self, user: str, want: UploadRequest) -> None:
        project = want.project
        if not may_publish(
            user,
            project,
            await self._api.is_user_admin(user),
            self._config.uploaders,
            await self._room_power(project, user),
            self._config.attestation_power_level,
        ):
            raise HttpError(http.FORBIDDEN, f"{user} may not upload files of {project}")
        upstream_has: Optional[bool] = None
        if self._local.configured_mode(project) is None and not self._local.has(project):
            try:
                await self._pages.upstream_project(NormalizedName(project))
                upstream_has = True
            except UpstreamNotFound:
                upstream_has = False
            except UpstreamError as e:
                logger.warning("upload of %s: cannot ask the upstream about %s (%s)", want.filename, project, e)
        admit(project, self._local.configured_mode(project), self._local.has(project), upstream_has)

    async def _room_power(self, project: str, user: str) -> Optional[int]:
        """`user`'s power level in the project's room here, or None without a room."""
        alias = f"#{self._config.room_alias_prefix}{project}:{self._api.server_name}"
        try:
            room_id, _ = await self._api.lookup_room_alias(alias)
        except SynapseError:  # no such alias: nobody has power in a room that does not exist
            return None
        state = await self._api.get_room_state(room_id, [("m.room.power_levels", "")])
        event = state.get(("m.room.power_levels", ""))
        if event is None:
            return None
        content = dict(event.content)
        users = content.get("users") or {}
        level = users.get(user, content.get("users_default", 0))
        return level if isinstance(level, int) else None

    async def _store(self, user: str, want: UploadRequest, content: bytes) -> str:
        """Check the bytes, then commit and record them; a description of what was done."""
        actual = await self._defer_to_thread(digests_of, content)
        check_digests(want.filename, want.digests, actual)
        sha256, size = actual["sha256"], len(content)
        requires_python = want.requires_python
        if want.filename.endswith(".whl"):
            try:
                metadata = await self._defer_to_thread(wheel_metadata, io.BytesIO(content), want.filename)
            except NoCoreMetadata as e:
                raise bad(f"not a usable wheel: {e}")
            requires_python = check_core_metadata(want.filename, metadata, want.project, want.version)
        else:
            pkg_info = await self._defer_to_thread(sdist_pkg_info, content, want.filename)
            requires_python = check_core_metadata(want.filename, pkg_info, want.project, want.version, "PKG-INFO")
        await self._check_name_free(want, sha256)
        existing = self._local.file(want.project, want.filename)
        if existing is not None and self._cache.has(sha256):
            logger.info("upload of %s/%s by %s: the same bytes again", want.project, want.filename, user)
            return f"{want.filename} was uploaded before with these bytes"
        if existing is None:
            # Recorded first: from then on the cache keeps the blob (it is never evicted).
            await self._local.add(
                Upload(want.project, want.filename, sha256, size, requires_python, user, self._now(), want.attestations)
            )
        await self._files.commit_upload(WantedFile(want.project, want.filename, "", sha256, size), content)
        logger.info("upload of %s/%s by %s: stored (%d bytes, sha256 %s)", want.project, want.filename, user,
                    size, sha256)
        return f"stored {want.filename} ({size} bytes, sha256 {sha256})"

    async def _check_name_free(self, want: UploadRequest, sha256: str) -> None:
        """A file name is one set of bytes, here and upstream: another upload, or an
        upstream file of that name (merge and replace alike), with other bytes is a 409."""
        existing = self._local.file(want.project, want.filename)
        if existing is not None and existing.sha256 != sha256:
            raise HttpError(
                http.CONFLICT,
                f"{want.filename} exists already with other bytes (sha256 {existing.sha256}); "
                "a file name can never be reused: upload a new version",
            )
        if self._local.configured_mode(want.project) is None:
            return
        try:
            view = await self._pages.upstream_project(NormalizedName(want.project))
        except UpstreamNotFound:
            return
        except UpstreamError as e:
            raise HttpError(
                http.SERVICE_UNAVAILABLE,
                f"cannot check {want.filename} against the upstream's files of {want.project} ({e.reason})",
            )
        dist = view.page.file(want.filename)
        theirs = dist.hashes.get("sha256") if dist is not None else None
        if dist is not None and theirs != sha256:
            raise HttpError(
                http.CONFLICT,
                f"{want.filename} exists in the upstream index with other bytes (sha256 {theirs}); "
                "a file name can never be reused: upload a new version",
            )


def _refuse(request: Any, code: int, reason: str) -> None:
    """An error with its reason in the status line too: twine prints only that."""
    if request.finished or request.startedWriting or getattr(request, "_disconnected", False):
        send_error(request, code, reason)  # aborts a response that has started, if any
        return
    line = reason.replace("\n", " ")
    body = (line + "\n").encode("utf-8")
    request.setResponseCode(code, line.encode("latin-1", "replace")[:400])
    if code == http.UNAUTHORIZED:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="synapse-pypi"')
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()
