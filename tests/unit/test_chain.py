"""The read chain in memory: `FileChain`, `Download`, `PartialFile` and the responders, with
Twisted's `MemoryReactorClock`, a real SQLite store, a real cache directory, and a fake
upstream response and client connection whose every step the test drives.

Nothing here sleeps or waits on a real reactor: each test feeds bytes, pauses, resumes,
fails or disconnects at the exact point it wants and checks what the client was sent and
what the cache holds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from harness.syncdb import run, sqlite_run_db
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import _DataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from synapse_pypi._backends import Backends
from synapse_pypi._config import StorageProviderConfig
from synapse_pypi._errors import InsufficientStorage
from synapse_pypi._files import FileChain, LocalCache, WantedFile, blob_path
from synapse_pypi._partial import DiskFull, PartialFile
from synapse_pypi._responders import FileResponder, HeadResponder, RelayResponder, TailResponder
from synapse_pypi._store import Store
from synapse_pypi._upstream import UpstreamBadResponse, UpstreamClient
from synapse_pypi.storage import BackendContext, StorageBackend, StorageError

MB = 1024 * 1024


# -- the parts around the chain ---------------------------------------------------------------


def sqlite_store(path: Path) -> Store:
    """The module's real Store over a real SQLite file, run synchronously."""
    return Store(sqlite_run_db(path))


class Threads:
    """`defer_to_thread` under the test's control: calls run when the test says so."""

    def __init__(self, auto: bool = True):
        self.auto = auto
        self.pending: list = []
        self.fail_with: Optional[OSError] = None

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.fail_with is not None and fn.__name__ == "_write_all":
            raise self.fail_with
        if self.auto:
            return fn(*args)
        d: defer.Deferred[Any] = defer.Deferred()
        self.pending.append((d, fn, args))
        return await d

    def step(self) -> None:
        d, fn, args = self.pending.pop(0)
        d.callback(fn(*args))

    def run_all(self) -> None:
        while self.pending:
            self.step()


class BodyTransport:
    """The transport a response body is delivered over: records flow control."""

    def __init__(self, response: FakeResponse) -> None:
        self.response = response
        self.paused = 0
        self.resumed = 0
        self.stopped = False
        self.holding = False

    def pauseProducing(self) -> None:
        self.paused += 1
        self.holding = True

    def resumeProducing(self) -> None:
        self.resumed += 1
        self.holding = False
        self.response.flush()

    def stopProducing(self) -> None:
        # As treq's transport does: the connection goes, the body ends in a failure.
        if not self.stopped:
            self.stopped = True
            self.response.cut()


class FakeResponse:
    """An upstream response whose body the test feeds."""

    def __init__(self, length: Optional[int]):
        self.code = 200
        # As Twisted's client gives it: Content-Length as `length`, not among the headers.
        self.headers = Headers({})
        self.length = length if length is not None else UNKNOWN_LENGTH
        self.protocol: Any = None
        self.transport = BodyTransport(self)
        self.ended = False
        self.backlog: list = []  # what a paused transport has not delivered yet

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def feed(self, data: bytes, chunk: int = 64 * 1024) -> None:
        self.backlog += [data[i : i + chunk] for i in range(0, len(data), chunk)]
        self.flush()

    def flush(self) -> None:
        while self.backlog and not self.transport.holding and not self.ended:
            self.protocol.dataReceived(self.backlog.pop(0))

    def end(self) -> None:
        assert not self.backlog, "ended with bytes still held back by a pause"
        self.ended = True
        self.protocol.connectionLost(Failure(ResponseDone()))

    def cut(self) -> None:
        if not self.ended:
            self.ended = True
            self.protocol.connectionLost(Failure(_DataLoss()))


class FakeUpstream(UpstreamClient):
    """The real client's body handling; only `open_file` answers from the test."""

    def __init__(self, clock: MemoryReactorClock):
        super().__init__(clock, timeout=30, max_page_size=1 << 20)
        self.opened: list = []
        self.responses: list = []

    async def open_file(self, url: str) -> Any:
        self.opened.append(url)
        return self.responses.pop(0)


