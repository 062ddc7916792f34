"""Index pages through a real Synapse: formats, negotiation, fields, redirects, metadata."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from harness.dists import read_wheel_metadata, sha256_file, wheel_filename

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
