"""Tests of the test harness itself: if these fail, no integration test can be trusted.

They prove that the distributions built by `dists` are real (pip and uv install them), that
the upstream server speaks PEP 503/691 with conditional requests, that each injected fault
does what it says, and that Synapse starts from sample_homeserver.yaml on SQLite and
PostgreSQL with the module loaded.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import http.client
import json
import re
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from harness import dists
from harness.clients import PIP, describe, installed_version, pip_install, run_client, tool_python, uv_install
from harness.synapse import MODULE_NAME, SAMPLE_CONFIG, postgres_available
from harness.upstream import UpstreamServer

JSON_V1 = "application/vnd.pypi.simple.v1+json"
# What pip 23.2 sends (pip/_internal/index/collector.py).
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 10, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, with no retries and no redirects."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _page(upstream: UpstreamServer, project: str) -> dict:
    status, headers, body = _get(upstream.port, f"/simple/{project}/", {"Accept": JSON_V1})
    assert status == 200, body
    assert headers["content-type"] == JSON_V1
    return json.loads(body)


def _file_entry(page: dict, filename: str) -> dict:
    return next(f for f in page["files"] if f["filename"] == filename)


# -- dists ----------------------------------------------------------------------------


def test_wheel_is_valid_and_reproducible(tmp_path: Path) -> None:
    whl = dists.build_wheel(
        tmp_path / "a",
        "My.Pkg_Name",
        "1.0",
        requires=["beta>=2", "gamma; python_version<'3'"],
        requires_python=">=3.8",
        payload_size=300_000,
        tag="py2.py3-none-any",
    )
    assert whl.name == "my_pkg_name-1.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        assert "my_pkg_name/__init__.py" in names
        assert b'__version__ = "1.0"' in zf.read("my_pkg_name/__init__.py")
        record = zf.read("my_pkg_name-1.0.dist-info/RECORD").decode().splitlines()
        listed = set()
        for line in record:
            path, digest, size = line.rsplit(",", 2)
            listed.add(path)
            if path.endswith("/RECORD"):
                assert digest == "" and size == ""
                continue
            data = zf.read(path)
            assert int(size) == len(data), path
            want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == want, path
        assert listed == set(names)
        meta = email.parser.BytesHeaderParser().parsebytes(zf.read("my_pkg_name-1.0.dist-info/METADATA"))
        assert meta["Metadata-Version"] == "2.1"
        assert meta["Name"] == "My.Pkg_Name"
        assert meta["Requires-Python"] == ">=3.8"
        assert meta.get_all("Requires-Dist") == ["beta>=2", "gamma; python_version<'3'"]
        wheel_meta = zf.read("my_pkg_name-1.0.dist-info/WHEEL").decode()
        assert "Tag: py2-none-any" in wheel_meta and "Tag: py3-none-any" in wheel_meta
        assert zf.getinfo("my_pkg_name/payload.bin").file_size == 300_000
    # The payload is incompressible, so big-file tests really move that many bytes.
    assert whl.stat().st_size > 300_000
    # PEP 658 sidecar = the METADATA bytes.
    assert Path(str(whl) + ".metadata").read_bytes() == dists.read_wheel_metadata(whl)
    # Same arguments, same bytes (tests can predict hashes); another version, other payload.
    again = dists.build_wheel(
        tmp_path / "b",
        "My.Pkg_Name",
        "1.0",
        requires=["beta>=2", "gamma; python_version<'3'"],
        requires_python=">=3.8",
        payload_size=300_000,
        tag="py2.py3-none-any",
    )
    assert dists.sha256_file(again) == dists.sha256_file(whl)
    assert b"".join(dists.payload_bytes("x", "1", 1000)) != b"".join(dists.payload_bytes("x", "2", 1000))


def test_sdist_is_valid_for_setuptools(tmp_path: Path) -> None:
    sdist = dists.build_sdist(tmp_path, "My-Proj", "2.0", requires=["beta>=2"], requires_python=">=3.8")
    assert sdist.name == "my_proj-2.0.tar.gz"
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
        assert all(n == "my_proj-2.0" or n.startswith("my_proj-2.0/") for n in names)
        for required in ("PKG-INFO", "pyproject.toml", "setup.cfg", "my_proj/__init__.py"):
            assert f"my_proj-2.0/{required}" in names
        # Extraction filters came in 3.11.4; Debian 12's python is 3.11.2. The names were
        # checked above, so plain extraction is safe there.
        if hasattr(tarfile, "data_filter"):
            tf.extractall(tmp_path / "src", filter="data")
        else:
            tf.extractall(tmp_path / "src")
    # Let the real setuptools backend read it (building a wheel would need the `wheel`
    # package in the build environment; rebuilding the sdist parses the same config).
    src = tmp_path / "src" / "my_proj-2.0"
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rebuilt = out / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(rebuilt) as tf:
        pkg_info = tf.extractfile(f"{rebuilt.name[: -len('.tar.gz')]}/PKG-INFO").read()  # type: ignore[union-attr]
        requires = [n for n in tf.getnames() if n.endswith("requires.txt")]
        assert requires and b"beta>=2" in tf.extractfile(requires[0]).read()  # type: ignore[union-attr]
        assert any(n.endswith("my_proj/__init__.py") for n in tf.getnames())
    meta = email.parser.BytesHeaderParser().parsebytes(pkg_info)
    assert (meta["Name"], meta["Version"], meta["Requires-Python"]) == ("My-Proj", "2.0", ">=3.8")


# -- real clients against the upstream directly ----------------------------------------


def _publish_alpha_beta(root: Path) -> None:
    alpha = dists.project_dir(root, "alpha")
    beta = dists.project_dir(root, "beta")
    dists.build_wheel(alpha, "alpha", "1.0", requires=["beta>=2"])
    dists.build_wheel(beta, "beta", "1.0")
    dists.build_wheel(beta, "beta", "2.0")
    dists.build_sdist(beta, "beta", "2.0")
    dists.yank(dists.build_wheel(beta, "beta", "2.1"), "broken release")
    dists.build_wheel(beta, "beta", "3.0", requires_python=">=4")


@pytest.mark.parametrize("client", ["pip", "uv"])
@pytest.mark.parametrize(
    "formats,relative",
    [(("json", "html"), False), (("html",), True), (("json",), False)],
    ids=["json+html", "html-only-relative", "json-only"],
)
def test_clients_install_from_upstream(
    client: str, formats: tuple, relative: bool, upstream_factory, dists_dir: Path, client_python: Path
) -> None:
    _publish_alpha_beta(dists_dir)
    upstream = upstream_factory(formats=formats, relative_urls=relative)
    install = pip_install if client == "pip" else uv_install
    proc = install(client_python, upstream.url, "alpha")
    assert proc.returncode == 0, describe(proc)
    # beta 3.0 needs Python >= 4 and 2.1 is yanked: 2.0 is the only right answer.
    assert installed_version(client_python, "alpha") == "1.0"
    assert installed_version(client_python, "beta") == "2.0"
    check = run_client([client_python, "-c", "import alpha, beta; print(alpha.__version__, beta.__version__)"])
    assert check.stdout.split() == ["1.0", "2.0"], describe(check)
    hits = upstream.hits()
    assert hits.get("/files/beta/beta-2.0-py3-none-any.whl") == 1, hits
    assert "/files/beta/beta-3.0-py3-none-any.whl" not in hits
    assert "/files/beta/beta-2.0.tar.gz" not in hits


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_clients_see_no_machine_config(client: str, upstream, dists_dir: Path, client_python: Path) -> None:
    """This machine's pip config must not leak in.

    Its user config adds extra indexes and find-links (`--isolated` drops those), and its
    global config (/etc/pip.conf, which `--isolated` still reads) adds a constraints file
    capping torch; PIP_CONFIG_FILE=os.devnull drops that too. A torch 3.0 on our upstream
    installs only if none of it applies.
    """
    dists.build_wheel(dists.project_dir(dists_dir, "torch"), "torch", "3.0")
    install = pip_install if client == "pip" else uv_install
    proc = install(client_python, upstream.url, "torch")
    assert proc.returncode == 0, describe(proc)
    assert installed_version(client_python, "torch") == "3.0"
    proc = install(client_python, upstream.url, "six")
    assert proc.returncode != 0, describe(proc)
    if client == "pip":
        looking = [line for line in proc.stdout.splitlines() if line.startswith("Looking in")]
        assert looking == [f"Looking in indexes: {upstream.url}"], describe(proc)
        config = run_client([tool_python(PIP), "-m", "pip", "--isolated", "config", "list"])
        assert config.returncode == 0 and config.stdout.strip() == "", describe(config)
    assert set(upstream.hits()) <= {
        "/simple/torch/",
        "/simple/six/",
        "/files/torch/torch-3.0-py3-none-any.whl",
        "/files/torch/torch-3.0-py3-none-any.whl.metadata",
    }


# -- the upstream's protocol -----------------------------------------------------------


def test_upstream_pages_negotiation_and_conditional_requests(upstream, dists_dir: Path) -> None:
    pdir = dists.project_dir(dists_dir, "alpha")
    whl = dists.build_wheel(pdir, "alpha", "1.0", requires_python=">=3.8")
    dists.yank(whl, "oops")
    dists.write_provenance(whl)
    sdist = dists.build_sdist(pdir, "alpha", "1.0")
    port = upstream.port

    # JSON, api-version 1.1 with every field the proxy needs.
    status, headers, body = _get(port, "/simple/", {"Accept": JSON_V1})
    assert status == 200 and json.loads(body)["projects"] == [{"name": "alpha"}]
    page = _page(upstream, "alpha")
    assert page["meta"]["api-version"] == "1.1" and page["versions"] == ["1.0"]
    f = _file_entry(page, whl.name)
    assert f["hashes"]["sha256"] == dists.sha256_file(whl)
    assert f["size"] == whl.stat().st_size
    assert f["requires-python"] == ">=3.8"
    assert f["yanked"] == "oops"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", f["upload-time"])
    meta_sha = hashlib.sha256(Path(str(whl) + ".metadata").read_bytes()).hexdigest()
    assert f["core-metadata"] == {"sha256": meta_sha}
    assert "dist-info-metadata" not in f  # PEP 714: JSON carries the new key only
    assert f["provenance"] == upstream.file_url("alpha", whl.name) + ".provenance"
    s = _file_entry(page, sdist.name)
    assert (s["yanked"], s["core-metadata"], s["provenance"], s["requires-python"]) == (False, False, None, None)

    # HTML by default and for pip's Accept preferences in reverse; JSON for pip's own.
    status, headers, body = _get(port, "/simple/alpha/")
    assert status == 200 and headers["content-type"].startswith("text/html") and headers["vary"] == "Accept"
    html = body.decode()
    assert f'href="{upstream.file_url("alpha", whl.name)}#sha256={dists.sha256_file(whl)}"' in html
    assert 'data-requires-python="&gt;=3.8"' in html and 'data-yanked="oops"' in html
    assert f'data-core-metadata="sha256={meta_sha}"' in html and f'data-dist-info-metadata="sha256={meta_sha}"' in html
    assert f'data-provenance="{upstream.file_url("alpha", whl.name)}.provenance"' in html
    assert _get(port, "/simple/alpha/", {"Accept": PIP_ACCEPT})[1]["content-type"] == JSON_V1
    assert (
        _get(port, "/simple/alpha/", {"Accept": "application/vnd.pypi.simple.latest+json"})[1]["content-type"]
        == JSON_V1
    )
    assert _get(port, "/simple/alpha/", {"Accept": "application/vnd.pypi.simple.v1+html"})[1]["content-type"] == (
        "application/vnd.pypi.simple.v1+html"
    )
    assert _get(port, "/simple/alpha/", {"Accept": "application/xml"})[0] == 406
    # PEP 503 normalization redirects, unknown projects 404.
    status, headers, _ = _get(port, "/simple/Alpha")
    assert status == 301 and headers["location"] == "/simple/alpha/"
    assert _get(port, "/simple/nope/")[0] == 404

    # ETag / If-None-Match and Last-Modified / If-Modified-Since; 304s are counted.
    upstream.reset_hits()
    status, headers, _ = _get(port, "/simple/alpha/", {"Accept": JSON_V1})
    etag, last_modified = headers["etag"], headers["last-modified"]
    assert _get(port, "/simple/alpha/", {"Accept": JSON_V1, "If-None-Match": etag})[0] == 304
    assert _get(port, "/simple/alpha/", {"Accept": JSON_V1, "If-Modified-Since": last_modified})[0] == 304
    # Each format has its own ETag.
    assert _get(port, "/simple/alpha/", {"Accept": "text/html", "If-None-Match": etag})[0] == 200
    assert upstream.hits() == {"/simple/alpha/": 4}

    # A file added while the server runs shows up at once, and the old ETag stops matching.
    new = dists.build_wheel(pdir, "alpha", "1.1")
    status, headers, body = _get(port, "/simple/alpha/", {"Accept": JSON_V1, "If-None-Match": etag})
    assert status == 200 and headers["etag"] != etag
    assert json.loads(body)["versions"] == ["1.0", "1.1"]
    assert _file_entry(json.loads(body), new.name)["size"] == new.stat().st_size

    # Files: Content-Length, bytes, ETag/304, HEAD, sidecars.
    path = upstream.file_path("alpha", whl.name)
    status, headers, body = _get(port, path)
    assert status == 200 and int(headers["content-length"]) == len(body) == whl.stat().st_size
    assert body == whl.read_bytes() and "last-modified" in headers
    assert _get(port, path, {"If-None-Match": headers["etag"]})[0] == 304
    status, headers, body = _get(port, path, method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == whl.stat().st_size
    status, _, body = _get(port, path + ".metadata")
    assert status == 200 and hashlib.sha256(body).hexdigest() == meta_sha
    assert _get(port, path + ".provenance")[0] == 200
    assert _get(port, "/files/alpha/missing.whl")[0] == 404


@pytest.mark.parametrize(
    "formats,accept,expected",
    [
        (("html",), JSON_V1, 406),
        (("html",), None, "text/html; charset=utf-8"),
        (("html",), PIP_ACCEPT, "application/vnd.pypi.simple.v1+html"),
        (("json",), "text/html", 406),
        (("json",), None, JSON_V1),
        (("json",), PIP_ACCEPT, JSON_V1),
    ],
)
def test_upstream_fixed_formats(upstream_factory, dists_dir: Path, formats, accept, expected) -> None:
    dists.build_wheel(dists.project_dir(dists_dir, "alpha"), "alpha", "1.0")
    upstream = upstream_factory(formats=formats)
    status, headers, _ = _get(upstream.port, "/simple/alpha/", {"Accept": accept} if accept else {})
    if expected == 406:
        assert status == 406
    else:
        assert status == 200 and headers["content-type"] == expected


# -- faults ----------------------------------------------------------------------------


@pytest.fixture
def wheel(upstream, dists_dir: Path) -> tuple[UpstreamServer, str, bytes]:
    whl = dists.build_wheel(dists.project_dir(dists_dir, "alpha"), "alpha", "1.0", payload_size=200_000)
    return upstream, upstream.file_path("alpha", whl.name), whl.read_bytes()


def test_fault_status_with_count_and_prefix(wheel) -> None:
    upstream, path, data = wheel
    upstream.fault("/simple/*", "status", status=503, count=2)
    upstream.fault(path, "status", status=500)
    assert _get(upstream.port, "/simple/alpha/")[0] == 503
    assert _get(upstream.port, "/simple/")[0] == 503
    assert _get(upstream.port, "/simple/alpha/")[0] == 200  # count used up
    assert _get(upstream.port, path)[0] == 500
    assert _get(upstream.port, path)[0] == 500
    upstream.clear_faults()
    assert _get(upstream.port, path)[2] == data
    assert upstream.hits()[path] == 3


@pytest.mark.parametrize("stage", ["before", "headers", "body"])
def test_fault_timeout_hangs_until_cleared(wheel, stage: str) -> None:
    upstream, path, data = wheel
    upstream.fault(path, "timeout", stage=stage)
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=0.5)
    conn.request("GET", path)
    with pytest.raises((TimeoutError, socket.timeout)):
        resp = conn.getresponse()
        assert stage != "before", "a 'before' timeout must not send headers"
        assert resp.status == 200
        resp.read()
    upstream.clear_faults()  # releases the hung handler
    conn.close()
    assert _get(upstream.port, path)[2] == data


@pytest.mark.parametrize("stage", ["before", "headers", "body"])
def test_fault_reset(wheel, stage: str) -> None:
    upstream, path, _ = wheel
    upstream.fault(path, "reset", stage=stage)
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        _get(upstream.port, path)


def test_fault_truncate(wheel) -> None:
    upstream, path, data = wheel
    upstream.fault(path, "truncate", bytes=1000)
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    assert int(resp.getheader("Content-Length")) == len(data)
    with pytest.raises(http.client.IncompleteRead) as err:
        resp.read()
    assert err.value.partial == data[:1000]
    conn.close()


def test_fault_malformed_page(wheel) -> None:
    upstream, _, _ = wheel
    upstream.fault("/simple/alpha/", "malformed")
    status, headers, body = _get(upstream.port, "/simple/alpha/", {"Accept": JSON_V1})
    assert status == 200 and headers["content-type"] == JSON_V1
    with pytest.raises(ValueError):
        json.loads(body)
    status, _, body = _get(upstream.port, "/simple/alpha/")
    assert status == 200 and b"alpha-1.0" not in body
    upstream.fault("/simple/alpha/", "malformed", body=b"custom")
    assert _get(upstream.port, "/simple/alpha/")[2] == b"custom"


def test_fault_wrong_bytes(wheel) -> None:
    upstream, path, data = wheel
    upstream.fault(path, "wrong-bytes")
    status, _, body = _get(upstream.port, path)
    assert status == 200 and len(body) == len(data) and body != data
    # The page still advertises the real file, so a client sees a hash mismatch.
    advertised = _file_entry(_page(upstream, "alpha"), path.rsplit("/", 1)[1])["hashes"]["sha256"]
    assert hashlib.sha256(body).hexdigest() != advertised == hashlib.sha256(data).hexdigest()


def test_fault_slow_download_is_observable_in_flight(wheel) -> None:
    upstream, path, data = wheel
    rate = 200_000  # the file is 200 kB: about one second, paced in pieces of rate / 20
    upstream.fault(path, "slow", rate=rate)
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        buf, pieces = b"", []
        while chunk := s.recv(1 << 20):
            if b"\r\n\r\n" in buf:
                pieces.append(len(chunk))
            buf += chunk
    body = buf.split(b"\r\n\r\n", 1)[1]
    assert body == data
    # Unthrottled, 200 kB on loopback comes in a few reads; paced, it trickles in many
    # small ones, each no larger than what the server sent since the last.
    assert len(pieces) >= 5 and max(pieces) < len(data) // 2, pieces


def test_fault_replace_rehashes_the_page(wheel, tmp_path: Path) -> None:
    upstream, path, data = wheel
    filename = path.rsplit("/", 1)[1]
    # The attacker's wheel: same filename, different content.
    evil = dists.build_wheel(tmp_path / "evil", "alpha", "1.0", payload_size=1234)
    assert evil.name == filename
    answer = upstream.fault(path, "replace", content_path=str(evil))
    evil_sha = dists.sha256_file(evil)
    assert answer["sha256"] == evil_sha
    entry = _file_entry(_page(upstream, "alpha"), filename)
    assert (entry["hashes"]["sha256"], entry["size"]) == (evil_sha, evil.stat().st_size)
    _, headers, body = _get(upstream.port, path)
    assert body == evil.read_bytes() and int(headers["content-length"]) == len(body)
    assert f"#sha256={evil_sha}" in _get(upstream.port, "/simple/alpha/")[2].decode()
    upstream.clear_faults()
    assert _get(upstream.port, path)[2] == data
    assert _file_entry(_page(upstream, "alpha"), filename)["hashes"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_fault_validation(upstream) -> None:
    with pytest.raises(RuntimeError, match="unknown fault kind"):
        upstream.fault("/x", "explode")
    with pytest.raises(RuntimeError, match="rate"):
        upstream.fault("/x", "slow")


def test_upstream_restarts_on_the_same_port(upstream, dists_dir: Path) -> None:
    dists.build_wheel(dists.project_dir(dists_dir, "alpha"), "alpha", "1.0")
    port, url = upstream.port, upstream.url
    assert _get(port, "/simple/alpha/")[0] == 200
    pid = upstream.pid
    upstream.stop()
    with pytest.raises(ConnectionRefusedError):
        _get(port, "/simple/alpha/")
    upstream.start()
    assert (upstream.port, upstream.url) == (port, url) and upstream.pid != pid
    assert _get(port, "/simple/alpha/")[0] == 200
    assert upstream.hits() == {"/simple/alpha/": 1}  # counts live in the process


# -- Synapse ---------------------------------------------------------------------------


@pytest.mark.synapse
def test_synapse_starts_from_sample_config(synapse_factory, hs_backend: str, upstream) -> None:
    hs = synapse_factory(db=hs_backend, module_config={"upstream_url": upstream.url, "page_ttl": "1s"})
    # The written config is the sample's with only the harness overrides.
    sample = yaml.safe_load(SAMPLE_CONFIG.read_text())
    written = yaml.safe_load(hs.config_path.read_text())
    entry = next(m for m in written["modules"] if m["module"] == MODULE_NAME)
    sample_entry = next(m for m in sample["modules"] if m["module"] == MODULE_NAME)
    assert set(sample_entry["config"]) <= set(entry["config"])
    assert entry["config"]["upstream_url"] == upstream.url and entry["config"]["page_ttl"] == "1s"
    assert entry["config"]["max_cache_size"] == sample_entry["config"]["max_cache_size"]
    assert entry["config"]["data_directory"].startswith(str(hs.work_dir))
    assert written["server_name"] == f"localhost:{hs.port}"
    assert written["trusted_key_servers"] == [] and written["listeners"][0]["bind_addresses"] == ["127.0.0.1"]
    assert written["database"]["name"] == ("psycopg2" if hs_backend == "postgres" else "sqlite3")

    status, _, body = hs.request("GET", "/_matrix/client/versions")
    assert status == 200 and "versions" in json.loads(body)
    admin_id, admin_token = hs.register_user("admin", admin=True)
    user_id, token = hs.register_user("alice")
    assert (admin_id, user_id) == (f"@admin:{hs.server_name}", f"@alice:{hs.server_name}")
    assert hs.request_json("GET", "/_matrix/client/v3/account/whoami", token=token)["user_id"] == user_id
    assert hs.request_json("GET", f"/_synapse/admin/v2/users/{user_id}", token=admin_token)["admin"] is False
    assert 30 * 2**20 < hs.rss_bytes() < 2**30
    # Synapse's own line for each module it loaded.
    assert "Loaded module <synapse_pypi." in hs.log_text(), hs.log_tail()

    # Restart keeps the database; the token still works.
    old_pid = hs.pid
    hs.restart()
    assert hs.pid != old_pid
    assert hs.request_json("GET", "/_matrix/client/v3/account/whoami", token=token)["user_id"] == user_id

    if hs_backend == "postgres":
        import psycopg2

        dbname = hs.pg_database
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datcollate FROM pg_database WHERE datname = %s", (dbname,))
                assert cur.fetchall() == [("C",)]
                hs.dispose()
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
                assert cur.fetchall() == []
        finally:
            conn.close()
        assert not hs.running


@pytest.mark.synapse
def test_synapse_start_failure_reports_the_log(synapse_factory) -> None:
    hs = synapse_factory(extra_config={"database": {"name": "nonsense-db"}}, start=False)
    with pytest.raises(RuntimeError, match="exited with rc=") as err:
        hs.start()
    assert "nonsense-db" in str(err.value)  # the log tail explains why
    assert not hs.running


def test_postgres_available_answers() -> None:
    ok, why = postgres_available()
    assert isinstance(ok, bool) and (ok or why)