class Client:
    """The client's side of one response (a `Consumer`): what it was sent, and how it ended.

    With `window`, it pauses the producer once that many bytes are unread, as a transport
    whose buffer is full does; `read()` takes them and resumes it.
    """

    def __init__(self, window: Optional[int] = None, sock: Any = None):
        self.body = bytearray()
        self.producer: Any = None
        self.finished = False
        self.aborted = False
        self.disconnected = False
        self.window = window
        self.unread = 0
        self.paused = False
        self.sock = sock

    def register(self, producer: Any) -> None:
        assert self.producer is None, "a second producer"
        self.producer = producer

    def unregister(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert not (self.finished or self.aborted or self.disconnected), "written after the end"
        assert not self.paused, "written while paused"
        self.body += data
        self.unread += len(data)
        if self.window is not None and self.unread >= self.window and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def read(self) -> None:
        self.unread = 0
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def gone(self) -> bool:
        return self.finished or self.aborted or self.disconnected

    def go_away(self) -> None:
        self.disconnected = True
        if self.producer is not None:
            self.producer.stopProducing()

    def raw_socket(self) -> Any:
        return self.sock


class Chain:
    """A FileChain over a real cache directory and SQLite store, with fakes at the edges."""

    def __init__(self, tmp_path: Path, *, threads: Optional[Threads] = None, min_free: int = 0,
                 with_backend: bool = False, events: Any = None):  # fmt: skip
        self.clock = MemoryReactorClock()
        self.store = sqlite_store(tmp_path / "db.sqlite")
        run(self.store.setup())
        self.root = str(tmp_path / "cache")
        backends = backends_for(self.store, self.root) if with_backend else None
        self.cache = LocalCache(self.root, self.store, max_size=1 << 40, min_free=min_free)
        run(self.cache.start())
        self.upstream = FakeUpstream(self.clock)
        self.threads = threads or Threads()
        self.background: list = []
        self.chain = FileChain(
            self.cache,
            self.store,
            self.upstream,
            run_background=self._run_background,
            run_in_background=lambda fn, *a, **kw: defer.ensureDeferred(fn(*a, **kw)),
            defer_to_thread=self.threads,
            yieldable=lambda d: d,
            clock=self.clock,
            backends=backends,
            events=events,
        )

    def _run_background(self, desc: str, fn: Callable[..., Any], *args: Any) -> Any:
        d = defer.ensureDeferred(fn(*args))
        self.background.append((desc, d))
        return d

    def fetch(self, wanted: WantedFile, **kwargs: Any) -> defer.Deferred:
        return defer.ensureDeferred(self.chain.fetch(wanted, **kwargs))

    def partials(self) -> list:
        return os.listdir(os.path.join(self.root, "partial"))


def wheel_bytes(size: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def wanted_for(data: bytes, name: str = "demo-1.0.tar.gz", size: bool = True) -> WantedFile:
    return WantedFile("demo", name, "http://upstream.invalid/files/" + name, hashlib.sha256(data).hexdigest(),
                      len(data) if size else None)  # fmt: skip


def streaming(c: Chain, data: bytes, fed: int = 2 * MB, sent: Optional[bytes] = None) -> tuple:
    """Start the download of `data` (the upstream sends `sent` instead, if given), feed the
    first `fed` bytes, and return the upstream response and the responder the client got."""
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data))
    response.feed((data if sent is None else sent)[:fed])
    return response, result_of(d)


def downloaded(c: Chain, data: bytes, name: str = "demo-1.0.tar.gz") -> defer.Deferred:
    """Fetch `data` through the chain, the upstream sending all of it; the fetch's Deferred."""
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data, name=name))
    response.feed(data)
    response.end()
    return d


def result_of(d: defer.Deferred) -> Any:
    assert d.called, "not answered yet"
    if isinstance(d.result, Failure):
        d.result.raiseException()
    return d.result


# -- a download streamed to its clients ---------------------------------------------------------


