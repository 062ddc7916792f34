"""Uploads (issue 16): real twine uploads to `/legacy/` with a Matrix access token, real pip
and uv install what was uploaded (also with the upstream stopped), every bad upload is
refused with a reason and stores nothing, and a local name never shadows a public one unless
the admin said how (docs/publishing.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pytest
from harness.clients import (
    CLIENTS,
    describe,
    installed_version,
    make_venv,
    pip_install,
    run_client,
    tool_bin,
    uv_bin,
    uv_install,
)
from harness.dists import build_sdist, build_wheel, project_dir, read_wheel_metadata, sha256_file
from harness.matrix import Client, poll
from harness.mirror import UPSTREAM_TIMEOUT, populate
from harness.synapse import free_port
from harness.uploads import form_fields, post_upload, twine_upload
from harness.upstream import http_request

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
POETRY = next(t for t in CLIENTS if t.startswith("poetry-"))
PDM = next(t for t in CLIENTS if t.startswith("pdm-"))


def _config(upstream: Any, **extra: Any) -> dict:
    return {"upstream_url": upstream.url, "upstream_timeout": UPSTREAM_TIMEOUT, "upstream_retry_interval": "1s",
            **extra}


def _page(hs: Any, project: str) -> tuple[int, Any]:
    status, _, body = http_request(f"{hs.url}/simple/{project}/", headers=JSON, timeout=60)
    return status, (json.loads(body) if status == 200 else body)


def _files(hs: Any, project: str) -> dict:
    status, page = _page(hs, project)
    assert status == 200, page
    return {f["filename"]: f for f in page["files"]}


def _cached(hs: Any, sha256: str) -> bool:
    return (hs.data_directory / "cache" / "sha256" / sha256[:2] / sha256[2:4] / sha256).exists()


def _install_both(hs: Any, where: Path, requirement: str) -> None:
    """pip and uv install `requirement` into fresh venvs (the test checks what they got)."""
    for installer in (pip_install, uv_install):
        python = make_venv(where / installer.__name__)
        proc = installer(python, hs.index_url, requirement)
        assert proc.returncode == 0, describe(proc)
        assert installed_version(python, "corp-app") == "1.0"
        assert installed_version(python, "corp-base") == "1.0"


@pytest.mark.synapse
def test_twine_upload_is_served_and_installs_also_offline(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path
) -> None:
    populate(dists_dir)
    upstream = upstream_factory()
    hs = synapse_factory(module_config=_config(upstream))
    admin = Client.register(hs, "admin", admin=True)
    out = work_dir / "dist"
    base = build_wheel(out, "corp-base", "1.0", metadata_sidecar=False)
    base_sdist = build_sdist(out, "corp-base", "1.0")
    app = build_wheel(out, "corp-app", "1.0", requires=["corp-base>=1.0"], requires_python=">=3.8",
                      metadata_sidecar=False)
    proc = twine_upload(hs.url, admin.token, base, base_sdist, app)
    assert proc.returncode == 0, describe(proc)

    # The root list names the local projects next to the upstream's.
    status, _, body = http_request(f"{hs.url}/simple/", headers=JSON, timeout=60)
    assert status == 200
    names = {p["name"] for p in json.loads(body)["projects"]}
    assert {"corp-base", "corp-app", "alpha", "beta"} <= names
    # Pages in both formats, with hashes, sizes, Requires-Python and (PEP 658) the metadata.
    files = _files(hs, "corp-base")
    assert set(files) == {base.name, base_sdist.name}
    assert files[base.name]["hashes"] == {"sha256": sha256_file(base)}
    assert files[base_sdist.name]["size"] == base_sdist.stat().st_size
    poll(lambda: _files(hs, "corp-app")[app.name].get("core-metadata"), what="PEP 658 metadata of the upload")
    entry = _files(hs, "corp-app")[app.name]
    assert entry["requires-python"] == ">=3.8"
    status, _, html = http_request(f"{hs.url}/simple/corp-app/", headers={"Accept": "text/html"}, timeout=60)
    assert status == 200 and app.name.encode() in html and b"data-core-metadata" in html
    status, _, metadata = http_request(f"{hs.url}/simple/corp-app/{app.name}.metadata", timeout=60)
    assert status == 200 and metadata == read_wheel_metadata(app)
    status, _, data = http_request(f"{hs.url}/simple/corp-app/{app.name}", timeout=60)
    assert status == 200 and data == app.read_bytes()
    # The bot attests the upload in the project's room.
    bot = f"@pypi-bot:{hs.server_name}"
    poll(lambda: any(
        a["publisher"] == bot and a["sha256"] == sha256_file(app)
        for a in admin.call("GET", f"/_synapse/pypi/v1/projects/corp-app/files/{app.name}")["attestations"]
    ), what="the bot's attestation of the upload")

    _install_both(hs, work_dir / "online", "corp-app")
    # Without the upstream: local projects never needed it.
    upstream.stop()
    _install_both(hs, work_dir / "offline", "corp-app")


def _refused(status: int, body: bytes, code: int, words: str) -> None:
    assert status == code, (status, body)
    assert words in body.decode(), body


@pytest.mark.synapse
def test_bad_uploads_are_refused_and_store_nothing(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path, hs_backend: str
) -> None:
    populate(dists_dir)
    upstream = upstream_factory()
    port = free_port()
    hs = synapse_factory(port=port, db=hs_backend, module_config=_config(
        upstream, max_upload_size="16K", uploaders={"corp-x": [f"@carol:localhost:{port}"]},
        publishers=[f"@pat:localhost:{port}"]))
    admin = Client.register(hs, "admin", admin=True)
    carol = Client.register(hs, "carol")
    dave = Client.register(hs, "dave")
    pat = Client.register(hs, "pat")  # a publisher: attestation power in every project room, once there is one
    good = build_wheel(work_dir / "good", "corp-x", "1.0", metadata_sidecar=False)
    data = good.read_bytes()
    fields = form_fields("corp-x", "1.0", data)
    other = build_wheel(work_dir / "other", "corp-x", "1.0", payload_size=100, metadata_sidecar=False).read_bytes()
    lying = build_wheel(work_dir / "lying", "corp-x", "1.5", metadata_sidecar=False).read_bytes()
    big = build_wheel(work_dir / "big", "corp-x", "1.0", payload_size=40_000, metadata_sidecar=False).read_bytes()
    url = hs.url

    def post(token: Any, content: bytes = data, filename: str = good.name, **changes: str) -> tuple[int, bytes]:
        f = {**fields, "sha256_digest": form_fields("corp-x", "1.0", content)["sha256_digest"], **changes}
        status, _, body = post_upload(url, token, f, filename, content)
        return status, body

    _refused(*post(None), 401, "__token__")
    _refused(*post("syt_not_a_token"), 401, "access token is not valid")
    _refused(*post(dave.token), 403, "may not upload files of corp-x")
    _refused(*post(pat.token), 403, "may not upload files of corp-x")
    _refused(*post(admin.token, name="corp-y"), 400, "the form says 'corp-y'")
    _refused(*post(admin.token, version="1.1"), 400, "the file name has version 1.0")
    _refused(*post(admin.token, filetype="bdist_egg"), 400, "'filetype'")
    _refused(*post(admin.token, sha256_digest="0" * 64), 400, "sha256 mismatch")
    _refused(*post(admin.token, **{":action": "remove_pkg"}), 400, "':action'")
    _refused(*post(admin.token, filename="corp_x-1.0.exe"), 400, "not a valid")
    _refused(*post(admin.token, content=b"not a zip at all"), 400, "not a usable wheel")
    # A wheel of 1.5 renamed to 1.6: its METADATA says otherwise.
    _refused(*post(admin.token, content=lying, filename="corp_x-1.6-py3-none-any.whl", version="1.6"), 400,
             "METADATA")
    _refused(*post(admin.token, content=big), 413, "max_upload_size")
    # An sdist of 1.7 renamed to 1.8: its PKG-INFO says otherwise.
    sdist = build_sdist(work_dir / "sdist", "corp-x", "1.7").read_bytes()
    _refused(*post(admin.token, content=sdist, filename="corp_x-1.8.tar.gz", version="1.8", filetype="sdist"), 400,
             "PKG-INFO has version '1.7'")
    _refused(*post(admin.token, content=b"not a tarball", filename="corp_x-1.0.tar.gz", filetype="sdist"), 400,
             "not a readable sdist")
    status, body = post(admin.token, attestations="{not json")
    _refused(status, body, 400, "'attestations'")
    # Nothing of all that was stored: no page, no blob.
    assert _page(hs, "corp-x")[0] == 404
    for content in (data, b"not a zip at all", lying, big, sdist):
        assert not _cached(hs, sha256_file_bytes(content))

    # Carol is listed for corp-x; the same bytes again are fine (what twine retries send).
    status, body = post(carol.token)
    assert status == 200, body
    status, body = post(carol.token)
    assert status == 200 and b"uploaded before with these bytes" in body, body
    # The file name cannot take other bytes, ever.
    _refused(*post(carol.token, content=other), 409, "exists already with other bytes")
    twine_dir = work_dir / "twine"
    twine_dir.mkdir()
    (twine_dir / good.name).write_bytes(other)
    proc = twine_upload(url, carol.token, twine_dir / good.name)
    assert proc.returncode != 0 and "409" in proc.stdout + proc.stderr, describe(proc)
    assert {name: f["hashes"]["sha256"] for name, f in _files(hs, "corp-x").items()} == {good.name: sha256_file(good)}
    assert not _cached(hs, sha256_file_bytes(other))

    # PEP 740 attestations sent with an upload are kept and served as its provenance.
    signed = build_wheel(work_dir / "signed", "corp-x", "2.0", metadata_sidecar=False)
    attestations = [{"version": 1, "verification_material": {"certificate": "MIIB"}, "envelope": {"statement": "e30="}}]
    status, _, body = post_upload(url, carol.token, {**form_fields("corp-x", "2.0", signed.read_bytes()),
                                                     "attestations": json.dumps(attestations)},
                                  signed.name, signed.read_bytes())
    assert status == 200, body
    entry = _files(hs, "corp-x")[signed.name]
    assert "provenance" not in _files(hs, "corp-x")[good.name]
    # Relative to the page, as clients resolve it.
    status, headers, body = http_request(urljoin(f"{url}/simple/corp-x/", entry["provenance"]), timeout=60)
    assert status == 200 and headers["content-type"] == "application/vnd.pypi.integrity.v1+json", body
    bundle = json.loads(body)["attestation_bundles"][0]
    assert bundle["attestations"] == attestations and bundle["publisher"]["uploader"] == carol.user_id
    status, _, html = http_request(f"{url}/simple/corp-x/", headers={"Accept": "text/html"}, timeout=60)
    assert b"data-provenance=" in html

    # Power in the project's room (here a publisher's, given by the bot) lets one upload too.
    room = poll(lambda: _room_with(admin, f"#pypi-corp-x:{hs.server_name}", pat.user_id), what="corp-x's room")
    assert room
    third = build_wheel(work_dir / "third", "corp-x", "3.0", metadata_sidecar=False).read_bytes()
    assert post(pat.token, content=third, filename="corp_x-3.0-py3-none-any.whl", version="3.0")[0] == 200
    _refused(*post(dave.token, content=third, filename="corp_x-3.0-py3-none-any.whl", version="3.0"), 403,
             "may not upload")


def _room_with(admin: Client, alias: str, user: str) -> Any:
    """The room of `alias` once `user` has attestation power in it, else None."""
    status, _, body = admin.hs.request("GET", f"/_matrix/client/v3/directory/room/{quote(alias)}", token=admin.token)
    if status != 200:
        return None
    room_id = json.loads(body)["room_id"]
    status, _, body = admin.hs.request(
        "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.power_levels/", token=admin.token)
    if status != 200:  # the admin is not in the room: read it from the room's public state
        admin.join(room_id)
        return None
    return room_id if json.loads(body).get("users", {}).get(user, 0) >= 60 else None


def sha256_file_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.synapse
def test_dependency_confusion_under_each_setting(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path
) -> None:
    """A higher version of a public name, uploaded here: refused by default; with the admin's
    `merge` served beside the upstream's files (so installers pick it: the admin chose that);
    with `replace` served alone."""
    populate(dists_dir)
    upstream = upstream_factory()
    hs = synapse_factory(module_config=_config(
        upstream, local_projects={"alpha": {"mode": "merge"}, "beta": {"mode": "replace"}}))
    admin = Client.register(hs, "admin", admin=True)
    out = work_dir / "dist"

    gamma = build_wheel(out / "gamma", "gamma", "9.0", metadata_sidecar=False)
    status, _, body = post_upload(hs.url, admin.token, form_fields("gamma", "9.0", gamma.read_bytes()), gamma.name,
                                  gamma.read_bytes())
    _refused(status, body, 403, "dependency confusion")
    proc = twine_upload(hs.url, admin.token, gamma)
    assert proc.returncode != 0 and "403" in proc.stdout + proc.stderr, describe(proc)
    assert set(_files(hs, "gamma")) == {"gamma-1.0-py3-none-any.whl"}
    assert not _cached(hs, sha256_file(gamma))

    alpha = build_wheel(out / "alpha", "alpha", "9.0", metadata_sidecar=False)
    beta = build_wheel(out / "beta", "beta", "9.0", metadata_sidecar=False)
    proc = twine_upload(hs.url, admin.token, alpha, beta)
    assert proc.returncode == 0, describe(proc)
    # merge: the upstream's files and the upload.
    assert set(_files(hs, "alpha")) == {
        "alpha-0.5-py3-none-any.whl", "alpha-1.0-py3-none-any.whl", "alpha-2.0-py3-none-any.whl", alpha.name
    }
    # replace: the upload alone.
    assert set(_files(hs, "beta")) == {beta.name}
    python = make_venv(work_dir / "venv")
    proc = pip_install(python, hs.index_url, "alpha", "beta")
    assert proc.returncode == 0, describe(proc)
    assert installed_version(python, "alpha") == "9.0" and installed_version(python, "beta") == "9.0"
    # Even where allowed, an upstream file name keeps its bytes.
    clash = build_wheel(out / "clash", "alpha", "1.0", payload_size=64, metadata_sidecar=False).read_bytes()
    status, _, body = post_upload(hs.url, admin.token, form_fields("alpha", "1.0", clash),
                                  "alpha-1.0-py3-none-any.whl", clash)
    _refused(status, body, 409, "exists in the upstream index with other bytes")

    # uv publish speaks the same API.
    uv_made = build_wheel(out / "uv", "corp-uv", "1.0", metadata_sidecar=False)
    proc = run_client([uv_bin(), "publish", "--publish-url", f"{hs.url}/legacy/", "--username", "__token__",
                       "--password", admin.token, uv_made])
    assert proc.returncode == 0, describe(proc)
    assert _files(hs, "corp-uv")[uv_made.name]["hashes"] == {"sha256": sha256_file(uv_made)}

    # A name the upstream does not have becomes local; when the upstream registers it
    # later, the local project still serves only its own files.
    late = build_wheel(out / "late", "corp-late", "1.0", metadata_sidecar=False)
    proc = twine_upload(hs.url, admin.token, late)
    assert proc.returncode == 0, describe(proc)
    build_wheel(project_dir(dists_dir, "corp-late"), "corp-late", "99.0")
    assert http_request(f"{upstream.url}corp-late/", timeout=60)[0] == 200
    assert set(_files(hs, "corp-late")) == {late.name}


@pytest.mark.synapse
def test_uploads_are_never_evicted_and_survive_a_restart(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path
) -> None:
    """The cache is where an upload lives: a cache far smaller than it evicts downloaded
    files, never uploads, also at start-up."""
    populate(dists_dir)
    upstream = upstream_factory()
    # Room for any one downloaded file, not for the upload as well.
    hs = synapse_factory(module_config=_config(upstream, max_cache_size="16K"))
    admin = Client.register(hs, "admin", admin=True)
    downloaded = dists_dir / "beta" / "beta-1.0-py3-none-any.whl"
    assert http_request(f"{hs.url}/simple/beta/{downloaded.name}", timeout=60)[0] == 200
    poll(lambda: _cached(hs, sha256_file(downloaded)), what="the download cached")
    kept = build_wheel(work_dir / "kept", "corp-kept", "1.0", payload_size=20_000, metadata_sidecar=False)
    proc = twine_upload(hs.url, admin.token, kept)
    assert proc.returncode == 0, describe(proc)
    # The cache is over its budget: the download goes, the upload stays (also once the
    # cache is checked again at start-up).
    assert not _cached(hs, sha256_file(downloaded))
    assert _cached(hs, sha256_file(kept))
    hs.restart()
    assert _cached(hs, sha256_file(kept))
    assert set(_files(hs, "corp-kept")) == {kept.name}
    status, _, data = http_request(f"{hs.url}/simple/corp-kept/{kept.name}", timeout=60)
    assert status == 200 and data == kept.read_bytes()


@pytest.mark.synapse
def test_an_upload_is_added_to_ipfs_and_attested_with_its_cid(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path, kubo_factory: Any
) -> None:
    """The upload goes to the storage backends like a download: pinned in IPFS, the bot's
    attestation carries the CID (what a federated peer fetches it by), and a lost local copy
    comes back from IPFS."""
    populate(dists_dir)
    node = kubo_factory("a", gateway=False)
    upstream = upstream_factory()
    hs = synapse_factory(module_config=_config(upstream, storage_providers=[
        {"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}
    ], storage_retry_interval="1s"))
    admin = Client.register(hs, "admin", admin=True)
    wheel = build_wheel(work_dir / "dist", "corp-ipfs", "1.0", payload_size=3000, metadata_sidecar=False)
    sha = sha256_file(wheel)
    proc = twine_upload(hs.url, admin.token, wheel)
    assert proc.returncode == 0, describe(proc)
    stored = poll(lambda: admin.call("GET", f"/_synapse/pypi/v1/files/{sha}")["stored"], what="the upload pinned")
    cid = list(stored.values())[0]["reference"]
    assert node.cat(cid).body == wheel.read_bytes()
    bot = f"@pypi-bot:{hs.server_name}"
    poll(lambda: any(
        a["publisher"] == bot and a["sha256"] == sha and a["cid"] == cid
        for a in admin.call("GET", f"/_synapse/pypi/v1/projects/corp-ipfs/files/{wheel.name}")["attestations"]
    ), what="the bot's attestation with the CID")
    # The local copy is lost (and the upstream never had it): IPFS gives it back.
    hs.stop()
    _blob(hs, sha).unlink()
    upstream.stop()
    hs.start()
    status, _, data = http_request(f"{hs.url}/simple/corp-ipfs/{wheel.name}", timeout=60)
    assert status == 200 and data == wheel.read_bytes()
    assert _cached(hs, sha)


def _blob(hs: Any, sha256: str) -> Path:
    return hs.data_directory / "cache" / "sha256" / sha256[:2] / sha256[2:4] / sha256


def _tool_home(home: Path) -> dict[str, str]:
    """A home of its own for poetry and pdm: no user or machine config applies."""
    for sub in ("config", "cache", "data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_DATA_HOME": str(home / "data"), "POETRY_CONFIG_DIR": str(home / "config" / "poetry"),
        "POETRY_CACHE_DIR": str(home / "cache" / "poetry"), "POETRY_DATA_DIR": str(home / "data" / "poetry"),
        "POETRY_NO_INTERACTION": "1", "PDM_CACHE_DIR": str(home / "cache" / "pdm"), "PDM_CHECK_UPDATE": "false",
        "PDM_NON_INTERACTIVE": "1", "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }


def _built_project(root: Path, name: str) -> tuple[Path, Path]:
    """A project directory with its pyproject.toml and a built wheel in dist/."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n')
    return root, build_wheel(root / "dist", name, "1.0", metadata_sidecar=False)


