"""The trust layer against a real Synapse: package rooms, signed attestations, the serve
policy, fraud, moderators, offline pages, and the admin API. Other users act through the
real client-server API."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.clients import describe, installed_version, make_venv, pip_install, slow_reader
from harness.dists import build_wheel, project_dir, sha256_file, wheel_filename
from harness.matrix import Client, MatrixError, join_when_ready, poll
from harness.mirror import populate, require_backend
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request
from signedjson.sign import verify_signed_json

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    build_content,
    generate_key,
    key_id,
    parse_public_key,
    public_key_string,
    state_key_for,
    verify_key_base64,
)

pytestmark = pytest.mark.synapse


@attrs.define
class TrustMirror:
    hs: SynapseServer
    upstream: UpstreamServer
    root: Path
    admin: Client
    moderator: Client
    publisher: Client
    publisher_key: object
    maintainer: Client
    maintainer_key: object

    @property
    def bot(self) -> str:
        return f"@pypi-bot:{self.hs.server_name}"

    def alias(self, project: str) -> str:
        return f"#pypi-{project}:{self.hs.server_name}"

    def room(self, project: str) -> str:
        """The project's room id (made through the admin API if no file was served yet), with
        the admin, moderator and publisher joined (a public room)."""
        self.admin.call("POST", f"/_synapse/pypi/v1/projects/{project}/room", {})
        room_id = join_when_ready(self.admin, self.alias(project))
        for client in (self.moderator, self.publisher):
            client.join(room_id)
        return room_id

    def status(self, project: str, filename: str) -> dict:
        return self.admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")

    def verdicts(self, project: str, filename: str) -> dict:
        return {a["publisher"]: a["verdict"] for a in self.status(project, filename)["attestations"]}

    def get(self, project: str, filename: str) -> tuple:
        return http_request(f"{self.hs.url}/simple/{project}/{filename}", timeout=60)

    def add_project(self, name: str, payload_size: int = 2000) -> Path:
        path = build_wheel(project_dir(self.root, name), name, "1.0", payload_size=payload_size)
        assert http_request(f"{self.hs.url}/simple/{name}/", timeout=60)[0] == 200
        return path

    def cache_and_attest(self, name: str) -> tuple:
        """Fetch a new project's file through the mirror; wait for the bot's attestation."""
        path = self.add_project(name)
        status, _, body = self.get(name, path.name)
        assert status == 200 and body == path.read_bytes()
        room = self.room(name)
        poll(lambda: self.verdicts(name, path.name).get(self.bot) == "valid", what="bot attestation")
        return path, room

    def publish(self, room: str, path: Path, *, sha256: str | None = None, key=None, slot: str | None = None,
                content: object = None, expect: int = 200, by: Client | None = None) -> str:
        """Publish an attestation, as the publisher user unless `by` says otherwise."""
        sender = by or self.publisher
        pub = sender.user_id
        if content is None:
            content = build_content(
                project=path.parent.name, version="1.0", filename=path.name, size=path.stat().st_size,
                sha256=sha256 or sha256_file(path), cid=None, upstream_url=None, requires_python=None,
                timestamp=1, publisher=pub, signing_key=key or self.publisher_key,
            )
        return sender.send_state(room, ATTESTATION_TYPE, state_key_for(path.name, slot or pub), content, expect=expect)

    def maintainer_vouch(self, room: str, path: Path, project: str) -> None:
        """The pinned maintainer attests the real file; wait until the mirror relies on it."""
        self.maintainer.join(room)
        self.publish(room, path, key=self.maintainer_key, by=self.maintainer)
        poll(lambda: self.verdicts(project, path.name).get(self.maintainer.user_id) == "valid",
             what="maintainer vouch")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tm(request, tmp_path_factory) -> Iterator[TrustMirror]:
    kind = str(request.param)
    require_backend(kind)
    base = tmp_path_factory.mktemp(f"trust-{kind}")
    root = base / "dists"
    populate(root)
    upstream = UpstreamServer(root, base / "upstream").start()
    port = free_port()
    server = f"localhost:{port}"
    maintainer_key = generate_key()
    hs = SynapseServer(
        base / "hs",
        db=kind,
        port=port,
        module_config={
            "upstream_url": upstream.url,
            "upstream_timeout": "3s",
            # Tests stop and start the upstream: the next test must find it answered at once.
            "upstream_retry_interval": 0,
            "moderators": [f"@mod:{server}"],
            "publishers": [f"@pub:{server}", f"@maint:{server}"],
            "maintainer_keys": {
                project: {f"@maint:{server}": [public_key_string(maintainer_key)]}
                for project in ("pinned-pkg", "pinned-late", "pinned-slot")
            },
        },
    )
    try:
        hs.start()
        admin = Client.register(hs, "admin", admin=True)
        moderator = Client.register(hs, "mod")
        publisher = Client.register(hs, "pub")
        maintainer = Client.register(hs, "maint")
        yield TrustMirror(hs, upstream, root, admin, moderator, publisher, generate_key(), maintainer, maintainer_key)
    finally:
        hs.dispose()
        upstream.stop()


def test_room_per_project_with_power_levels_name_and_key(tm):
    path, room = tm.cache_and_attest("roomy")
    state = {(e["type"], e.get("state_key")): e for e in tm.admin.state(room)}
    name = state[("m.room.name", "")]["content"]["name"]
    assert name == f"roomy — attestations for files served by {tm.hs.server_name}"
    assert "roomy" in state[("m.room.topic", "")]["content"]["topic"]
    pl = state[("m.room.power_levels", "")]["content"]
    assert pl["users"][tm.moderator.user_id] == 50 and pl["redact"] == 50
    assert pl["users"][tm.publisher.user_id] == 60
    assert pl["events"][ATTESTATION_TYPE] == 60 and pl["events"][KEY_TYPE] == 60
    assert pl.get("users_default", 0) < 60
    # The module's key is published in the room, and its attestation verifies under it.
    keys = state[(KEY_TYPE, tm.bot)]["content"]["keys"]
    (kid, b64), = keys.items()
    _, verify_key = parse_public_key(f"{kid} {b64}")
    att = state[(ATTESTATION_TYPE, state_key_for(path.name, tm.bot))]
    content = att["content"]
    assert content["hashes"]["sha256"] == sha256_file(path) and content["size"] == path.stat().st_size
    assert content["filename"] == path.name and content["project"] == "roomy" and content["version"] == "1.0"
    verify_signed_json(content, tm.bot, verify_key)
    # The key on disk is the one published (synapse-pypi prints it from the same file).
    key_file = tm.hs.data_directory / "attestation_signing.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_ten_concurrent_first_requests_make_one_room(tm):
    path = build_wheel(project_dir(tm.root, "crowd"), "crowd", "1.0")
    results = []

    def hit():
        results.append(http_request(f"{tm.hs.url}/simple/crowd/{path.name}", timeout=60)[0])

    threads = [threading.Thread(target=hit) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 10
    room = join_when_ready(tm.admin, tm.alias("crowd"))
    rooms = tm.admin.call("GET", "/_synapse/admin/v1/rooms?search_term=crowd&limit=100")["rooms"]
    assert [r["room_id"] for r in rooms] == [room]  # exactly one, no orphans


def _has_room(client: Client, alias: str) -> bool:
    try:
        client.room_id(alias)
        return True
    except MatrixError as e:
        if e.status == 404:
            return False
        raise


def test_a_page_view_makes_no_room_only_a_served_file_does(tm):
    # Issue 13: anyone can view pages, so a view (or a HEAD of a file) must not make a room.
    viewed = tm.add_project("viewed-only")  # GET /simple/viewed-only/
    assert http_request(f"{tm.hs.url}/simple/viewed-only/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                        timeout=60)[0] == 200
    assert http_request(f"{tm.hs.url}/simple/viewed-only/{viewed.name}", method="HEAD", timeout=60)[0] == 200
    # Then another project's file is served. The Matrix queue gives projects their turns in
    # the order their first job came, so once this room exists, a room job the views above
    # had queued would have run as well: the check below comes after it could have.
    served = tm.add_project("served-after-view")
    assert tm.get("served-after-view", served.name)[0] == 200
    poll(lambda: _has_room(tm.admin, tm.alias("served-after-view")), what="the served project's room")
    assert not _has_room(tm.admin, tm.alias("viewed-only"))
    # Once one of its files is served, the viewed project gets its room (the alias is right).
    assert tm.get("viewed-only", viewed.name)[0] == 200
    poll(lambda: _has_room(tm.admin, tm.alias("viewed-only")), what="the viewed project's room once served")


def test_wrong_sha256_from_a_trusted_publisher_is_fraud(tm):
    path, room = tm.cache_and_attest("victim")
    tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                            {"keys": {f"ed25519:{tm.publisher_key.version}": verify_key_base64(tm.publisher_key)}})
    event_id = tm.publish(room, path, sha256="ab" * 32)
    # Detected as it arrives: notice naming file, publisher and both hashes; redacted.
    notice = poll(lambda: [n for n in tm.admin.notices(room) if "Fraudulent" in n], what="fraud notice")[0]
    assert path.name in notice and tm.publisher.user_id in notice
    assert "ab" * 32 in notice and sha256_file(path) in notice
    poll(lambda: tm.verdicts("victim", path.name).get(tm.publisher.user_id) == "redacted", what="redacted")
    assert tm.admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, tm.publisher.user_id)) == {}
    flagged = tm.admin.call("GET", "/_synapse/pypi/v1/projects/victim/flagged")
    assert [f["event_id"] for f in flagged["flagged"]] == [event_id] and flagged["fraud_count"] >= 1
    status, _, body = tm.get("victim", path.name)
    assert status == 200 and body == path.read_bytes()


@pytest.mark.parametrize(
    "case, verdict",
    [
        ("bad-signature", "bad_signature"),
        ("unknown-key", "unknown_key"),
        ("impersonation", "impersonation"),
        ("not-an-object", "malformed"),
        ("missing-fields", "malformed"),
        ("wrong-types", "malformed"),
        ("huge-strings", "malformed"),
    ],
)
def test_invalid_attestations_are_reported_and_never_served(tm, case, verdict):
    name = f"bad-{case}"
    path, room = tm.cache_and_attest(name)
    tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                            {"keys": {f"ed25519:{tm.publisher_key.version}": verify_key_base64(tm.publisher_key)}})
    wrong = "cd" * 32
    slot = None
    if case == "bad-signature":
        content = build_content(project=name, version="1.0", filename=path.name, size=1, sha256=wrong, cid=None,
                                upstream_url=None, requires_python=None, timestamp=1,
                                publisher=tm.publisher.user_id, signing_key=tm.publisher_key)
        content["size"] = 2  # changed after signing
    elif case == "unknown-key":
        content = build_content(project=name, version="1.0", filename=path.name, size=1, sha256=wrong, cid=None,
                                upstream_url=None, requires_python=None, timestamp=1,
                                publisher=tm.publisher.user_id, signing_key=generate_key())
    elif case == "impersonation":
        content = build_content(project=name, version="1.0", filename=path.name, size=1, sha256=wrong, cid=None,
                                upstream_url=None, requires_python=None, timestamp=1,
                                publisher=tm.publisher.user_id, signing_key=tm.publisher_key)
        slot = tm.bot
    elif case == "not-an-object":
        content = {"schema": [1, 2, 3]}
    elif case == "missing-fields":
        content = {"schema": 1, "filename": path.name}
    elif case == "wrong-types":
        content = {"schema": 1, "project": name, "version": 1, "filename": path.name, "size": "big",
                   "hashes": {"sha256": 5}, "timestamp": "now", "publisher": tm.publisher.user_id, "signatures": []}
    else:
        # As large as Synapse lets an event be (64 KiB), with fields far over their limits.
        content = {"schema": 1, "project": name, "version": "1.0" * 5000, "filename": path.name, "size": 1,
                   "hashes": {"sha256": wrong, "other": "y" * 20000}, "timestamp": 1,
                   "publisher": tm.publisher.user_id, "signatures": {}, "junk": "x" * 20000}
    tm.publish(room, path, content=content, slot=slot)
    if case == "impersonation":
        # Written into the bot's slot: reported, and the bot's own attestation, kept all
        # along, is sent again so that the room's state carries it.
        poll(lambda: [f for f in tm.admin.call("GET", f"/_synapse/pypi/v1/projects/{name}/flagged")["flagged"]
                      if f["kind"] == "impersonation"], what="impersonation reported")
        restored = poll(lambda: tm.admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, tm.bot))
                        .get("publisher") == tm.bot, what="the bot's slot restored")
        assert restored
        content = tm.admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, tm.bot))
        assert content["hashes"]["sha256"] == sha256_file(path)
    else:
        poll(lambda: tm.verdicts(name, path.name).get(tm.publisher.user_id) in (verdict, "redacted"), what=verdict)
    notice = poll(lambda: [n for n in tm.admin.notices(room) if "Invalid attestation" in n], what="report")[0]
    assert path.name in notice and tm.publisher.user_id in notice
    # Never wrong bytes; the bot's own vouch still stands.
    status, _, body = tm.get(name, path.name)
    assert status == 200 and body == path.read_bytes()
    assert tm.verdicts(name, path.name).get(tm.bot) == "valid"


def test_moderator_redaction_takes_effect_and_the_next_serve_attests_again(tm):
    path, room = tm.cache_and_attest("redactme")
    state = {(e["type"], e.get("state_key")): e for e in tm.admin.state(room)}
    event_id = state[(ATTESTATION_TYPE, state_key_for(path.name, tm.bot))]["event_id"]
    tm.moderator.redact(room, event_id, "checking the moderation path")
    # Seen through on_new_event, no room read per request; how fast is measured by
    # benchmarks/bench_redaction.py, not here.
    poll(lambda: tm.verdicts("redactme", path.name).get(tm.bot) == "redacted", what="redaction seen")
    # Its only vouch is gone: the next serve goes by the upstream and vouches again.
    status, _, body = tm.get("redactme", path.name)
    assert status == 200 and body == path.read_bytes()

    def new_vouch():
        st = tm.status("redactme", path.name)
        mine = [a for a in st["attestations"] if a["publisher"] == tm.bot]
        return mine and mine[0]["verdict"] == "valid" and mine[0]["event_id"] != event_id

    poll(new_vouch, what="attested again")


def test_a_rogue_publisher_after_the_mirror_verified_is_fraud_even_offline(tm):
    """What the mirror verified itself stays verified: with the upstream down, a later
    contradiction is fraud, not a reason to refuse the file."""
    path, room = tm.cache_and_attest("disputed")
    tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                            {"keys": {f"ed25519:{tm.publisher_key.version}": verify_key_base64(tm.publisher_key)}})
    tm.upstream.stop()
    try:
        tm.admin.call("POST", "/_synapse/pypi/v1/projects/disputed/reverify", {})
        event_id = tm.publish(room, path, sha256="ef" * 32)
        poll(lambda: tm.verdicts("disputed", path.name).get(tm.publisher.user_id) == "redacted", what="redacted")
        flagged = tm.admin.call("GET", "/_synapse/pypi/v1/projects/disputed/flagged")["flagged"]
        assert [(f["event_id"], f["kind"]) for f in flagged] == [(event_id, "fraud")]
        status, _, body = tm.get("disputed", path.name)
        assert status == 200 and body == path.read_bytes()
        assert tm.verdicts("disputed", path.name)[tm.bot] == "valid"
    finally:
        tm.upstream.start()


def test_a_rogue_publisher_before_the_first_fetch_is_409_and_summons_moderators(tm):
    """One publisher against the upstream, and the mirror has verified nothing yet: nobody
    can tell who lies. Neither the rogue's bytes nor a silent choice: 409 naming both."""
    path = build_wheel(project_dir(tm.root, "early-lie"), "early-lie", "1.0")
    room = tm.room("early-lie")
    tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                            {"keys": {f"ed25519:{tm.publisher_key.version}": verify_key_base64(tm.publisher_key)}})
    tm.publish(room, path, sha256="ef" * 32)
    poll(lambda: tm.verdicts("early-lie", path.name).get(tm.publisher.user_id) == "valid", what="valid claim")
    status, _, body = tm.get("early-lie", path.name)
    assert status == 409, body
    text = body.decode()
    assert tm.publisher.user_id in text and "the upstream index" in text and "ef" * 6 in text
    notice = poll(lambda: [n for n in tm.admin.notices(room) if n.startswith("Conflict over")], what="summons")[0]
    assert path.name in notice and sha256_file(path) in notice and "ef" * 32 in notice
    assert tm.moderator.user_id in notice
    # The page offers the file without a hash rather than with either side's.
    page = json.loads(http_request(f"{tm.hs.url}/simple/early-lie/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)[2])
    assert [f["hashes"] for f in page["files"]] == [{}]
    flagged = tm.admin.call("GET", "/_synapse/pypi/v1/projects/early-lie/flagged")
    assert [f["kind"] for f in flagged["flagged"]] == ["conflict"] and flagged["conflict_count"] >= 1
    # A moderator settles it by redacting the rogue's attestation.
    rogue = [a for a in tm.status("early-lie", path.name)["attestations"]
             if a["publisher"] == tm.publisher.user_id][0]
    tm.moderator.redact(room, rogue["event_id"], "checked: the upstream's file is right")
    poll(lambda: tm.get("early-lie", path.name)[0] == 200, what="served after the moderator decided")
    assert tm.get("early-lie", path.name)[2] == path.read_bytes()


def test_offline_page_from_the_room_and_install(tm, tmp_path):
    python = make_venv(tmp_path / "online")
    result = pip_install(python, tm.hs.index_url, "alpha")
    assert result.returncode == 0, describe(result)
    for project, filename in (("alpha", wheel_filename("alpha", "2.0")), ("beta", wheel_filename("beta", "1.0"))):
        poll(lambda p=project, f=filename: tm.verdicts(p, f).get(tm.bot) == "valid", what=f"{filename} attested")
    tm.upstream.stop()
    try:
        for project in ("alpha", "beta"):
            tm.admin.call("DELETE", f"/_synapse/pypi/v1/projects/{project}/page")
        status, _, body = http_request(f"{tm.hs.url}/simple/alpha/",
                                       headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)
        assert status == 200, body
        files = {f["filename"]: f for f in json.loads(body)["files"]}
        alpha = tm.root / "alpha" / wheel_filename("alpha", "2.0")
        assert files[alpha.name]["hashes"] == {"sha256": sha256_file(alpha)}
        offline = make_venv(tmp_path / "offline")
        result = pip_install(offline, tm.hs.index_url, "alpha")
        assert result.returncode == 0, describe(result)
        assert installed_version(offline, "alpha") == "2.0" and installed_version(offline, "beta") == "1.0"
    finally:
        tm.upstream.start()


def test_admin_api_lists_shows_and_purges(tm):
    path, room = tm.cache_and_attest("adminable")
    projects = {p["name"]: p for p in tm.admin.call("GET", "/_synapse/pypi/v1/projects")["projects"]}
    assert projects["adminable"]["room_id"] == room
    st = tm.status("adminable", path.name)
    assert st["decision"]["outcome"] == "serve" and st["decision"]["sha256"] == sha256_file(path)
    result = tm.admin.call("DELETE", f"/_synapse/pypi/v1/projects/adminable/files/{path.name}")
    assert result["purged"] is True
    sha = sha256_file(path)
    assert tm.admin.call("GET", f"/_synapse/pypi/v1/files/{sha}")["cached"] is False
    before = tm.upstream.hit_count(tm.upstream.file_path("adminable", path.name))
    status, _, body = tm.get("adminable", path.name)
    assert status == 200 and hashlib.sha256(body).hexdigest() == sha
    assert tm.upstream.hit_count(tm.upstream.file_path("adminable", path.name)) == before + 1
    # Ordinary users get 403.
    with pytest.raises(MatrixError) as e:
        tm.publisher.call("GET", "/_synapse/pypi/v1/projects")
    assert e.value.status == 403


def test_cli_prints_the_module_public_key(tm):
    import subprocess
    import sys

    key_file = tm.hs.data_directory / "attestation_signing.key"
    assert http_request(f"{tm.hs.url}/simple/alpha/", timeout=60)[0] == 200
    out = subprocess.run([sys.executable, "-m", "synapse_pypi.cli", "key", "--key-file", str(key_file)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    room = tm.room("alpha")
    state = {(e["type"], e.get("state_key")): e for e in tm.admin.state(room)}
    (kid, b64), = state[(KEY_TYPE, tm.bot)]["content"]["keys"].items()
    assert out.stdout.strip() == f"{kid} {b64}"  # the form trusted_keys takes


def test_pinned_maintainer_outranks_a_tampered_upstream(tm):
    path = tm.add_project("pinned-pkg", payload_size=20_000)
    good_sha = sha256_file(path)
    room = tm.room("pinned-pkg")
    tm.maintainer_vouch(room, path, "pinned-pkg")
    # An attacker who controls the upstream replaces the file and its hash in the index.
    upstream_path = tm.upstream.file_path("pinned-pkg", path.name)
    replaced = tm.upstream.fault(upstream_path, "replace", content=b"evil" * 5000)
    fetched_before = tm.upstream.hit_count(upstream_path)
    try:
        tm.admin.call("POST", "/_synapse/pypi/v1/projects/pinned-pkg/reverify", {})
        status, _, page = http_request(f"{tm.hs.url}/simple/pinned-pkg/",
                                       headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)
        files = {f["filename"]: f for f in json.loads(page)["files"]}
        assert files[path.name]["hashes"] == {"sha256": good_sha}  # the maintainer's, not the upstream's
        status, _, body = tm.get("pinned-pkg", path.name)
        # The tampered bytes are never fetched, let alone served.
        assert status == 502 and b"the upstream now publishes other bytes" in body
        assert tm.upstream.hit_count(upstream_path) == fetched_before
        assert hashlib.sha256(body).hexdigest() != replaced["sha256"]
        notice = poll(lambda: [n for n in tm.admin.notices(room) if "Upstream contradicts" in n], what="notice")[0]
        assert replaced["sha256"] in notice and good_sha in notice and tm.maintainer.user_id in notice
    finally:
        tm.upstream.clear_faults()
    # The real file again: served.
    tm.admin.call("POST", "/_synapse/pypi/v1/projects/pinned-pkg/reverify", {})
    status, _, body = tm.get("pinned-pkg", path.name)
    assert status == 200 and hashlib.sha256(body).hexdigest() == good_sha


def test_purge_refused_while_the_file_is_sent_changes_nothing(tm):
    path = tm.add_project("busy-pkg", payload_size=20_000_000)
    sha = sha256_file(path)
    assert tm.get("busy-pkg", path.name)[0] == 200
    url = f"/_synapse/pypi/v1/projects/busy-pkg/files/{path.name}"
    reader = slow_reader(f"{tm.hs.url}/simple/busy-pkg/{path.name}")
    try:
        with pytest.raises(MatrixError) as e:
            tm.admin.call("DELETE", url)
        assert e.value.status == 409
        assert tm.admin.call("GET", f"/_synapse/pypi/v1/files/{sha}")["cached"] is True
    finally:
        reader.close()

    def purge() -> dict | None:
        try:
            return tm.admin.call("DELETE", url)
        except MatrixError as e:
            if e.status == 409:
                return None
            raise

    # Once the reader is gone the same purge goes through: the refused one left the file's
    # mapping in place.
    result = poll(purge, what="purge after the reader left")
    assert result["purged"] is True and result["sha256"] == sha
    assert tm.admin.call("GET", f"/_synapse/pypi/v1/files/{sha}")["cached"] is False


def test_a_squatted_alias_is_taken_back_and_the_squatters_room_not_trusted(tm):
    # A local user binds the alias of a project the mirror has not seen yet, to a room where
    # they are the creator, and publish a key and a lie there.
    squatter = Client.register(tm.hs, "squatter")
    squat = squatter.call("POST", "/_matrix/client/v3/createRoom",
                          {"preset": "public_chat", "room_alias_name": "pypi-squatted"})["room_id"]
    path = build_wheel(project_dir(tm.root, "squatted"), "squatted", "1.0")
    key = generate_key()
    squatter.send_state(squat, KEY_TYPE, squatter.user_id, {"keys": {key_id(key): verify_key_base64(key)}})
    lie = build_content(
        project="squatted", version="1.0", filename=path.name, size=path.stat().st_size, sha256="0" * 64,
        cid=None, upstream_url=None, requires_python=None, timestamp=1, publisher=squatter.user_id,
        signing_key=key,
    )
    squatter.send_state(squat, ATTESTATION_TYPE, state_key_for(path.name, squatter.user_id), lie)

    status, _, body = tm.get("squatted", path.name)
    assert status == 200 and body == path.read_bytes()
    room = tm.room("squatted")
    assert room != squat
    create = [e for e in tm.admin.state(room) if e["type"] == "m.room.create"][0]
    assert create["sender"] == tm.bot
    poll(lambda: tm.verdicts("squatted", path.name).get(tm.bot) == "valid", what="bot attestation")
    assert squatter.user_id not in tm.verdicts("squatted", path.name)  # the squatter's room is not read
    assert "reclaiming the alias" in tm.hs.log_text()


def test_moderators_cannot_replumb_the_room(tm):
    _, room = tm.cache_and_attest("locked")
    pl = tm.admin.state_event(room, "m.room.power_levels")
    for etype in ("m.room.join_rules", "m.room.history_visibility", "m.room.canonical_alias",
                  "m.room.server_acl", "m.room.tombstone"):
        assert pl["events"][etype] == 100, etype
    tm.moderator.send_state(room, "m.room.join_rules", "", {"join_rule": "invite"}, expect=403)
    tm.moderator.send_state(room, "m.room.server_acl", "", {"allow": ["*"], "deny": ["evil.example"]},
                            expect=403)
    # What moderators are for still works.
    tm.moderator.send_state(room, "m.room.topic", "", {"topic": "reviewed"})


def test_a_maintainer_vouch_that_contradicts_a_tampered_upstream_is_not_called_fraud(tm):
    path = tm.add_project("pinned-late", payload_size=20_000)
    good_sha = sha256_file(path)
    room = tm.room("pinned-late")
    upstream_path = tm.upstream.file_path("pinned-late", path.name)
    replaced = tm.upstream.fault(upstream_path, "replace", content=b"evil" * 5000)
    try:
        # The mirror's page now carries the attacker's hash; then the maintainer vouches.
        tm.admin.call("POST", "/_synapse/pypi/v1/projects/pinned-late/reverify", {})
        assert http_request(f"{tm.hs.url}/simple/pinned-late/", timeout=60)[0] == 200
        tm.maintainer_vouch(room, path, "pinned-late")
        # A publisher who agrees with the attacker's upstream is the liar here.
        tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                                {"keys": {key_id(tm.publisher_key): verify_key_base64(tm.publisher_key)}})
        tm.publish(room, path, sha256=replaced["sha256"])
        flagged = poll(lambda: [f for f in tm.admin.call("GET", "/_synapse/pypi/v1/projects/pinned-late/flagged")
                                ["flagged"] if f["publisher"] == tm.publisher.user_id], what="publisher flagged")
        assert flagged[0]["claimed"] == replaced["sha256"] and flagged[0]["truth"] == good_sha
        flagged_publishers = {f["publisher"] for f in tm.admin.call(
            "GET", "/_synapse/pypi/v1/projects/pinned-late/flagged")["flagged"]}
        assert tm.maintainer.user_id not in flagged_publishers
        assert tm.verdicts("pinned-late", path.name)[tm.maintainer.user_id] == "valid"
        notice = poll(lambda: [n for n in tm.admin.notices(room) if "Fraudulent" in n and tm.publisher.user_id in n],
                      what="fraud notice")[0]
        assert "pinned maintainer" in notice and good_sha in notice
        status, _, body = tm.get("pinned-late", path.name)
        assert status == 502 and hashlib.sha256(body).hexdigest() != replaced["sha256"]
    finally:
        tm.upstream.clear_faults()


def test_a_publisher_writing_into_the_maintainers_slot_does_not_erase_the_vouch(tm):
    path = tm.add_project("pinned-slot", payload_size=20_000)
    room = tm.room("pinned-slot")
    tm.maintainer_vouch(room, path, "pinned-slot")
    # Another publisher (with the power to send attestations) writes into the maintainer's slot.
    tm.publisher.send_state(room, KEY_TYPE, tm.publisher.user_id,
                            {"keys": {key_id(tm.publisher_key): verify_key_base64(tm.publisher_key)}})
    tm.publish(room, path, sha256="ef" * 32, slot=tm.maintainer.user_id)
    poll(lambda: [f for f in tm.admin.call("GET", "/_synapse/pypi/v1/projects/pinned-slot/flagged")["flagged"]
                  if f["kind"] == "impersonation"], what="impersonation reported")
    assert tm.verdicts("pinned-slot", path.name)[tm.maintainer.user_id] == "valid"
    # Read from the room again (as after a restart), the maintainer's own event is found
    # under the intruder's.
    tm.admin.call("POST", "/_synapse/pypi/v1/projects/pinned-slot/reverify", {})
    assert tm.verdicts("pinned-slot", path.name)[tm.maintainer.user_id] == "valid"
    # The maintainer's vouch still protects the file against a tampered upstream.
    replaced = tm.upstream.fault(tm.upstream.file_path("pinned-slot", path.name), "replace", content=b"bad" * 7000)
    try:
        tm.admin.call("DELETE", "/_synapse/pypi/v1/projects/pinned-slot/page")
        status, _, body = tm.get("pinned-slot", path.name)
        assert status == 502 and hashlib.sha256(body).hexdigest() != replaced["sha256"]
    finally:
        tm.upstream.clear_faults()


def test_a_rotated_key_replaces_the_old_one_and_the_bot_attests_again(synapse_factory, upstream_factory, dists_dir):
    from synapse_pypi.trust import load_key

    path = build_wheel(project_dir(dists_dir, "rotated"), "rotated", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url})
    admin = Client.register(hs, "admin", admin=True)
    bot = f"@pypi-bot:{hs.server_name}"
    url = f"{hs.url}/simple/rotated/{path.name}"
    status_path = f"/_synapse/pypi/v1/projects/rotated/files/{path.name}"

    def bot_attestation() -> dict | None:
        for a in admin.call("GET", status_path)["attestations"]:
            if a["publisher"] == bot:
                return a
        return None

    assert http_request(url, timeout=60)[0] == 200
    old = poll(lambda: (a := bot_attestation()) and a["verdict"] == "valid" and a, what="first attestation")
    key_file = hs.data_directory / "attestation_signing.key"
    old_key = load_key(str(key_file))
    hs.stop()
    key_file.unlink()  # the admin rotates the key: a new one is made at start
    hs.start()
    new_key = load_key(str(key_file))
    assert key_id(new_key) != key_id(old_key) or verify_key_base64(new_key) != verify_key_base64(old_key)

    status, _, body = http_request(url, timeout=60)  # a cache hit
    assert status == 200 and body == path.read_bytes()
    room = admin.room_id(f"#pypi-rotated:{hs.server_name}")
    admin.join(room)
    # The room names the new key only (published through the Matrix queue); the bot's
    # attestation is made again with it.
    poll(lambda: admin.state_event(room, KEY_TYPE, bot)["keys"] == {key_id(new_key): verify_key_base64(new_key)},
         what="the new key published")
    new = poll(lambda: (a := bot_attestation()) and a["verdict"] == "valid" and a["event_id"] != old["event_id"]
               and a, what="attested again")
    content = admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, bot))
    verify_signed_json(content, bot, new_key.verify_key)
    assert new["sha256"] == sha256_file(path)
    assert not [n for n in admin.notices(room) if "Invalid attestation" in n]


