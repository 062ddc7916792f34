"""One bounded, low-priority queue for every Matrix write the module makes (DESIGN.md §3).

Room creation, attestations, key events, notices and redactions are each a handful of signed,
persisted events that Synapse makes on the same reactor as the requests we serve. A cold
`pip install` asks for dozens of projects in a few seconds; doing their Matrix work at once
made it five times slower than a plain proxy. So the serve path only *submits* work here, and:

* jobs wait while requests are being served: a job starts only once no request of ours has
  been in flight for `quiet` (or after `max_delay`, so constant load cannot starve the rooms);
  urgent jobs (a ban, the redaction of fraud: what stops a bad file from being served) go
  first and do not wait;
* one job runs at a time (Synapse persists events one room at a time anyway);
* jobs are coalesced: a job submitted under a key that is already waiting replaces it
  (a newer attestation of the same file supersedes the older one);
* projects take turns, so one busy project cannot hold back the others' rooms;
* room creation has its own token bucket (`room_rate` per minute, a minute's burst), so
  requests for many projects cannot create rooms without bound;
* the queue holds at most `max_pending` jobs; beyond that new jobs are dropped and counted
  (whatever is dropped is submitted again the next time the file is served).

The queue's length is sampled for the admin API and the benchmarks.

The worker is one background process that lives as long as the homeserver: Synapse notifies
its `on_new_event` callbacks in a chain that inherits the sender's log context and outlives
the send; a worker whose context had finished would have that chain re-enter a finished
context (Synapse's "Re-starting finished log context" warnings) after every event we send.
"""

import collections
import logging
from typing import Any, Awaitable, Callable, Deque, Dict, List, Tuple

import attrs
from twisted.internet import defer

from synapse_pypi._context import PreserveLoggingContext, fire_all, make_deferred_yieldable

logger = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]
# How many (time, length) samples are kept for the admin API.
HISTORY = 600


@attrs.frozen
class QueueSettings:
    """How the queue paces itself.

    Attributes:
        quiet_s: a job starts once no request has been in flight for this long.
        max_delay_s: ...or once it has waited this long, whatever the load.
        room_rate: rooms created per minute at most (a minute's worth may come at once).
        max_pending: jobs held at most.
    """

    quiet_s: float = 0.25
    max_delay_s: float = 10.0
    room_rate: int = 60
    max_pending: int = 10_000


class RequestGauge:
    """Counts the requests in flight, for the queue to yield to. The web layer calls
    `started`/`finished` around every request it handles."""

    def __init__(self, clock: Any):
        self._clock = clock
        self.active = 0
        self.last_finished = 0.0

    def started(self) -> None:
        self.active += 1

    def finished(self) -> None:
        self.active = max(0, self.active - 1)
        self.last_finished = self._clock.seconds()

    def quiet_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        if self.active:
            return 0.0
        return self._clock.seconds() - self.last_finished


