"""Community indexes (issue 16): a room, on any federated server, whose state lists the
projects and version ranges a community accepts; the mirror serves it at
`/index/<room alias>/simple/` with only what the list allows, every file verified as usual.

The list is one state event per project, kept by the room's moderators from any Matrix client
(Element's devtools, matrix-commander, curl): type `dev.synapse-pypi.index`, state key the
project's normalized name, content `{"versions": "<PEP 440 specifier>"}` (`""` or no key: every
version; `{}`, an emptied state, takes the project off the list). Who may change the list is
the room's business (its power levels), as with any state: the mirror believes the state that
Synapse applied, and nothing else. Everything else is the ordinary serve path: pages from the
upstream through the cache, hashes decided by the trust layer, bans, 409s.
"""

import logging
import time
from typing import Any, Dict, Mapping, Tuple
from urllib.parse import quote

import attrs
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from twisted.web import http

from synapse_pypi import index
from synapse_pypi._errors import HttpError
from synapse_pypi._files import METADATA_SUFFIX
from synapse_pypi._names import InvalidName, NormalizedName, normalize
from synapse_pypi._negotiate import Format
from synapse_pypi._room_reader import RoomReader
from synapse_pypi._subindex import SubIndexResource, Wanted
from synapse_pypi._trust_service import version_of

logger = logging.getLogger(__name__)

INDEX_TYPE = "dev.synapse-pypi.index"
# How long a community's list is kept before its room is read again.
LIST_TTL_S = 2.0


def parse_list(state: Mapping[Tuple[str, str], Any]) -> Dict[NormalizedName, SpecifierSet]:
    """project -> the versions allowed, from the room's index state; entries that are not a
    project name or whose specifier does not parse are left out (and logged)."""
    out: Dict[NormalizedName, SpecifierSet] = {}
    for (_type, key), event in state.items():
        content = dict(event.content)
        if not content:
            continue  # emptied: taken off the list
        versions = content.get("versions", "")
        try:
            name = normalize(key)
            if name != key or not isinstance(versions, str):
                raise ValueError(f"state key {key!r} / versions {versions!r}")
            out[NormalizedName(name)] = SpecifierSet(versions)
        except (InvalidName, InvalidSpecifier, ValueError) as e:
            logger.info("community index entry %r ignored: %s", key, e)
    return out


def allowed(spec: SpecifierSet, filename: str) -> bool:
    base = filename[: -len(METADATA_SUFFIX)] if filename.endswith(METADATA_SUFFIX) else filename
    version = version_of(base)
    if version is None:
        return False
    try:
        # Pre-releases as the list says; clients still skip them unless asked.
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


@attrs.frozen
class CommunityList:
    alias: str
    room_id: str
    projects: Dict[NormalizedName, SpecifierSet]


class CommunityIndexes:
    """Reads communities' lists (joined over federation, each within `peer_timeout`)."""

    def __init__(self, rooms: RoomReader):
        self._rooms = rooms
        self._lists: Dict[str, Tuple[float, CommunityList]] = {}

    async def list_for(self, alias: str) -> CommunityList:
        now = time.monotonic()
        hit = self._lists.get(alias)
        if hit is not None and now - hit[0] < LIST_TTL_S:
            return hit[1]
        room_id = await self._rooms.open(alias, "community index")
        state = await self._rooms.state(room_id, [(INDEX_TYPE, None)])
        found = CommunityList(alias, room_id, parse_list(state))
        self._lists[alias] = (now, found)
        return found


def _alias(raw: str) -> str:
    alias = raw if raw.startswith("#") else "#" + raw
    local, colon, server = alias[1:].partition(":")
    if not local or not colon or not server or any(c.isspace() for c in alias) or "/" in alias:
        raise HttpError(http.BAD_REQUEST, f"{raw!r} is not a room alias (#name:server)")
    return alias


class CommunityResource(SubIndexResource):
    """The resource registered at `/index`: `/index/<room alias>/simple/...`."""

    REF = "/index/<room alias>"

    def __init__(self, *args: Any, communities: CommunityIndexes, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._communities = communities

    async def _serve(self, request: Any, wanted: Wanted) -> None:
        alias = _alias(wanted.ref)
        listed = await self._communities.list_for(alias)
        if wanted.name is None:
            return self._community_root(request, listed)
        spec = listed.projects.get(wanted.name)
        if spec is None:
            raise HttpError(http.NOT_FOUND, f"{wanted.name} is not in the community index {alias}")
        if wanted.filename == "":
            return await self._community_project(request, wanted.name, spec)
        if not allowed(spec, wanted.filename):
            raise HttpError(http.NOT_FOUND, f"{wanted.filename}: {alias} allows only {wanted.name} {spec or 'any'}")
        return await self._file(request, wanted.name, wanted.filename)

    def _community_root(self, request: Any, listed: CommunityList) -> None:
        fmt, content_type = self._negotiate(request)
        names = sorted(listed.projects)
        render = index.render_root_json if fmt is Format.JSON_V1 else index.render_root_html
        # The list may change at any time: clients revalidate.
        self._send_rendered(request, lambda: render(names), content_type, False)

    async def _community_project(self, request: Any, name: NormalizedName, spec: SpecifierSet) -> None:
        fmt, content_type = self._negotiate(request)
        view = await self._pages.project(name, wanted=lambda: not getattr(request, "_disconnected", False))
        if self._trust is not None:
            await self._trust.view_for_page(name)
        page = await self._servable_page(view.page, view.offline)
        kept = tuple(f for f in page.files if allowed(spec, f.filename))
        page = attrs.evolve(page, files=kept, versions=index.versions_from_filenames(f.filename for f in kept))
        render = index.render_project_json if fmt is Format.JSON_V1 else index.render_project_html
        self._send_rendered(request, lambda: render(page, _relative), content_type, False)


def _relative(f: index.DistFile) -> str:
    return quote(f.filename)