def test_a_download_streams_behind_the_writer_and_holds_back_the_last_byte(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data))
    assert not d.called  # nothing yet: the client is answered after the first MiB
    response.feed(data[: 2 * MB])
    responder = result_of(d)
    assert isinstance(responder, TailResponder) and responder.length == len(data)
    client = Client()
    done = responder.write_to(client)
    assert bytes(client.body) == data[: 2 * MB - 1]  # all but the last byte on disk
    response.feed(data[2 * MB :])
    assert len(client.body) == len(data) - 1 and not client.finished
    response.end()
    assert done.called and client.finished and bytes(client.body) == data
    responder.close()
    assert c.cache.has(hashlib.sha256(data).hexdigest()) and c.partials() == []
    # The next request is a cache hit.
    hit = result_of(c.fetch(wanted_for(data)))
    assert isinstance(hit, FileResponder) and hit.verified
    hit.close()
    assert c.upstream.opened == [wanted_for(data).url]


def test_many_clients_one_download(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(2 * MB)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    waiting = [c.fetch(wanted_for(data)) for _ in range(5)]
    response.feed(data)
    response.end()
    for d in waiting:
        with result_of(d) as responder:
            client = Client()
            responder.write_to(client)
            assert client.finished and bytes(client.body) == data
    assert len(c.upstream.opened) == 1


def test_a_paused_client_is_not_written_to_and_resumes(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    with result_of(downloaded(c, data)) as responder:
        client = Client(window=300 * 1024)
        done = responder.write_to(client)
        reads = 0
        while not done.called:
            assert client.paused  # it stopped at the window, and writes nothing until read
            client.read()
            reads += 1
        assert reads >= 5 and bytes(client.body) == data and client.finished


def test_a_slow_disk_pauses_the_upstream(tmp_path):
    threads = Threads(auto=False)
    c = Chain(tmp_path, threads=threads)
    data = wheel_bytes(20 * MB)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data))
    response.feed(data[: 12 * MB])
    # The writer has not been given a turn: over the high-water mark, the upstream waits.
    assert response.transport.paused == 1 and response.transport.resumed == 0
    threads.run_all()
    assert response.transport.resumed == 1
    response.feed(data[12 * MB :])
    response.end()
    threads.run_all()
    with result_of(d) as responder:
        client = Client()
        responder.write_to(client)
        assert client.finished and bytes(client.body) == data


