"""Removal travels (issue 14): bans of a file, a version or a project, from a moderator's command
in a Matrix room or from the upstream (a file it stopped listing, a project it quarantined),
against a real Synapse, a real upstream and users acting through the client-server API."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import attrs
import pytest
from harness.clients import slow_reader
from harness.dists import build_sdist, build_wheel, project_dir, sha256_file, yank
from harness.matrix import Client, join_when_ready, poll
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request

from synapse_pypi.trust import generate_key, key_id, verify_key_base64
from synapse_pypi.trust._bans import POLICY_TYPE, build_policy, policy_state_key

pytestmark = pytest.mark.synapse

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


@attrs.define
class Banning:
    hs: SynapseServer
    upstream: UpstreamServer
    root: Path
    admin: Client
    moderator: Client
    someone: Client
    publisher: Client

    def serve(self, project: str, *versions: str, sdist: bool = False) -> list[Path]:
        """Build releases upstream, fetch their files through the mirror; the room, joined."""
        paths = []
        for version in versions:
            paths.append(build_wheel(project_dir(self.root, project), project, version))
            if sdist:
                paths.append(build_sdist(project_dir(self.root, project), project, version))
        for path in paths:
            status, _, body = self.get(project, path.name)
            assert status == 200 and body == path.read_bytes()
        return paths

    def room(self, project: str) -> str:
        room = join_when_ready(self.admin, f"#pypi-{project}:{self.hs.server_name}")
        for client in (self.moderator, self.someone, self.publisher):
            client.join(room)
        return room

    def get(self, project: str, filename: str) -> tuple:
        return http_request(f"{self.hs.url}/simple/{project}/{filename}", timeout=60)

    def listed(self, project: str) -> list[str]:
        page = json.loads(http_request(f"{self.hs.url}/simple/{project}/", headers=JSON, timeout=60)[2])
        return [f["filename"] for f in page["files"]]

    def say(self, client: Client, room: str, text: str) -> str:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}"
        return client.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def reply_to(self, room: str, event_id: str) -> str:
        def find() -> str | None:
            data = self.admin.call("GET", f"/_matrix/client/v3/rooms/{quote(room)}/messages?dir=b&limit=100")
            for e in data["chunk"]:
                rel = e.get("content", {}).get("m.relates_to", {})
                if rel.get("m.in_reply_to", {}).get("event_id") == event_id:
                    return e["content"]["body"]
            return None

        return poll(find, what=f"the bot's answer to {event_id}")

    def bans(self, project: str) -> list:
        return self.admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/bans")["bans"]


@pytest.fixture(scope="module")
def bn(tmp_path_factory) -> Iterator[Banning]:
    base = tmp_path_factory.mktemp("bans")
    root = base / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, base / "upstream").start()
    port = free_port()
    server = f"localhost:{port}"
    hs = SynapseServer(
        base / "hs", port=port,
        module_config={
            "upstream_url": upstream.url, "page_ttl": 0, "upstream_retry_interval": 0,
            "moderators": [f"@mod:{server}"], "publishers": [f"@pub:{server}"],
            "keep_removed_files": ["pinned-builds"],
        },
    )
    try:
        hs.start()
        yield Banning(hs, upstream, root, Client.register(hs, "admin", admin=True), Client.register(hs, "mod"),
                      Client.register(hs, "someone"), Client.register(hs, "pub"))
    finally:
        hs.dispose()
        upstream.stop()


def test_a_moderator_bans_and_unbans_a_file_with_a_command(bn):
    wheel, newer = bn.serve("banned-file", "1.0", "2.0")
    room = bn.room("banned-file")
    asked = bn.say(bn.moderator, room, f"!pypi ban {wheel.name} malware, see the advisory")
    answer = bn.reply_to(room, asked)
    assert answer.startswith(f"File {wheel.name} of banned-file is banned")
    # Never served nor listed, the cached copy and its .metadata included; the rest untouched.
    status, _, body = bn.get("banned-file", wheel.name)
    assert status == 404 and b"malware, see the advisory" in body and bn.moderator.user_id.encode() in body
    assert bn.get("banned-file", wheel.name + ".metadata")[0] == 404
    assert bn.listed("banned-file") == [newer.name]
    assert bn.get("banned-file", newer.name)[0] == 200
    (ban,) = bn.bans("banned-file")
    assert (ban["kind"], ban["entity"], ban["source"]) == ("file", wheel.name, "moderator")
    # Moderators see it on the project's page for people too.
    browse = http_request(f"{bn.hs.url}/pypi/banned-file/", timeout=60)[2].decode()
    assert "<h2>Bans</h2>" in browse and "malware, see the advisory" in browse
    asked = bn.say(bn.moderator, room, f"!pypi unban {wheel.name} a false alarm")
    assert "no longer banned" in bn.reply_to(room, asked)
    status, _, body = bn.get("banned-file", wheel.name)
    assert status == 200 and body == wheel.read_bytes()
    assert sorted(bn.listed("banned-file")) == sorted([wheel.name, newer.name])


def test_a_version_ban_covers_its_files_and_a_project_ban_quarantines(bn):
    old_whl, old_sdist, new_whl, new_sdist = bn.serve("banned-release", "1.0", "2.0", sdist=True)
    room = bn.room("banned-release")
    bn.reply_to(room, bn.say(bn.moderator, room, "!pypi ban 1.0 compromised release"))
    assert sorted(bn.listed("banned-release")) == sorted([new_whl.name, new_sdist.name])
    assert [bn.get("banned-release", p.name)[0] for p in (old_whl, old_sdist)] == [404, 404]
    bn.reply_to(room, bn.say(bn.moderator, room, "!pypi ban banned-release the whole project is malware"))
    page = json.loads(http_request(f"{bn.hs.url}/simple/banned-release/", headers=JSON, timeout=60)[2])
    assert page["meta"]["api-version"] == "1.4" and page["files"] == []
    assert page["project-status"]["status"] == "quarantined"
    assert "the whole project is malware" in page["project-status"]["reason"]
    assert bn.get("banned-release", new_whl.name)[0] == 404
    # Redacting the bot's policy event lifts it, as a moderator would from Element.
    project_ban = [b for b in bn.bans("banned-release") if b["kind"] == "project"][0]
    bn.moderator.redact(room, project_ban["event_id"], "lifted")
    poll(lambda: bn.get("banned-release", new_whl.name)[0] == 200, what="the project ban lifted")
    assert bn.get("banned-release", old_whl.name)[0] == 404  # the version ban stays


def test_commands_from_non_moderators_and_bad_commands_are_refused_with_a_reply(bn):
    (wheel,) = bn.serve("not-yours", "1.0")
    room = bn.room("not-yours")
    answer = bn.reply_to(room, bn.say(bn.someone, room, f"!pypi ban {wheel.name} I do not like it"))
    assert "only moderators" in answer and bn.someone.user_id in answer
    assert "Usage" in bn.reply_to(room, bn.say(bn.moderator, room, "!pypi frobnicate"))
    assert "needs a reason" in bn.reply_to(room, bn.say(bn.moderator, room, f"!pypi ban {wheel.name}"))
    assert "not a file of not-yours" in bn.reply_to(room, bn.say(bn.moderator, room, "!pypi ban other-1.0.tar.gz x"))
    assert bn.bans("not-yours") == [] and bn.get("not-yours", wheel.name)[0] == 200


def test_a_policy_event_signed_with_an_untrusted_key_changes_nothing(bn):
    (wheel,) = bn.serve("untrusted-ban", "1.0")
    room = bn.room("untrusted-ban")
    key = generate_key()
    content = build_policy(project="untrusted-ban", kind="project", entity="untrusted-ban", recommendation="ban",
                           reason="I say so", source="moderator", timestamp=1, publisher=bn.publisher.user_id,
                           signing_key=key)
    bn.publisher.send_state(room, POLICY_TYPE, policy_state_key("project", "untrusted-ban", bn.publisher.user_id),
                            content)
    poll(lambda: [f for f in bn.admin.call("GET", "/_synapse/pypi/v1/projects/untrusted-ban/flagged")["flagged"]
                  if f["kind"] == "unknown_key"], what="the untrusted policy reported")
    assert bn.bans("untrusted-ban") == [] and bn.get("untrusted-ban", wheel.name)[0] == 200
    # With its key published at the publishers' level it counts: policies trust keys, not posts.
    bn.publisher.send_state(room, "dev.synapse-pypi.key", bn.publisher.user_id,
                            {"keys": {key_id(key): verify_key_base64(key)}})
    poll(lambda: bn.get("untrusted-ban", wheel.name)[0] == 404, what="the trusted ban")


def test_the_upstream_removing_a_file_bans_it_and_listing_it_again_lifts_that(bn):
    kept_wheel, removed = bn.serve("upstream-removed", "1.0", "2.0")
    bn.room("upstream-removed")
    moved = bn.root / removed.name  # out of the project's directory: the upstream lists it no more
    removed.rename(moved)
    try:
        assert bn.listed("upstream-removed") == [kept_wheel.name]
        poll(lambda: [b for b in bn.bans("upstream-removed") if b["entity"] == removed.name], what="the ban")
        (ban,) = bn.bans("upstream-removed")
        assert ban["source"] == "upstream" and "no longer listed" in ban["reason"]
        status, _, body = bn.get("upstream-removed", removed.name)
        assert status == 404 and b"no longer listed by the upstream index" in body
    finally:
        moved.rename(removed)
    poll(lambda: removed.name in bn.listed("upstream-removed") and bn.bans("upstream-removed") == [],
         what="the ban lifted once listed again")
    assert bn.get("upstream-removed", removed.name)[0] == 200


def test_keep_removed_files_keeps_serving_them(bn):
    kept_wheel, removed = bn.serve("pinned-builds", "1.0", "2.0")
    moved = bn.root / removed.name
    removed.rename(moved)
    try:
        assert sorted(bn.listed("pinned-builds")) == sorted([kept_wheel.name, removed.name])
        status, _, body = bn.get("pinned-builds", removed.name)
        assert status == 200 and body == moved.read_bytes()
        assert bn.bans("pinned-builds") == []
    finally:
        moved.rename(removed)


def test_the_upstream_quarantining_a_project_bans_it_for_peers_to_see(bn):
    (wheel,) = bn.serve("upstream-quarantined", "1.0")
    bn.room("upstream-quarantined")
    (bn.root / "upstream-quarantined" / ".status").write_text("quarantined\nreported as malware")
    try:
        assert bn.listed("upstream-quarantined") == []
        ban = poll(lambda: bn.bans("upstream-quarantined"), what="the upstream's quarantine published")[0]
        assert (ban["kind"], ban["source"]) == ("project", "upstream") and "reported as malware" in ban["reason"]
        assert bn.get("upstream-quarantined", wheel.name)[0] == 404
    finally:
        (bn.root / "upstream-quarantined" / ".status").unlink()
    poll(lambda: bn.listed("upstream-quarantined") == [wheel.name] and bn.bans("upstream-quarantined") == [],
         what="lifted when the upstream lifts it")


def test_a_file_yanked_upstream_after_the_mirror_holds_it_stays_served_with_its_flag(bn):
    """PEP 592: a yank is not a removal. The mirror keeps serving the file it holds and lists
    it with the yank and its reason; nothing is banned."""
    kept, yanked = bn.serve("yanked-later", "1.0", "2.0")
    yank(yanked, "broken build")
    page = json.loads(http_request(f"{bn.hs.url}/simple/yanked-later/", headers=JSON, timeout=60)[2])
    flags = {f["filename"]: f["yanked"] for f in page["files"]}
    assert flags == {kept.name: False, yanked.name: "broken build"}
    status, _, body = bn.get("yanked-later", yanked.name)
    assert status == 200 and body == yanked.read_bytes()
    assert bn.bans("yanked-later") == []


def test_a_project_quarantined_before_the_first_fetch_is_banned_for_peers_to_see(bn):
    """The upstream quarantined the project before this mirror ever asked for it: its page
    says so at the first fetch, and the ban is published all the same (not only on a change),
    so that peers that hold its files stop serving them."""
    build_wheel(project_dir(bn.root, "born-quarantined"), "born-quarantined", "1.0")
    (bn.root / "born-quarantined" / ".status").write_text("quarantined\nmalware at upload")
    page = json.loads(http_request(f"{bn.hs.url}/simple/born-quarantined/", headers=JSON, timeout=60)[2])
    assert page["files"] == [] and page["project-status"]["status"] == "quarantined"
    ban = poll(lambda: bn.bans("born-quarantined"), what="the upstream's quarantine published")[0]
    assert (ban["kind"], ban["entity"], ban["source"]) == ("project", "born-quarantined", "upstream")
    assert "malware at upload" in ban["reason"]


def _verify(hs: SynapseServer, token: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`synapse-pypi verify` as a user runs it (the installed package, none of our settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_PYPI_") and k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", "verify", "--homeserver", hs.url, "--token", token,
         "-r", "requirements.txt"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=180,
    )


def test_an_overwrite_of_the_bots_ban_slot_lifts_nothing_on_any_read_and_is_restored(tmp_path):
    """A publisher (with the power to send policy events) writes an unban into the bot's ban
    slot. The live view keeps the ban; so does every fresh read of the room's state while the
    overwrite is its current state: a re-verify, `synapse-pypi verify`, and the mirror after a
    restart (each walks the slot back to the bot's own event). The bot then writes its ban
    back, after the restart and live."""
    root = tmp_path / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, tmp_path / "upstream").start()
    port = free_port()
    server = f"localhost:{port}"
    hs = SynapseServer(
        tmp_path / "hs", port=port,
        module_config={
            "upstream_url": upstream.url, "page_ttl": 0, "upstream_retry_interval": 0,
            "publishers": [f"@pub:{server}"],
            # While a download is in flight, the Matrix queue's ordinary jobs (the bot's
            # restore among them) wait for a quiet moment, up to this long: the test holds
            # one open so that the overwrite stays the slot's state while it reads the room.
            "matrix_max_delay": "10m",
        },
    )
    try:
        hs.start()
        admin, pub = Client.register(hs, "admin", admin=True), Client.register(hs, "pub")
        bot = f"@pypi-bot:{server}"
        wheel = build_wheel(project_dir(root, "overwritten-ban"), "overwritten-ban", "1.0")
        big = build_wheel(project_dir(root, "held-open"), "held-open", "1.0", payload_size=20_000_000)
        for project, path in (("overwritten-ban", wheel), ("held-open", big)):
            status, _, body = http_request(f"{hs.url}/simple/{project}/{path.name}", timeout=120)
            assert status == 200 and body == path.read_bytes()
        # The admin API answers once the queue has published the ban.
        admin.call("POST", "/_synapse/pypi/v1/projects/overwritten-ban/bans", {"target": wheel.name, "reason": "malware"})
        room = join_when_ready(admin, f"#pypi-overwritten-ban:{server}")
        pub.join(room)
        slot = policy_state_key("file", wheel.name, bot)
        assert admin.state_event(room, POLICY_TYPE, slot)["publisher"] == bot
        (tmp_path / "requirements.txt").write_text(f"overwritten-ban==1.0 --hash=sha256:{sha256_file(wheel)}\n")
        file_url = f"{hs.url}/simple/overwritten-ban/{wheel.name}"

        def refused() -> bool:
            status, _, body = http_request(file_url, timeout=60)
            return status == 404 and b"malware" in body

        key = generate_key()
        lift = build_policy(project="overwritten-ban", kind="file", entity=wheel.name, recommendation="unban",
                            reason="mine now", source="moderator", timestamp=1, publisher=pub.user_id,
                            signing_key=key)
        reader = slow_reader(f"{hs.url}/simple/held-open/{big.name}")
        try:
            pub.send_state(room, POLICY_TYPE, slot, lift)
            poll(lambda: [f for f in admin.call("GET", "/_synapse/pypi/v1/projects/overwritten-ban/flagged")["flagged"]
                          if f["kind"] == "impersonation"], what="the overwrite reported")
            # The restore waits in the queue: the overwrite is the slot's state.
            assert admin.state_event(room, POLICY_TYPE, slot)["publisher"] == pub.user_id
            assert refused()  # the live view
            admin.call("POST", "/_synapse/pypi/v1/projects/overwritten-ban/reverify", {})
            assert refused()  # a fresh read of the room
            result = _verify(hs, admin.token, tmp_path)
            banned = [line for line in result.stdout.splitlines() if line.startswith("banned")]
            assert result.returncode == 1 and len(banned) == 1 and "malware" in banned[0], result.stdout + result.stderr
            assert admin.state_event(room, POLICY_TYPE, slot)["publisher"] == pub.user_id
        finally:
            # Stopped with the download still held: the queued restore never ran.
            hs.stop()
            reader.close()
        hs.start()
        assert refused()  # the first read after the restart
        # (The bot also redacts the overwrite: the slot may show it emptied first.)
        poll(lambda: admin.state_event(room, POLICY_TYPE, slot).get("publisher") == bot, what="the bot's ban restored")
        assert admin.state_event(room, POLICY_TYPE, slot)["recommendation"] == "ban"
        # Overwritten again while the server runs: restored again, and never lifted meanwhile.
        pub.send_state(room, POLICY_TYPE, slot, lift)
        poll(lambda: admin.state_event(room, POLICY_TYPE, slot).get("publisher") == bot, what="restored live")
        assert refused()
    finally:
        hs.dispose()
        upstream.stop()
