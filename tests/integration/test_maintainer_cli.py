"""`synapse-pypi keygen`, `attest` and `verify`: the real console script against a real
Synapse with the module, an upstream, and users acting through the client-server API."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.dists import build_sdist, build_wheel, project_dir, sha256_file, wheel_filename
from harness.matrix import Client, join_when_ready, poll
from harness.synapse import SynapseServer, free_port
from harness.upstream import UpstreamServer, http_request
from signedjson.sign import verify_signed_json

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    load_key,
    parse_public_key,
    public_key_string,
    state_key_for,
)

pytestmark = pytest.mark.synapse


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script as a user runs it, with none of the caller's SYNAPSE_PYPI_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_PYPI_")}
    base.pop("PYTHONPATH", None)  # the installed package, not the checkout
    return subprocess.run(
        [sys.executable, "-m", "synapse_pypi.cli", *args],
        cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=180,
    )


@attrs.define
class Maint:
    hs: SynapseServer
    upstream: UpstreamServer
    root: Path
    admin: Client
    maintainer: Client
    nopower: Client
    reader: Client
    other: Client  # another publisher, with the power to send attestations

    def alias(self, project: str) -> str:
        return f"#pypi-{project}:{self.hs.server_name}"

    def release(self, project: str, dist: Path, sdist: bool = True, version: str = "1.0") -> list[Path]:
        """Build a release on the upstream and copy it into `dist` (as `python -m build` would)."""
        built = [build_wheel(project_dir(self.root, project), project, version)]
        if sdist:
            built.append(build_sdist(project_dir(self.root, project), project, version))
        dist.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy(p, dist / p.name)) for p in built]

    def serve(self, project: str) -> str:
        """Fetch the project's page through the homeserver and have its room made (the admin
        API: a room comes with the first file served, and a maintainer may attest before);
        return the room once joinable."""
        assert http_request(f"{self.hs.url}/simple/{project}/", timeout=60)[0] == 200
        self.admin.call("POST", f"/_synapse/pypi/v1/projects/{project}/room", {})
        room_id = join_when_ready(self.admin, self.alias(project))
        return room_id

    def state(self, room_id: str) -> dict:
        return {(e["type"], e.get("state_key")): e for e in self.admin.state(room_id)}

    def verdicts(self, project: str, filename: str) -> dict:
        status = self.admin.call("GET", f"/_synapse/pypi/v1/projects/{project}/files/{filename}")
        return {a["publisher"]: a["verdict"] for a in status["attestations"]}

    def attest(self, *args: str, cwd: Path, client: Client | None = None) -> subprocess.CompletedProcess[str]:
        client = client or self.maintainer
        return run_cli("attest", "--homeserver", self.hs.url, "--token", client.token, *args, cwd=cwd)

    def verify(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run_cli("verify", "--homeserver", self.hs.url, "--token", self.reader.token, *args, cwd=cwd)


@pytest.fixture(scope="module")
def mt(tmp_path_factory) -> Iterator[Maint]:
    base = tmp_path_factory.mktemp("maintainer-cli")
    root = base / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, base / "upstream").start()
    port = free_port()
    server = f"localhost:{port}"
    hs = SynapseServer(
        base / "hs",
        port=port,
        module_config={
            "upstream_url": upstream.url,
            "upstream_timeout": "3s",
            "publishers": [f"@maint:{server}", f"@other:{server}"],
        },
    )
    try:
        hs.start()
        yield Maint(
            hs, upstream, root,
            admin=Client.register(hs, "admin", admin=True),
            maintainer=Client.register(hs, "maint"),
            nopower=Client.register(hs, "nopower"),
            reader=Client.register(hs, "reader"),
            other=Client.register(hs, "other"),
        )
    finally:
        hs.dispose()
        upstream.stop()


def _keygen(cwd: Path, *args: str) -> str:
    result = run_cli("keygen", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --- keygen ----------------------------------------------------------------------------------


def test_keygen_writes_a_loadable_key_and_prints_its_public_key(tmp_path):
    printed = _keygen(tmp_path)
    path = tmp_path / "synapse-pypi-signing.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_key(str(path))
    assert printed == public_key_string(key)  # the form trusted_keys takes
    kid, verify_key = parse_public_key(printed)
    assert kid == f"ed25519:{key.version}" and verify_key.encode() == key.verify_key.encode()

    again = run_cli("keygen", cwd=tmp_path)
    assert again.returncode == 1 and "already exists; use --force" in again.stderr
    assert public_key_string(load_key(str(path))) == printed

    replaced = _keygen(tmp_path, "--force")
    assert replaced != printed and public_key_string(load_key(str(path))) == replaced

    elsewhere = _keygen(tmp_path, "--output", str(tmp_path / "other.key"))
    assert public_key_string(load_key(str(tmp_path / "other.key"))) == elsewhere


# --- attest ----------------------------------------------------------------------------------


def test_attest_publishes_attestations_that_verify_and_the_module_accepts(mt, tmp_path):
    files = mt.release("signed-pkg", tmp_path / "dist")
    room = mt.serve("signed-pkg")
    printed = _keygen(tmp_path)
    kid, verify_key = parse_public_key(printed)
    # Homeserver and token from the environment this time; the key from the default path.
    result = run_cli(
        "attest", "--publish-key", "--progress", *(f"dist/{p.name}" for p in files),
        cwd=tmp_path, env={"SYNAPSE_PYPI_HOMESERVER": mt.hs.url, "SYNAPSE_PYPI_TOKEN": mt.maintainer.token},
    )
    assert result.returncode == 0, result.stderr
    alias = mt.alias("signed-pkg")
    lines = result.stdout.splitlines()
    assert lines[0] == f"published key {kid} for {mt.maintainer.user_id} in {alias}"
    assert lines[1:] == [f"attested {p.name} sha256 {sha256_file(p)} in {alias}" for p in files]
    # The progress bar was drawn on stderr, and finished. (Text mode reads its "\r" as a new line.)
    assert "[" + "#" * 30 + "] 100%" in result.stderr and files[-1].name in result.stderr

    state = mt.state(room)
    me = mt.maintainer.user_id
    assert state[(KEY_TYPE, me)]["content"] == {"keys": {kid: printed.split()[1]}}
    for path in files:
        event = state[(ATTESTATION_TYPE, state_key_for(path.name, me))]
        content = event["content"]
        assert event["sender"] == me
        assert content["hashes"] == {"sha256": sha256_file(path)} and content["size"] == path.stat().st_size
        assert (content["project"], content["version"], content["filename"]) == ("signed-pkg", "1.0", path.name)
        verify_signed_json(content, me, verify_key)
        # The module reads them as valid too (the key counts: published at publisher power).
        poll(lambda p=path: mt.verdicts("signed-pkg", p.name).get(me) == "valid", what=f"{path.name} valid")


def test_attest_without_publish_key_says_the_key_is_not_in_the_room(mt, tmp_path):
    (wheel,) = mt.release("quiet-pkg", tmp_path / "dist", sdist=False)
    room = mt.serve("quiet-pkg")
    _keygen(tmp_path, "--output", "my.key")
    result = mt.attest("--key", "my.key", "--no-progress", f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is not published in" in result.stderr and "--publish-key" in result.stderr
    assert "%" not in result.stderr  # --no-progress
    assert result.stdout.splitlines() == [f"attested {wheel.name} sha256 {sha256_file(wheel)} in {mt.alias('quiet-pkg')}"]
    assert (KEY_TYPE, mt.maintainer.user_id) not in mt.state(room)


@pytest.mark.parametrize(
    "case", ["bad-token", "missing-room", "no-power", "invalid-name", "missing-key", "missing-file", "no-homeserver"]
)
def test_attest_errors(mt, tmp_path, case):
    project = f"err-{case}"
    dist = tmp_path / "dist"
    files = mt.release(project, dist, sdist=False)
    _keygen(tmp_path)
    args = [f"dist/{files[0].name}"]
    client = mt.maintainer
    room = None
    if case not in ("missing-room",):
        room = mt.serve(project)
    if case == "bad-token":
        client = Client(mt.hs, mt.maintainer.user_id, "not-a-token")
    elif case == "no-power":
        client = mt.nopower
    elif case == "invalid-name":
        (dist / "README.md").write_text("not a distribution")
        args = ["dist/README.md", *args]
    elif case == "missing-key":
        args = ["--key", "nowhere.key", *args]
    elif case == "missing-file":
        args = [f"dist/{wheel_filename(project, '9.0')}"]

    if case == "no-homeserver":
        result = run_cli("attest", "--token", client.token, *args, cwd=tmp_path)
    elif case == "invalid-name":
        # Refused before any request: the homeserver given is a dead port.
        result = run_cli("attest", "--homeserver", "http://127.0.0.1:9", "--token", "x", *args, cwd=tmp_path)
    else:
        result = mt.attest(*args, cwd=tmp_path, client=client)

    expected = {
        "bad-token": (1, f"the access token was refused by {mt.hs.url}"),
        "missing-room": (
            1,
            f"no room {mt.alias(project)}: the mirror has not served {project} yet (or uses another --room-prefix)",
        ),
        "no-power": (
            1,
            f"you lack the power level to attest in {mt.alias(project)} (ask a room admin for publisher power)",
        ),
        "invalid-name": (1, "dist/README.md: not a wheel or sdist file name"),
        "missing-key": (1, "nowhere.key: no such key file (make one with `synapse-pypi keygen`"),
        "missing-file": (1, f"dist/{wheel_filename(project, '9.0')}: no such file"),
        "no-homeserver": (2, "no homeserver: give --homeserver URL or set SYNAPSE_PYPI_HOMESERVER"),
    }[case]
    assert (result.returncode, result.stdout) == (expected[0], ""), result.stderr
    assert expected[1] in result.stderr
    if expected[0] == 1:
        (line,) = result.stderr.splitlines()  # one line, no traceback
        assert line.startswith("synapse-pypi attest: ")
    if room is not None:
        assert not [k for k in mt.state(room) if k[0] == ATTESTATION_TYPE], "nothing may be published"


def test_another_room_prefix(mt, tmp_path):
    (wheel,) = mt.release("prefixed-pkg", tmp_path / "dist", sdist=False)
    mt.serve("prefixed-pkg")
    _keygen(tmp_path)
    result = mt.attest("--room-prefix", "pkg-", f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"no room #pkg-prefixed-pkg:{mt.hs.server_name}" in result.stderr
    # The server name from the option rather than from the user id: the same room.
    result = mt.attest("--server-name", mt.hs.server_name, "--publish-key", f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# --- verify ----------------------------------------------------------------------------------


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[-1]


def _status_of(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    """(status, subject, sha256) per report line."""
    found = []
    for line in result.stdout.splitlines()[:-1]:
        m = re.match(r"^(verified|unknown|contradicted)\s+(\S+) sha256:([0-9a-f]{64})  ", line)
        if m:
            found.append(m.groups())
    return found


def test_verify_files(mt, tmp_path):
    wheel, sdist = mt.release("checked-pkg", tmp_path / "dist")
    mt.serve("checked-pkg")
    _keygen(tmp_path)
    assert mt.attest("--publish-key", f"dist/{wheel.name}", cwd=tmp_path).returncode == 0
    # A file the mirror served is vouched for by its bot, whose key is in the room.
    (served,) = mt.release("served-pkg", tmp_path / "served", sdist=False)
    mt.serve("served-pkg")
    assert http_request(f"{mt.hs.url}/simple/served-pkg/{served.name}", timeout=60)[0] == 200
    bot = f"@pypi-bot:{mt.hs.server_name}"
    poll(lambda: mt.verdicts("served-pkg", served.name).get(bot) == "valid", what="bot attestation")
    # A file of a project the mirror never served: no room at all.
    stray = tmp_path / "stray" / wheel_filename("never-served", "1.0")
    stray.parent.mkdir()
    stray.write_bytes(b"stray")

    result = mt.verify(f"dist/{wheel.name}", f"dist/{sdist.name}", f"served/{served.name}", f"stray/{stray.name}",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _status_of(result) == [
        ("verified", wheel.name, sha256_file(wheel)),
        ("unknown", sdist.name, sha256_file(sdist)),
        ("verified", served.name, sha256_file(served)),
        ("unknown", stray.name, sha256_file(stray)),
    ]
    assert f"attested by {mt.maintainer.user_id}" in result.stdout and f"attested by {bot}" in result.stdout
    assert f"no room #pypi-never-served:{mt.hs.server_name}" in result.stdout
    assert _summary(result) == "2 verified, 2 unknown, 0 contradicted, 0 banned"

    # Not the bytes the maintainer attested: contradicted, exit status 1.
    tampered = tmp_path / "tampered" / wheel.name
    tampered.parent.mkdir()
    tampered.write_bytes(wheel.read_bytes() + b"\0")
    result = mt.verify(f"tampered/{wheel.name}", f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert _status_of(result) == [
        ("contradicted", wheel.name, sha256_file(tampered)),
        ("verified", wheel.name, sha256_file(wheel)),
    ]
    assert f"{mt.maintainer.user_id} attested {sha256_file(wheel)}" in result.stdout
    assert _summary(result) == "1 verified, 0 unknown, 1 contradicted, 0 banned"


def test_verify_trusts_pinned_keys_not_only_room_keys(mt, tmp_path):
    (wheel,) = mt.release("pinned-only-pkg", tmp_path / "dist", sdist=False)
    mt.serve("pinned-only-pkg")
    printed = _keygen(tmp_path)
    assert mt.attest(f"dist/{wheel.name}", cwd=tmp_path).returncode == 0  # key not published
    result = mt.verify(f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0 and _status_of(result)[0][0] == "unknown", result.stdout
    result = mt.verify("--trusted-key", f"{mt.maintainer.user_id} {printed}", f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0 and _status_of(result)[0][0] == "verified", result.stdout
    bad = mt.verify("--trusted-key", "not a key", f"dist/{wheel.name}", cwd=tmp_path)
    assert bad.returncode == 2 and "--trusted-key" in bad.stderr


def test_verify_a_hash_pinned_requirements_file(mt, tmp_path):
    locked_whl, locked_sdist = mt.release("locked-pkg", tmp_path / "dist")
    (other_whl,) = mt.release("other-pkg", tmp_path / "dist", sdist=False)
    for project in ("locked-pkg", "other-pkg"):
        mt.serve(project)
    _keygen(tmp_path)
    # Only the wheels are attested; the lock file pins the sdist too, as lock tools do.
    assert mt.attest("--publish-key", f"dist/{locked_whl.name}", f"dist/{other_whl.name}", cwd=tmp_path).returncode == 0
    wrong = "ab" * 32
    good = f"""\
