"""Real pip and uv install through a real Synapse; and keep installing with the upstream gone."""

from __future__ import annotations

import json

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.dists import build_sdist, build_wheel, project_dir, read_wheel_metadata
from harness.mirror import populate, require_backend

pytestmark = pytest.mark.synapse


def _populate_chain(root):
    """app -> lib -> base: a project with dependencies, two levels deep."""
    build_wheel(project_dir(root, "app"), "app", "1.0", requires=["lib>=1"])
    build_wheel(project_dir(root, "lib"), "lib", "1.0", requires=["base"])
    build_wheel(project_dir(root, "lib"), "lib", "2.0", requires=["base"], requires_python=">=4")
    build_sdist(project_dir(root, "lib"), "lib", "1.0")
    build_wheel(project_dir(root, "base"), "base", "0.1")


def _assert_installed(python, expected):
    for dist, version in expected.items():
        assert installed_version(python, dist) == version, f"{dist} not at {version}"


@pytest.mark.parametrize("client", ["pip", "uv"])
def test_install_through_homeserver(mirror, tmp_path, client):
    python = make_venv(tmp_path / "venv")
    install = pip_install if client == "pip" else uv_install
    result = install(python, mirror.hs.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    # alpha 2.0 (newest, Requires-Python ok), beta from the dependency; 0.5 is yanked.
    _assert_installed(python, {"alpha": "2.0", "beta": "1.0"})
    # An exact pin on a yanked version still installs (PEP 592).
    python2 = make_venv(tmp_path / "venv2")
    result = install(python2, mirror.hs.index_url, "alpha==0.5")
    assert result.returncode == 0, describe(result)
    _assert_installed(python2, {"alpha": "0.5"})


@pytest.mark.parametrize("formats", [("html",), ("json",)])
def test_html_only_and_json_only_upstreams(upstream_factory, synapse_factory, dists_dir, tmp_path, formats):
    _populate_chain(dists_dir)
    upstream = upstream_factory(formats=formats)
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    python = make_venv(tmp_path / "venv")
    result = pip_install(python, hs.index_url, "app")
    assert result.returncode == 0, describe(result)
    _assert_installed(python, {"app": "1.0", "lib": "1.0", "base": "0.1"})
    hits = upstream.hits()
    assert hits.get("/simple/lib/") == 1
    status, _, body = hs.request("GET", "/simple/lib/lib-1.0-py3-none-any.whl.metadata")
    assert status == 200 and body == read_wheel_metadata(dists_dir / "lib" / "lib-1.0-py3-none-any.whl")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_install_without_upstream_and_after_restart(upstream_factory, synapse_factory, dists_dir, tmp_path, backend):
    require_backend(backend)
    _populate_chain(dists_dir)
    populate(dists_dir)
    upstream = upstream_factory()
    # TTL 0: every page request after the first must revalidate, so we can see that
    # revalidation is conditional, and that stale pages are served when it fails.
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "page_ttl": 0}, db=backend)
    python = make_venv(tmp_path / "online")
    result = pip_install(python, hs.index_url, "app", "alpha")
    assert result.returncode == 0, describe(result)

    # Revalidation is a conditional request, answered 304 by the upstream.
    upstream.reset_hits()
    status, _, _ = hs.request("GET", "/simple/app/")
    assert status == 200
    assert upstream.hit_count("/simple/app/") == 1
    assert '"GET /simple/app/ HTTP/1.1" 304' in upstream.log_tail(5)

    upstream.stop()
    offline = make_venv(tmp_path / "offline")
    result = pip_install(offline, hs.index_url, "app", "alpha")
    assert result.returncode == 0, describe(result)
    _assert_installed(offline, {"app": "1.0", "lib": "1.0", "base": "0.1", "alpha": "2.0", "beta": "1.0"})
    assert hs.log_text().count("upstream unreachable") == 1  # one warning per outage

    hs.restart()  # what the module knows lives in Synapse's database
    after = make_venv(tmp_path / "after-restart")
    result = uv_install(after, hs.index_url, "app", "alpha")
    assert result.returncode == 0, describe(result)
    _assert_installed(after, {"app": "1.0", "lib": "1.0", "base": "0.1", "alpha": "2.0"})

    # A file never fetched cannot be had offline: a clear 502, not a hang or a 500.
    status, _, body = hs.request("GET", "/simple/beta/beta-1.0.tar.gz")
    assert status == 502 and b"cannot connect" in body
    # Offline, metadata files we do not hold are not advertised (PEP 658: only if served).
    status, _, page = hs.request("GET", "/simple/beta/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    files = {f["filename"]: f for f in json.loads(page)["files"]}
    assert files["beta-1.0-py3-none-any.whl"]["core-metadata"]  # cached: advertised
    assert "core-metadata" not in files["beta-1.0.tar.gz"]
