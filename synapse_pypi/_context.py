"""Synapse's log-context helpers, with stand-ins so the I/O layers also run without Synapse.

Rule of thumb (Synapse docs/log_contexts.md): await foreign Deferreds through
`make_deferred_yieldable`, and fire Deferreds that other log contexts wait on inside
`PreserveLoggingContext`, so their callbacks cannot leave our context switched.
"""

import contextlib
from typing import Any, List

try:
    from synapse.logging.context import PreserveLoggingContext, make_deferred_yieldable
except ImportError:  # pragma: no cover - only outside Synapse

    PreserveLoggingContext = contextlib.nullcontext  # type: ignore[assignment,misc]

    def make_deferred_yieldable(d: Any) -> Any:  # type: ignore[misc]
        return d


def fire_all(waiters: List[Any], result: Any = None) -> None:
    """Fire each Deferred in `waiters` with `result` (a BaseException errbacks)."""
    with PreserveLoggingContext():
        for d in waiters:
            if isinstance(result, BaseException):
                d.errback(result)
            else:
                d.callback(result)


__all__ = ["PreserveLoggingContext", "make_deferred_yieldable", "fire_all"]
