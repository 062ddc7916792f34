"""Index pages: served from cache within the TTL, revalidated after it, stale while the
upstream is unreachable.

Pages are kept parsed in our own model (index.ProjectPage) in the database, so a page
from an HTML upstream and one from a JSON upstream are served alike in either format.
In memory, parsed pages and the bytes rendered from them share one budget in bytes
(`PageBudget`), so a few huge pages cannot take the homeserver's memory.
"""

import ctypes
import ctypes.util
import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Dict, Hashable, List, Optional, Tuple, TypeVar

import attrs

from synapse_pypi import index
from synapse_pypi._context import SingleFlight
from synapse_pypi._names import NormalizedName
from synapse_pypi._store import Store, StoredPage
from synapse_pypi._upstream import (
    NobodyWaits,
    NotModified,
    UpstreamBadResponse,
    UpstreamClient,
    UpstreamError,
    UpstreamForbidden,
    UpstreamNotFound,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnreachable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = ""  # the project key of the root /simple/ page
# Pages (and stored texts) larger than this are parsed in a thread.
THREAD_PARSE_BYTES = 256 * 1024
# A parsed page takes about this many times its storage text in memory (measured: a
# 200,000-file page is 84 MB of text and 254 MB of objects).
MODEL_BYTES_PER_TEXT_BYTE = 3
# Failed pages remembered at once, at most (each is a short string).
FAILED_PAGES = 10_000
# A page without a serial does not replace one with a serial until the upstream has sent the
# project's page without one for this long (see index.judge_serial). Counted in memory: a
# restart starts it again, which only delays the change.
SERIAL_GRACE_MS = 60 * 60 * 1000


def _parse(key: str, response: Any, stop: Optional[Callable[[], bool]] = None) -> Tuple[Any, str]:
    """(parsed page, storage text) of an upstream response; pure CPU work."""
    if key == ROOT:
        root = index.parse_root_page(response.body, response.content_type)
        root = index.RootPage(sorted(set(root.names)), root.last_serial)
        return root, index.root_to_json(root)
    page = index.parse_project(response.body, response.content_type, response.url, NormalizedName(key), stop)
    return page, index.page_to_json(page)


def _decode(key: str, text: str) -> Any:
    if key == ROOT:
        return index.root_from_json(text)
    return index.page_from_json(text)


def _libc_trim() -> Callable[[], Any]:
    """glibc's malloc_trim, or a no-op elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


# A huge page parsed in a thread leaves its freed memory in that thread's malloc arena,
# where glibc keeps it; trimming after dropping one gives it back to the system, so RSS
# follows the budget instead of the largest page ever seen.
release_memory = _libc_trim()


class PageBudget:
    """An LRU of parsed pages and rendered bodies, bounded by their size in bytes.

    Args:
        max_bytes: the budget. An item larger than the whole budget is not kept.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self._items: OrderedDict[Hashable, Tuple[Any, int]] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, cost: int) -> bool:
        """Keep `value` under `key`, evicting the least recently used; False if it is
        larger than the budget (and so not kept)."""
        self.pop(key)
        if cost > self.max_bytes:
            return False
        self._items[key] = (value, cost)
        self.used += cost
        freed = 0
        while self.used > self.max_bytes:
            _, (_, old_cost) = self._items.popitem(last=False)
            self.used -= old_cost
            freed += old_cost
        if freed >= THREAD_PARSE_BYTES * MODEL_BYTES_PER_TEXT_BYTE:
            release_memory()
        return True

    def pop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.used -= item[1]

    def __len__(self) -> int:
        return len(self._items)


@attrs.frozen
class PageView:
    """A project page and how current it is."""

    page: index.ProjectPage
    # True when the upstream could not be asked and this is what we had.
    offline: bool


@attrs.frozen
class RootView:
    """The root list and how current it is. `root` is the same object until the
    upstream's list changes, so its rendered bytes can be kept with it."""

    root: index.RootPage
    offline: bool


