"""Index pages through a real Synapse: formats, negotiation, fields, redirects, metadata."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import time

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.dists import build_wheel, project_dir, read_wheel_metadata, sha256_file, wheel_filename
from harness.pages import project_html, project_json

pytestmark = pytest.mark.synapse

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"


def test_root_lists_upstream_projects_in_both_formats(mirror):
    status, headers, body = mirror.get("/simple/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    for name in ("alpha", "beta", "gamma", "delta-pkg"):
        assert f'href="{name}/"' in body.decode()
    status, headers, body = mirror.get("/simple/", {"Accept": JSON_V1})
    assert status == 200 and headers["content-type"] == JSON_V1
    data = json.loads(body)
    assert data["meta"]["api-version"] == "1.1"
    assert {"alpha", "beta", "gamma", "delta-pkg"} <= {p["name"] for p in data["projects"]}


@pytest.mark.parametrize(
    "accept, fmt, expected",
    [
        (None, None, "text/html"),
        ("text/html", None, "text/html"),
        (JSON_V1, None, JSON_V1),
        (HTML_V1, None, HTML_V1),
        (f"{HTML_V1};q=0.5, {JSON_V1};q=0.9", None, JSON_V1),
        (f"{HTML_V1};q=0.9, {JSON_V1};q=0.5", None, HTML_V1),
        (f"{JSON_V1};q=0, text/html;q=0.1", None, "text/html"),
        ("application/vnd.pypi.simple.latest+json", None, JSON_V1),
        ("*/*", None, JSON_V1),
        ("text/html", JSON_V1, JSON_V1),
        (JSON_V1, HTML_V1, HTML_V1),
    ],
)
def test_content_negotiation(mirror, accept, fmt, expected):
    path = "/simple/alpha/" + (f"?format={fmt}" if fmt else "")
    status, headers, body = mirror.get(path, {"Accept": accept} if accept else {})
    assert status == 200, body
    assert headers["content-type"].split(";")[0] == expected
    assert "Accept" in headers.get("vary", "")
    if expected == JSON_V1:
        assert json.loads(body)["name"] == "alpha"
    else:
        assert b"<a " in body


@pytest.mark.parametrize("accept", ["application/json", "image/png", f"{JSON_V1};q=0, text/html;q=0"])
def test_unacceptable_types_get_406(mirror, accept):
    status, headers, body = mirror.get("/simple/alpha/", {"Accept": accept})
    assert status == 406
    assert b"application/vnd.pypi.simple.v1+json" in body  # says what is on offer
    assert body.count(b"\n") == 1


def test_json_page_carries_pep_700_592_658_740_fields(mirror):
    status, _, body = mirror.get("/simple/alpha/", {"Accept": JSON_V1})
    page = json.loads(body)
    assert page["meta"] == {"api-version": "1.1"}
    assert page["versions"] == ["0.5", "1.0", "2.0"]
    files = {f["filename"]: f for f in page["files"]}
    new = wheel_filename("alpha", "2.0")
    path = mirror.root / "alpha" / new
    assert files[new]["hashes"] == {"sha256": sha256_file(path)}  # the upstream's hash, kept
    assert files[new]["size"] == path.stat().st_size
    assert re.match(r"\d{4}-\d\d-\d\dT", files[new]["upload-time"])
    assert files[new]["requires-python"] == ">=3.8"
    assert files[new]["url"].split("#")[0] == new  # relative: points back to this homeserver
    meta_sha = hashlib.sha256(read_wheel_metadata(path)).hexdigest()
    assert files[new]["core-metadata"] == {"sha256": meta_sha}
    # PEP 714: JSON has the new key only (pip 22.3-23.1 crash on the old one).
    assert all("dist-info-metadata" not in f for f in files.values())
    assert files[wheel_filename("alpha", "0.5")]["yanked"] == "broken build"
    assert files[wheel_filename("alpha", "1.0")]["yanked"] is False
    gamma = json.loads(mirror.get("/simple/gamma/", {"Accept": JSON_V1})[2])
    prov = gamma["files"][0]["provenance"]
    assert prov == mirror.upstream.file_url("gamma", wheel_filename("gamma", "1.0")) + ".provenance"


def test_html_page_carries_attributes(mirror):
    status, _, body = mirror.get("/simple/alpha/")
    html = body.decode()
    new = wheel_filename("alpha", "2.0")
    sha = sha256_file(mirror.root / "alpha" / new)
    anchor = next(line for line in html.splitlines() if f">{new}<" in line)
    assert f'href="{new}#sha256={sha}"' in anchor
    assert 'data-requires-python="&gt;=3.8"' in anchor
    assert "data-core-metadata=" in anchor and "data-dist-info-metadata=" in anchor
    yanked = next(line for line in html.splitlines() if wheel_filename("alpha", "0.5") in line)
    assert 'data-yanked="broken build"' in yanked


def test_non_normalized_names_redirect_to_normalized_url(mirror):
    status, headers, _ = mirror.get("/simple/Delta_Pkg/")
    assert status == 301
    assert headers["location"] == "../delta-pkg/"
    status, headers, _ = mirror.get("/simple/Delta.PKG/?format=" + JSON_V1)
    assert status == 301 and headers["location"] == "../delta-pkg/?format=" + JSON_V1
    status, headers, _ = mirror.get("/simple/delta-pkg")
    assert status == 301 and headers["location"] == "delta-pkg/"
    status, headers, _ = mirror.get("/simple")
    assert status == 301 and headers["location"] == "simple/"
    status, _, body = mirror.get("/simple/delta-pkg/", {"Accept": JSON_V1})
    assert status == 200 and json.loads(body)["name"] == "delta-pkg"


def test_metadata_files_are_served_and_cached(mirror):
    whl = wheel_filename("beta", "1.0")
    upstream_path = mirror.upstream.file_path("beta", whl) + ".metadata"
    before = mirror.upstream.hit_count(upstream_path)
    expected = read_wheel_metadata(mirror.root / "beta" / whl)
    for _ in range(3):
        status, _, body = mirror.get(f"/simple/beta/{whl}.metadata")
        assert status == 200 and body == expected
    assert mirror.upstream.hit_count(upstream_path) == before + 1
    # No metadata for the sdist: not advertised, and not served.
    page = json.loads(mirror.get("/simple/beta/", {"Accept": JSON_V1})[2])
    sdist = next(f for f in page["files"] if f["filename"].endswith(".tar.gz"))
    assert "core-metadata" not in sdist or sdist["core-metadata"] is False
    status, _, body = mirror.get(f"/simple/beta/{sdist['filename']}.metadata")
    assert status == 404 and b"no metadata" in body


def test_pages_are_cached_within_ttl(mirror):
    mirror.get("/simple/gamma/")
    before = mirror.upstream.hit_count("/simple/gamma/")
    for _ in range(5):
        assert mirror.get("/simple/gamma/")[0] == 200
    assert mirror.upstream.hit_count("/simple/gamma/") == before


def test_page_etag_gives_304(mirror):
    status, headers, _ = mirror.get("/simple/beta/")
    etag = headers["etag"]
    status, _, body = mirror.get("/simple/beta/", {"If-None-Match": etag})
    assert status == 304 and body == b""


# --- honest pages --------------------------------------------------------------------------


def _json(hs, path):
    status, headers, body = hs.request("GET", path, headers={"Accept": JSON_V1})
    assert status == 200, body
    return headers, json.loads(body)


def test_api_version_follows_the_sizes_the_mirror_knows(upstream_factory, synapse_factory, dists_dir):
    # An HTML upstream gives no sizes: JSON pages cannot claim 1.1 (PEP 700 makes size
    # mandatory) until the mirror knows every file's size from its cache.
    whl = build_wheel(project_dir(dists_dir, "sizes"), "sizes", "1.0")
    upstream = upstream_factory(formats=("html",))
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    _, page = _json(hs, "/simple/sizes/")
    assert page["meta"]["api-version"] == "1.0"
    assert "size" not in page["files"][0]
    status, _, body = hs.request("GET", f"/simple/sizes/{whl.name}")
    assert status == 200 and body == whl.read_bytes()
    _, page = _json(hs, "/simple/sizes/")
    assert page["meta"]["api-version"] == "1.1"
    assert page["files"][0]["size"] == whl.stat().st_size


def test_serial_is_passed_through_and_never_goes_back(upstream_factory, synapse_factory, dists_dir):
    pdir = project_dir(dists_dir, "serial")
    build_wheel(pdir, "serial", "1.0")
    (pdir / ".serial").write_text("10")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "page_ttl": 0})
    headers, page = _json(hs, "/simple/serial/")
    assert page["meta"]["_last-serial"] == 10 and headers["x-pypi-last-serial"] == "10"
    status, _, html = hs.request("GET", "/simple/serial/")
    assert status == 200 and b"<!--SERIAL 10-->" in html

    # A replayed (or stale-cached) page: an older serial, with a file the real one lacks.
    build_wheel(pdir, "serial", "0.9")
    (pdir / ".serial").write_text("7")
    _, page = _json(hs, "/simple/serial/")
    assert [f["filename"] for f in page["files"]] == ["serial-1.0-py3-none-any.whl"]
    assert page["meta"]["_last-serial"] == 10
    assert "has serial 7, older than the 10 of the page we have" in hs.log_text()

    (pdir / ".serial").write_text("11")
    _, page = _json(hs, "/simple/serial/")
    assert {f["filename"] for f in page["files"]} == {"serial-0.9-py3-none-any.whl", "serial-1.0-py3-none-any.whl"}
    assert page["meta"]["_last-serial"] == 11

    # A page that lost its serial cannot show it is not older: ours stays (for an hour of
    # such pages; after that the upstream is taken to have stopped sending serials, which
    # tests/unit/test_page_serials.py checks with a clock it moves).
    build_wheel(pdir, "serial", "0.8")
    (pdir / ".serial").unlink()
    _, page = _json(hs, "/simple/serial/")
    assert "serial-0.8-py3-none-any.whl" not in {f["filename"] for f in page["files"]}
    assert page["meta"]["_last-serial"] == 11
    assert "has no serial, the page we have has 11: keeping ours" in hs.log_text()


def test_project_status_passed_through_and_quarantine_offers_nothing(upstream_factory, synapse_factory, dists_dir):
    quarantined = project_dir(dists_dir, "badpkg")
    build_wheel(quarantined, "badpkg", "1.0")
    (quarantined / ".status").write_text("quarantined\nmalware, see the advisory")
    archived = project_dir(dists_dir, "oldpkg")
    build_wheel(archived, "oldpkg", "1.0")
    (archived / ".status").write_text("archived\n")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})

    _, page = _json(hs, "/simple/badpkg/")
    assert page["meta"]["api-version"] == "1.4"
    assert page["project-status"] == {"status": "quarantined", "reason": "malware, see the advisory"}
    assert page["files"] == [] and page["versions"] == []
    status, _, html = hs.request("GET", "/simple/badpkg/")
    assert status == 200 and b"<a " not in html
    assert b'<meta name="pypi:project-status" content="quarantined">' in html
    assert b'<meta name="pypi:project-status-reason" content="malware, see the advisory">' in html

    _, page = _json(hs, "/simple/oldpkg/")
    assert page["project-status"] == {"status": "archived"}
    assert [f["filename"] for f in page["files"]] == ["oldpkg-1.0-py3-none-any.whl"]  # still offered


def test_a_quarantined_projects_files_are_not_served_cached_copies_included(upstream_factory, synapse_factory,
                                                                            dists_dir):
    later = project_dir(dists_dir, "laterbad")
    path = build_wheel(later, "laterbad", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "page_ttl": 0})
    status, _, body = hs.request("GET", f"/simple/laterbad/{path.name}")
    assert status == 200 and body == path.read_bytes()
    (later / ".status").write_text("quarantined\nmalware, see the advisory")
    _, page = _json(hs, "/simple/laterbad/")
    assert page["project-status"]["status"] == "quarantined" and page["files"] == []
    status, _, body = hs.request("GET", f"/simple/laterbad/{path.name}")
    assert status == 404 and b"quarantined: malware, see the advisory" in body


def test_root_is_rendered_once_per_upstream_change(upstream_factory, synapse_factory, dists_dir):
    build_wheel(project_dir(dists_dir, "first"), "first", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "page_ttl": 0})
    etags = set()
    for accept in (JSON_V1, "text/html"):
        for _ in range(3):
            status, headers, body = hs.request("GET", "/simple/", headers={"Accept": accept})
            assert status == 200 and b"first" in body
            etags.add(headers["etag"])
        status, headers, body = hs.request("HEAD", "/simple/", headers={"Accept": accept})
        assert status == 200 and body == b"" and headers["etag"] in etags
        status, _, body = hs.request("GET", "/simple/", headers={"Accept": accept, "If-None-Match": headers["etag"]})
        assert status == 304 and body == b""
    assert len(etags) == 2  # one per format
    # Every request above revalidated with the upstream (TTL 0) and got "not modified":
    # each format was rendered once.
    log = hs.log_text()
    assert log.count("rendered the root list as JSON_V1") == 1
    assert log.count("rendered the root list as HTML_V1") == 1

    build_wheel(project_dir(dists_dir, "second"), "second", "1.0")
    status, headers, body = hs.request("GET", "/simple/", headers={"Accept": JSON_V1})
    assert status == 200 and {"first", "second"} <= {p["name"] for p in json.loads(body)["projects"]}
    assert headers["etag"] not in etags
    assert hs.log_text().count("rendered the root list as JSON_V1") == 2


def test_upload_time_lets_uv_and_pip_exclude_newer_files(upstream_factory, synapse_factory, dists_dir, tmp_path):
    pdir = project_dir(dists_dir, "dated")
    old = build_wheel(pdir, "dated", "1.0")
    new = build_wheel(pdir, "dated", "2.0")
    os.utime(old, (1_704_067_200, 1_704_067_200))  # 2024-01-01: the stand-in's upload-time is the mtime
    os.utime(new, (1_750_000_000, 1_750_000_000))  # 2025-06-15
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    _, page = _json(hs, "/simple/dated/")
    times = {f["filename"]: f["upload-time"] for f in page["files"]}
    assert times[old.name].startswith("2024-01-01T00:00:00") and times[new.name].startswith("2025-06-15")

    cutoff = "2025-01-01T00:00:00Z"
    python = make_venv(tmp_path / "uv")
    result = uv_install(python, hs.index_url, "dated", extra_args=["--exclude-newer", cutoff])
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "dated") == "1.0"
    python = make_venv(tmp_path / "pip")
    result = pip_install(python, hs.index_url, "dated", extra_args=["--uploaded-prior-to", cutoff])
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "dated") == "1.0"
    python = make_venv(tmp_path / "newest")
    result = uv_install(python, hs.index_url, "dated")
    assert result.returncode == 0 and installed_version(python, "dated") == "2.0", describe(result)


# --- huge and junk pages ---------------------------------------------------------------------

HUGE_FILES = 200_000


def test_junk_and_huge_pages_are_answered_within_a_memory_budget(upstream_factory, synapse_factory, dists_dir):
    (project_dir(dists_dir, "junk") / ".page.html").write_bytes(b"<a " * (50 * 1024**2 // 3))
    (project_dir(dists_dir, "huge-a") / ".page.json").write_bytes(project_json("huge-a", HUGE_FILES))
    (project_dir(dists_dir, "huge-b") / ".page.html").write_bytes(project_html("huge-b", HUGE_FILES))
    build_wheel(project_dir(dists_dir, "small"), "small", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(
        module_config={"upstream_url": upstream.url, "max_page_size": "100M", "page_cache_size": "64M"}
    )
    assert hs.request("GET", "/simple/small/")[0] == 200
    baseline = hs.rss_bytes()

    # 50 MB of unclosed "<a " took html.parser minutes; it is one pass now, and a page
    # that ends inside a tag has no links.
    status, _, body = hs.request("GET", "/simple/junk/", headers={"Accept": JSON_V1}, timeout=300)
    assert status == 200 and json.loads(body)["files"] == [], body[:200]

    rss = []
    for project in ("huge-a", "huge-b", "huge-a", "huge-b"):
        for accept in (JSON_V1, "text/html"):
            status, _, body = hs.request("GET", f"/simple/{project}/", headers={"Accept": accept}, timeout=300)
            assert status == 200, body[:200]
            if accept == JSON_V1:
                files = json.loads(body)["files"]
                assert len(files) == HUGE_FILES
                stem = project.replace("-", "_")
                assert files[-1]["filename"] == f"{stem}-{HUGE_FILES - 1}.0-py3-none-any.whl"
                assert files[-1]["hashes"] == {"sha256": "%064x" % (HUGE_FILES - 1)}
            else:
                assert body.count(b"<a ") == HUGE_FILES
            del body
        rss.append(hs.rss_bytes())
    print("RSS MB: baseline", baseline // 2**20, "after each page", [r // 2**20 for r in rss])
    # Neither page fits the 64M budget, so neither is kept: each request reads it back
    # from the database, and the memory of one is released before the next.
    assert hs.log_text().count("larger than page_cache_size; not kept in memory") >= 2
    # A page kept by mistake would stay: one of these is about 400 MB while it is used. What
    # the allocator keeps of freed pages varies: after the same four requests, Python 3.11 had
    # 555, 745, 719 and 780 MB, 3.13 547, 606, 722 and 692 (the second high-water mark lower).
    assert max(rss[2:]) < max(rss[:2]) + 200 * 2**20, rss
    assert rss[-1] - baseline < 800 * 2**20, (baseline, rss)


def test_a_page_fetch_stops_when_nobody_waits_for_it(upstream_factory, synapse_factory, dists_dir):
    # 20 MB at 2 MB/s: ten seconds of upstream body for a client that gives up after one.
    (project_dir(dists_dir, "slowpage") / ".page.json").write_bytes(project_json("slowpage", 90_000))
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "upstream_timeout": "20s"})
    upstream.fault("/simple/slowpage/", "slow", rate=2_000_000, count=1)
    with socket.create_connection(("127.0.0.1", hs.port), timeout=10) as s:
        s.sendall(b"GET /simple/slowpage/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: " + JSON_V1.encode() + b"\r\n\r\n")
        upstream.wait_for_hits("/simple/slowpage/")
    # The client is gone: the mirror stops reading the body (and never parses it).
    deadline = time.monotonic() + 8
    while "stopped fetching the page of 'slowpage'" not in hs.log_text():
        assert time.monotonic() < deadline, hs.log_tail()
        time.sleep(0.05)  # polling the log
    # Nothing was stored or remembered as a failure: the next client gets the page.
    status, _, body = hs.request("GET", "/simple/slowpage/", headers={"Accept": JSON_V1}, timeout=120)
    assert status == 200 and len(json.loads(body)["files"]) == 90_000
    assert upstream.hit_count("/simple/slowpage/") == 2
    assert "Traceback" not in hs.log_text()


def test_big_pages_go_out_gzipped_to_clients_that_take_it(upstream_factory, synapse_factory, dists_dir):
    names = [f"name-{i}" for i in range(3000)]
    (dists_dir / ".page.json").write_text(
        json.dumps({"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]})
    )
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    status, plain_headers, plain = hs.request("GET", "/simple/", headers={"Accept": JSON_V1})
    assert status == 200 and "content-encoding" not in plain_headers
    assert [p["name"] for p in json.loads(plain)["projects"]] == sorted(names)
    accept = {"Accept": JSON_V1, "Accept-Encoding": "gzip, deflate"}
    status, headers, body = hs.request("GET", "/simple/", headers=accept)
    assert status == 200 and headers["content-encoding"] == "gzip" and "Accept-Encoding" in headers["vary"]
    assert gzip.decompress(body) == plain and len(body) < len(plain) / 4
    assert headers["etag"] != plain_headers["etag"]  # another representation, another tag
    status, _, body = hs.request("GET", "/simple/", headers={**accept, "If-None-Match": headers["etag"]})
    assert status == 304 and body == b""
    status, headers, _ = hs.request("GET", "/simple/", headers={"Accept": JSON_V1, "Accept-Encoding": "gzip;q=0"})
    assert status == 200 and "content-encoding" not in headers
