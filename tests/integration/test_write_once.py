"""A file name is bound to its bytes once and for ever (issue 10, DESIGN.md §5), against real
Synapse processes, a real Kubo node, a real upstream turned malicious, real pip, and a real
second homeserver that forges what a hostile server can send."""

from __future__ import annotations

import json

import pytest
from harness.clients import describe, installed_version, make_venv, pip_install
from harness.dists import build_wheel, project_dir, sha256_file
from harness.hostile import forge_redaction
from harness.matrix import Client, MatrixError, join_when_ready, poll
from harness.synapse import free_port
from harness.upstream import http_request

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    build_content,
    generate_key,
    public_key_string,
    state_key_for,
)

pytestmark = pytest.mark.synapse


def kubo_provider(node) -> list:
    return [{"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}}]


def status_of(admin: Client, project: str, filename: str) -> dict:
    return admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")


def verdicts(admin: Client, project: str, filename: str) -> dict:
    return {a["publisher"]: a["verdict"] for a in status_of(admin, project, filename)["attestations"]}


def test_an_upstream_that_changes_an_attested_file_is_an_alarm_never_a_correction(
    synapse_factory, upstream_factory, kubo_factory, dists_dir, tmp_path
):
    path = build_wheel(project_dir(dists_dir, "rewritten"), "rewritten", "1.0", payload_size=50_000)
    good = sha256_file(path)
    upstream = upstream_factory()
    node = kubo_factory("node")
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "upstream_retry_interval": 0,
                                        "storage_providers": kubo_provider(node)})
    admin = Client.register(hs, "admin", admin=True)
    bot = f"@pypi-bot:{hs.server_name}"
    result = pip_install(make_venv(tmp_path / "before"), hs.index_url, "rewritten")
    assert result.returncode == 0, describe(result)

    def own() -> dict | None:
        mine = [a for a in status_of(admin, "rewritten", path.name)["attestations"] if a["publisher"] == bot]
        return mine[0] if mine and mine[0]["verdict"] == "valid" and mine[0]["cid"] else None

    attested = poll(own, what="the bot's attestation with its node's CID")
    room = join_when_ready(admin, f"#pypi-rewritten:{hs.server_name}")

    # The upstream replaces the file's bytes under the same name, and its page's hash with them.
    file_path = upstream.file_path("rewritten", path.name)
    tampered = upstream.fault(file_path, "replace", content=b"not the real wheel" * 4000)
    fetched = upstream.hit_count(file_path)
    admin.call("POST", "/_synapse/pypi/v1/projects/rewritten/reverify", {})
    for _ in range(2):
        status, _, body = http_request(f"{hs.url}/simple/rewritten/{path.name}", timeout=60)
        assert status == 200 and body == path.read_bytes()
    page = json.loads(http_request(f"{hs.url}/simple/rewritten/",
                                   headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60)[2])
    assert [f["hashes"] for f in page["files"]] == [{"sha256": good}]  # the attested hash, not the new one
    # One readable alarm naming the file and both hashes; recorded and counted.
    poll(lambda: [n for n in admin.notices(room) if "Upstream contradicts" in n], what="the alarm")
    alarms = [n for n in admin.notices(room) if "Upstream contradicts" in n]
    assert len(alarms) == 1 and path.name in alarms[0] and good in alarms[0] and tampered["sha256"] in alarms[0]
    flagged = admin.call("GET", "/_synapse/pypi/v1/projects/rewritten/flagged")
    assert [(f["kind"], f["claimed"], f["truth"]) for f in flagged["flagged"]] == [
        ("upstream_changed", tampered["sha256"], good)]
    assert admin.call("GET", "/_synapse/pypi/v1/trust")["alarm_count"] >= 1
    # The mirror's own attestation is untouched.
    assert own()["event_id"] == attested["event_id"]

    # The cache is lost: the attested bytes come back from IPFS by the attested CID.
    admin.call("DELETE", f"/_synapse/pypi/v1/projects/rewritten/files/{path.name}")
    status, _, body = http_request(f"{hs.url}/simple/rewritten/{path.name}", timeout=60)
    assert status == 200 and body == path.read_bytes()
    assert "fetched from kubo" in hs.log_text()
    after = make_venv(tmp_path / "after")
    result = pip_install(after, hs.index_url, "rewritten")
    assert result.returncode == 0 and installed_version(after, "rewritten") == "1.0", describe(result)

    # ...and with IPFS gone too, the file fails closed with a clear error.
    node.stop()
    admin.call("DELETE", f"/_synapse/pypi/v1/projects/rewritten/files/{path.name}")
    status, _, body = http_request(f"{hs.url}/simple/rewritten/{path.name}", timeout=60)
    assert status == 502 and b"the upstream now publishes other bytes" in body and good.encode() in body
    # The tampered bytes were never fetched.
    assert upstream.hit_count(file_path) == fetched


