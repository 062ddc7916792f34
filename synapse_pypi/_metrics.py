"""Prometheus metrics, in Synapse's own registry (docs/operations.md lists them all).

Synapse serves prometheus_client's default `REGISTRY` on its `metrics` listener when
`enable_metrics: true`; everything here registers there once, when this module is first
imported, so that building the module twice in one process (as unit tests do) never
registers a name twice. Two kinds:

* Events the code sees happen (a request answered, bytes sent, an upstream request timed, an
  attestation sent) are plain counters and histograms, bumped by thin hooks at those places.
* State the module keeps anyway (the Matrix queue, pending storage adds, moderation counters,
  bans, the cache's size) is read when Prometheus scrapes, by one collector that looks at
  the live modules through weak references (`watch`): nothing is counted twice.

Synapse scrapes from its own thread (`synapse.app._base.listen_metrics`) while the reactor
changes that state (as Synapse's own `LaterGauge` callbacks read theirs): readings copy
what they iterate and give up on one that raced with a change (the next scrape has it).

Labels take a few fixed values each (never a path, a project or a file name), so that the
number of series stays bounded whatever clients ask for.
"""

import contextlib
import logging
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.python.failure import Failure

from synapse_pypi.trust._bans import SOURCES as POLICY_SOURCES

logger = logging.getLogger(__name__)

PREFIX = "synapse_pypi_"

# Routes of the `route` label (docs/operations.md); `other` is a path under /simple/ that
# is none of these (answered 404).
ROUTES = ("simple_root", "simple_project", "file", "metadata", "admin", "browse", "other")
# The status label of a request whose connection closed before the whole response was sent
# (the client went away, or a download was cut off because its bytes were no good).
ABORTED = "aborted"

