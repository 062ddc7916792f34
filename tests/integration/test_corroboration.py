"""An upstream that is malicious at the mirror's first fetch (issue 10, scenario 2): three real
homeservers federating on loopback, each with its own Kubo node. A and B are honest mirrors of
the real upstream; C's upstream serves other bytes under the same file names (and the hash to
match). Two independent honest peers outweigh C's upstream: C serves the true bytes from IPFS.
With only one, nobody can tell: C refuses the file rather than guess."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.clients import describe, installed_version, make_venv, pip_install
from harness.dists import build_wheel, project_dir, sha256_file
from harness.kubo import KuboNodeProcess
from harness.matrix import Client, join_when_ready, poll
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request

from synapse_pypi.trust import load_or_create_key, public_key_string

pytestmark = pytest.mark.synapse


@attrs.define
class Mirrors:
    a: SynapseServer
    b: SynapseServer
    c: SynapseServer
    good: UpstreamServer
    bad: UpstreamServer
    root: Path
    admins: dict

    def bot(self, hs: SynapseServer) -> str:
        return f"@pypi-bot:{hs.server_name}"

    def status(self, hs: SynapseServer, project: str, filename: str) -> dict:
        return self.admins[hs.server_name].call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")

    def attested_with_cid(self, hs: SynapseServer, project: str, filename: str) -> bool:
        return any(x["publisher"] == self.bot(hs) and x["verdict"] == "valid" and x["cid"]
                   for x in self.status(hs, project, filename)["attestations"])


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> Iterator[Mirrors]:
    base = tmp_path_factory.mktemp("corroboration")
    root = base / "dists"
    processes: list = []
    try:
        good = UpstreamServer(root, base / "good").start()
        bad = UpstreamServer(root, base / "bad").start()
        processes += [good, bad]
        nodes = {}
        for name in ("a", "b", "c"):
            nodes[name] = KuboNodeProcess(base / f"kubo-{name}" / "repo", base / f"kubo-{name}" / "work",
                                          gateway=False, extra_args=["--default-timeout", "30"]).start()
            processes.append(nodes[name])
        for peer in ("a", "b"):
            assert nodes["c"].rpc("swarm/connect", [("arg", nodes[peer].multiaddr)]).status == 200
        ports = {name: free_port() for name in ("a", "b", "c")}
        names = {name: f"localhost:{port}" for name, port in ports.items()}
        keys = {}
        for name in ("a", "b"):
            path = base / f"key-{name}" / "attestation_signing.key"
            keys[name] = (str(path), load_or_create_key(str(path)))

        def module(name: str, upstream: UpstreamServer, **extra) -> dict:
            return {
                "upstream_url": upstream.url, "upstream_timeout": "3s", "upstream_retry_interval": 0,
                "storage_providers": [{"module": "synapse_pypi.storage.KuboStorage",
                                       "config": {"api_url": f"http://127.0.0.1:{nodes[name].api_port}"}}],
                **extra,
            }

        servers = {}
        for name in ("a", "b"):
            servers[name] = SynapseServer(
                base / f"hs-{name}", federation_port=ports[name],
                federation_names=[n for k, n in names.items() if k != name],
                module_config=module(name, good, signing_key_path=keys[name][0]),
            )
        servers["c"] = SynapseServer(
            base / "hs-c", federation_port=ports["c"], federation_names=[names["a"], names["b"]],
            module_config=module(
                "c", bad, peers=[names["a"], names["b"]],
                trusted_keys={f"@pypi-bot:{names[k]}": [public_key_string(keys[k][1])] for k in ("a", "b")},
            ),
        )
        processes += list(servers.values())
        for hs in servers.values():
            hs.start()
        admins = {hs.server_name: Client.register(hs, "admin", admin=True) for hs in servers.values()}
        yield Mirrors(servers["a"], servers["b"], servers["c"], good, bad, root, admins)
    finally:
        for p in reversed(processes):
            (p.dispose if isinstance(p, SynapseServer) else p.stop)()


def _tamper(m: Mirrors, project: str, filename: str) -> dict:
    return m.bad.fault(m.bad.file_path(project, filename), "replace", content=b"malware " * 3000)


def _serve_and_attest(m: Mirrors, hs: SynapseServer, path: Path) -> None:
    project = path.parent.name
    assert http_request(f"{hs.url}/simple/{project}/{path.name}", timeout=60)[0] == 200
    poll(lambda: m.attested_with_cid(hs, project, path.name), what=f"{hs.server_name} attests with a CID")
    join_when_ready(m.admins[hs.server_name], f"#pypi-{project}:{hs.server_name}")


def test_two_honest_peers_outweigh_a_malicious_upstream(mirrors, tmp_path):
    m = mirrors
    path = build_wheel(project_dir(m.root, "two-peers"), "two-peers", "1.0", payload_size=30_000)
    for hs in (m.a, m.b):
        _serve_and_attest(m, hs, path)
    tampered = _tamper(m, "two-peers", path.name)
    result = pip_install(make_venv(tmp_path / "via-c"), m.c.index_url, "two-peers")
    assert result.returncode == 0, describe(result)
    status, _, body = http_request(f"{m.c.url}/simple/two-peers/{path.name}", timeout=60)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_file(path)
    assert m.bad.hit_count(m.bad.file_path("two-peers", path.name)) == 0  # never fetched
    assert "fetched from kubo" in m.c.log_text()
    page = json.loads(http_request(f"{m.c.url}/simple/two-peers/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)[2])
    assert [f["hashes"]["sha256"] for f in page["files"]] == [sha256_file(path)]
    admin = m.admins[m.c.server_name]
    flagged = admin.call("GET", "/_synapse/pypi/v1/projects/two-peers/flagged")["flagged"]
    assert [(f["kind"], f["claimed"]) for f in flagged] == [("upstream_changed", tampered["sha256"])]
    room = join_when_ready(admin, f"#pypi-two-peers:{m.c.server_name}")
    notice = poll(lambda: [n for n in admin.notices(room) if "Upstream contradicts" in n], what="C's alarm")[0]
    assert tampered["sha256"] in notice and sha256_file(path) in notice
    # C attests what it served, saying it checked the bytes against others' attestations.
    poll(lambda: any(x["publisher"] == m.bot(m.c) and x["verdict"] == "valid"
                     for x in m.status(m.c, "two-peers", path.name)["attestations"]), what="C attests")
    content = admin.state_event(room, "dev.synapse-pypi.attestation", f"{path.name}/{m.bot(m.c)}")
    assert content["verified_against"] == "attestations"


def test_one_honest_peer_stops_the_attack_but_cannot_pick_the_winner(mirrors, tmp_path):
    m = mirrors
    path = build_wheel(project_dir(m.root, "one-peer"), "one-peer", "1.0", payload_size=30_000)
    _serve_and_attest(m, m.a, path)
    tampered = _tamper(m, "one-peer", path.name)
    status, _, body = http_request(f"{m.c.url}/simple/one-peer/{path.name}", timeout=60)
    assert status == 409, body
    text = body.decode()
    assert m.bot(m.a) in text and "the upstream index" in text
    assert m.bad.hit_count(m.bad.file_path("one-peer", path.name)) == 0
    result = pip_install(make_venv(tmp_path / "via-c"), m.c.index_url, "one-peer")
    assert result.returncode != 0 and installed_version(tmp_path / "via-c" / "bin" / "python", "one-peer") is None
    admin = m.admins[m.c.server_name]
    room = join_when_ready(admin, f"#pypi-one-peer:{m.c.server_name}")
    notice = poll(lambda: [n for n in admin.notices(room) if n.startswith("Conflict over")], what="summons")[0]
    assert tampered["sha256"] in notice and sha256_file(path) in notice