class MatrixQueue:
    """The queue. `submit` never waits; `drain` is for tests and shutdown.

    Args:
        clock: the reactor (seconds, callLater).
        run_background: `ModuleApi.run_as_background_process`.
        gauge: the requests in flight.
        settings: the pacing.
    """

    def __init__(self, clock: Any, run_background: Callable[..., Any], gauge: RequestGauge, settings: QueueSettings):
        self._clock = clock
        self._run_background = run_background
        self._gauge = gauge
        self.settings = settings
        # project -> key -> job, in submission order; and the order projects take turns in.
        self._jobs: Dict[str, collections.OrderedDict[Tuple[Any, ...], Tuple[Job, float]]] = {}
        self._turns: Deque[str] = collections.deque()
        self._urgent: collections.OrderedDict[Tuple[str, Tuple[Any, ...]], Job] = collections.OrderedDict()
        self._started = False
        self._running = False  # a job is in progress
        self._wakeup: defer.Deferred[None] | None = None
        self._room_tokens = float(settings.room_rate)
        self._room_tokens_at = clock.seconds()
        self._idle_waiters: List[defer.Deferred[None]] = []
        self.done = 0
        self.failed = 0
        self.dropped = 0
        self.history: Deque[Tuple[float, int]] = collections.deque(maxlen=HISTORY)

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._jobs.values()) + len(self._urgent)

    def submit(self, project: str, key: Tuple[Any, ...], job: Job, urgent: bool = False) -> bool:
        """Queue `job` for `project` under `key` (replacing a waiting job with the same key).

        Args:
            urgent: run before the others and without waiting for a quiet moment.

        Returns:
            False when the queue is full and the job was dropped.
        """
        if urgent:
            self._urgent[(project, key)] = job
            self._sample()
            self._wake()
            return True
        jobs = self._jobs.get(project)
        if jobs is not None and key in jobs:
            jobs[key] = (job, jobs[key][1])  # keep its place, run the newer one
            return True
        if len(self) >= self.settings.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("Matrix queue full (%d jobs): dropped %d so far", len(self), self.dropped)
            return False
        if jobs is None:
            jobs = self._jobs[project] = collections.OrderedDict()
            self._turns.append(project)
        jobs[key] = (job, self._clock.seconds())
        self._sample()
        self._wake()
        return True

    def _wake(self) -> None:
        if not self._started:
            self._started = True
            self._run_background("synapse_pypi_matrix_queue", self._work)
        elif self._wakeup is not None:
            waiting, self._wakeup = self._wakeup, None
            fire_all([waiting])

    def pending(self, project: str) -> int:
        return len(self._jobs.get(project, ()))

    async def drain(self) -> None:
        """Wait until the queue is empty and no job runs."""
        if not self._running and not len(self):
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        await make_deferred_yieldable(d)

    def status(self) -> Dict[str, Any]:
        return {
            "length": len(self),
            "running": self._running,
            "done": self.done,
            "failed": self.failed,
            "dropped": self.dropped,
            "history": [[round(t, 3), n] for t, n in self.history],
        }

    # -- the worker ------------------------------------------------------------------

    def _sample(self) -> None:
        self.history.append((self._clock.seconds(), len(self)))

    async def _run_one(self, key: Tuple[Any, ...], project: str, job: Job) -> None:
        try:
            await job()
            self.done += 1
        except Exception:
            self.failed += 1
            logger.exception("Matrix job %s for %s failed", key, project)

    async def _work(self) -> None:
        while True:
            if self._urgent:
                (project, key), job = self._urgent.popitem(last=False)
                self._running = True
                try:
                    await self._run_one(key, project, job)
                finally:
                    self._running = False
                self._sample()
                continue
            if not self._turns:
                waiters, self._idle_waiters = self._idle_waiters, []
                fire_all(waiters)
                self._wakeup = defer.Deferred()
                await make_deferred_yieldable(self._wakeup)
                continue
            project = self._turns.popleft()
            jobs = self._jobs.get(project)
            if not jobs:
                self._jobs.pop(project, None)
                continue
            key, (job, queued_at) = next(iter(jobs.items()))
            self._running = True
            try:
                await self._wait_for_a_gap(queued_at)
                if self._urgent:
                    # Something urgent came in meanwhile: it goes first, this job keeps its turn.
                    self._turns.appendleft(project)
                    continue
                if key[0] == "room":
                    await self._room_token()
                # Taken off only now: a newer submission while we waited replaced the job.
                job, _ = jobs.pop(key)
                if jobs:
                    self._turns.append(project)
                else:
                    self._jobs.pop(project, None)
                await self._run_one(key, project, job)
            finally:
                self._running = False
            self._sample()

    async def quiet_moment(self, since: float) -> None:
        """Wait as a job does: for a moment without requests, but no longer than max_delay
        after `since` (the reactor's seconds). For other background work that would compete
        with serving: adding files to IPFS."""
        await self._wait_for_a_gap(since, yield_to_urgent=False)

    async def _wait_for_a_gap(self, queued_at: float, yield_to_urgent: bool = True) -> None:
        """Yield to requests: wait for a quiet moment, but no longer than max_delay (and not
        at all once an urgent job waits)."""
        settings = self.settings
        while not (yield_to_urgent and self._urgent):
            quiet = self._gauge.quiet_for()
            if quiet >= settings.quiet_s:
                return
            waited = self._clock.seconds() - queued_at
            if waited >= settings.max_delay_s:
                return
            await self._sleep(min(settings.quiet_s - quiet if quiet else settings.quiet_s, settings.max_delay_s - waited))

    async def _room_token(self) -> None:
        rate = self.settings.room_rate / 60.0
        while True:
            now = self._clock.seconds()
            self._room_tokens = min(
                float(self.settings.room_rate), self._room_tokens + (now - self._room_tokens_at) * rate
            )
            self._room_tokens_at = now
            if self._room_tokens >= 1:
                self._room_tokens -= 1
                return
            await self._sleep((1 - self._room_tokens) / rate)

    async def _sleep(self, seconds: float) -> None:
        # As Synapse's Clock.sleep: the timer fires in no log context; we wait in ours.
        d: defer.Deferred[None] = defer.Deferred()
        with PreserveLoggingContext():
            self._clock.callLater(max(seconds, 0.001), d.callback, None)
        await make_deferred_yieldable(d)