REQUESTS = Counter(
    PREFIX + "requests",
    "HTTP requests answered by the module, by route and status.",
    ["route", "status"],
)
PAGES_AT_ONCE = Counter(
    PREFIX + "pages_answered_at_once",
    "Warm project pages given again at once, without Synapse's per-request work (_ready_answers.py).",
)
CACHE_LOOKUPS = Counter(
    PREFIX + "cache_lookups",
    "File and metadata requests, by whether the local cache had the file (hit) or not (miss).",
    ["route", "result"],
)
SERVED_BYTES = Counter(
    PREFIX + "served_bytes",
    "Bytes of file bodies sent to clients, by where they came from (cache, backend, upstream).",
    ["source"],
)
UPSTREAM_SECONDS = Histogram(
    PREFIX + "upstream_request_seconds",
    "Time from sending a request to the upstream index to its response headers (or failure).",
    ["kind", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
ATTESTATIONS_PUBLISHED = Counter(
    PREFIX + "attestations_published",
    "Signed attestations this mirror sent into package rooms.",
)


def route_of(postpath: List[bytes]) -> str:
    """The `route` label of a request under /simple/ (from its path segments after it)."""
    if not postpath or postpath == [b""]:
        return "simple_root"
    if len(postpath) == 1 or (len(postpath) == 2 and postpath[1] == b""):
        return "simple_project"
    if len(postpath) == 2:
        return "metadata" if postpath[1].endswith(b".metadata") else "file"
    return "other"


def track_request(request: Any, route: str) -> None:
    """Count the request under `route` and its status once it is over."""

    def done(result: Any) -> None:
        # A Failure: the connection was lost before the response was finished. A client
        # that has read a whole file may close first, before the reactor finished the
        # response that sendfile(2) sent (Synapse logs such a request as "200!"): that
        # response was complete all the same.
        lost = isinstance(result, Failure) and not _all_sent(request)
        REQUESTS.labels(route, ABORTED if lost else str(request.code)).inc()

    request.notifyFinish().addBoth(done)


def page_answered_at_once(code: int) -> None:
    """Count a page request that was answered at once (finished before it returned)."""
    REQUESTS.labels("simple_project", str(int(code))).inc()
    PAGES_AT_ONCE.inc()


def _all_sent(request: Any) -> bool:
    """Whether the body the response announced (Content-Length) was sent whole."""
    length = request.responseHeaders.getRawHeaders(b"content-length")
    try:
        return bool(length) and int(length[0]) == request.sentLength
    except ValueError:
        return False


def file_served(route: str, source: Optional[str], body_bytes: int) -> None:
    """A file request got its responder (`source` None: no body came from anywhere, a HEAD
    of a file not held) and sent `body_bytes` of its body."""
    CACHE_LOOKUPS.labels(route, "hit" if source == "cache" else "miss").inc()
    if source is not None and body_bytes > 0:
        SERVED_BYTES.labels(source).inc(body_bytes)


def file_missed(route: str) -> None:
    """A file request the cache could not answer and no other source could either."""
    CACHE_LOOKUPS.labels(route, "miss").inc()


class _Clock(Protocol):
    def seconds(self) -> float: ...


@contextlib.contextmanager
def upstream_timer(kind: str, clock: _Clock) -> Iterator[None]:
    """Time one upstream request (`kind`: page or file) up to its response headers."""
    started = clock.seconds()
    outcome = "error"
    try:
        yield
        outcome = "response"
    finally:
        UPSTREAM_SECONDS.labels(kind, outcome).observe(max(0.0, clock.seconds() - started))


# -- state read at scrape time -----------------------------------------------------------


class _Trust(Protocol):
    bot: str

    @property
    def known_rooms(self) -> Any: ...

    def counters(self) -> Dict[str, Any]: ...

    def project_generation(self, project: str) -> Tuple[int, ...]: ...


class Watched:
    """What the collector reads of one module. The module keeps it (the collector only
    refers to it weakly, so a module that is gone is no longer read).

    Args:
        trust: the trust service (moderation counters, bans).
        queue: the Matrix queue (its length and job counts).
        cache: the local cache (`total_size`, `max_size`).
        backends: the storage backends (`pending_adds`), if any are configured.
    """

    def __init__(self, trust: _Trust, queue: Any, cache: Any, backends: Any = None):
        self.trust = trust
        self.queue = queue
        self.cache = cache
        self.backends = backends
        # project -> (its trust generation, {(source, publisher): bans}): bans are counted
        # again only for projects whose rooms changed since the last scrape.
        self._bans: Dict[str, Tuple[Tuple[int, ...], Dict[Tuple[str, str], int]]] = {}
        self._lock = threading.Lock()

    def bans(self) -> Dict[Tuple[str, str], int]:
        """Active bans by (source, publisher): `this_mirror` for our bot's, `others` for
        those of other trusted publishers (a peer mirror, a maintainer)."""
        with self._lock:
            projects = list(self.trust.known_rooms.items())
            seen = set()
            for name, pt in projects:
                seen.add(name)
                generation = self.trust.project_generation(name)
                kept = self._bans.get(name)
                if kept is not None and kept[0] == generation:
                    continue
                counts: Dict[Tuple[str, str], int] = {}
                for _room, rec in list(pt.bans()):
                    policy = rec.policy
                    assert policy is not None  # bans() holds valid policies only
                    who = "this_mirror" if policy.publisher == self.trust.bot else "others"
                    counts[(policy.source, who)] = counts.get((policy.source, who), 0) + 1
                self._bans[name] = (generation, counts)
            for gone in set(self._bans) - seen:
                del self._bans[gone]
            total: Dict[Tuple[str, str], int] = {}
            for _, counts in self._bans.values():
                for key, n in counts.items():
                    total[key] = total.get(key, 0) + n
            return total


_LIVE: "weakref.WeakSet[Watched]" = weakref.WeakSet()


def watch(watched: Watched) -> Watched:
    """Have the collector read `watched` at every scrape, for as long as it lives."""
    _LIVE.add(watched)
    return watched


T = TypeVar("T")


def _read(what: str, read: Callable[[], T], default: T) -> T:
    """`read()`, tried again if it raced with the reactor changing what it iterates."""
    for _ in range(3):
        try:
            return read()
        except RuntimeError:  # "changed size during iteration"
            continue
        except Exception:
            logger.exception("reading %s for metrics failed", what)
            return default
    logger.debug("reading %s for metrics raced with changes three times; skipped", what)
    return default


# Moderation counter (TrustService.counters()) -> metric name, help.
_MODERATION = {
    "fraud_count": ("frauds", "Attestations found fraudulent (contradicted by the serve policy)."),
    "alarm_count": ("alarms", "Alarms: the upstream now serves other bytes for a file than the hash that won."),
    "conflict_count": ("conflicts", "Conflicts nobody could settle: the file was refused with 409 and moderators summoned."),
    "reported_count": ("invalid_attestations", "Attestations that do not count (bad signature, unknown key, impersonation...)."),
}


def _families() -> Dict[str, Any]:
    """The metric families the collector fills, empty, by a key of our own."""
    families: Dict[str, Any] = {
        key: CounterMetricFamily(PREFIX + name, doc) for key, (name, doc) in _MODERATION.items()
    }
    families["jobs"] = CounterMetricFamily(
        PREFIX + "matrix_jobs", "Matrix queue jobs by outcome: done, failed, dropped (the queue was full).",
        labels=["outcome"],
    )
    families["queue"] = GaugeMetricFamily(PREFIX + "matrix_queue_jobs", "Matrix writes waiting in the queue.")
    families["pending"] = GaugeMetricFamily(
        PREFIX + "storage_pending_adds", "Cached files still to be added to a storage backend (IPFS)."
    )
    families["cache"] = GaugeMetricFamily(PREFIX + "cache_bytes", "Bytes of files in the local cache.")
    families["cache_max"] = GaugeMetricFamily(PREFIX + "cache_max_bytes", "The local cache's budget (max_cache_size).")
    families["bans"] = GaugeMetricFamily(
        PREFIX + "bans", "Active bans in the package rooms read, by source and publisher.",
        labels=["source", "publisher"],
    )
    return families


class _StateCollector(Collector):
    """Reads the watched modules' state when Prometheus scrapes (summed over them: there is
    one module per process in production)."""

    def describe(self) -> Iterable[Metric]:
        # Names only: prometheus_client would otherwise call collect() at registration.
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        totals = {key: 0.0 for key in (*_MODERATION, "queue", "pending", "cache", "cache_max")}
        outcomes = {"done": 0.0, "failed": 0.0, "dropped": 0.0}
        # Every source and publisher, banned or not: a series that appears only with the
        # first ban would make `increase()` miss that ban.
        bans = {(source, who): 0 for source in POLICY_SOURCES for who in ("this_mirror", "others")}
        for watched in list(_LIVE):
            no_counters: Dict[str, Any] = {}
            found = _read("trust counters", watched.trust.counters, no_counters)
            for key in _MODERATION:
                totals[key] += float(found.get(key, 0))
            queue = watched.queue
            totals["queue"] += _read("the Matrix queue", queue.__len__, 0)
            for outcome in outcomes:
                outcomes[outcome] += getattr(queue, outcome, 0)
            if watched.backends is not None:
                totals["pending"] += watched.backends.pending_adds
            totals["cache"] += watched.cache.total_size
            totals["cache_max"] += watched.cache.max_size
            no_bans: Dict[Tuple[str, str], int] = {}
            for ban, n in _read("bans", watched.bans, no_bans).items():
                bans[ban] = bans.get(ban, 0) + n
        for key, value in totals.items():
            families[key].add_metric([], value)
        for outcome, jobs in outcomes.items():
            families["jobs"].add_metric([outcome], jobs)
        for (source, who), n in sorted(bans.items()):
            families["bans"].add_metric([source, who], n)
        return list(families.values())


REGISTRY.register(_StateCollector())
