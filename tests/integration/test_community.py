"""Issue 16 item 4: a community index kept in a room on another homeserver. The mirror (A)
serves `/index/<room alias>/simple/` with only the projects and versions the room's state
allows, through its ordinary serve path; curators change the list from a Matrix client on B,
and A follows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, uv_install
from harness.dists import build_wheel, project_dir
from harness.matrix import Client, poll
from harness.synapse import free_port

pytestmark = pytest.mark.synapse

INDEX = "dev.synapse-pypi.index"
JSON_V1 = "application/vnd.pypi.simple.v1+json"


def page_files(hs, path: str) -> list[str]:
    status, _, body = hs.request("GET", path, headers={"Accept": JSON_V1})
    assert status == 200, body
    return sorted(f["filename"] for f in json.loads(body)["files"])


def test_a_community_index_on_another_server(tmp_path: Path, dists_dir: Path, upstream_factory: Any,
                                             synapse_factory: Any) -> None:
    lib = {v: build_wheel(project_dir(dists_dir, "comm-lib"), "comm-lib", v) for v in ("1.0", "1.5", "2.0")}
    app = build_wheel(project_dir(dists_dir, "comm-app"), "comm-app", "1.0", requires=["comm-lib>=1"])
    build_wheel(project_dir(dists_dir, "unlisted"), "unlisted", "1.0")
    upstream = upstream_factory()
    fa, fb = free_port(), free_port()
    name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
    a = synapse_factory(module_config={"upstream_url": upstream.url}, federation_port=fa, federation_names=[name_b])
    b = synapse_factory(federation_port=fb, federation_names=[name_a])
    # The community's room lives on B; its curator keeps the list from a Matrix client.
    curator = Client.register(b, "curator")
    room = curator.call("POST", "/_matrix/client/v3/createRoom", {
        "preset": "public_chat", "room_alias_name": "curated", "name": "A curated index"})["room_id"]
    curator.send_state(room, INDEX, "comm-app", {"versions": ""})
    curator.send_state(room, INDEX, "comm-lib", {"versions": ">=1,<2", "reason": "2.0 breaks the API"})
    curator.send_state(room, INDEX, "Not_Normalized", {"versions": ""})  # ignored: not a normalized name
    alias = f"#curated:{name_b}"
    base = f"/index/{quote(alias, safe='')}/simple/"

    status, _, body = a.request("GET", base, headers={"Accept": JSON_V1})
    assert status == 200, body
    assert sorted(p["name"] for p in json.loads(body)["projects"]) == ["comm-app", "comm-lib"]
    assert page_files(a, base + "comm-lib/") == [lib["1.0"].name, lib["1.5"].name]
    assert a.request("GET", base + f"comm-lib/{lib['2.0'].name}")[0] == 404
    status, _, body = a.request("GET", base + "unlisted/")
    assert status == 404 and b"not in the community index" in body
    # The alias may be given without its '#', and bad ones are a clear 400.
    assert a.request("GET", f"/index/{quote(alias[1:], safe='')}/simple/")[0] == 200
    assert a.request("GET", "/index/no-server/simple/")[0] == 400
    assert a.request("GET", f"/index/{quote('#nobody:' + name_b, safe='')}/simple/")[0] == 404

    python = make_venv(tmp_path / "pip")
    result = pip_install(python, f"{a.url}{base}", "comm-app")
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "comm-lib") == "1.5" and installed_version(python, "comm-app") == "1.0"
    python = make_venv(tmp_path / "uv")
    result = uv_install(python, f"{a.url}{base}", "comm-app")
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "comm-lib") == "1.5"
    assert a.request("GET", base + f"comm-app/{app.name}")[2] == app.read_bytes()
    # The same files through /simple/ carry the same hashes: one serve path.
    assert a.request("GET", f"/simple/comm-lib/{lib['1.5'].name}")[2] == lib["1.5"].read_bytes()

    # The curators change their minds; A follows.
    curator.send_state(room, INDEX, "comm-lib", {"versions": ">=2"})
    curator.send_state(room, INDEX, "comm-app", {})
    poll(lambda: page_files(a, base + "comm-lib/") == [lib["2.0"].name], timeout=30, what="the new range")
    poll(lambda: a.request("GET", base + "comm-app/")[0] == 404, timeout=30, what="comm-app taken off the list")
    assert a.request("GET", base + f"comm-lib/{lib['2.0'].name}")[2] == lib["2.0"].read_bytes()
