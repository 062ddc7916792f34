"""The admin API under `/_synapse/pypi/`: server admins only (401 without a token,
403 for a user who is not a server admin).

    GET    /_synapse/pypi/v1/projects                      projects with a cached page or a room
    GET    /_synapse/pypi/v1/projects/<p>/files/<file>     a file's attestations, the verdict on
                                                           each, and the serve decision
    POST   /_synapse/pypi/v1/projects/<p>/reverify         read the room again, revalidate the page
                                                           with the upstream, check every file
    DELETE /_synapse/pypi/v1/projects/<p>/files/<file>     purge a file from the local cache
    DELETE /_synapse/pypi/v1/projects/<p>/page             purge the cached index page
    GET    /_synapse/pypi/v1/projects/<p>/flagged          attestations flagged as fraud or invalid
    GET    /_synapse/pypi/v1/files/<sha256>                what this server holds of a blob: local
                                                           cache, references (CIDs), backends
    POST   /_synapse/pypi/v1/known_files                   teach a file by digest and CID, for
                                                           mirrors that cannot ask the upstream
    GET    /_synapse/pypi/v1/projects/<p>/cached           the project's files in the local cache
    POST   /_synapse/pypi/v1/snapshots/<name>              name a snapshot CID: {"cid": ...}
    GET    /_synapse/pypi/v1/snapshots/<name>              the CID a name resolves to, and its signer
"""

import logging
import re
from typing import Any, Dict, Optional, Tuple

import attrs
from synapse.module_api import DirectServeJsonResource, ModuleApi
from synapse.module_api.errors import SynapseError

from synapse_pypi import _metrics
from synapse_pypi._backends import Backends
from synapse_pypi._errors import HttpError
from synapse_pypi._files import LocalCache
from synapse_pypi._names import InvalidName, is_safe_filename, normalize
from synapse_pypi._store import Store

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_FIELD = 1024


def _bad(msg: str) -> SynapseError:
    return SynapseError(400, msg, "M_INVALID_PARAM")