def test_the_samples_alias_rules_keep_others_off_package_aliases(synapse_factory, upstream_factory, dists_dir):
    import yaml

    sample = (Path(__file__).parents[2] / "sample_homeserver.yaml").read_text()
    block = sample[sample.index("# alias_creation_rules:"):].split("\n\n")[0]
    rules = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
    path = build_wheel(project_dir(dists_dir, "ruled"), "ruled", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url}, extra_config=rules)
    user = Client.register(hs, "someone")
    user.call("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "pypi-ruled"}, expect=403)
    user.call("POST", "/_matrix/client/v3/createRoom", {"room_alias_name": "my-room"})  # others are free
    # The bot still makes its rooms.
    assert http_request(f"{hs.url}/simple/ruled/{path.name}", timeout=60)[0] == 200
    room = join_when_ready(user, f"#pypi-ruled:{hs.server_name}")
    create = [e for e in user.state(room) if e["type"] == "m.room.create"][0]
    assert create["sender"] == f"@pypi-bot:{hs.server_name}"


def test_a_local_alias_moved_onto_another_projects_room_is_reclaimed(tm):
    x_path, x_room = tm.cache_and_attest("moved-x")
    y_path, y_room = tm.cache_and_attest("moved-y")
    alias = tm.alias("moved-x").replace("#", "%23")
    tm.admin.call("DELETE", f"/_matrix/client/v3/directory/room/{alias}")
    tm.admin.call("PUT", f"/_matrix/client/v3/directory/room/{alias}", {"room_id": y_room})
    tm.admin.call("POST", "/_synapse/pypi/v1/projects/moved-x/reverify", {})
    # The alias is taken back from y's room; x gets a room of its own again when served.
    status, _, body = tm.get("moved-x", x_path.name)
    assert status == 200 and body == x_path.read_bytes()
    def new_room() -> str | None:
        try:
            room_id = tm.admin.room_id(tm.alias("moved-x"))
        except MatrixError as e:
            assert e.status == 404
            return None
        return room_id if room_id not in (y_room, x_room) else None

    poll(new_room, what="a new room for x")
    assert [line for line in tm.hs.log_text().splitlines()
            if "reclaiming the alias" in line and tm.alias("moved-x") in line and "moved-y" in line]
    # y's room is still y's, and y's view untouched.
    assert tm.status("moved-y", y_path.name)["room_id"] == y_room
    assert tm.verdicts("moved-y", y_path.name)[tm.bot] == "valid"