def test_redactions_without_the_power_change_nothing(synapse_factory, upstream_factory, dists_dir):
    """A power-0 user's redactions of the bot's and a pinned maintainer's attestations:
    refused by Synapse locally; sent as a hostile homeserver would, either withheld by
    Synapse or (from the maintainer's own server) applied by Synapse and ignored by the
    module. Online, offline, and after a restart."""
    path = build_wheel(project_dir(dists_dir, "guarded"), "guarded", "1.0")
    upstream = upstream_factory()
    fa, fe = free_port(), free_port()
    name_a, name_e = f"localhost:{fa}", f"localhost:{fe}"
    maintainer_key = generate_key()
    maintainer = f"@maint:{name_e}"
    a = synapse_factory(
        module_config={
            "upstream_url": upstream.url, "upstream_retry_interval": 0,
            "publishers": [maintainer],
            "maintainer_keys": {"guarded": {maintainer: [public_key_string(maintainer_key)]}},
        },
        federation_port=fa, federation_names=[name_e],
    )
    e = synapse_factory(federation_port=fe, federation_names=[name_a])
    admin = Client.register(a, "admin", admin=True)
    nobody = Client.register(a, "nobody")
    maint, eve = Client.register(e, "maint"), Client.register(e, "eve")
    bot = f"@pypi-bot:{name_a}"

    assert http_request(f"{a.url}/simple/guarded/{path.name}", timeout=60)[0] == 200
    room = join_when_ready(admin, f"#pypi-guarded:{name_a}")
    for client in (nobody, maint, eve):
        poll(lambda c=client: _joined(c, room, name_a), what=f"{client.user_id} joined")
    content = build_content(
        project="guarded", version="1.0", filename=path.name, size=path.stat().st_size, sha256=sha256_file(path),
        cid=None, upstream_url=None, requires_python=None, timestamp=1, publisher=maintainer,
        signing_key=maintainer_key,
    )
    maint.send_state(room, ATTESTATION_TYPE, state_key_for(path.name, maintainer), content)
    poll(lambda: verdicts(admin, "guarded", path.name) == {bot: "valid", maintainer: "valid"}, what="both vouch")
    ids = {a["publisher"]: a["event_id"] for a in status_of(admin, "guarded", path.name)["attestations"]}

    # Locally, Synapse refuses a power-0 user's redactions.
    for target in ids.values():
        with pytest.raises(MatrixError) as err:
            nobody.redact(room, target, "I don't like it")
        assert err.value.status == 403

    # From a hostile server: of the bot's event (another server's) Synapse withholds it; of the
    # maintainer's (the hostile server's own user) Synapse applies it whatever eve's power.
    forged_bot = forge_redaction(e, a, admin.token, room, eve.user_id, ids[bot])
    forged_maint = forge_redaction(e, a, admin.token, room, eve.user_id, ids[maintainer])
    poll(lambda: forged_bot in a.log_text() and forged_maint in a.log_text(), what="A processed the forgeries")
    poll(lambda: admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, maintainer)) == {},
         what="Synapse applied the same-server redaction")
    assert admin.state_event(room, ATTESTATION_TYPE, state_key_for(path.name, bot)) != {}
    poll(lambda: "Synapse did not apply" in a.log_text() or "may not redact" in json.dumps(
        status_of(admin, "guarded", path.name)), what="the module judged the redaction")

    def unchanged() -> None:
        assert verdicts(admin, "guarded", path.name) == {bot: "valid", maintainer: "valid"}
        status, _, body = http_request(f"{a.url}/simple/guarded/{path.name}", timeout=60)
        assert status == 200 and body == path.read_bytes()

    unchanged()
    upstream.stop()
    try:
        admin.call("POST", "/_synapse/pypi/v1/projects/guarded/reverify", {})
        unchanged()
    finally:
        upstream.start()
    # After a restart the room is read again: the maintainer's content, which Synapse dropped,
    # is the copy the module kept.
    a.restart()
    unchanged()
    reason = [x["reason"] for x in status_of(admin, "guarded", path.name)["attestations"]
              if x["publisher"] == maintainer][0]
    assert "may not redact it, is ignored" in reason


def _joined(client: Client, room: str, via: str) -> bool:
    try:
        client.call("POST", f"/_matrix/client/v3/join/{room}?server_name={via}", {})
        return True
    except MatrixError as e:
        if e.status in (403, 404, 502):
            return False
        raise
