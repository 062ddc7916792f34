"""Two mirrors on two real homeservers federating over loopback TLS, each with its own Kubo
node, the nodes connected, one real upstream: B serves from IPFS on A's attestations, a
lying publisher is caught by both, redactions travel."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.clients import describe, installed_version, make_venv, pip_install
from harness.dists import sha256_file, wheel_filename
from harness.kubo import KuboNodeProcess
from harness.matrix import Client, join_when_ready, poll
from harness.mirror import populate
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    build_content,
    generate_key,
    key_id,
    load_or_create_key,
    public_key_string,
    state_key_for,
    verify_key_base64,
)
from synapse_pypi.trust._bans import POLICY_TYPE, build_policy, policy_state_key

pytestmark = pytest.mark.synapse


@attrs.define
class Federation:
    a: SynapseServer
    b: SynapseServer
    upstream: UpstreamServer
    root: Path
    admin_a: Client
    admin_b: Client
    moderator: Client  # on A
    liar: Client  # a publisher on A whose key B trusts
    liar_key: object

    def bot(self, hs: SynapseServer) -> str:
        return f"@pypi-bot:{hs.server_name}"

    def status(self, hs: SynapseServer, admin: Client, project: str, filename: str) -> dict:
        return admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")

    def a_room(self, project: str) -> str:
        """A's room for the project, once made, with A's admin, moderator and liar joined."""
        room_id = join_when_ready(self.admin_a, f"#pypi-{project}:{self.a.server_name}")
        for client in (self.moderator, self.liar):
            client.join(room_id)
        return room_id


def _kubo(base: Path, name: str) -> KuboNodeProcess:
    return KuboNodeProcess(base / name / "repo", base / name / "work", gateway=False,
                           extra_args=["--default-timeout", "30"]).start()


@pytest.fixture(scope="module")
def fed(tmp_path_factory) -> Iterator[Federation]:
    base = tmp_path_factory.mktemp("federation")
    root = base / "dists"
    populate(root)
    processes: list = []
    try:
        upstream = UpstreamServer(root, base / "upstream").start()
        processes.append(upstream)
        node_a, node_b = _kubo(base, "kubo-a"), _kubo(base, "kubo-b")
        processes += [node_a, node_b]
        assert node_b.rpc("swarm/connect", [("arg", node_a.multiaddr)]).status == 200
        fa, fb = free_port(), free_port()
        name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
        # A's attestation key, made before A starts so that B can be told to trust it.
        key_a_path = base / "key-a" / "attestation_signing.key"
        key_a = load_or_create_key(str(key_a_path))
        liar_key = generate_key()

        def storage(node):
            return [{"module": "synapse_pypi.storage.KuboStorage",
                     "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}]

        a = SynapseServer(
            base / "hs-a", federation_port=fa, federation_names=[name_b],
            module_config={
                # The tests switch the upstream off and on between steps: both mirrors must
                # notice at once, not after upstream_retry_interval.
                "upstream_url": upstream.url, "upstream_timeout": "3s", "upstream_retry_interval": 0,
                "storage_providers": storage(node_a),
                "signing_key_path": str(key_a_path),
                "moderators": [f"@mod:{name_a}"], "publishers": [f"@liar:{name_a}"],
            },
        )
        processes.append(a)
        b = SynapseServer(
            base / "hs-b", federation_port=fb, federation_names=[name_a],
            module_config={
                "upstream_url": upstream.url, "upstream_timeout": "3s", "upstream_retry_interval": 0,
                "storage_providers": storage(node_b),
                "peers": [name_a],
                "moderators": [f"@admin:{name_b}"],
                "trusted_keys": {f"@pypi-bot:{name_a}": [public_key_string(key_a)],
                                 f"@liar:{name_a}": [public_key_string(liar_key)]},
            },
        )
        processes.append(b)
        a.start()
        b.start()
        yield Federation(
            a, b, upstream, root,
            Client.register(a, "admin", admin=True), Client.register(b, "admin", admin=True),
            Client.register(a, "mod"), Client.register(a, "liar"), liar_key,
        )
    finally:
        for p in reversed(processes):
            (p.dispose if isinstance(p, SynapseServer) else p.stop)()


def test_b_serves_from_ipfs_on_a_attestations_without_upstream(fed, tmp_path):
    result = pip_install(make_venv(tmp_path / "via-a"), fed.a.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    files = [("alpha", wheel_filename("alpha", "2.0")), ("beta", wheel_filename("beta", "1.0"))]
    for project, filename in files:
        poll(lambda p=project, f=filename: [
            a for a in fed.status(fed.a, fed.admin_a, p, f)["attestations"]
            if a["publisher"] == fed.bot(fed.a) and a["verdict"] == "valid" and a["cid"]
        ], timeout=60, what=f"A attests {filename} with a CID")

    fed.upstream.stop()
    try:
        python = make_venv(tmp_path / "via-b")
        result = pip_install(python, fed.b.index_url, "alpha")
        assert result.returncode == 0, describe(result)
        assert installed_version(python, "alpha") == "2.0" and installed_version(python, "beta") == "1.0"
        log = fed.b.log_text()
        assert log.count("fetched from kubo") == 2
        assert "joined localhost:" in log
        for project, filename in files:
            sha = sha256_file(fed.root / project / filename)
            assert fed.admin_b.call("GET", f"/_synapse/pypi/v1/files/{sha}")["cached"] is True
            # B vouches too, in its own room (it has no power in A's).
            poll(lambda p=project, f=filename: [
                a for a in fed.status(fed.b, fed.admin_b, p, f)["attestations"]
                if a["publisher"] == fed.bot(fed.b) and a["verdict"] == "valid"
            ], what=f"B attests {filename}")
    finally:
        fed.upstream.start()


def _lie(fed, room: str, path: Path, sha256: str) -> str:
    content = build_content(
        project=path.parent.name, version="1.0", filename=path.name, size=path.stat().st_size, sha256=sha256,
        cid=None, upstream_url=None, requires_python=None, timestamp=1, publisher=fed.liar.user_id,
        signing_key=fed.liar_key,
    )
    return fed.liar.send_state(room, ATTESTATION_TYPE, state_key_for(path.name, fed.liar.user_id), content)


def test_a_lying_publisher_is_caught_by_both(fed):
    path = fed.root / "beta" / wheel_filename("beta", "1.0")
    # Both mirrors serve the file, with a fresh page from the upstream: its hash is the ground
    # truth. A's room is made before B looks for it, and B reads it.
    assert http_request(f"{fed.a.url}/simple/beta/{path.name}", timeout=60)[0] == 200
    room = fed.a_room("beta")
    assert http_request(f"{fed.b.url}/simple/beta/{path.name}", timeout=60)[0] == 200
    poll(lambda: any(a["publisher"] == fed.bot(fed.a) and a["verdict"] == "valid"
                     for a in fed.status(fed.b, fed.admin_b, "beta", path.name)["attestations"]),
         what="B sees A's attestation")
    fed.liar.send_state(room, KEY_TYPE, fed.liar.user_id,
                        {"keys": {f"ed25519:{fed.liar_key.version}": verify_key_base64(fed.liar_key)}})
    event_id = _lie(fed, room, path, "12" * 32)
    for hs, admin in ((fed.a, fed.admin_a), (fed.b, fed.admin_b)):
        flagged = poll(lambda admin=admin: [
            f for f in admin.call("GET", "/_synapse/pypi/v1/projects/beta/flagged")["flagged"]
            if f["event_id"] == event_id
        ], what=f"{hs.server_name} flags the lie")
        assert flagged[0]["kind"] == "fraud" and flagged[0]["claimed"] == "12" * 32

    def fraud_notices() -> list:
        found = [n for n in fed.admin_a.notices(room) if "Fraudulent" in n and "12" * 32 in n]
        return found if len(found) >= 2 else []

    notices = poll(fraud_notices, what="a notice from each mirror")
    assert any(fed.b.server_name in n for n in notices) and any(fed.a.server_name in n for n in notices)
    # A has the power and redacts it; B sees that.
    poll(lambda: fed.admin_a.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, fed.liar.user_id)) == {},
         what="redacted on A")
    for hs in (fed.a, fed.b):
        status, _, body = http_request(f"{hs.url}/simple/beta/{path.name}", timeout=60)
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_file(path)


def test_with_upstream_down_b_keeps_what_it_verified_and_refuses_what_it_cannot_tell(fed):
    verified = fed.root / "alpha" / wheel_filename("alpha", "2.0")
    unverified = fed.root / "beta" / "beta-1.0.tar.gz"
    # A serves and attests both files; B serves (so verifies and attests) one, and has the
    # page of the other.
    for path in (verified, unverified):
        project = path.parent.name
        assert http_request(f"{fed.a.url}/simple/{project}/{path.name}", timeout=60)[0] == 200
    assert http_request(f"{fed.b.url}/simple/alpha/{verified.name}", timeout=60)[0] == 200
    assert http_request(f"{fed.b.url}/simple/beta/", timeout=60)[0] == 200
    rooms = {project: fed.a_room(project) for project in ("alpha", "beta")}
    for path in (verified, unverified):
        project = path.parent.name
        poll(lambda p=project, f=path.name: any(
            a["publisher"] == fed.bot(fed.a) and a["verdict"] == "valid"
            for a in fed.status(fed.b, fed.admin_b, p, f)["attestations"]), what=f"B sees A's {path.name}")
    poll(lambda: any(a["publisher"] == fed.bot(fed.b) and a["verdict"] == "valid"
                     for a in fed.status(fed.b, fed.admin_b, "alpha", verified.name)["attestations"]),
         what="B's own attestation")
    for room in rooms.values():
        fed.liar.send_state(room, KEY_TYPE, fed.liar.user_id,
                            {"keys": {f"ed25519:{fed.liar_key.version}": verify_key_base64(fed.liar_key)}})
    fed.upstream.stop()
    try:
        for admin in (fed.admin_a, fed.admin_b):
            for project in rooms:
                admin.call("POST", f"/_synapse/pypi/v1/projects/{project}/reverify", {})
        for path in (verified, unverified):
            _lie(fed, rooms[path.parent.name], path, "34" * 32)
            poll(lambda f=path.name, p=path.parent.name: any(
                a["publisher"] == fed.liar.user_id and a["verdict"] in ("valid", "redacted")
                for a in fed.status(fed.b, fed.admin_b, p, f)["attestations"]), what="B sees the claim")
        # What B verified itself stays verified, upstream or not.
        status, _, body = http_request(f"{fed.b.url}/simple/alpha/{verified.name}", timeout=60)
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_file(verified)
        # The other, which B has checked nothing of: A's bot and the cached upstream page
        # against a liar on A's own server are two sources against one: A's hash wins.
        status, _, body = http_request(f"{fed.b.url}/simple/beta/{unverified.name}", timeout=60)
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha256_file(unverified)
    finally:
        fed.upstream.start()


def test_redaction_on_a_travels_to_b(fed):
    filename = wheel_filename("alpha", "1.0")
    assert http_request(f"{fed.a.url}/simple/alpha/{filename}", timeout=60)[0] == 200
    room = fed.a_room("alpha")  # made by A before B looks for it (B retries a missing room only later)
    assert http_request(f"{fed.b.url}/simple/alpha/{filename}", timeout=60)[0] == 200
    poll(lambda: any(a["publisher"] == fed.bot(fed.a) and a["verdict"] == "valid"
                     for a in fed.status(fed.b, fed.admin_b, "alpha", filename)["attestations"]),
         what="B sees A's attestation")
    state = {(e["type"], e.get("state_key")): e for e in fed.admin_a.state(room)}
    event_id = state[(ATTESTATION_TYPE, state_key_for(filename, fed.bot(fed.a)))]["event_id"]
    fed.moderator.redact(room, event_id, "moderation check")
    poll(lambda: any(a["event_id"] == event_id and a["verdict"] == "redacted"
                     for a in fed.status(fed.b, fed.admin_b, "alpha", filename)["attestations"]),
         what="B stops relying on it")  # how fast: benchmarks/bench_redaction.py


def test_dead_and_hanging_peers_do_not_hold_requests(synapse_factory, upstream_factory, dists_dir, tmp_path):
    import socket
    import threading

    from harness.dists import build_wheel, project_dir

    build_wheel(project_dir(dists_dir, "solo"), "solo", "1.0")
    upstream = upstream_factory()
    # One peer accepts connections and never answers; the other is a closed port.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    accepted: list = []
    stop = threading.Event()

    def swallow():
        hang.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(hang.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    hanging, dead = f"localhost:{hang.getsockname()[1]}", f"localhost:{free_port()}"
    try:
        port = free_port()
        hs = SynapseServer(
            tmp_path / "hs", federation_port=port, federation_names=[hanging, dead],
            module_config={"upstream_url": upstream.url, "peers": [hanging, dead], "peer_timeout": "2s"},
        )
        # Synapse's federation client, its request cancelled at peer_timeout, leaves the hung
        # connection with a Measure context that it has finished: when the connection closes
        # (here at shutdown) Synapse warns "Re-starting finished log context" for it. Only the
        # lookup's own context, only this warning.
        hs.expected_log_trouble = [r" - GET-\d+-peer - (Re-starting finished log context|Called stop on logcontext)"]
        hs.start()
        try:
            # The client gives up after 20 s; unbounded peer calls would take Synapse's own
            # federation timeouts (a minute and more).
            status, _, _ = http_request(f"{hs.url}/simple/solo/", timeout=20)
            assert status == 200
            status, _, body = http_request(f"{hs.url}/simple/solo/solo-1.0-py3-none-any.whl", timeout=20)
            assert status == 200
            log = poll(lambda: hs.log_text() if hs.log_text().count("cannot join") >= 2 else "", what="both logged")
            assert hanging in log and dead in log
        finally:
            hs.dispose()
    finally:
        stop.set()
        thread.join()
        hang.close()
        for conn in accepted:
            conn.close()


def test_b_with_a_cached_page_fetches_an_uncached_file_by_a_attested_cid(fed):
    from harness.dists import build_wheel, project_dir

    path = build_wheel(project_dir(fed.root, "epsilon"), "epsilon", "1.0", payload_size=100_000)
    sha = sha256_file(path)
    assert http_request(f"{fed.a.url}/simple/epsilon/{path.name}", timeout=60)[0] == 200
    poll(lambda: [a for a in fed.status(fed.a, fed.admin_a, "epsilon", path.name)["attestations"]
                  if a["publisher"] == fed.bot(fed.a) and a["verdict"] == "valid" and a["cid"]],
         timeout=60, what="A attests with a CID")
    # B caches the page (from the upstream) and sees A's attestation, but not the file.
    assert http_request(f"{fed.b.url}/simple/epsilon/", timeout=60)[0] == 200
    poll(lambda: any(a["publisher"] == fed.bot(fed.a) and a["cid"]
                     for a in fed.status(fed.b, fed.admin_b, "epsilon", path.name)["attestations"]),
         what="B sees A's CID")
    assert fed.admin_b.call("GET", f"/_synapse/pypi/v1/files/{sha}")["cached"] is False
    fed.upstream.stop()
    try:
        status, _, body = http_request(f"{fed.b.url}/simple/epsilon/{path.name}", timeout=60)
        assert status == 200 and hashlib.sha256(body).hexdigest() == sha
        assert f"{path.name}: fetched from kubo" in fed.b.log_text()
    finally:
        fed.upstream.start()


def test_a_ban_on_a_stops_b_also_offline_with_the_file_in_its_cache(fed):
    """Issue 14: A's moderator bans a file by a command in A's room; B, which trusts A's bot,
    stops serving it within seconds, with its own upstream down and the file in its cache."""
    import secrets
    from urllib.parse import quote

    from harness.dists import build_wheel, project_dir

    path = build_wheel(project_dir(fed.root, "banned-far"), "banned-far", "1.0")
    for hs in (fed.a, fed.b):
        status, _, body = http_request(f"{hs.url}/simple/banned-far/{path.name}", timeout=60)
        assert status == 200 and body == path.read_bytes()
    room = fed.a_room("banned-far")
    poll(lambda: fed.status(fed.b, fed.admin_b, "banned-far", path.name)["peer_rooms"], what="B reads A's room")
    fed.upstream.stop()
    try:
        send = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}"
        fed.moderator.call("PUT", send, {"msgtype": "m.text", "body": f"!pypi ban {path.name} malware found"})
        status, _, body = poll(lambda: (r := http_request(f"{fed.b.url}/simple/banned-far/{path.name}", timeout=60))
                               [0] == 404 and r, what="B refuses the file")  # how fast: benchmarks/bench_bans.py
        assert b"malware found" in body and fed.bot(fed.a).encode() in body
        bans = fed.admin_b.call("GET", "/_synapse/pypi/v1/projects/banned-far/bans")["bans"]
        assert [(b["entity"], b["publisher"]) for b in bans] == [(path.name, fed.bot(fed.a))]
    finally:
        fed.upstream.start()


def test_an_untrusted_users_policy_changes_nothing_on_a_or_b(fed):
    """Issue 14: a publisher of A's (with the power to send policy events) bans a project with
    a key nobody trusts: neither A nor B, which reads A's room, stops serving it. Once that key
    is published in A's room at the key level, A counts it (keys published in its own rooms
    do); B still does not: in a peer's room it trusts only the keys pinned in its config."""
    from harness.dists import build_wheel, project_dir

    path = build_wheel(project_dir(fed.root, "untrusted-far"), "untrusted-far", "1.0")
    for hs in (fed.a, fed.b):
        status, _, body = http_request(f"{hs.url}/simple/untrusted-far/{path.name}", timeout=60)
        assert status == 200 and body == path.read_bytes()
    room = fed.a_room("untrusted-far")
    poll(lambda: fed.status(fed.b, fed.admin_b, "untrusted-far", path.name)["peer_rooms"], what="B reads A's room")
    key = generate_key()
    slot = policy_state_key("project", "untrusted-far", fed.liar.user_id)

    def ban() -> str:
        content = build_policy(project="untrusted-far", kind="project", entity="untrusted-far", recommendation="ban",
                               reason="I say so", source="moderator", timestamp=int(time.time() * 1000),
                               publisher=fed.liar.user_id, signing_key=key)
        return fed.liar.send_state(room, POLICY_TYPE, slot, content)

    def flagged(admin: Client, event_id: str) -> list:
        return [f for f in admin.call("GET", "/_synapse/pypi/v1/projects/untrusted-far/flagged")["flagged"]
                if f["event_id"] == event_id and f["kind"] == "unknown_key"]

    def served(hs: SynapseServer) -> int:
        return http_request(f"{hs.url}/simple/untrusted-far/{path.name}", timeout=60)[0]

    first = ban()
    for hs, admin in ((fed.a, fed.admin_a), (fed.b, fed.admin_b)):
        poll(lambda admin=admin: flagged(admin, first), what=f"{hs.server_name} reports the untrusted ban")
        assert admin.call("GET", "/_synapse/pypi/v1/projects/untrusted-far/bans")["bans"] == []
        assert served(hs) == 200
    fed.liar.send_state(room, KEY_TYPE, fed.liar.user_id, {"keys": {key_id(key): verify_key_base64(key)}})
    # Sent again after the key: B has the key event by the time it reports this one.
    second = ban()
    poll(lambda: served(fed.a) == 404, what="A counts the key published in its room")
    poll(lambda: flagged(fed.admin_b, second), what="B reports the ban again")
    assert fed.admin_b.call("GET", "/_synapse/pypi/v1/projects/untrusted-far/bans")["bans"] == []
    assert served(fed.b) == 200


