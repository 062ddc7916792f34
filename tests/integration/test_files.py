"""Files through a real Synapse: streaming, one download per file, verification, HTTP caching
headers and ranges."""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from pathlib import Path

import pytest
from harness.clients import slow_reader
from harness.dists import build_wheel, project_dir, sha256_file
from harness.logcheck import file_path_trouble
from harness.upstream import http_request

pytestmark = pytest.mark.synapse


def _add(mirror, name: str, payload_size: int = 0) -> Path:
    return build_wheel(project_dir(mirror.root, name), name, "1.0", payload_size=payload_size)


def test_cached_file_headers_head_range_and_etag(mirror):
    path = _add(mirror, "headers-pkg", payload_size=200_000)
    data = path.read_bytes()
    sha = sha256_file(path)
    url = f"/simple/headers-pkg/{path.name}"
    status, headers, body = mirror.get(url)  # first: from the upstream
    assert status == 200 and body == data
    status, headers, body = mirror.get(url)  # second: from the cache
    assert status == 200 and body == data
    assert headers["etag"] == f'"{sha}"'
    assert headers["content-length"] == str(len(data))
    assert "last-modified" in headers
    assert headers["accept-ranges"] == "bytes"

    status, hdrs, body = mirror.get(url, method="HEAD")
    assert status == 200 and body == b"" and hdrs["content-length"] == str(len(data))

    status, hdrs, body = mirror.get(url, {"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert hdrs["content-range"] == f"bytes 100-1099/{len(data)}"
    status, hdrs, body = mirror.get(url, {"Range": "bytes=-500"})
    assert status == 206 and body == data[-500:]
    status, hdrs, body = mirror.get(url, {"Range": f"bytes={len(data) + 10}-"})
    assert status == 416

    status, _, body = mirror.get(url, {"If-None-Match": f'"{sha}"'})
    assert status == 304 and body == b""
    assert mirror.upstream.hit_count(mirror.upstream.file_path("headers-pkg", path.name)) == 1


def test_twenty_clients_one_upstream_download_streamed(mirror):
    # 3 MB at 1 MB/s: the download is in flight long enough for every client to start.
    path = _add(mirror, "popular-pkg", payload_size=3_000_000)
    sha = sha256_file(path)
    upstream_path = mirror.upstream.file_path("popular-pkg", path.name)
    mirror.upstream.fault(upstream_path, "slow", rate=1_000_000)
    assert mirror.get("/simple/popular-pkg/")[0] == 200
    blob = mirror.blob_path(sha)
    url = mirror.hs.url + f"/simple/popular-pkg/{path.name}"
    results = {}
    committed_at_first_byte = {}

    def client(i: int) -> None:
        with urllib.request.urlopen(url, timeout=120) as r:
            first = r.read(1)
            committed_at_first_byte[i] = blob.exists()
            rest = r.read()
        results[i] = hashlib.sha256(first + rest).hexdigest()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    mirror.upstream.clear_faults()
    assert results == {i: sha for i in range(20)}
    assert mirror.upstream.hit_count(upstream_path) == 1
    # Nobody waited for the whole download: each got its first byte before the commit.
    assert committed_at_first_byte == {i: False for i in range(20)}
    assert blob.exists()
    assert file_path_trouble(mirror.hs.log_text()) == []


def test_wrong_bytes_are_not_cached_and_both_hashes_logged(mirror):
    path = _add(mirror, "tampered-pkg", payload_size=10_000)
    sha = sha256_file(path)
    upstream_path = mirror.upstream.file_path("tampered-pkg", path.name)
    mirror.get("/simple/tampered-pkg/")
    mirror.upstream.fault(upstream_path, "wrong-bytes")
    status, _, body = mirror.get(f"/simple/tampered-pkg/{path.name}")
    assert status == 502
    assert b"sha256 mismatch" in body and body.count(b"\n") == 1
    bad = hashlib.sha256(bytes(b ^ 0x5A for b in path.read_bytes())).hexdigest()
    log = mirror.hs.log_text()
    assert f"got {bad}, expected {sha}" in log
    assert not mirror.blob_path(sha).exists() and not mirror.blob_path(bad).exists()
    assert list((mirror.hs.data_directory / "cache" / "partial").iterdir()) == []
    # Once the upstream behaves, the file is fetched and served.
    mirror.upstream.clear_faults()
    status, _, body = mirror.get(f"/simple/tampered-pkg/{path.name}")
    assert status == 200 and body == path.read_bytes()


def test_large_file_truncated_mid_stream_aborts_and_caches_nothing(mirror):
    path = _add(mirror, "cutoff-pkg", payload_size=3_000_000)
    sha = sha256_file(path)
    upstream_path = mirror.upstream.file_path("cutoff-pkg", path.name)
    mirror.get("/simple/cutoff-pkg/")
    # Paced, so that the mirror has answered (after its first MiB) before the cut comes.
    mirror.upstream.fault(upstream_path, "truncate", bytes=2_000_000, rate=1_000_000)
    with pytest.raises(Exception) as e:  # IncompleteRead or a reset: never a whole body
        with urllib.request.urlopen(mirror.hs.url + f"/simple/cutoff-pkg/{path.name}", timeout=60) as r:
            r.read()
    assert "IncompleteRead" in repr(e.value) or "reset" in repr(e.value).lower()
    mirror.upstream.clear_faults()
    assert not mirror.blob_path(sha).exists()
    status, _, body = mirror.get(f"/simple/cutoff-pkg/{path.name}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha


def test_eviction_is_lru_and_spares_files_being_served(synapse_factory, upstream_factory, dists_dir):
    upstream = upstream_factory()
    big = build_wheel(project_dir(dists_dir, "big"), "big", "1.0", payload_size=20_000_000)
    small = [
        build_wheel(project_dir(dists_dir, f"small{i}"), f"small{i}", "1.0", payload_size=300_000) for i in range(4)
    ]
    # Room for big and one small file, not two: every further small file evicts something.
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "max_cache_size": 20_450_000})

    def blob(path: Path) -> Path:
        sha = sha256_file(path)
        return hs.data_directory / "cache" / "sha256" / sha[:2] / sha[2:4] / sha

    def get(path: Path) -> bytes:
        name = path.name.split("-")[0]
        status, _, body = http_request(f"{hs.url}/simple/{name}/{path.name}", timeout=60)
        assert status == 200
        return body

    get(big)
    get(small[0])
    assert blob(big).exists() and blob(small[0]).exists()
    # A slow client starts reading big; then small0 is used again, so big is the least
    # recently used file while it is still being sent. Caching small1 must evict small0,
    # not big.
    reader = slow_reader(f"{hs.url}/simple/big/{big.name}")
    try:
        get(small[0])
        get(small[1])
        assert blob(big).exists(), "a file being served was evicted"
        assert not blob(small[0]).exists()
        assert blob(small[1]).exists()
    finally:
        reader.close()

    def reader_request_ended() -> bool:
        # Synapse logs a request when it ends: the first GET of big, then the reader's.
        return hs.log_text().count(f'"GET /simple/big/{big.name} HTTP/1.1"') >= 2

    _poll(reader_request_ended)
    # Now nobody is reading big; it is the least recently used and goes first.
    get(small[2])

    def big_gone() -> bool:
        return not blob(big).exists()

    _poll(big_gone)
    assert blob(small[1]).exists() and blob(small[2]).exists()
    # An evicted file is fetched again from the upstream, correctly.
    before = upstream.hit_count(upstream.file_path("small0", small[0].name))
    assert get(small[0]) == small[0].read_bytes()
    assert upstream.hit_count(upstream.file_path("small0", small[0].name)) == before + 1


def _poll(cond, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {cond.__name__} not met within {timeout}s")
        time.sleep(0.05)  # polling interval


def test_leftover_partials_swept_at_startup(synapse_factory, upstream_factory, dists_dir):
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    partial_dir = hs.data_directory / "cache" / "partial"
    leftover = partial_dir / "deadbeef.partial"
    hs.stop()
    partial_dir.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a wheel")
    hs.start()
    _poll(lambda: not leftover.exists())
    assert "swept 1 leftover partial downloads" in hs.log_text()


def _raw_get(url: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, first body bytes, connection, response) without reading the whole body."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(method, parts.path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, conn, resp


def test_head_of_an_uncached_file_never_downloads(mirror):
    path = _add(mirror, "head-pkg", payload_size=50_000)
    upstream_path = mirror.upstream.file_path("head-pkg", path.name)
    assert mirror.get("/simple/head-pkg/")[0] == 200
    status, headers, body = mirror.get(f"/simple/head-pkg/{path.name}", method="HEAD")
    # What the page knows: size, type, hash. No Accept-Ranges: nothing to take ranges from yet.
    assert status == 200 and body == b""
    assert headers["content-length"] == str(path.stat().st_size)
    assert headers["content-type"] == "application/zip"
    assert headers["etag"] == f'"{sha256_file(path)}"'
    assert "accept-ranges" not in headers
    status, _, body = mirror.get(f"/simple/head-pkg/{path.name}.metadata", method="HEAD")
    assert status == 200 and body == b""
    assert mirror.upstream.hit_count(upstream_path) == 0
    assert mirror.upstream.hit_count(upstream_path + ".metadata") == 0
    assert not mirror.blob_path(sha256_file(path)).exists()


def test_first_downloads_carry_the_upstreams_content_length(synapse_factory, upstream_factory, dists_dir):
    # An HTML-only upstream: its page gives no size, only its file response does.
    path = build_wheel(project_dir(dists_dir, "sized-pkg"), "sized-pkg", "1.0", payload_size=3_000_000)
    upstream = upstream_factory(formats=("html",))
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    assert http_request(f"{hs.url}/simple/sized-pkg/")[0] == 200
    upstream.fault(upstream.file_path("sized-pkg", path.name), "slow", rate=2_000_000)
    status, headers, conn, resp = _raw_get(f"{hs.url}/simple/sized-pkg/{path.name}")
    try:
        assert status == 200
        assert headers.get("content-length") == str(path.stat().st_size), headers
        assert "transfer-encoding" not in headers
        assert hashlib.sha256(resp.read()).hexdigest() == sha256_file(path)
    finally:
        conn.close()
        upstream.clear_faults()


def _metadata_of(path: Path) -> bytes:
    from harness.dists import read_wheel_metadata

    return read_wheel_metadata(path)


def _json_page(hs, project: str) -> dict:
    import json

    status, _, body = http_request(f"{hs.url}/simple/{project}/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # fmt: skip
    assert status == 200
    return {f["filename"]: f for f in json.loads(body)["files"]}


def test_core_metadata_extracted_from_cached_wheels(synapse_factory, upstream_factory, dists_dir):
    wheel = build_wheel(project_dir(dists_dir, "nometa"), "nometa", "1.0", requires=["beta>=1"],
                        metadata_sidecar=False)  # fmt: skip
    broken = project_dir(dists_dir, "nometa") / "nometa-2.0-py3-none-any.whl"
    broken.write_bytes(b"PK\x03\x04 not really a zip " * 100)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    files = _json_page(hs, "nometa")
    assert not files[wheel.name].get("core-metadata")  # the upstream offers none
    assert http_request(f"{hs.url}/simple/nometa/{wheel.name}.metadata")[0] == 404
    for f in (wheel, broken):
        status, _, body = http_request(f"{hs.url}/simple/nometa/{f.name}")
        assert status == 200 and body == f.read_bytes()
    expected = hashlib.sha256(_metadata_of(wheel)).hexdigest()

    def offered() -> bool:
        return _json_page(hs, "nometa")[wheel.name].get("core-metadata") == {"sha256": expected}

    _poll(offered)
    # PEP 714: both attributes in HTML, the hash being that of the file served.
    status, _, html = http_request(f"{hs.url}/simple/nometa/")
    anchor = next(line for line in html.decode().splitlines() if f">{wheel.name}<" in line)
    assert f'data-core-metadata="sha256={expected}"' in anchor and "data-dist-info-metadata=" in anchor
    status, headers, body = http_request(f"{hs.url}/simple/nometa/{wheel.name}.metadata")
    assert status == 200 and body == _metadata_of(wheel)
    assert headers["content-type"].startswith("text/plain")
    assert upstream.hit_count(upstream.file_path("nometa", wheel.name) + ".metadata") == 0
    # A wheel that is not a zip has none, and says so in the log without a traceback.
    _poll(lambda: "no core metadata for nometa/nometa-2.0-py3-none-any.whl" in hs.log_text())
    assert not _json_page(hs, "nometa")[broken.name].get("core-metadata")
    assert "Traceback" not in hs.log_text()
    assert file_path_trouble(hs.log_text()) == []


def test_core_metadata_of_wheels_cached_before_is_extracted_at_start(synapse_factory, upstream_factory, dists_dir):
    wheel = build_wheel(project_dir(dists_dir, "oldmeta"), "oldmeta", "1.0", metadata_sidecar=False)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    assert http_request(f"{hs.url}/simple/oldmeta/{wheel.name}")[0] == 200
    _poll(lambda: "extracted core metadata of oldmeta/" in hs.log_text())
    hs.stop()
    # As an older version of the module left it: the wheel cached, its metadata not.
    import sqlite3

    db = sqlite3.connect(str(hs.work_dir / "homeserver.db"))
    db.execute("DELETE FROM synapse_pypi_files WHERE filename LIKE '%.metadata'")
    db.commit()
    db.close()
    hs.start()
    expected = hashlib.sha256(_metadata_of(wheel)).hexdigest()
    _poll(lambda: _json_page(hs, "oldmeta")[wheel.name].get("core-metadata") == {"sha256": expected})


def nginx_in_front(work_dir: Path, hs, cache_dir: Path):
    """A real nginx proxying /simple/ to the homeserver, configured as docs/configuration.md
    ("Behind nginx") shows."""
    from harness.nginx import NginxServer, nginx_binary
    from harness.synapse import free_port

    if nginx_binary() is None:
        pytest.fail("nginx is not installed: apt-get install nginx")
    body = DOCS_NGINX.read_text().split("```nginx\n", 1)[1].split("```", 1)[0]
    body = body.replace("127.0.0.1:8008", f"127.0.0.1:{hs.port}").replace(
        "/var/lib/synapse-pypi/pypi/cache/", f"{cache_dir}/")
    # Only the location blocks: the harness writes the server block around them.
    locations = body[body.index("    location"): body.rindex("}")]
    return NginxServer(work_dir, locations, free_port()).start()


DOCS_NGINX = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_x_accel_redirect_lets_a_real_nginx_send_cached_files(synapse_factory, upstream_factory, dists_dir, tmp_path):
    path = build_wheel(project_dir(dists_dir, "offload"), "offload", "1.0", payload_size=2_000_000)
    data, sha = path.read_bytes(), sha256_file(path)
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "x_accel_redirect": "/_synapse_pypi_cache/"})
    nginx = nginx_in_front(tmp_path / "nginx", hs, hs.data_directory / "cache")
    try:
        url = f"{nginx.url}/simple/offload/{path.name}"
        # First: the homeserver streams it from the upstream, through nginx.
        status, headers, body = http_request(url)
        assert status == 200 and body == data
        # Then nginx sends it from the cache directory itself.
        status, headers, body = http_request(url)
        assert status == 200 and body == data
        assert headers["content-length"] == str(len(data))
        assert headers["x-checksum-sha256"] == sha
        assert headers["cache-control"] == "max-age=31536000, immutable"
        assert headers["content-type"] == "application/zip"
        assert "x-accel-redirect" not in headers
        status, headers, body = http_request(url, headers={"Range": "bytes=100-1099"})
        assert status == 206 and body == data[100:1100]
        status, headers, body = http_request(url, method="HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == str(len(data))
        # The homeserver sent headers only for those; nginx sent the bytes.
        log = hs.log_text()
        offloaded = [line for line in log.splitlines() if f"GET /simple/offload/{path.name}" in line and " 0B 200 " in line]
        assert len(offloaded) >= 2, log[-3000:]
        nginx_lines = nginx.access_log.read_text().splitlines()
        assert any(f'"/simple/offload/{path.name}" 200 {len(data)}' in line for line in nginx_lines[1:])
        # Asked directly (no X-Sendfile-Type), the homeserver sends the bytes itself.
        status, headers, body = http_request(f"{hs.url}/simple/offload/{path.name}")
        assert status == 200 and body == data and "x-accel-redirect" not in headers
        # The cache directory is not reachable from outside.
        status, _, _ = http_request(f"{nginx.url}/_synapse_pypi_cache/" + "sha256/" + sha[:2] + "/" + sha[2:4] + "/" + sha)
        assert status == 404
    finally:
        nginx.stop()
