"""For unit tests of code that talks to the module's database: a real SQLite file behind the
`run_db_interaction` shape, run synchronously, and a way to run a coroutine that completes
without the reactor."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure


def sqlite_run_db(path: Path) -> Callable[..., Any]:
    """`run_db_interaction(desc, fn, *args)` over a SQLite file, each call committed."""
    conn = sqlite3.connect(str(path))

    async def run_db(desc: str, fn: Callable[..., Any], *args: Any) -> Any:
        cur = conn.cursor()
        try:
            result = fn(cur, *args)
            conn.commit()
            return result
        finally:
            cur.close()

    return run_db


def run(coro: Any) -> Any:
    """Run a coroutine that completes without the reactor; its result."""
    d = defer.ensureDeferred(coro)
    assert d.called, "the coroutine is waiting for something"
    return d.result if not isinstance(d.result, Failure) else d.result.raiseException()