def test_b_reading_a_room_for_the_first_time_keeps_a_ban_whose_slot_was_overwritten(tmp_path):
    """A publisher of A's writes an unban into A's bot's ban slot. B, which has never read A's
    room, reads it while the overwrite is its current state (A's restore is held back): B
    walks the slot back to A's bot's ban, as A itself does, and refuses the file."""
    from harness.clients import slow_reader
    from harness.dists import build_wheel, project_dir

    root = tmp_path / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, tmp_path / "upstream").start()
    fa, fb = free_port(), free_port()
    name_a, name_b = f"localhost:{fa}", f"localhost:{fb}"
    key_a_path = tmp_path / "key-a" / "attestation_signing.key"
    key_a = load_or_create_key(str(key_a_path))
    a = SynapseServer(tmp_path / "hs-a", federation_port=fa, federation_names=[name_b], module_config={
        "upstream_url": upstream.url, "page_ttl": 0, "upstream_retry_interval": 0,
        "signing_key_path": str(key_a_path), "publishers": [f"@pub:{name_a}"],
        # While a download is in flight on A, its Matrix queue's ordinary jobs (the bot's
        # restore among them) wait up to this long: the overwrite stays the slot's state.
        "matrix_max_delay": "10m",
    })
    b = SynapseServer(tmp_path / "hs-b", federation_port=fb, federation_names=[name_a], module_config={
        "upstream_url": upstream.url, "page_ttl": 0, "upstream_retry_interval": 0, "peers": [name_a],
        "trusted_keys": {f"@pypi-bot:{name_a}": [public_key_string(key_a)]},
    })
    try:
        a.start()
        b.start()
        admin, pub = Client.register(a, "admin", admin=True), Client.register(a, "pub")
        admin_b = Client.register(b, "admin", admin=True)
        bot = f"@pypi-bot:{name_a}"
        wheel = build_wheel(project_dir(root, "far-ban"), "far-ban", "1.0")
        big = build_wheel(project_dir(root, "held-open"), "held-open", "1.0", payload_size=20_000_000)
        for project, path in (("far-ban", wheel), ("held-open", big)):
            assert http_request(f"{a.url}/simple/{project}/{path.name}", timeout=120)[0] == 200
        admin.call("POST", "/_synapse/pypi/v1/projects/far-ban/bans", {"target": wheel.name, "reason": "malware"})
        room = join_when_ready(admin, f"#pypi-far-ban:{name_a}")
        pub.join(room)
        slot = policy_state_key("file", wheel.name, bot)
        lift = build_policy(project="far-ban", kind="file", entity=wheel.name, recommendation="unban",
                            reason="mine now", source="moderator", timestamp=1, publisher=pub.user_id,
                            signing_key=generate_key())
        reader = slow_reader(f"{a.url}/simple/held-open/{big.name}")
        try:
            pub.send_state(room, POLICY_TYPE, slot, lift)
            poll(lambda: [f for f in admin.call("GET", "/_synapse/pypi/v1/projects/far-ban/flagged")["flagged"]
                          if f["kind"] == "impersonation"], what="A reports the overwrite")
            status, _, body = http_request(f"{b.url}/simple/far-ban/{wheel.name}", timeout=60)
            assert status == 404 and b"malware" in body and bot.encode() in body
            # Still the overwrite when B read the room.
            assert admin.state_event(room, POLICY_TYPE, slot)["publisher"] == pub.user_id
            bans = admin_b.call("GET", "/_synapse/pypi/v1/projects/far-ban/bans")["bans"]
            assert [(ban["entity"], ban["publisher"]) for ban in bans] == [(wheel.name, bot)]
        finally:
            reader.close()
    finally:
        a.dispose()
        b.dispose()
        upstream.stop()