def test_a_client_that_goes_away_leaves_the_download_to_finish(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    response, responder = streaming(c, data)
    client = Client()
    done = responder.write_to(client)
    client.go_away()
    assert done.called
    sent = len(client.body)
    responder.close()
    response.feed(data[2 * MB :])
    response.end()
    assert len(client.body) == sent  # nothing written to a client that has gone
    assert c.cache.has(hashlib.sha256(data).hexdigest())  # the cache is warm all the same


def test_a_source_that_fails_mid_stream_cuts_the_client_off_and_keeps_nothing(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    response, responder = streaming(c, data)
    client = Client()
    done = responder.write_to(client)
    response.cut()
    assert done.called and client.aborted and not client.finished
    assert len(client.body) < len(data)
    responder.close()
    assert not c.cache.has(hashlib.sha256(data).hexdigest()) and c.partials() == []


def test_a_small_file_that_fails_is_a_clean_error(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(100_000)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data))
    response.feed(data[:50_000])
    response.cut()
    with pytest.raises(UpstreamBadResponse, match="connection lost after 50000 bytes"):
        result_of(d)
    assert c.partials() == []


def test_a_hash_mismatch_never_gives_the_client_the_whole_file(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    wrong = data[:-1] + b"!"
    response, responder = streaming(c, data, sent=wrong)
    client = Client()
    responder.write_to(client)
    response.feed(wrong[2 * MB :])
    response.end()
    # Everything but the one byte that would have made it whole; then cut off.
    assert client.aborted and bytes(client.body) == wrong[:-1]
    responder.close()
    assert not c.cache.has(hashlib.sha256(data).hexdigest()) and not c.cache.has(hashlib.sha256(wrong).hexdigest())
    assert c.partials() == []


def test_a_size_that_disagrees_with_the_index_is_refused_before_any_byte(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(10_000)
    c.upstream.responses.append(FakeResponse(len(data) + 1))
    with pytest.raises(UpstreamBadResponse, match="size mismatch"):
        result_of(c.fetch(wanted_for(data)))


def test_first_downloads_carry_the_upstreams_length(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted_for(data, size=False))  # an HTML index: no size on the page
    response.feed(data[: 2 * MB])
    with result_of(d) as responder:
        assert responder.length == len(data)
        response.feed(data[2 * MB :])
        response.end()


def test_head_never_downloads(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(1000)
    responder = result_of(c.fetch(wanted_for(data), body=False))
    assert isinstance(responder, HeadResponder)
    assert responder.length == 1000 and responder.sha256 == hashlib.sha256(data).hexdigest()
    assert c.upstream.opened == []


# -- sendfile -------------------------------------------------------------------------------------


class SocketPairSocket:
    """A `RawSocket` over one end of a real socket pair; the test reads the other. Its
    "thread" runs a burst at once, or (`queued`) when the test says so."""

    def __init__(self, sock: socket.socket, queued: bool = False):
        self.sock = sock
        self.waiting = 0
        self.sent_total = 0
        self.queued = queued
        self.jobs: list = []
        self.released = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def in_thread(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if not self.queued:
            return defer.maybeDeferred(fn, *args)
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((d, fn, args))
        return d

    def run_job(self) -> None:
        d, fn, args = self.jobs.pop(0)
        d.callback(fn(*args))

    def release(self) -> None:
        self.released = True

    def busy(self) -> bool:
        return False

    def when_writable(self) -> None:
        self.waiting += 1

    def sent(self, n: int) -> None:
        self.sent_total += n


def test_cached_files_go_out_with_sendfile_and_ranges(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(5 * MB)
    result_of(downloaded(c, data)).close()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        for first, last in ((0, None), (1000, 4 * MB + 17)):  # whole, and a range
            raw = SocketPairSocket(a)
            client = Client(sock=raw)
            with result_of(c.fetch(wanted_for(data))) as hit:
                done = hit.write_to(client, first, last)
                got = bytearray()
                expected = data[first : (last + 1 if last is not None else None)]
                while not done.called:
                    assert raw.waiting  # the socket was full: it waits to be told
                    got += b.recv(1 << 20)
                    raw.waiting = 0
                    client.producer.resumeProducing()
                b.setblocking(False)
                try:
                    while len(got) < len(expected):
                        got += b.recv(1 << 20)
                except BlockingIOError:
                    pass
                b.setblocking(True)
                assert bytes(got) == expected and raw.sent_total == len(expected)
                assert client.finished and client.body == b""  # nothing went through Python
                assert raw.released
    finally:
        a.close()
        b.close()


def test_with_several_downloads_bursts_go_to_threads_and_a_client_may_leave_meanwhile(tmp_path):
    c = Chain(tmp_path)
    data = wheel_bytes(3 * MB)
    result_of(downloaded(c, data)).close()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        raws, clients, done = [], [], []
        for a, _ in pairs:
            a.setblocking(False)
            raws.append(SocketPairSocket(a, queued=True))
            clients.append(Client(sock=raws[-1]))
        hits = [result_of(c.fetch(wanted_for(data))) for _ in pairs]
        # The first alone sends from the reactor; once two are sending, bursts wait for a thread.
        done.append(hits[0].write_to(clients[0]))
        assert raws[0].jobs == [] and raws[0].sent_total > 0
        done.append(hits[1].write_to(clients[1]))
        assert len(raws[1].jobs) == 1 and raws[1].sent_total == 0  # the reactor is free meanwhile
        raws[1].run_job()
        assert raws[1].sent_total > 0 and raws[1].waiting  # the socket filled up: wait to be told
        clients[1].producer.resumeProducing()
        assert len(raws[1].jobs) == 1
        clients[1].go_away()  # the client leaves while a burst is in flight
        assert done[1].called and not raws[1].released  # the descriptor stays until it returns
        pairs[1][1].recv(1 << 20)
        raws[1].run_job()
        assert raws[1].released
        clients[0].go_away()
        assert raws[0].released
        for hit in hits:
            hit.close()
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- storage backends, then the upstream ------------------------------------------------------------


class ListBackend(StorageBackend):
    """A backend that sends the bytes the test gave it (maybe not the right ones)."""

    reference_kind = "cid"
    read_only = True
    content: dict = {}

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None]) -> None:
        if reference not in self.content:
            raise StorageError(f"no {reference}")
        data = self.content[reference]
        for i in range(0, len(data), 256 * 1024):
            write(data[i : i + 256 * 1024])


def backends_for(c_store: Store, root: str) -> Backends:
    return Backends(
        (StorageProviderConfig(name="0:list", cls=ListBackend, config={}),),
        BackendContext(reactor=None, data_directory=root, defer_to_thread=None),  # type: ignore[arg-type]
        c_store,
        lambda sha256: blob_path(root, sha256),
        lambda desc, fn, *a: defer.ensureDeferred(fn(*a)),
    )


def test_a_rejected_backend_copy_is_never_spliced_onto_the_upstreams(tmp_path):
    threads = Threads(auto=False)
    c = Chain(tmp_path, threads=threads, with_backend=True)
    data = wheel_bytes(3 * MB)
    wanted = wanted_for(data)
    ListBackend.content = {"bad-cid": data[:-1] + b"!"}
    run(c.store.add_ref(wanted.sha256, "cid", "bad-cid", "test"))
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    d = c.fetch(wanted)
    # The backend's copy streams before it can have been verified ...
    while not d.called:
        threads.step()
    responder = result_of(d)
    client = Client()
    responder.write_to(client)
    assert len(client.body) > 0
    # ... then fails its hash check; the upstream is next, and the client is cut off.
    threads.run_all()
    assert client.aborted and 0 < len(client.body) < len(data)
    response.feed(data)
    response.end()
    threads.run_all()
    responder.close()
    assert c.cache.has(wanted.sha256) and len(c.upstream.opened) == 1
    with result_of(c.fetch(wanted)) as hit:
        fresh = Client()
        hit.write_to(fresh)
        assert bytes(fresh.body) == data


def test_a_good_backend_copy_is_served_without_the_upstream(tmp_path):
    data = wheel_bytes(2 * MB)
    wanted = wanted_for(data)
    ListBackend.content = {"good-cid": data}
    c = Chain(tmp_path, with_backend=True)
    run(c.store.add_ref(wanted.sha256, "cid", "good-cid", "test"))
    with result_of(c.fetch(wanted)) as responder:
        client = Client()
        responder.write_to(client)
        assert client.finished and bytes(client.body) == data
    assert c.upstream.opened == []


# -- a full disk ---------------------------------------------------------------------------------------


def test_no_room_streams_through_verified_and_caches_nothing(tmp_path):
    c = Chain(tmp_path, min_free=1 << 62)  # no disk has that much to spare
    data = wheel_bytes(3 * MB)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    responder = result_of(c.fetch(wanted_for(data)))
    assert isinstance(responder, RelayResponder) and responder.length == len(data)
    client = Client(window=1 * MB)
    with responder:
        done = responder.write_to(client)
        response.feed(data)
        assert client.paused and response.transport.holding  # the client's pace is the upstream's
        while response.backlog:
            client.read()
        assert response.transport.resumed
        assert len(client.body) == len(data) - 1  # the last byte waits for the hash
        response.end()
        assert done.called and client.finished and bytes(client.body) == data
    assert not c.cache.has(hashlib.sha256(data).hexdigest()) and c.partials() == []


def test_no_room_and_a_wrong_body_is_cut_off(tmp_path):
    c = Chain(tmp_path, min_free=1 << 62)
    data = wheel_bytes(300_000)
    response = FakeResponse(len(data))
    c.upstream.responses.append(response)
    with result_of(c.fetch(wanted_for(data))) as responder:
        client = Client()
        responder.write_to(client)
        response.feed(data[:-1] + b"?")
        response.end()
        assert client.aborted and len(client.body) == len(data) - 1


def test_no_room_and_no_upstream_is_507(tmp_path):
    c = Chain(tmp_path, min_free=1 << 62)
    data = wheel_bytes(1000)
    wanted = WantedFile("demo", "demo-1.0.tar.gz", "", hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(InsufficientStorage, match="no disk space") as e:
        result_of(c.fetch(wanted))
    assert e.value.code == 507


def test_the_disk_filling_up_midway_fails_the_download_and_waiting_clients_stream_through(tmp_path):
    threads = Threads()
    c = Chain(tmp_path, threads=threads)
    data = wheel_bytes(3 * MB)
    first, relay = FakeResponse(len(data)), FakeResponse(len(data))
    c.upstream.responses += [first, relay]
    waiting = c.fetch(wanted_for(data))
    threads.fail_with = OSError(errno.ENOSPC, "No space left on device")
    first.feed(data[:200_000])
    # The download failed on the disk; the client, not answered yet, gets a stream-through.
    responder = result_of(waiting)
    assert isinstance(responder, RelayResponder)
    assert first.transport.stopped and c.partials() == []
    with responder:
        client = Client()
        responder.write_to(client)
        relay.feed(data)
        relay.end()
        assert client.finished and bytes(client.body) == data


def test_make_room_evicts_least_recently_used_files(tmp_path, monkeypatch):
    c = Chain(tmp_path)
    for i in range(3):
        result_of(downloaded(c, wheel_bytes(100_000, seed=i), name=f"demo-{i}.tar.gz")).close()
    # A 1 MB disk that holds nothing but the cache (the real one is shared with other work).
    import synapse_pypi._files as files_module

    class Disk:
        f_frsize = 1
        f_bavail = property(lambda self: 1_000_000 - c.cache.total_size)

    monkeypatch.setattr(files_module.os, "statvfs", lambda path: Disk())
    c.cache._min_free = 600_000  # 700 kB free: 100 kB more fit, 200 kB only once one file is gone
    assert run(c.cache.make_room(100_000))
    assert c.cache.total_size == 300_000
    assert run(c.cache.make_room(200_000))
    assert not c.cache.has(hashlib.sha256(wheel_bytes(100_000, seed=0)).hexdigest())
    assert c.cache.has(hashlib.sha256(wheel_bytes(100_000, seed=2)).hexdigest())


# -- the partial file ---------------------------------------------------------------------------------


def test_a_full_device_is_disk_full(tmp_path):
    errors: list = []
    threads = Threads()
    partial = PartialFile(str(tmp_path / "x.partial"), threads, lambda d: d, lambda: None)
    partial.start(lambda fn: defer.ensureDeferred(fn()))
    # /dev/full answers every write with ENOSPC, as a full disk does.
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, partial.fd)
    os.close(full)
    partial.write(b"abc")
    with pytest.raises(DiskFull):
        partial.write(b"more")
    d = defer.ensureDeferred(partial.finish())
    d.addErrback(lambda f: errors.append(f.value))
    assert isinstance(errors[0], DiskFull)
    run(partial.stopped())


def test_short_writes_are_completed_and_a_write_of_nothing_is_disk_full(tmp_path, monkeypatch):
    from synapse_pypi import _partial

    real = os.pwrite
    calls: list = []

    def short(fd: int, data: Any, offset: int) -> int:
        calls.append(len(data))
        return real(fd, bytes(data)[:3], offset)  # the disk takes three bytes at a time

    monkeypatch.setattr(_partial.os, "pwrite", short)
    partial = PartialFile(str(tmp_path / "y.partial"), Threads(), lambda d: d, lambda: None)
    partial.start(lambda fn: defer.ensureDeferred(fn()))
    partial.write(b"0123456789")
    sha, size = run(partial.finish())
    assert size == 10 and sha == hashlib.sha256(b"0123456789").hexdigest() and len(calls) == 4
    assert Path(partial.path).read_bytes() == b"0123456789"
    monkeypatch.setattr(_partial.os, "pwrite", lambda fd, data, offset: 0)
    partial.write(b"more")
    with pytest.raises(DiskFull, match="short write"):
        run(partial.finish())
    run(partial.stopped())


def test_a_request_right_after_a_failure_starts_afresh(tmp_path):
    threads = Threads(auto=False)  # the failed download's clean-up is still waiting on a thread
    c = Chain(tmp_path, threads=threads)
    data = wheel_bytes(100_000)
    first, second = FakeResponse(len(data)), FakeResponse(len(data))
    c.upstream.responses += [first, second]
    d = c.fetch(wanted_for(data))
    first.feed(data[:1000])  # its write waits for a thread ...
    first.cut()  # ... when the upstream fails: the download's clean-up waits for that write
    with pytest.raises(UpstreamBadResponse):
        result_of(d)
    again = c.fetch(wanted_for(data))  # not told the old failure: a new download
    second.feed(data)
    second.end()
    threads.run_all()
    with result_of(again) as responder:
        client = Client()
        responder.write_to(client)
        assert client.finished and bytes(client.body) == data