@pytest.mark.synapse
def test_pdm_and_poetry_publish(synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path) -> None:
    populate(dists_dir)
    upstream = upstream_factory()
    hs = synapse_factory(module_config=_config(upstream))
    admin = Client.register(hs, "admin", admin=True)
    legacy = f"{hs.url}/legacy/"

    project, wheel = _built_project(work_dir / "pdm", "corp-pdm")
    proc = run_client([tool_bin(PDM, "pdm"), "publish", "--no-build", "--repository", legacy, "--username",
                       "__token__", "--password", admin.token], env=_tool_home(work_dir / "pdm-home"), cwd=project,
                      timeout=300)
    assert proc.returncode == 0, describe(proc)
    assert _files(hs, "corp-pdm")[wheel.name]["hashes"] == {"sha256": sha256_file(wheel)}

    project, wheel = _built_project(work_dir / "poetry", "corp-poetry")
    env = _tool_home(work_dir / "poetry-home")
    poetry = tool_bin(POETRY, "poetry")
    proc = run_client([poetry, "config", "repositories.mirror", legacy], env=env, cwd=project, timeout=120)
    assert proc.returncode == 0, describe(proc)
    proc = run_client([poetry, "publish", "--repository", "mirror", "--username", "__token__", "--password",
                       admin.token, "--no-interaction"], env=env, cwd=project, timeout=300)
    assert proc.returncode == 0, describe(proc)
    assert _files(hs, "corp-poetry")[wheel.name]["hashes"] == {"sha256": sha256_file(wheel)}


