"""Serials never go backwards (issue 12): an upstream page with an older serial, or without
the serial the cached page has, does not replace it; an upstream that has stopped sending
serials for longer than the grace period is followed again. `judge_serial` directly, and
`PageService` with a real SQLite store, a fake upstream and a clock the test moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, cast

import pytest
from harness.syncdb import run, sqlite_run_db

from synapse_pypi import index
from synapse_pypi._names import NormalizedName
from synapse_pypi._pages import PageService
from synapse_pypi._store import Store
from synapse_pypi._upstream import PageResponse
from synapse_pypi.index import SerialVerdict, judge_serial

GRACE = 60_000


@pytest.mark.parametrize(
    ("new", "old", "missing_for", "verdict"),
    [
        (11, 10, 0, SerialVerdict.TAKE),
        (10, 10, 0, SerialVerdict.TAKE),
        (9, 10, 0, SerialVerdict.OLDER),
        (5, None, 0, SerialVerdict.TAKE),  # nothing to compare with
        (None, None, 0, SerialVerdict.TAKE),
        (None, 10, 0, SerialVerdict.MISSING),
        (None, 10, GRACE - 1, SerialVerdict.MISSING),
        (None, 10, GRACE, SerialVerdict.GONE),
    ],
)
def test_judge_serial(new: Optional[int], old: Optional[int], missing_for: int, verdict: SerialVerdict) -> None:
    assert judge_serial(new, old, missing_for, GRACE) is verdict


def sqlite_store(path: Path) -> Store:
    return Store(sqlite_run_db(path))


class Upstream:
    """Answers every page request with the page the test set last."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self.serial: Optional[int] = None

    async def get_page(self, url: str, etag: Any = None, last_modified: Any = None, stop: Any = None) -> PageResponse:
        meta: dict[str, Any] = {"api-version": "1.1"}
        if self.serial is not None:
            meta["_last-serial"] = self.serial
        page = {"meta": meta, "name": "foo", "files": [
            {"filename": name, "url": f"http://127.0.0.1:9/files/{name}", "hashes": {}, "size": 1} for name in self.files
        ]}
        return PageResponse(json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json", None, None, url)


@pytest.fixture
def pages(tmp_path: Path) -> Any:
    store = sqlite_store(tmp_path / "db.sqlite")
    run(store.setup())
    upstream = Upstream()
    now = [1_000_000]
    service = PageService(store, cast(Any, upstream), "http://127.0.0.1:9/simple/", ttl_ms=0,
                          clock=lambda: now[0], serial_grace_ms=GRACE)

    class Pages:
        def __init__(self) -> None:
            self.upstream = upstream

        def advance(self, ms: int) -> None:
            now[0] += ms

        def get(self) -> index.ProjectPage:
            return run(service.project(NormalizedName("foo"))).page

    return Pages()


def names(page: index.ProjectPage) -> list[str]:
    return [f.filename for f in page.files]


A, B, C = "foo-1.0.tar.gz", "foo-0.9.tar.gz", "foo-1.1.tar.gz"


def test_an_older_serial_keeps_ours(pages: Any) -> None:
    pages.upstream.files, pages.upstream.serial = [A], 10
    assert names(pages.get()) == [A]
    pages.upstream.files, pages.upstream.serial = [A, B], 7
    page = pages.get()
    assert names(page) == [A] and page.last_serial == 10


def test_a_page_without_a_serial_is_held_back_for_the_grace_period_then_taken(pages: Any, caplog: Any) -> None:
    pages.upstream.files, pages.upstream.serial = [A], 10
    pages.get()
    # The serial is lost (a stale copy without it, say): ours stays.
    pages.upstream.files, pages.upstream.serial = [A, B], None
    page = pages.get()
    assert names(page) == [A] and page.last_serial == 10
    assert "has no serial, the page we have has 10: keeping ours" in caplog.text
    pages.advance(GRACE - 1)
    assert names(pages.get()) == [A]
    # Still none after the grace period: the upstream has stopped sending serials. Taken,
    # and from then on pages without a serial are taken as they come.
    pages.advance(1)
    page = pages.get()
    assert names(page) == [A, B] and page.last_serial is None
    assert "has come without a serial for 60s (ours had 10): taking it" in caplog.text
    pages.upstream.files = [A, B, C]
    assert names(pages.get()) == [A, B, C]


def test_a_serial_that_comes_back_starts_the_grace_period_again(pages: Any) -> None:
    pages.upstream.files, pages.upstream.serial = [A], 10
    pages.get()
    pages.upstream.files, pages.upstream.serial = [A, B], None
    assert names(pages.get()) == [A]
    pages.advance(GRACE // 2)
    pages.upstream.serial = 11  # back, and newer: taken
    assert names(pages.get()) == [A, B]
    pages.advance(GRACE)
    # Lost again: held back again, counted from now, not from the first loss.
    pages.upstream.files, pages.upstream.serial = [A, B, C], None
    page = pages.get()
    assert names(page) == [A, B] and page.last_serial == 11
