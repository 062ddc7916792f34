"""The storage backends' queue in memory: `Backends` and `LocalCache` over a real SQLite store
and a real cache directory, with a backend whose service the test takes down and brings back,
and a clock the test moves.

What it shows: a backend that is down is tried again after a doubling wait, each such round
counts against every add waiting for it, and an add is given up (and named in the log) after
MAX_ATTEMPTS; a file that leaves the cache has its pending adds dropped and is removed from
the backends that hold it (retried while the service is down); a file cached again calls its
removal off; a file evicted while it was being added is removed again once the add is done.
The same against a real Synapse and a real Kubo node: tests/integration/test_ipfs.py.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, List, Optional

from test_chain import run, sqlite_store
from twisted.internet import defer

from synapse_pypi._backends import MAX_ATTEMPTS, MAX_BACKOFF_MS, Backends
from synapse_pypi._config import StorageProviderConfig
from synapse_pypi._files import LocalCache, WantedFile, blob_path
from synapse_pypi.storage import BackendContext, StorageBackend, StorageUnavailable

RETRY_MS = 1000


class NodeBackend(StorageBackend):
    """A store whose service is up or down as the test says; it records every call."""

    def __init__(self, config: Any, context: BackendContext):
        super().__init__(config, context)
        self.up = False
        self.held: dict = {}  # reference -> sha256
        self.calls: List[str] = []
        self.gate: Optional[defer.Deferred] = None  # an add waits for it, when set

    def describe(self) -> str:
        return "test node"

    async def store(self, path: str, sha256: str, size: int) -> str:
        self.calls.append("store " + sha256)
        if self.gate is not None:
            await self.gate
        if not self.up:
            raise StorageUnavailable("connection refused")
        reference = "cid-" + sha256[:12]
        self.held[reference] = sha256
        return reference

    async def remove(self, sha256: str, reference: str) -> None:
        self.calls.append("remove " + reference)
        if not self.up:
            raise StorageUnavailable("connection refused")
        self.held.pop(reference, None)


class Setup:
    def __init__(self, tmp_path: Path, max_size: int = 1 << 40, unpin_evicted: bool = True):
        self.now = 1_000_000
        self.store = sqlite_store(tmp_path / "db.sqlite")
        run(self.store.setup())
        root = str(tmp_path / "cache")
        self.backends = Backends(
            (StorageProviderConfig(name="0:node", cls=NodeBackend, config={}),),
            BackendContext(reactor=None, data_directory=str(tmp_path), defer_to_thread=None),  # type: ignore[arg-type]
            self.store,
            lambda sha256: blob_path(root, sha256),
            lambda desc, fn, *a: defer.ensureDeferred(fn(*a)),
            clock=lambda: self.now,
            retry_ms=RETRY_MS,
            unpin_evicted=unpin_evicted,
        )
        self.node: NodeBackend = self.backends.backends[0][1]  # type: ignore[assignment]
        self.cache = LocalCache(root, self.store, max_size, on_removed=self.backends)
        run(self.cache.start())
        run(self.backends.start())

    def cache_file(self, name: str, data: bytes) -> str:
        """Commit `data` as demo/<name> and queue it for the backend, as a download does."""
        sha = hashlib.sha256(data).hexdigest()
        partial = self.cache.new_partial()
        Path(partial).write_bytes(data)
        self.now += 1
        run(self.cache.commit(partial, WantedFile("demo", name, "", sha, len(data)), sha, len(data)))
        run(self.backends.committed(sha))
        return sha

    def tick(self, ms: int) -> None:
        """Time passes; the periodic retry runs."""
        self.at(self.now + ms)

    def at(self, now: int) -> None:
        """The periodic retry runs at `now`."""
        self.now = now
        run(self.backends.retry())

    def stores(self) -> int:
        return sum(c.startswith("store") for c in self.node.calls)


def test_an_outage_backs_off_and_counts_until_the_add_is_given_up(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    s = Setup(tmp_path)
    sha = s.cache_file("demo-1.0.tar.gz", b"a" * 1000)
    assert s.stores() == 1 and s.backends.has_pending(sha)  # round 1: the node is down
    wait = RETRY_MS
    due = s.now + wait
    # Cached meanwhile: queued, but not tried before the wait is over (it would cost every
    # waiting add an attempt).
    other = s.cache_file("demo-2.0.tar.gz", b"b" * 1000)
    assert s.stores() == 1
    for rounds in range(2, MAX_ATTEMPTS + 1):
        s.at(due - 1)
        assert s.stores() == rounds - 1, f"tried before round {rounds} was due"
        s.at(due)
        assert s.stores() == rounds, f"round {rounds} not tried when due"
        wait = min(wait * 2, MAX_BACKOFF_MS)
        due += wait
    assert wait == MAX_BACKOFF_MS
    # The first file has had MAX_ATTEMPTS failed rounds now: given up, and named.
    assert not s.backends.has_pending(sha) and s.backends.has_pending(other)
    assert f"gave up adding demo/demo-1.0.tar.gz (sha256 {sha}) to test node after {MAX_ATTEMPTS} tries" in caplog.text
    assert s.cache.has(sha), "a file that never reached the backend stays in the local cache"
    assert [row[0] for row in run(s.store.pending())] == [other]
    # The node comes back: the other one is added at the next round.
    s.node.up = True
    s.at(due)
    assert not s.backends.has_pending(other) and s.node.held == {"cid-" + other[:12]: other}
    assert "storage backend test node is back" in caplog.text


def test_files_waiting_for_a_backend_that_is_down_are_evicted_and_named(tmp_path, caplog):
    s = Setup(tmp_path, max_size=2500)
    shas = [s.cache_file(f"demo-{i}.0.tar.gz", bytes([i]) * 1000) for i in range(4)]
    # The budget holds although nothing reached the backend; the oldest went first.
    assert s.cache.total_size <= 2500
    assert [s.cache.has(x) for x in shas] == [False, False, True, True]
    assert [s.backends.has_pending(x) for x in shas] == [False, False, True, True]
    assert sorted(row[0] for row in run(s.store.pending())) == sorted(shas[2:])
    for i in (0, 1):
        assert (f"demo/demo-{i}.0.tar.gz (sha256 {shas[i]}) never reached test node: "
                "evicted (least recently used) before it was added") in caplog.text  # fmt: skip
    # Once the node is back, only what is still cached is added.
    s.node.up = True
    s.tick(RETRY_MS)
    assert sorted(s.node.held.values()) == sorted(shas[2:])


def test_a_file_that_leaves_the_cache_is_removed_from_the_backend_also_after_an_outage(tmp_path):
    s = Setup(tmp_path, max_size=2500)
    s.node.up = True
    first = s.cache_file("demo-0.0.tar.gz", b"0" * 1000)
    ref = "cid-" + first[:12]
    assert run(s.store.own_cid(first)) == ref
    s.node.up = False
    s.cache_file("demo-1.0.tar.gz", b"1" * 1000)
    s.cache_file("demo-2.0.tar.gz", b"2" * 1000)  # evicts the first, while the node is down
    assert not s.cache.has(first)
    # Its CID is forgotten at once (neither read nor attested again); the unpin waits.
    assert run(s.store.own_cid(first)) is None and run(s.store.own_refs_for(first)) == {}
    assert ref in s.node.held
    assert [row[:3] for row in run(s.store.removals())] == [(first, "0:node", ref)]
    s.node.up = True
    s.tick(10 * RETRY_MS)
    assert ref not in s.node.held and run(s.store.removals()) == []


def test_an_admin_purge_removes_even_when_evicted_files_stay(tmp_path):
    s = Setup(tmp_path, max_size=2500, unpin_evicted=False)
    s.node.up = True
    shas = [s.cache_file(f"demo-{i}.0.tar.gz", bytes([i]) * 1000) for i in range(3)]
    # Evicted, but kept in the backend, and still readable from it by its reference.
    assert not s.cache.has(shas[0])
    assert "cid-" + shas[0][:12] in s.node.held and run(s.store.own_refs_for(shas[0])) == {"cid": "cid-" + shas[0][:12]}
    run(s.cache.remove(shas[2], reason="purged by @admin:test"))
    assert "cid-" + shas[2][:12] not in s.node.held and run(s.store.own_cid(shas[2])) is None


def test_caching_a_file_again_calls_off_its_pending_removal(tmp_path):
    s = Setup(tmp_path)
    s.node.up = True
    data = b"z" * 1000
    sha = s.cache_file("demo-1.0.tar.gz", data)
    s.node.up = False
    run(s.cache.remove(sha, reason="purged by @admin:test"))
    assert len(run(s.store.removals())) == 1
    # Downloaded again before the node came back: the pin is kept, not removed.
    s.cache_file("demo-1.0.tar.gz", data)
    assert run(s.store.removals()) == []
    s.node.up = True
    s.tick(10 * RETRY_MS)
    assert s.node.held == {"cid-" + sha[:12]: sha} and run(s.store.own_cid(sha)) == "cid-" + sha[:12]


def test_a_file_evicted_while_it_is_being_added_is_removed_again(tmp_path):
    s = Setup(tmp_path)
    s.node.up = True
    s.node.gate = defer.Deferred()
    sha = s.cache_file("demo-1.0.tar.gz", b"q" * 1000)
    assert s.node.calls == ["store " + sha]  # the add is under way
    run(s.cache.remove(sha, reason="evicted (least recently used)", evicted=True))
    gate, s.node.gate = s.node.gate, None
    gate.callback(None)
    assert s.node.held == {} and run(s.store.stored_in(sha)) == {}
    assert s.node.calls[-1] == "remove cid-" + sha[:12]
