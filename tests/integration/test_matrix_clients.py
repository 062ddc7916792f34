"""A moderator's loop from a real Matrix client: matrix-commander (installed from the package
index into a throwaway venv) logs in to a homeserver whose server name has no port, reads a
package room, redacts the bot's attestation, and the module reacts and says so in the room."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness.dists import build_wheel, project_dir
from harness.matrix import Client, join_when_ready, poll
from harness.synapse import SynapseServer
from harness.upstream import http_request

pytestmark = pytest.mark.synapse

MATRIX_COMMANDER = "matrix-commander==8.0.6"
CACHE = Path(os.environ.get("SYNAPSE_PYPI_CLIENT_CACHE", Path.home() / ".cache" / "synapse-pypi-tests"))


@pytest.fixture(scope="session")
def matrix_commander() -> Path:
    """The console script of a venv with matrix-commander, made once and kept."""
    venv = CACHE / MATRIX_COMMANDER.replace("==", "-")
    script = venv / "bin" / "matrix-commander"
    if not script.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", MATRIX_COMMANDER],
            check=True, timeout=900, env={**env, "PIP_CONFIG_FILE": os.devnull},
        )
    return script


def test_a_moderator_reads_and_redacts_with_matrix_commander(tmp_path, upstream_factory, dists_dir, matrix_commander):
    path = build_wheel(project_dir(dists_dir, "moderated"), "moderated", "1.0")
    upstream = upstream_factory()
    # A server name without a port, as `synapse-pypi run` uses: matrix-commander wants exactly
    # one ':' in an alias.
    hs = SynapseServer(
        tmp_path / "hs",
        module_config={"upstream_url": upstream.url, "moderators": ["@mod:localhost"]},
        extra_config={"server_name": "localhost"},
    )
    try:
        hs.start()
        admin = Client.register(hs, "admin", admin=True)
        hs.register_user("mod", password="moderator password")
        assert http_request(f"{hs.url}/simple/moderated/{path.name}", timeout=60)[0] == 200
        alias = "#pypi-moderated:localhost"
        room = join_when_ready(admin, alias)
        bot = "@pypi-bot:localhost"

        def status() -> dict:
            return admin.call("GET", f"/_synapse/pypi/v1/projects/moderated/files/{path.name}")

        attested = poll(lambda: [a for a in status()["attestations"] if a["publisher"] == bot
                                 and a["verdict"] == "valid"], what="the bot's attestation")[0]

        def mc(*args: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run(
                [str(matrix_commander), "-c", str(tmp_path / "credentials.json"), "-s", str(tmp_path / "store"),
                 *args],
                capture_output=True, text=True, timeout=120, cwd=tmp_path,
            )
            assert result.returncode == 0, f"matrix-commander {args}: {result.stdout}\n{result.stderr}"
            return result

        mc("--login", "password", "--homeserver", hs.url, "--user-login", "@mod:localhost",
           "--password", "moderator password", "--device", "moderation", "--room-default", alias)
        mc("--room-join", alias)
        state = mc("-o", "JSON", "--room-get-state", alias).stdout
        events = [e for line in state.splitlines() if line.strip().startswith(("[", "{"))
                  for e in _events(json.loads(line))]
        ours = [e for e in events if e.get("type") == "dev.synapse-pypi.attestation"
                and e.get("state_key") == f"{path.name}/{bot}"]
        assert [e["event_id"] for e in ours] == [attested["event_id"]]
        assert ours[0]["content"]["hashes"]["sha256"] == attested["sha256"]

        mc("--room-redact", alias, attested["event_id"], "checked by a person")
        poll(lambda: any(a["event_id"] == attested["event_id"] and a["verdict"] == "redacted"
                         for a in status()["attestations"]), what="the module sees the redaction")
        notice = poll(lambda: [n for n in admin.notices(room) if n.startswith("@mod:localhost redacted")],
                      what="the bot says what the redaction changed")[0]
        assert path.name in notice and bot in notice
        # People in the room can read what was attested, not only machines.
        assert poll(lambda: [n for n in admin.notices(room) if "verified and attested 1 file" in n],
                    what="a readable summary")
    finally:
        hs.dispose()


def _events(value: object) -> list:
    """State events from matrix-commander's JSON, whatever its nesting."""
    if isinstance(value, dict):
        if "event_id" in value and "type" in value:
            return [value]
        return [e for v in value.values() for e in _events(v)]
    if isinstance(value, list):
        return [e for v in value for e in _events(v)]
    return []