#
# This file is autogenerated by pip-compile with Python 3.12
#    pip-compile --generate-hashes requirements.in
#
--index-url {mt.hs.index_url}

locked-pkg==1.0 \\
    --hash=sha256:{sha256_file(locked_whl)} \\
    --hash=sha256:{sha256_file(locked_sdist)}
    # via -r requirements.in
never-served-pkg==2.0 --hash=sha256:{"cd" * 32}
unhashed-pkg==1.0
"""
    (tmp_path / "requirements.txt").write_text(good)
    result = mt.verify("-r", "requirements.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _status_of(result) == [
        ("verified", "locked-pkg==1.0", sha256_file(locked_whl)),
        ("unknown", "locked-pkg==1.0", sha256_file(locked_sdist)),
        ("unknown", "never-served-pkg==2.0", "cd" * 32),
    ]
    assert locked_whl.name in result.stdout and "skipped      unhashed-pkg==1.0" in result.stdout
    assert _summary(result) == "1 verified, 2 unknown, 0 contradicted, 0 banned"

    # A lock file whose pins for other-pkg 1.0 match nothing attested for that release.
    (tmp_path / "tampered.txt").write_text(f"Other_Pkg==1.0 --hash=sha256:{wrong}\n")
    result = mt.verify("-r", "requirements.txt", "-r", "tampered.txt", f"dist/{other_whl.name}", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert _status_of(result)[0] == ("verified", other_whl.name, sha256_file(other_whl))
    assert _status_of(result)[-1] == ("contradicted", "other-pkg==1.0", wrong)
    assert f"{other_whl.name} is {sha256_file(other_whl)}" in result.stdout
    assert _summary(result) == "2 verified, 2 unknown, 1 contradicted, 0 banned"


def test_verify_errors(mt, tmp_path):
    (tmp_path / "bad.txt").write_text("alpha==1.0 --hash=sha256:xyz\n")
    result = mt.verify("-r", "bad.txt", cwd=tmp_path)
    assert result.returncode == 1 and "bad.txt:1: sha256 'xyz' is not 64 hex characters" in result.stderr
    result = mt.verify("-r", "missing.txt", cwd=tmp_path)
    assert result.returncode == 1 and "missing.txt: no such file" in result.stderr
    result = run_cli("verify", "--homeserver", mt.hs.url, "--token", "nope", "-r", "bad.txt", cwd=tmp_path)
    assert result.returncode == 1  # the file is read first
    (tmp_path / "ok.txt").write_text(f"alpha==1.0 --hash=sha256:{'1' * 64}\n")
    result = run_cli("verify", "--homeserver", mt.hs.url, "--token", "nope", "-r", "ok.txt", cwd=tmp_path)
    assert result.returncode == 1 and f"the access token was refused by {mt.hs.url}" in result.stderr
    result = mt.verify(cwd=tmp_path)
    assert result.returncode == 2 and "nothing to verify" in result.stderr


def test_verify_finds_the_maintainers_vouch_under_an_overwrite(mt, tmp_path):
    (wheel,) = mt.release("overwritten-pkg", tmp_path / "dist", sdist=False)
    room = mt.serve("overwritten-pkg")
    _keygen(tmp_path)
    assert mt.attest("--publish-key", f"dist/{wheel.name}", cwd=tmp_path).returncode == 0
    # Another publisher writes into the maintainer's slot (Matrix lets it); the mirror
    # reports and redacts that event, which stays the slot's current state.
    mt.other.join(room)
    slot = state_key_for(wheel.name, mt.maintainer.user_id)
    mt.other.send_state(room, ATTESTATION_TYPE, slot, {"schema": 1, "note": "not yours"})
    poll(lambda: mt.admin.state_event(room, ATTESTATION_TYPE, slot) == {}, what="the overwrite redacted")
    result = mt.verify(f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _status_of(result) == [("verified", wheel.name, sha256_file(wheel))]
    assert f"attested by {mt.maintainer.user_id}" in result.stdout


def test_verify_and_the_mirror_judge_a_room_alike(mt, tmp_path):
    """One fold of room state: what `synapse-pypi verify` reads from a room is what the mirror
    relies on, record by record, over every kind of event a room can hold."""
    from synapse_pypi._maintainer import Homeserver, fold_room, owners_events
    from synapse_pypi.trust import build_content, generate_key, key_id, verify_key_base64

    wheel, sdist = mt.release("alike-pkg", tmp_path / "dist")
    room = mt.serve("alike-pkg")
    assert http_request(f"{mt.hs.url}/simple/alike-pkg/{wheel.name}", timeout=60)[0] == 200
    _keygen(tmp_path)
    assert mt.attest("--publish-key", f"dist/{sdist.name}", cwd=tmp_path).returncode == 0
    other_key = generate_key()

    def content(filename: str, sha: str, project: str = "alike-pkg", key=other_key, publisher=None) -> dict:
        return build_content(project=project, version="1.0", filename=filename, size=1, sha256=sha, cid=None,
                             upstream_url=None, requires_python=None, timestamp=1,
                             publisher=publisher or mt.other.user_id, signing_key=key)

    mt.other.join(room)
    # Before its key is published: unknown key. Then valid. Into the maintainer's slot:
    # impersonation. Another project's. And one redacted by the bot as invalid.
    mt.other.send_state(room, ATTESTATION_TYPE, state_key_for(wheel.name, mt.other.user_id),
                        content(wheel.name, sha256_file(wheel)))
    mt.other.send_state(room, KEY_TYPE, mt.other.user_id, {"keys": {key_id(other_key): verify_key_base64(other_key)}})
    mt.other.send_state(room, ATTESTATION_TYPE, state_key_for(sdist.name, mt.maintainer.user_id),
                        content(sdist.name, "ab" * 32))
    mt.other.send_state(room, ATTESTATION_TYPE, state_key_for("alike_pkg-9.0.tar.gz", mt.other.user_id),
                        content("alike_pkg-9.0.tar.gz", "cd" * 32, project="beta"))
    mt.other.send_state(room, ATTESTATION_TYPE, state_key_for("alike_pkg-8.0.tar.gz", mt.other.user_id),
                        {"schema": 1, "filename": "alike_pkg-8.0.tar.gz"})
    # Signed with a key nobody published: reported, not redacted (it may be published later).
    mt.other.send_state(room, ATTESTATION_TYPE, state_key_for("alike_pkg-7.0.tar.gz", mt.other.user_id),
                        content("alike_pkg-7.0.tar.gz", "ef" * 32, key=generate_key()))
    bot = f"@pypi-bot:{mt.hs.server_name}"
    poll(lambda: mt.verdicts("alike-pkg", wheel.name).get(bot) == "valid"
         and mt.verdicts("alike-pkg", wheel.name).get(mt.other.user_id) == "valid", what="wheel vouches")
    poll(lambda: mt.verdicts("alike-pkg", "alike_pkg-8.0.tar.gz").get(mt.other.user_id) == "redacted",
         what="the malformed one redacted")
    poll(lambda: mt.verdicts("alike-pkg", "alike_pkg-7.0.tar.gz").get(mt.other.user_id) == "unknown_key",
         what="the unknown key seen")

    def module_view() -> set:
        out = set()
        for filename in (wheel.name, sdist.name, "alike_pkg-9.0.tar.gz", "alike_pkg-8.0.tar.gz",
                         "alike_pkg-7.0.tar.gz"):
            status = mt.admin.call("GET", f"/_synapse/pypi/v1/projects/alike-pkg/files/{filename}")
            out |= {(a["event_id"], a["verdict"]) for a in status["attestations"]}
        return out

    homeserver = Homeserver(mt.hs.url, mt.admin.token)
    view = fold_room(owners_events(homeserver, room, homeserver.state(room)), "alike-pkg", {}, room)
    cli_view = {(r.event_id, r.verdict.name.lower()) for r in view.records() + view.intruders()}
    assert cli_view == module_view()
    assert {v for _, v in cli_view} == {"valid", "redacted", "unknown_key"} and len(cli_view) == 7


def test_verify_refuses_a_room_the_mirrors_bot_did_not_make(mt, tmp_path):
    (wheel,) = mt.release("squat-pkg", tmp_path / "dist", sdist=False)
    squatter = Client.register(mt.hs, "squatter2")
    squatter.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", "room_alias_name": "pypi-squat-pkg"})
    result = mt.verify(f"dist/{wheel.name}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _status_of(result) == [("unknown", wheel.name, sha256_file(wheel))]
    assert f"made by {squatter.user_id}, not by the mirror's bot" in result.stdout


def test_verify_reports_banned_pins_with_the_reason(mt, tmp_path):
    wheel, sdist = mt.release("banned-pins", tmp_path / "dist")
    mt.serve("banned-pins")
    for path in (wheel, sdist):
        assert http_request(f"{mt.hs.url}/simple/banned-pins/{path.name}", timeout=60)[0] == 200
    bot = f"@pypi-bot:{mt.hs.server_name}"
    poll(lambda: mt.verdicts("banned-pins", wheel.name).get(bot) == "valid", what="attested")
    result = mt.admin.call("POST", "/_synapse/pypi/v1/projects/banned-pins/bans",
                           {"target": "1.0", "reason": "compromised release"})
    assert [(b["kind"], b["entity"], b["source"]) for b in result["bans"]] == [("version", "1.0", "admin")]
    (tmp_path / "requirements.txt").write_text(
        f"banned-pins==1.0 --hash=sha256:{sha256_file(wheel)} --hash=sha256:{sha256_file(sdist)}\n")
    (tmp_path / "pylock.toml").write_text(
        'lock-version = "1.0"\ncreated-by = "test"\n[[packages]]\nname = "banned-pins"\nversion = "1.0"\n'
        f'[[packages.wheels]]\nname = "{wheel.name}"\nhashes = {{sha256 = "{sha256_file(wheel)}"}}\n'
        f'[packages.sdist]\nname = "{sdist.name}"\nhashes = {{sha256 = "{sha256_file(sdist)}"}}\n')
    for args in (("-r", "requirements.txt"), ("--pylock", "pylock.toml")):
        result = mt.verify(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("banned")]
        assert len(lines) == 2 and all("compromised release" in line and bot in line for line in lines)
    mt.admin.call("POST", "/_synapse/pypi/v1/projects/banned-pins/bans", {"target": "1.0", "unban": True})
    result = mt.verify("--pylock", "pylock.toml", cwd=tmp_path)
    assert result.returncode == 0 and not [line for line in result.stdout.splitlines() if line.startswith("banned")]
    assert result.stdout.splitlines()[-1] == "2 verified, 0 unknown, 0 contradicted, 0 banned"

