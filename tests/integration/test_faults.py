"""Bad input and upstream faults: each gets a clear status with a one-line reason, never a
500, never a corrupt cache entry."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from harness.dists import build_wheel, project_dir, read_wheel_metadata, sha256_file
from harness.logcheck import file_path_trouble
from harness.matrix import poll
from harness.mirror import populate
from harness.upstream import http_request

pytestmark = pytest.mark.synapse


def _one_line(body: bytes) -> str:
    text = body.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line: {text!r}"
    assert "Traceback" not in text
    return text


def _no_traceback_for(mirror, path: str) -> None:
    # Our own error path logs no traceback for an expected failure.
    log = mirror.hs.log_text()
    assert f"error handling b'{path}'" not in log


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/simple/alpha/..%2F..%2F..%2Fetc%2Fpasswd", 400, "invalid file name"),
        ("/simple/alpha/%2e%2e", 400, "invalid file name"),
        ("/simple/alpha/.hidden", 400, "invalid file name"),
        ("/simple/alpha/a%00b.whl", 400, "invalid file name"),
        ("/simple/..%2F..%2Fetc/", 400, "invalid project name"),
        ("/simple/%2e%2e/", 400, "invalid project name"),
        ("/simple/-starts-with-dash/", 400, "invalid project name"),
        ("/simple/has%20space/", 400, "invalid project name"),
        ("/simple/" + "a" * 300 + "/", 400, "invalid project name"),
        ("/simple/%ff%fe/", 400, "UTF-8"),
        ("/simple/alpha/sub/dir/", 404, "no such page"),
        ("/simple/alpha/alpha-9.9-py3-none-any.whl", 404, "no such file"),
        ("/simple/alpha/nothing.tar.gz.metadata", 404, "no metadata"),
        ("/simple/no-such-project-here/", 404, "not found"),
    ],
)
def test_bad_requests(mirror, path, status, words):
    got, headers, body = mirror.get(path)
    assert got == status, body
    assert words in _one_line(body)
    assert headers["content-type"].startswith("text/plain")


def test_traversal_never_reads_outside(mirror):
    for path in ("/simple/../../etc/passwd", "/simple/alpha/../../../etc/passwd", "/simple/%2F/etc/passwd"):
        status, _, body = mirror.get(path)
        assert status in (301, 400, 404), (path, status)
        assert b"root:" not in body


def test_post_is_405(mirror):
    status, headers, body = mirror.get("/simple/alpha/", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    _one_line(body)


def _fresh(mirror, name: str, payload_size: int = 5000):
    path = build_wheel(project_dir(mirror.root, name), name, "1.0", payload_size=payload_size)
    return path, f"/simple/{name}/", f"/simple/{name}/{path.name}", mirror.upstream.file_path(name, path.name)


@pytest.mark.parametrize(
    "fault, status, words",
    [
        ({"kind": "malformed", "body": b'{"meta": {"api-version": "1.0"}, "files": 7}'}, 502, "malformed index page"),
        ({"kind": "malformed"}, 502, "malformed index page"),
        ({"kind": "status", "status": 500}, 502, "answered 500"),
        ({"kind": "status", "status": 503}, 502, "answered 503"),
        ({"kind": "status", "status": 404}, 404, "not found"),
        ({"kind": "timeout", "stage": "before"}, 504, "no response within"),
        ({"kind": "timeout", "stage": "body"}, 504, "no data for"),
        ({"kind": "reset", "stage": "before"}, 502, "connection closed before a response"),
        ({"kind": "reset", "stage": "body"}, 502, "connection lost"),
        ({"kind": "truncate"}, 502, "connection lost"),
    ],
)
def test_page_faults(mirror, fault, status, words):
    name = f"pagefault-{abs(hash(repr(fault))) % 10**8}"
    _, page, _, _ = _fresh(mirror, name)
    mirror.upstream.fault(page, **fault)
    try:
        got, _, body = mirror.get(page)
    finally:
        mirror.upstream.clear_faults()
    assert got == status, body
    assert words in _one_line(body)
    _no_traceback_for(mirror, page)
    if fault["kind"] == "malformed":
        # Parsing it again would give the same answer: for upstream_retry_interval the
        # mirror answers so without fetching it again (no re-fetch storm).
        hits = mirror.upstream.hit_count(page)
        assert mirror.get(page)[0] == status
        assert mirror.upstream.hit_count(page) == hits
    # Nothing broken was stored: with the upstream healthy, the page is right.
    deadline = time.monotonic() + 30
    while (got := mirror.get(page))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)  # polling until the remembered failure expires
    assert got[0] == 200 and name.encode() in got[2]


@pytest.mark.parametrize(
    "fault, status, words",
    [
        ({"kind": "status", "status": 500}, 502, "answered 500"),
        ({"kind": "status", "status": 404}, 404, "not found"),
        ({"kind": "status", "status": 410}, 404, "not found"),
        ({"kind": "timeout", "stage": "before"}, 504, "no response within"),
        ({"kind": "timeout", "stage": "body"}, 504, "no data for"),
        ({"kind": "reset", "stage": "before"}, 502, "connection closed before a response"),
        ({"kind": "reset", "stage": "headers"}, 502, "connection lost"),
        ({"kind": "reset", "stage": "body"}, 502, "connection lost"),
        ({"kind": "truncate"}, 502, "connection lost"),
        ({"kind": "wrong-bytes"}, 502, "sha256 mismatch"),
    ],
)
def test_file_faults(mirror, fault, status, words):
    name = f"filefault-{abs(hash(repr(fault))) % 10**8}"
    path, page, url, upstream_path = _fresh(mirror, name)
    assert mirror.get(page)[0] == 200
    mirror.upstream.fault(upstream_path, **fault)
    try:
        got, _, body = mirror.get(url)
    finally:
        mirror.upstream.clear_faults()
    assert got == status, body
    assert words in _one_line(body)
    _no_traceback_for(mirror, url)
    sha = sha256_file(path)
    assert not mirror.blob_path(sha).exists()
    assert list((mirror.hs.data_directory / "cache" / "partial").iterdir()) == []
    # The next request, with the upstream healthy, gets the real file.
    got, _, body = mirror.get(url)
    assert got == 200 and body == path.read_bytes()
    assert mirror.blob_path(sha).exists()


def test_an_upstream_metadata_file_that_does_not_match_its_hash_is_refused(mirror):
    """PEP 658: the page gives the .metadata file's sha256; other bytes are never served or
    kept, and the next request, with the upstream healthy, gets the right ones."""
    name = "metafault"
    path, page, url, upstream_path = _fresh(mirror, name)
    assert mirror.get(page)[0] == 200
    expected = read_wheel_metadata(path)
    mirror.upstream.fault(upstream_path + ".metadata", kind="wrong-bytes")
    try:
        got, _, body = mirror.get(url + ".metadata")
    finally:
        mirror.upstream.clear_faults()
    assert got == 502 and "sha256 mismatch" in _one_line(body), body
    assert list((mirror.hs.data_directory / "cache" / "partial").iterdir()) == []
    got, _, body = mirror.get(url + ".metadata")
    assert got == 200 and body == expected


def test_page_too_large_is_refused(synapse_factory, upstream_factory, dists_dir):
    for i in range(40):
        build_wheel(project_dir(dists_dir, "wide"), "wide", f"1.{i}")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "max_page_size": "2K"})
    status, _, body = hs.request("GET", "/simple/wide/")
    assert status == 502
    assert "larger than 2048 bytes" in _one_line(body)


def test_unreachable_upstream_without_cache_is_502(synapse_factory):
    hs = synapse_factory()  # the harness default upstream is a dead loopback port
    status, _, body = hs.request("GET", "/simple/alpha/")
    assert status == 502 and "cannot connect" in _one_line(body)


def test_an_outage_is_remembered_instead_of_waited_out_on_every_request(
        synapse_factory, upstream_factory, dists_dir):
    populate(dists_dir)
    upstream = upstream_factory()
    # TTL 0: without the outage remembered, every page request would ask the upstream,
    # and with it hanging, wait upstream_timeout each time.
    hs = synapse_factory(module_config={
        "upstream_url": upstream.url, "page_ttl": 0, "upstream_timeout": "2s", "upstream_retry_interval": "1h",
    })
    for project in ("alpha", "beta"):
        assert hs.request("GET", f"/simple/{project}/")[0] == 200
    upstream.fault("/simple/*", "timeout")  # the upstream accepts connections and never answers
    upstream.reset_hits()
    status, _, body = hs.request("GET", "/simple/alpha/")
    assert status == 200 and b"alpha-" in body  # the cached page, after one timed-out attempt
    assert upstream.hit_count("/simple/alpha/") == 1
    for _ in range(3):
        for project in ("alpha", "beta"):
            status, _, body = hs.request("GET", f"/simple/{project}/")
            assert status == 200 and f"{project}-".encode() in body
    assert upstream.hit_count("/simple/alpha/") == 1 and upstream.hit_count("/simple/beta/") == 0


def test_after_the_retry_interval_the_upstream_is_asked_again(synapse_factory, upstream_factory, dists_dir):
    populate(dists_dir)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={
        "upstream_url": upstream.url, "page_ttl": 0, "upstream_timeout": "2s", "upstream_retry_interval": "1s",
    })
    assert hs.request("GET", "/simple/alpha/")[0] == 200
    upstream.fault("/simple/*", "status", status=503)
    upstream.reset_hits()
    assert hs.request("GET", "/simple/alpha/")[0] == 200
    assert upstream.hit_count("/simple/alpha/") == 1
    upstream.clear_faults()

    def asked_again() -> bool:
        assert hs.request("GET", "/simple/alpha/")[0] == 200
        return upstream.hit_count("/simple/alpha/") >= 2

    poll(asked_again, what="the upstream asked again after the interval")
    poll(lambda: "upstream reachable again" in hs.log_text(), what="back online logged")


# -- a disk that really fills up -----------------------------------------------------------------

DISK_MB = 24


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs mounted for this test (the tests run as root) and removed after it.

    Requested before synapse_factory, so it is torn down after the homeserver has stopped."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)


def _fill(path: Path, leave: int) -> None:
    """Write `path` until at most `leave` bytes are free on its filesystem (really writing:
    tmpfs allocates on write)."""
    st = os.statvfs(path.parent)
    room = st.f_bavail * st.f_frsize - leave
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while room > 0:
            try:
                room -= f.write(chunk[: min(len(chunk), room)])
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return  # someone else's writes took the rest: full is what we wanted


def _partials(hs) -> list:
    return list((hs.data_directory / "cache" / "partial").iterdir())


def test_a_full_disk_streams_through_uncached_and_caching_resumes(small_disk, synapse_factory, upstream_factory,
                                                                  dists_dir):  # fmt: skip
    first = build_wheel(project_dir(dists_dir, "disky"), "disky", "1.0", payload_size=3_000_000)
    big = build_wheel(project_dir(dists_dir, "disky"), "disky", "2.0", payload_size=30_000_000)
    second = build_wheel(project_dir(dists_dir, "disky"), "disky", "3.0", payload_size=5_000_000)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "data_directory": str(small_disk / "pypi"),
                                        "min_free_space": "1M"})  # fmt: skip
    url = f"{hs.url}/simple/disky/"
    assert http_request(url)[0] == 200
    status, _, body = http_request(url + first.name, timeout=60)
    assert status == 200 and body == first.read_bytes()
    assert hs.data_directory.joinpath("cache").exists()
    first_blob = hs.data_directory / "cache" / "sha256" / sha256_file(first)[:2]
    assert first_blob.exists()

    # Larger than the whole disk: streamed through, verified, not cached; what is cached stays.
    status, headers, body = http_request(url + big.name, timeout=120)
    assert status == 200 and body == big.read_bytes()
    assert headers["content-length"] == str(big.stat().st_size)
    assert _partials(hs) == [] and first_blob.exists()
    assert "disk full in" in hs.log_text() and "streamed through without caching" in hs.log_text()

    # Someone else fills the disk: a file that would fit an empty disk streams through too,
    # since nothing we may evict makes room for it.
    ballast = small_disk / "ballast"
    _fill(ballast, leave=512 * 1024)
    status, _, body = http_request(url + second.name, timeout=60)
    assert status == 200 and body == second.read_bytes()
    assert _partials(hs) == []
    assert upstream.hit_count(upstream.file_path("disky", second.name)) == 1

    # Room again: the next request caches the file, without any restart.
    ballast.unlink()
    status, _, body = http_request(url + second.name, timeout=60)
    assert status == 200 and body == second.read_bytes()
    sha = sha256_file(second)
    assert (hs.data_directory / "cache" / "sha256" / sha[:2] / sha[2:4] / sha).exists()
    assert "disk space is back" in hs.log_text()
    assert "Traceback" not in hs.log_text()
    assert file_path_trouble(hs.log_text()) == []


def test_the_disk_filling_up_during_a_download_cuts_it_off_and_keeps_nothing(small_disk, synapse_factory,
                                                                             upstream_factory, dists_dir):  # fmt: skip
    import http.client

    wheel = build_wheel(project_dir(dists_dir, "filling"), "filling", "1.0", payload_size=8_000_000)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "data_directory": str(small_disk / "pypi"),
                                        "min_free_space": "1M"})  # fmt: skip
    assert http_request(f"{hs.url}/simple/filling/")[0] == 200
    upstream_path = upstream.file_path("filling", wheel.name)
    upstream.fault(upstream_path, "slow", rate=2_000_000)
    conn = http.client.HTTPConnection("127.0.0.1", hs.port, timeout=60)
    try:
        conn.request("GET", f"/simple/filling/{wheel.name}")
        resp = conn.getresponse()
        assert resp.status == 200  # answered after its first MiB, streaming
        got = resp.read(100_000)
        _fill(small_disk / "ballast", leave=0)  # the disk is now full: the next write fails
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):  # cut off, never whole
            got += resp.read()
        assert len(got) < wheel.stat().st_size
    finally:
        conn.close()
    poll(lambda: "the disk filled up while caching it" in hs.log_text(), what="the failure logged")
    poll(lambda: _partials(hs) == [], what="the partial file removed")
    upstream.clear_faults()
    # Still full: the next request is streamed through; then, with room, cached.
    status, _, body = http_request(f"{hs.url}/simple/filling/{wheel.name}", timeout=60)
    assert status == 200 and body == wheel.read_bytes()
    (small_disk / "ballast").unlink()
    status, _, body = http_request(f"{hs.url}/simple/filling/{wheel.name}", timeout=60)
    assert status == 200 and body == wheel.read_bytes()
    sha = sha256_file(wheel)
    assert (hs.data_directory / "cache" / "sha256" / sha[:2] / sha[2:4] / sha).stat().st_size == wheel.stat().st_size
    assert "Traceback" not in hs.log_text()
    assert file_path_trouble(hs.log_text()) == []


def test_a_full_disk_and_only_a_backend_to_fetch_from_is_507(small_disk, synapse_factory, dists_dir, tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    wheel = build_wheel(project_dir(dists_dir, "onlyipfs"), "onlyipfs", "1.0", payload_size=2_000_000)
    (blobs / "cid1").write_bytes(wheel.read_bytes())
    (tmp_path / "gate").touch()
    backend = {"module": "gated_storage.GatedStorage", "config": {"path": str(blobs), "gate": str(tmp_path / "gate")}}
    backends_dir = Path(__file__).resolve().parents[1] / "backends"
    hs = synapse_factory(module_config={"data_directory": str(small_disk / "pypi"), "min_free_space": "1M",
                                        "storage_providers": [backend]},
                         python_path=[backends_dir])  # fmt: skip
    token = hs.register_user("admin", admin=True)[1]
    body = {"project": "onlyipfs", "filename": wheel.name, "sha256": sha256_file(wheel),
            "size": wheel.stat().st_size, "cid": "cid1"}  # fmt: skip
    assert hs.request("POST", "/_synapse/pypi/v1/known_files", token=token, json_body=body)[0] == 200
    _fill(small_disk / "ballast", leave=256 * 1024)
    status, _, body = hs.request("GET", f"/simple/onlyipfs/{wheel.name}", timeout=60)
    assert status == 507
    assert "no disk space to fetch it from a storage backend" in _one_line(body)
    (small_disk / "ballast").unlink()
    status, _, body = hs.request("GET", f"/simple/onlyipfs/{wheel.name}", timeout=60)
    assert status == 200 and body == wheel.read_bytes()