class SerialGuard:
    """Keeps a page's serial from going backwards (see index.judge_serial): remembers, per
    page, since when the upstream has sent it without the serial ours has.

    Args:
        clock: milliseconds since the epoch.
        grace_ms: how long pages without a serial are held back.
    """

    def __init__(self, clock: Callable[[], int], grace_ms: int):
        self._now = clock
        self._grace_ms = grace_ms
        self._missing_since: OrderedDict[str, int] = OrderedDict()

    def keep_ours(self, key: str, new: Any, old: Any) -> bool:
        """Whether the page we have (`old`) stays, the upstream's (`new`) being older or
        without the serial ours has; logged."""
        new_serial, old_serial = new.last_serial, old.last_serial
        now = since = self._now()
        if new_serial is None and old_serial is not None:
            since = self._missing_since.setdefault(key, now)
            while len(self._missing_since) > FAILED_PAGES:
                self._missing_since.popitem(last=False)
        verdict = index.judge_serial(new_serial, old_serial, now - since, self._grace_ms)
        where = key or "/simple/"
        if verdict is index.SerialVerdict.OLDER:
            # Serials only grow: an older one is a stale cache or a replayed page.
            logger.warning(
                "upstream page of %r has serial %s, older than the %s of the page we have: "
                "a stale or replayed page; keeping ours", where, new_serial, old_serial,
            )
            return True
        if verdict is index.SerialVerdict.MISSING:
            logger.warning(
                "upstream page of %r has no serial, the page we have has %s: keeping ours (a page without "
                "a serial cannot show that it is not older) unless the upstream sends none for %ds",
                where, old_serial, self._grace_ms // 1000,
            )
            return True
        self._missing_since.pop(key, None)
        if verdict is index.SerialVerdict.GONE:
            logger.warning(
                "upstream page of %r has come without a serial for %ds (ours had %s): taking it, the "
                "upstream seems to have stopped sending serials", where, (now - since) // 1000, old_serial,
            )
        return False


