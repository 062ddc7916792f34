"""Index pages: served from cache within the TTL, revalidated after it, stale while the
upstream is unreachable.

Pages are kept parsed in our own model (index.ProjectPage) in the database, so a page
from an HTML upstream and one from a JSON upstream are served alike in either format.
"""

import json
import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, List, Optional, Tuple, TypeVar

import attrs

from synapse_pypi import index
from synapse_pypi._context import SingleFlight
from synapse_pypi._names import NormalizedName
from synapse_pypi._store import Store, StoredPage
from synapse_pypi._upstream import (
    NotModified,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamUnreachable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = ""  # the project key of the root /simple/ page
MEMORY_PAGES = 2048
# Pages larger than this are parsed in a thread.
THREAD_PARSE_BYTES = 256 * 1024


def _parse(key: str, response: Any) -> Tuple[Any, str]:
    """(parsed page, storage text) of an upstream response; pure CPU work."""
    if key == ROOT:
        names = tuple(sorted(set(index.parse_root(response.body, response.content_type))))
        return names, json.dumps(list(names))
    page = index.parse_project(response.body, response.content_type, response.url, NormalizedName(key))
    return page, index.page_to_json(page)


@attrs.frozen
class PageView:
    """A project page and how current it is."""

    page: index.ProjectPage
    # True when the upstream could not be asked and this is what we had.
    offline: bool


@attrs.frozen
class _Entry:
    stored: StoredPage
    page: Any  # index.ProjectPage, or a tuple of names for the root


class PageService:
    """Gets project pages and the root list through the cache.

    Args:
        store: the module's tables.
        upstream: the upstream client.
        upstream_url: the upstream's simple URL, ending in "/".
        ttl_ms: how long a page is served before it is revalidated.
        yieldable: `make_deferred_yieldable`.
        clock: milliseconds since the epoch.
        fallback: builds a page without the upstream (from files known otherwise),
            used when the upstream cannot be asked and nothing is cached.
        retry_ms: after the upstream failed, how long requests are answered from what we
            have without asking it again (one slow or refused attempt per interval, not
            one per request).
    """

    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        upstream_url: str,
        ttl_ms: int,
        yieldable: Callable[[Any], Any] = lambda d: d,
        clock: Optional[Callable[[], int]] = None,
        fallback: Optional[Callable[[str], Awaitable[Optional[index.ProjectPage]]]] = None,
        defer_to_thread: Optional[Callable[..., Awaitable[Any]]] = None,
        retry_ms: int = 10_000,
    ):
        self._retry_ms = retry_ms
        self._last_failure = 0
        self._fallback = fallback
        self._defer_to_thread = defer_to_thread
        self._store = store
        self._upstream = upstream
        self._base = upstream_url
        self._ttl = ttl_ms
        self._now = clock or (lambda: int(time.time() * 1000))
        self._flights = SingleFlight(yieldable)
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._offline_since: Optional[int] = None
        self.upstream_page_fetches = 0

    async def project(self, name: NormalizedName) -> PageView:
        """The page of `name`.

        Raises:
            UpstreamNotFound: the upstream has no such project (and we never had it).
            UpstreamError: the upstream failed and nothing is cached.
        """
        entry, offline = await self._get(name)
        return PageView(entry.page, offline)

    async def root(self) -> Tuple[List[str], bool]:
        """The names for /simple/: the upstream's list, else the projects we have cached."""
        try:
            entry, offline = await self._get(ROOT)
            return list(entry.page), offline
        except UpstreamError as e:
            logger.warning("root index unavailable (%s); listing cached projects only", e)
            return await self._store.list_projects(), True

    async def cached(self, name: str) -> Optional[index.ProjectPage]:
        """The cached page of `name` whatever its age, without asking the upstream."""
        entry = await self._load(name)
        return entry.page if entry else None

    async def cached_with_freshness(self, name: str) -> Tuple[Optional[index.ProjectPage], bool]:
        """The cached page of `name` and whether it is within its TTL."""
        entry = await self._load(name)
        if entry is None:
            return None, False
        return entry.page, self._now() - entry.stored.fetched_at < self._ttl

    async def forget(self, name: str) -> bool:
        """Drop the cached page of `name` (memory and database)."""
        self._memory.pop(name, None)
        return await self._store.delete_page(name)

    def expire(self, name: str) -> None:
        """Make the next request for `name` revalidate with the upstream, even during an
        outage (the admin's re-verify asks the upstream now, whatever failed before)."""
        self._last_failure = 0
        entry = self._memory.get(name)
        if entry is not None:
            self._memory[name] = _Entry(attrs.evolve(entry.stored, fetched_at=0), entry.page)

    async def _load(self, key: str) -> Optional[_Entry]:
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            return entry
        stored = await self._store.get_page(key)
        if stored is None:
            return None
        try:
            page = self._decode(key, stored.page)
        except (ValueError, index.MalformedPage) as e:
            logger.error("cached page of %r is unreadable (%s); fetching it again", key, e)
            return None
        entry = _Entry(stored, page)
        self._remember(key, entry)
        return entry

    def _remember(self, key: str, entry: _Entry) -> None:
        self._memory[key] = entry
        self._memory.move_to_end(key)
        while len(self._memory) > MEMORY_PAGES:
            self._memory.popitem(last=False)

    @staticmethod
    def _decode(key: str, text: str) -> Any:
        if key == ROOT:
            return tuple(json.loads(text))
        return index.page_from_json(text)

    async def _get(self, key: str) -> Tuple[_Entry, bool]:
        entry = await self._load(key)
        if entry is not None and self._now() - entry.stored.fetched_at < self._ttl:
            return entry, False
        if self.in_outage():
            # The upstream failed moments ago: answer from what we have, at once.
            if entry is not None:
                return entry, True
            built = await self._fallback(key) if (self._fallback and key != ROOT) else None
            if built is not None:
                return _Entry(StoredPage(key, "", None, None, 0), built), True
        return await self._flights.run(key, lambda: self._refresh(key))

    def in_outage(self) -> bool:
        """Whether the upstream failed less than `retry_ms` ago (and has not answered since)."""
        return self._offline_since is not None and self._now() - self._last_failure < self._retry_ms

    async def _refresh(self, key: str) -> Tuple[_Entry, bool]:
        # Read again inside the flight: another flight may just have stored it.
        entry = await self._load(key)
        if entry is not None and self._now() - entry.stored.fetched_at < self._ttl:
            return entry, False
        url = self._base + (key + "/" if key else "")
        old = entry.stored if entry else None
        self.upstream_page_fetches += 1
        try:
            response = await self._upstream.get_page(
                url, old.etag if old else None, old.last_modified if old else None
            )
        except NotModified:
            assert entry is not None and old is not None
            now = self._now()
            await self._store.touch_page(key, now)
            entry = _Entry(attrs.evolve(old, fetched_at=now), entry.page)
            self._remember(key, entry)
            self._back_online()
            return entry, False
        except UpstreamNotFound:
            self._back_online()
            raise
        except UpstreamError as e:
            self._went_offline(e)
            if entry is None:
                built = await self._fallback(key) if (self._fallback and key != ROOT) else None
                if built is None:
                    raise
                # Not stored: it is rebuilt from what we know until the upstream answers.
                return _Entry(StoredPage(key, "", None, None, 0), built), True
            return entry, True
        self._back_online()
        try:
            if self._defer_to_thread is not None and len(response.body) > THREAD_PARSE_BYTES:
                # A big page (the root list of a large index) takes seconds to parse:
                # not on the reactor.
                page, text = await self._defer_to_thread(_parse, key, response)
            else:
                page, text = _parse(key, response)
        except index.MalformedPage as e:
            err = UpstreamBadResponse(url, f"malformed index page ({e})")
            if entry is None:
                raise err
            logger.warning("%s; serving the cached copy", err)
            return entry, True
        stored = StoredPage(key, text, response.etag, response.last_modified, self._now())
        await self._store.put_page(stored)
        entry = _Entry(stored, page)
        self._remember(key, entry)
        return entry, False

    def _went_offline(self, e: UpstreamError) -> None:
        if isinstance(e, (UpstreamUnreachable, UpstreamTimeout)):
            # The whole upstream is down or hangs, not just this page: remember it.
            self._last_failure = self._now()
        # One warning per outage, not one per request.
        if self._offline_since is None:
            self._offline_since = self._now()
            logger.warning("upstream unreachable (%s); serving cached pages until it is back", e)

    def _back_online(self) -> None:
        if self._offline_since is not None:
            logger.info("upstream reachable again after %.1fs", (self._now() - self._offline_since) / 1000)
            self._offline_since = None
