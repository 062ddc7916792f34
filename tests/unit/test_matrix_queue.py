"""The Matrix queue (synapse_pypi/_matrix_queue.py) on a fake clock: it yields to requests,
coalesces, takes projects in turns, paces room creation and stays bounded."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from synapse_pypi._matrix_queue import MatrixQueue, QueueSettings, RequestGauge


def run_background(_desc: str, fn: Callable[..., Any], *args: Any) -> Any:
    return defer.ensureDeferred(fn(*args))


def make(**settings: Any) -> tuple[MemoryReactorClock, RequestGauge, MatrixQueue, list]:
    clock = MemoryReactorClock()
    gauge = RequestGauge(clock)
    queue = MatrixQueue(clock, run_background, gauge, QueueSettings(**settings))
    return clock, gauge, queue, []


def job(log: list, name: str) -> Callable[[], Any]:
    async def run() -> None:
        log.append(name)

    return run


def advance(clock: MemoryReactorClock, seconds: float, step: float = 0.05) -> None:
    for _ in range(int(seconds / step) + 1):
        clock.advance(step)


def test_jobs_wait_while_requests_are_served_and_run_in_the_first_quiet_moment() -> None:
    clock, gauge, queue, log = make(quiet_s=0.25, max_delay_s=10)
    gauge.started()
    queue.submit("a", ("attest", "f"), job(log, "attest"))
    advance(clock, 2)
    assert log == [] and len(queue) == 1
    gauge.finished()
    advance(clock, 0.1)
    assert log == []  # not yet quiet for long enough
    advance(clock, 0.3)
    assert log == ["attest"] and len(queue) == 0


def test_constant_load_cannot_starve_the_queue() -> None:
    clock, gauge, queue, log = make(quiet_s=0.25, max_delay_s=3)
    gauge.started()
    queue.submit("a", ("room",), job(log, "room"))
    advance(clock, 2.9)
    assert log == []
    advance(clock, 0.3)
    assert log == ["room"]


def test_a_newer_job_under_the_same_key_replaces_the_waiting_one() -> None:
    clock, gauge, queue, log = make()
    gauge.started()
    queue.submit("a", ("attest", "f"), job(log, "old"))
    queue.submit("a", ("attest", "f"), job(log, "new"))
    queue.submit("a", ("attest", "g"), job(log, "g"))
    assert len(queue) == 2
    gauge.finished()
    advance(clock, 1)
    assert log == ["new", "g"]


def test_projects_take_turns() -> None:
    clock, gauge, queue, log = make(quiet_s=0.1)
    gauge.started()  # submitted while a request is served: they wait together
    for name in ("a1", "a2", "a3"):
        queue.submit("a", ("attest", name), job(log, name))
    queue.submit("b", ("attest", "b1"), job(log, "b1"))
    gauge.finished()
    advance(clock, 1)
    assert log == ["a1", "b1", "a2", "a3"]


def test_room_creation_is_paced_by_its_own_bucket() -> None:
    clock, _, queue, log = make(quiet_s=0, room_rate=2)  # two a minute, two at once
    for i in range(4):
        queue.submit(f"p{i}", ("room",), job(log, f"p{i}"))
    advance(clock, 1)
    assert log == ["p0", "p1"]
    advance(clock, 31)
    assert log == ["p0", "p1", "p2"]
    advance(clock, 30)
    assert log == ["p0", "p1", "p2", "p3"]


def test_a_full_queue_drops_and_counts() -> None:
    clock, gauge, queue, log = make(max_pending=10)
    gauge.started()
    results = [queue.submit("a", ("attest", str(i)), job(log, str(i))) for i in range(12)]
    assert results == [True] * 10 + [False] * 2 and queue.dropped == 2
    assert queue.status()["length"] == 10


def test_a_failing_job_does_not_stop_the_others() -> None:
    clock, _, queue, log = make(quiet_s=0)

    async def boom() -> None:
        raise RuntimeError("Synapse said no")

    queue.submit("a", ("notice", 1), boom)
    queue.submit("a", ("notice", 2), job(log, "after"))
    advance(clock, 1)
    assert log == ["after"] and queue.failed == 1 and queue.done == 1


def test_drain_waits_for_the_last_job_and_the_history_records_the_length() -> None:
    clock, _, queue, log = make(quiet_s=0.25)
    queue.submit("a", ("room",), job(log, "room"))
    drained = defer.ensureDeferred(queue.drain())
    assert not drained.called
    advance(clock, 1)
    assert drained.called and log == ["room"]
    lengths = [n for _, n in queue.status()["history"]]
    assert lengths[0] == 1 and lengths[-1] == 0


def test_urgent_jobs_go_first_and_do_not_wait_for_a_quiet_moment() -> None:
    clock, gauge, queue, log = make(quiet_s=0.25, max_delay_s=10)
    gauge.started()  # constantly busy
    queue.submit("a", ("attest", "f"), job(log, "attest"))
    advance(clock, 0.5)
    queue.submit("a", ("policy", "file", "f"), job(log, "ban"), urgent=True)
    advance(clock, 0.5)
    assert log == ["ban"]
    advance(clock, 10)
    assert log == ["ban", "attest"]