def test_an_upload_replicates_to_a_federated_peer_and_its_upstream_cannot_shadow_it(
    synapse_factory: Any, upstream_factory: Any, dists_dir: Path, work_dir: Path, kubo_factory: Any
) -> None:
    """A's upload, attested by A's bot as an upload with its CID, is served by B (A's peer,
    trusting A's key) from the rooms and IPFS; B's upstream registering the same name later,
    with a higher version, changes nothing on B."""
    from synapse_pypi.trust import load_or_create_key, public_key_string

    populate(dists_dir)
    upstream = upstream_factory()
    node_a, node_b = kubo_factory("a", gateway=False), kubo_factory("b", gateway=False)
    assert node_b.rpc("swarm/connect", [("arg", node_a.multiaddr)]).status == 200
    fa, fb = free_port(), free_port()
    name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
    key_path = work_dir / "key-a" / "attestation_signing.key"
    key_a = load_or_create_key(str(key_path))

    def storage(node: Any) -> list:
        return [{"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}]

    a = synapse_factory(module_config=_config(upstream, storage_providers=storage(node_a), storage_retry_interval="1s",
                                              signing_key_path=str(key_path)),
                        federation_port=fa, federation_names=[name_b])
    b = synapse_factory(module_config=_config(upstream, storage_providers=storage(node_b), peers=[name_a],
                                              trusted_keys={f"@pypi-bot:{name_a}": [public_key_string(key_a)]}),
                        federation_port=fb, federation_names=[name_a])
    admin = Client.register(a, "admin", admin=True)
    lib = build_wheel(work_dir / "dist", "corp-shared", "1.0", payload_size=2000, metadata_sidecar=False)
    proc = twine_upload(a.url, admin.token, lib)
    assert proc.returncode == 0, describe(proc)
    bot = f"@pypi-bot:{name_a}"
    poll(lambda: any(
        a_["publisher"] == bot and a_["cid"] and a_["sha256"] == sha256_file(lib)
        for a_ in admin.call("GET", f"/_synapse/pypi/v1/projects/corp-shared/files/{lib.name}")["attestations"]
    ), timeout=60, what="A's bot attesting the upload with its CID")
    # B's upstream has never heard of it: B serves it from A's room and IPFS.
    python = make_venv(work_dir / "b-venv")
    proc = pip_install(python, b.index_url, "corp-shared")
    assert proc.returncode == 0, describe(proc)
    assert installed_version(python, "corp-shared") == "1.0"
    # The public index registers the name with a higher version: B does not switch over.
    build_wheel(project_dir(dists_dir, "corp-shared"), "corp-shared", "9.0")
    assert set(_files(b, "corp-shared")) == {lib.name}
    python = make_venv(work_dir / "b-venv-2")
    proc = pip_install(python, b.index_url, "corp-shared")
    assert proc.returncode == 0 and installed_version(python, "corp-shared") == "1.0", describe(proc)