@attrs.frozen
class _Entry:
    stored: StoredPage
    page: Any  # index.ProjectPage, or an index.RootPage for the root


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
            one per request); also how long a page the upstream botched (a bad status, a
            malformed or oversized body) is answered with that error without asking again.
        budget: parsed pages in memory, bounded in bytes (shared with rendered pages).
        on_change: told (project, the page we had or None the first time, the upstream's new
            one) before a fetched project page is stored; returns the page to keep (issue 14:
            files the upstream stopped listing are banned, or kept where the admin said so; a
            project the upstream quarantined is banned, also when it already was at the first
            fetch).
        serial_grace_ms: how long upstream pages without a serial are held back when the
            cached page has one (`SerialGuard`).
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
        budget: Optional[PageBudget] = None,
        on_change: Optional[
            Callable[[str, Optional[index.ProjectPage], index.ProjectPage], index.ProjectPage]
        ] = None,
        serial_grace_ms: int = SERIAL_GRACE_MS,
    ):
        self._on_change = on_change
        self.budget = budget if budget is not None else PageBudget(512 * 1024**2)
        self._failed: OrderedDict[str, Tuple[int, UpstreamError]] = OrderedDict()
        self._retry_ms = retry_ms
        self._last_failure = 0
        self._fallback = fallback
        self._defer_to_thread = defer_to_thread
        self._store = store
        self._upstream = upstream
        self._base = upstream_url
        self._ttl = ttl_ms
        self._now = clock or (lambda: int(time.time() * 1000))
        self._serials = SerialGuard(self._now, serial_grace_ms)
        self._flights = SingleFlight(yieldable)
        self._loads = SingleFlight(yieldable)
        # key -> the "is it still wanted?" checks of every request waiting for its fetch.
        self._wanted: Dict[str, List[Callable[[], bool]]] = {}
        self._offline_since: Optional[int] = None
        self.upstream_page_fetches = 0

    async def project(self, name: NormalizedName, wanted: Optional[Callable[[], bool]] = None) -> PageView:
        """The page of `name`.

        Args:
            name: the project.
            wanted: says whether the caller still wants the page (its client is still
                connected). A fetch from the upstream stops once no caller wants it.

        Raises:
            UpstreamNotFound: the upstream has no such project (and we never had it).
            UpstreamError: the upstream failed and nothing is cached.
        """
        entry, offline = await self._get(name, wanted)
        return PageView(entry.page, offline)

    def fresh_entry(self, name: str) -> Tuple[Any, int]:
        """What a request for `name`'s page would be answered from now without any I/O, and
        until when (ms since the epoch): a token to compare with `is` (the same page
        object, not revalidated, expired or forgotten since), else (None, 0). A ready
        answer made from it may be given again until then (`SimpleResource.answer_now`)."""
        entry = self.budget.get(("page", name))
        if entry is None or self._offline_since is not None:
            return None, 0
        return entry, entry.stored.fetched_at + self._ttl

    def now_ms(self) -> int:
        return self._now()

    async def root(self) -> RootView:
        """The names for /simple/: the upstream's list, else the projects we have cached."""
        try:
            entry, offline = await self._get(ROOT)
            return RootView(entry.page, offline)
        except UpstreamError as e:
            logger.warning("root index unavailable (%s); listing cached projects only", e)
            names = [NormalizedName(n) for n in await self._store.list_projects()]
            return RootView(index.RootPage(names), True)

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
        self.budget.pop(("page", name))
        self._failed.pop(name, None)
        return await self._store.delete_page(name)

    def expire(self, name: str) -> None:
        """Make the next request for `name` revalidate with the upstream, even during an
        outage (the admin's re-verify asks the upstream now, whatever failed before)."""
        self._last_failure = 0
        self._failed.pop(name, None)
        entry = self.budget.get(("page", name))
        if entry is not None:
            self._remember(name, _Entry(attrs.evolve(entry.stored, fetched_at=0), entry.page))

    async def _load(self, key: str) -> Optional[_Entry]:
        entry = self.budget.get(("page", key))
        if entry is not None:
            return entry
        # One load per key: a page too big for the budget is read and decoded once for
        # all the requests that want it at the same moment.
        return await self._loads.run(key, lambda: self._load_stored(key))

    async def _load_stored(self, key: str, surely: bool = False) -> Optional[_Entry]:
        stored = await self._store.get_page(key, surely)
        if stored is None:
            return None
        try:
            page = await self._cpu(len(stored.page), _decode, key, stored.page)
        except (ValueError, index.MalformedPage) as e:
            logger.error("cached page of %r is unreadable (%s); fetching it again", key, e)
            return None
        entry = _Entry(stored, page)
        self._remember(key, entry)
        return entry

    def _remember(self, key: str, entry: _Entry) -> None:
        cost = len(entry.stored.page) * MODEL_BYTES_PER_TEXT_BYTE
        if not self.budget.put(("page", key), entry, cost):
            logger.info(
                "page of %r (%d bytes stored) is larger than page_cache_size; not kept in memory",
                key or "/simple/",
                len(entry.stored.page),
            )

    async def _cpu(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run pure CPU work on a page of `size` bytes, in a thread when it is big (a big
        page takes seconds: not on the reactor)."""
        if self._defer_to_thread is not None and size > THREAD_PARSE_BYTES:
            return await self._defer_to_thread(fn, *args)
        return fn(*args)

    async def _get(self, key: str, wanted: Optional[Callable[[], bool]] = None) -> Tuple[_Entry, bool]:
        entry = await self._load(key)
        if entry is not None and self._now() - entry.stored.fetched_at < self._ttl:
            return entry, False
        failed = self._failed.get(key)
        if failed is not None and self._now() < failed[0]:
            # The upstream botched this page moments ago: the same answer, at once,
            # instead of fetching and parsing it again for every retrying client.
            if entry is not None:
                return entry, True
            raise failed[1]
        if self.in_outage():
            # The upstream failed moments ago: answer from what we have, at once.
            if entry is not None:
                return entry, True
            built = await self._fallback(key) if (self._fallback and key != ROOT) else None
            if built is not None:
                return _Entry(StoredPage(key, "", None, None, 0), built), True
        checks = self._wanted.setdefault(key, [])
        # A caller that cannot say counts as wanting the page for as long as it runs.
        checks.append(wanted or (lambda: True))
        return await self._flights.run(key, lambda: self._refresh(key))

    def _nobody_waits(self, key: str) -> bool:
        return not any(check() for check in self._wanted.get(key, ()))

    async def _refresh(self, key: str) -> Tuple[_Entry, bool]:
        try:
            return await self._fetch(key)
        except (NobodyWaits, index.Stopped):
            logger.info("stopped fetching the page of %r: nobody waits for it any more", key or "/simple/")
            raise NobodyWaits(self._base + key, "stopped: nobody waits for this page any more")
        finally:
            self._wanted.pop(key, None)

    def in_outage(self) -> bool:
        """Whether the upstream failed less than `retry_ms` ago (and has not answered since)."""
        return self._offline_since is not None and self._now() - self._last_failure < self._retry_ms

    async def _fetch(self, key: str) -> Tuple[_Entry, bool]:
        # Read again inside the flight: another flight may just have stored it.
        entry = await self._load(key)
        if entry is not None and self._now() - entry.stored.fetched_at < self._ttl:
            return entry, False
        url = self._base + (key + "/" if key else "")
        old = entry.stored if entry else None
        self.upstream_page_fetches += 1
        try:
            response = await self._upstream.get_page(
                url, old.etag if old else None, old.last_modified if old else None, stop=lambda: self._nobody_waits(key)
            )
        except NotModified:
            assert entry is not None
            self._back_online()
            return await self._revalidated(key, entry), False
        except (UpstreamNotFound, NobodyWaits):
            self._back_online()
            raise
        except (UpstreamTooLarge, UpstreamForbidden) as e:
            # Over max_page_size, or redirected to a forbidden address: it will be the same
            # next time. Remember it for this page (a 500 or a reset, cheap and often
            # passing, is asked again at once).
            self._back_online()
            return self._page_failed(key, entry, e)
        except UpstreamError as e:
            self._went_offline(e)
            if entry is None:
                # Without the upstream, whatever the database has (another worker's page).
                entry = await self._load_stored(key, surely=True)
            if entry is None:
                built = await self._fallback(key) if (self._fallback and key != ROOT) else None
                if built is None:
                    raise
                # Not stored: it is rebuilt from what we know until the upstream answers.
                return _Entry(StoredPage(key, "", None, None, 0), built), True
            return entry, True
        self._back_online()
        try:
            if self._nobody_waits(key):
                raise NobodyWaits(url, "stopped: nobody waits for this page any more")
            page, text = await self._cpu(len(response.body), _parse, key, response, lambda: self._nobody_waits(key))
        except index.MalformedPage as e:
            # Fetching and parsing it again would give the same answer: remember it.
            return self._page_failed(key, entry, UpstreamBadResponse(url, f"malformed index page ({e})"))
        finally:
            if len(response.body) > THREAD_PARSE_BYTES * 16:
                release_memory()  # the body and the parser's garbage, megabytes of them
        self._failed.pop(key, None)
        if entry is not None and self._serials.keep_ours(key, page, entry.page):
            # As if the upstream had said "not modified".
            return await self._revalidated(key, entry), False
        if key != ROOT and self._on_change is not None:
            kept = self._on_change(key, entry.page if entry is not None else None, page)
            if kept is not page:
                page, text = kept, index.page_to_json(kept)
        stored = StoredPage(key, text, response.etag, response.last_modified, self._now())
        await self._store.put_page(stored)
        entry = _Entry(stored, page)
        self._remember(key, entry)
        return entry, False

    async def _revalidated(self, key: str, entry: _Entry) -> _Entry:
        """The page we have is current: serve it for another TTL."""
        now = self._now()
        await self._store.touch_page(key, now)
        entry = _Entry(attrs.evolve(entry.stored, fetched_at=now), entry.page)
        self._remember(key, entry)
        return entry

    def _page_failed(self, key: str, entry: Optional[_Entry], err: UpstreamError) -> Tuple[_Entry, bool]:
        self._failed[key] = (self._now() + self._retry_ms, err)
        self._failed.move_to_end(key)
        while len(self._failed) > FAILED_PAGES:
            self._failed.popitem(last=False)
        if entry is None:
            logger.warning("%s", err)
            raise err
        logger.warning("%s; serving the cached copy", err)
        return entry, True

    def failed_pages(self) -> Dict[str, str]:
        """Pages the upstream botched recently, and why (for the admin API and tests)."""
        now = self._now()
        return {key: str(err) for key, (until, err) in self._failed.items() if until > now}

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