def test_peer_aliases_cannot_detach_or_replace_our_views(fed):
    """A's users bind A's package aliases to rooms of their choice: B's own room, A's room for
    another project, a room of their own. B ignores each one and reports it, and its own
    room's view stays live."""
    wheel = fed.root / "gamma" / wheel_filename("gamma", "1.0")
    fed.admin_b.call("POST", "/_synapse/pypi/v1/projects/gamma/room", {})
    b_room = join_when_ready(fed.admin_b, f"#pypi-gamma:{fed.b.server_name}")
    assert http_request(f"{fed.a.url}/simple/alpha/{wheel_filename('alpha', '1.0')}", timeout=60)[0] == 200
    a_alpha = join_when_ready(fed.admin_a, f"#pypi-alpha:{fed.a.server_name}")
    own = fed.liar.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]
    fed.liar.call("POST", f"/_matrix/client/v3/join/{b_room}?server_name={fed.b.server_name}", {})
    fed.liar.join(a_alpha)
    for project, target in (("gamma", b_room), ("delta-pkg", a_alpha), ("beta", own)):
        alias = f"#pypi-{project}:{fed.a.server_name}"
        try:
            fed.admin_a.call("DELETE", f"/_matrix/client/v3/directory/room/{alias.replace('#', '%23')}")
        except Exception:  # noqa: BLE001 - the alias may not exist yet
            pass
        fed.liar.call("PUT", f"/_matrix/client/v3/directory/room/{alias.replace('#', '%23')}", {"room_id": target})
    for project, filename in (("gamma", wheel.name), ("delta-pkg", wheel_filename("Delta_Pkg", "1.0")),
                              ("beta", wheel_filename("beta", "1.0"))):
        fed.admin_b.call("POST", f"/_synapse/pypi/v1/projects/{project}/reverify", {})
        assert http_request(f"{fed.b.url}/simple/{project}/{filename}", timeout=60)[0] == 200
        assert fed.status(fed.b, fed.admin_b, project, filename)["peer_rooms"] == {}
    ignored = {r["alias"]: r["why"] for r in fed.admin_b.call("GET", "/_synapse/pypi/v1/trust")["ignored_rooms"]}
    assert "which is our room for gamma" in ignored[f"#pypi-gamma:{fed.a.server_name}"]
    assert "alpha" in ignored[f"#pypi-delta-pkg:{fed.a.server_name}"]
    assert "not by" in ignored[f"#pypi-beta:{fed.a.server_name}"]
    # B's own room is still B's view, fed live: B's moderator redacts B's bot's attestation.
    status = fed.status(fed.b, fed.admin_b, "gamma", wheel.name)
    assert status["room_id"] == b_room
    mine = poll(lambda: [a for a in fed.status(fed.b, fed.admin_b, "gamma", wheel.name)["attestations"]
                         if a["publisher"] == fed.bot(fed.b) and a["verdict"] == "valid"], what="B attests")[0]
    fed.admin_b.redact(b_room, mine["event_id"], "checking the view is live")
    poll(lambda: any(a["event_id"] == mine["event_id"] and a["verdict"] == "redacted"
                     for a in fed.status(fed.b, fed.admin_b, "gamma", wheel.name)["attestations"]),
         what="the redaction reaches B's view")