class AdminResource(DirectServeJsonResource):
    """Registered at `/_synapse/pypi`; routes on the rest of the path."""

    isLeaf = True

    def __init__(
        self,
        api: ModuleApi,
        store: Store,
        cache: LocalCache,
        backends: Optional[Backends],
        trust: Any = None,
        pages: Any = None,
        files: Any = None,
        snapshot_names: Any = None,
    ):
        super().__init__()
        self._snapshot_names = snapshot_names
        self._api = api
        self._store = store
        self._cache = cache
        self._backends = backends
        self._trust = trust
        self._pages = pages
        self._files = files

    async def _require_admin(self, request: Any) -> str:
        requester = await self._api.get_user_by_req(request)  # 401 without a valid token
        user_id = requester.user.to_string()
        if not await self._api.is_user_admin(user_id):
            raise SynapseError(403, "You are not a server admin", "M_FORBIDDEN")
        return user_id

    def render(self, request: Any) -> Any:
        _metrics.track_request(request, "admin")
        return super().render(request)

    def _path(self, request: Any) -> Tuple[str, ...]:
        return tuple(p.decode("utf-8", "replace") for p in request.postpath if p)

    async def _async_render_GET(self, request: Any) -> Tuple[int, Dict[str, Any]]:
        await self._require_admin(request)
        path = self._path(request)
        if len(path) == 3 and path[:2] == ("v1", "files"):
            return 200, await self._file_status(path[2])
        if path == ("v1", "projects"):
            return 200, await self._projects()
        if len(path) == 5 and path[:2] == ("v1", "projects") and path[3] == "files":
            return 200, await self._attestations(self._project(path[2]), path[4])
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "flagged":
            project = self._project(path[2])
            return 200, {
                "project": project,
                "flagged": await self._store.flagged(project),
                **(self._trust.moderation.counters() if self._trust else {}),
            }
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "bans":
            if self._trust is None:
                raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
            project = self._project(path[2])
            pt = await self._trust.view_for_serve(project)
            return 200, {"project": project, "bans": self._trust.bans(pt)}
        if path == ("v1", "bans"):
            if self._trust is None:
                raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
            return 200, {"bans": [
                {"project": name, **ban} for name, pt in sorted(self._trust.known_rooms.items())
                for ban in self._trust.bans(pt)
            ]}
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "cached":
            project = self._project(path[2])
            cached = await self._files.cached_files(project)
            return 200, {"project": project, "files": [
                {"filename": name, "sha256": sha, "size": size}
                for name, (sha, size) in sorted(cached.items()) if not name.endswith(".metadata")
            ]}
        if len(path) == 3 and path[:2] == ("v1", "snapshots") and self._snapshot_names is not None:
            try:
                named = await self._snapshot_names.resolve(path[2])
            except HttpError as e:
                raise SynapseError(e.code, e.reason, "M_NOT_FOUND" if e.code == 404 else "M_UNKNOWN")
            return 200, attrs.asdict(named)
        if path == ("v1", "trust"):
            if self._trust is None:
                raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
            return 200, self._trust.counters()
        raise SynapseError(404, "Unknown admin endpoint", "M_UNRECOGNIZED")

    async def _async_render_DELETE(self, request: Any) -> Tuple[int, Dict[str, Any]]:
        user_id = await self._require_admin(request)
        path = self._path(request)
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "page":
            project = self._project(path[2])
            existed = await self._pages.forget(project)
            logger.info("admin %s purged the cached page of %s", user_id, project)
            return 200, {"project": project, "purged": existed}
        if len(path) == 5 and path[:2] == ("v1", "projects") and path[3] == "files":
            project, filename = self._project(path[2]), path[4]
            if not is_safe_filename(filename):
                raise _bad("invalid file name")
            # Refuse before changing anything: a 409 leaves the file exactly as it was.
            digest = await self._store.file_digest(project, filename)
            if digest is not None and self._cache.in_use(digest):
                raise SynapseError(409, "the file is being served right now; try again", "M_UNKNOWN")
            sha256 = await self._store.forget_file(project, filename)
            purged = False
            if sha256 is not None and not self._cache.in_use(sha256):
                await self._cache.remove(sha256, reason=f"purged by {user_id}")
                purged = True
            logger.info("admin %s purged %s/%s (%s)", user_id, project, filename, sha256)
            return 200, {"project": project, "filename": filename, "purged": purged, "sha256": sha256}
        raise SynapseError(404, "Unknown admin endpoint", "M_UNRECOGNIZED")

    @staticmethod
    def _project(raw: str) -> str:
        try:
            return normalize(raw)
        except InvalidName as e:
            raise _bad(f"project: {e}")

    async def _projects(self) -> Dict[str, Any]:
        names = set(await self._store.list_projects())
        if self._trust is not None:
            names |= set(self._trust.known_rooms)
        out = []
        for name in sorted(names):
            pt = self._trust.known_rooms.get(name) if self._trust else None
            out.append(
                {
                    "name": name,
                    "room_id": pt.local.room_id if pt and pt.local else None,
                    "alias": self._trust.alias_for(name) if self._trust else None,
                    "peer_rooms": {peer: room.room_id for peer, room in pt.peers.items()} if pt else {},
                }
            )
        return {"projects": out}

    async def _attestations(self, project: str, filename: str) -> Dict[str, Any]:
        if self._trust is None:
            raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
        page, fresh = await self._pages.cached_with_freshness(project)
        dist = page.file(filename) if page is not None else None
        upstream_sha = dist.hashes.get("sha256") if dist is not None and dist.url else None
        room = await self._trust.view_for_serve(project)
        status = self._trust.status(room, filename, upstream_sha, fresh)
        status.update({"project": project, "filename": filename, "upstream_sha256": upstream_sha})
        return status

    async def _reverify(self, project: str) -> Dict[str, Any]:
        if self._trust is None:
            raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
        room = await self._trust.reload(project)
        self._pages.expire(project)
        try:
            view = await self._pages.project(project)
        except Exception as e:
            raise SynapseError(502, f"the upstream page could not be had: {e}", "M_UNKNOWN")
        checked = []
        for dist in view.page.files:
            decision = self._trust.decide(room, dist.filename, dist.hashes.get("sha256"), not view.offline)
            self._trust.handle_decision(project, room, dist.filename, decision)
            checked.append(
                {
                    "filename": dist.filename,
                    "outcome": decision.outcome.name.lower(),
                    "sha256": decision.sha256,
                    "fraud": [[c.publisher, c.sha256] for c in decision.fraud],
                    "upstream_lost": decision.upstream_lost,
                    "invalid": [r.event_id for _, r in self._trust.invalid_records(room, dist.filename)],
                }
            )
        return {"project": project, "room_id": room.local.room_id if room.local else None, "files": checked}

    async def _async_render_POST(self, request: Any) -> Tuple[int, Dict[str, Any]]:
        user_id = await self._require_admin(request)
        path = self._path(request)
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "reverify":
            return 200, await self._reverify(self._project(path[2]))
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "bans":
            from synapse.module_api import parse_json_object_from_request

            return 200, await self._ban(self._project(path[2]), parse_json_object_from_request(request), user_id)
        if len(path) == 4 and path[:2] == ("v1", "projects") and path[3] == "room":
            if self._trust is None:
                raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
            project = self._project(path[2])
            logger.info("admin %s asked for the package room of %s", user_id, project)
            return 200, await self._trust.make_room(project)
        if len(path) == 3 and path[:2] == ("v1", "snapshots") and self._snapshot_names is not None:
            from synapse.module_api import parse_json_object_from_request

            body = parse_json_object_from_request(request)
            if set(body) != {"cid"} or not isinstance(body["cid"], str):
                raise _bad('the body must be {"cid": "<CID>"}')
            try:
                return 200, await self._snapshot_names.publish(path[2], body["cid"], user_id)
            except HttpError as e:
                raise SynapseError(e.code, e.reason, "M_INVALID_PARAM" if e.code == 400 else "M_UNKNOWN")
        if path == ("v1", "known_files"):
            from synapse.module_api import parse_json_object_from_request

            body = parse_json_object_from_request(request)
            return 200, await self._teach(body, user_id)
        raise SynapseError(404, "Unknown admin endpoint", "M_UNRECOGNIZED")

    async def _ban(self, project: str, body: Dict[str, Any], user_id: str) -> Dict[str, Any]:
        """`{"target": <file name | version | project>, "reason": ..., "unban": false}`: our
        bot's signed ban (or the lifting of its own), published through the Matrix queue."""
        from synapse_pypi.trust._bans import resolve_target

        if self._trust is None:
            raise SynapseError(404, "the trust layer is off", "M_NOT_FOUND")
        target, reason, unban = body.get("target"), body.get("reason"), body.get("unban", False)
        if not isinstance(target, str) or not isinstance(unban, bool):
            raise _bad("'target' (a file name, a version or the project) is required; 'unban' is true or false")
        if not unban and (not isinstance(reason, str) or not reason.strip()):
            raise _bad("a ban needs a 'reason'")
        resolved = resolve_target(project, target)
        if isinstance(resolved, str):
            raise _bad(resolved)
        kind, entity = resolved
        why = f"{(reason or 'lifted').strip()} (asked by {user_id})"
        (self._trust.unban if unban else self._trust.ban)(project, kind, entity, why, "admin")
        await self._trust.queue.drain()
        pt = await self._trust.view_for_serve(project)
        logger.info("admin %s %s %s %s of %s", user_id, "unbanned" if unban else "banned", kind, entity, project)
        return {"project": project, "kind": kind, "entity": entity, "bans": self._trust.bans(pt)}

    async def _file_status(self, sha256: str) -> Dict[str, Any]:
        if not SHA256_RE.match(sha256):
            raise _bad("expected a lower-case hex sha256")
        stored = await self._store.stored_in(sha256)
        return {
            "sha256": sha256,
            "cached": self._cache.has(sha256),
            "size": self._cache.size_of(sha256),
            "references": await self._store.refs_for(sha256),
            "stored": {name: {"reference": ref, "stored_at": ts} for name, (ref, ts) in stored.items()},
            "pending": bool(self._backends and self._backends.has_pending(sha256)),
        }

    async def _teach(self, body: Dict[str, Any], user_id: str) -> Dict[str, Any]:
        try:
            project = normalize(str(body.get("project", "")))
        except InvalidName as e:
            raise _bad(f"project: {e}")
        filename = body.get("filename")
        if not isinstance(filename, str) or not is_safe_filename(filename):
            raise _bad("filename: missing or not a safe file name")
        sha256 = body.get("sha256")
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise _bad("sha256: expected a lower-case hex sha256")
        size = body.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise _bad("size: expected a non-negative integer")
        requires_python = body.get("requires_python")
        if requires_python is not None and (not isinstance(requires_python, str) or len(requires_python) > MAX_FIELD):
            raise _bad("requires_python: expected a string")
        cid = body.get("cid")
        if cid is not None and (not isinstance(cid, str) or not cid or len(cid) > MAX_FIELD or "/" in cid):
            raise _bad("cid: expected a CID string")
        source = f"admin {user_id}"
        await self._store.add_known(project, filename, sha256, size, requires_python, source)
        if cid:
            await self._store.add_ref(sha256, "cid", cid, source)
        logger.info("admin %s taught %s/%s sha256 %s cid %s", user_id, project, filename, sha256, cid)
        return {"project": project, "filename": filename, "sha256": sha256, "cid": cid}
