"""Synapse's log-context helpers, with stand-ins so the I/O layers also run without Synapse.

Rule of thumb (Synapse docs/log_contexts.md): await foreign Deferreds through
`make_deferred_yieldable`, and fire Deferreds that other log contexts wait on inside
`PreserveLoggingContext`, so their callbacks cannot leave our context switched.
"""

import contextlib
from typing import Any, Awaitable, Callable, Dict, List, TypeVar

from twisted.internet import defer

T = TypeVar("T")

try:
    from synapse.logging.context import PreserveLoggingContext, make_deferred_yieldable
except ImportError:  # pragma: no cover - only outside Synapse

    PreserveLoggingContext = contextlib.nullcontext  # type: ignore[assignment,misc]  # stand-in outside Synapse

    def make_deferred_yieldable(d: Any) -> Any:  # type: ignore[misc]  # stand-in outside Synapse
        return d


def fire_all(waiters: List[Any], result: Any = None) -> None:
    """Fire each Deferred in `waiters` with `result` (a BaseException errbacks)."""
    with PreserveLoggingContext():
        for d in waiters:
            if isinstance(result, BaseException):
                d.errback(result)
            else:
                d.callback(result)




class SingleFlight:
    """At most one call per key in flight; later callers wait for its result.

    Args:
        yieldable: wraps a Deferred so awaiting it keeps Synapse's log contexts right.
    """

    def __init__(self, yieldable: Callable[[Any], Any] = make_deferred_yieldable):
        self._waiting: Dict[Any, List[defer.Deferred[Any]]] = {}
        self._yieldable = yieldable

    async def run(self, key: Any, fn: Callable[[], Awaitable[T]]) -> T:
        if key in self._waiting:
            d: defer.Deferred[T] = defer.Deferred()
            self._waiting[key].append(d)
            return await self._yieldable(d)
        waiters: List[Any] = []
        self._waiting[key] = waiters
        try:
            result = await fn()
        except BaseException as e:
            del self._waiting[key]
            fire_all(waiters, e)
            raise
        del self._waiting[key]
        fire_all(waiters, result)
        return result


__all__ = ["PreserveLoggingContext", "make_deferred_yieldable", "fire_all", "SingleFlight"]
