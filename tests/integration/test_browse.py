"""The pages for people (/pypi/ and /pypi/<project>/), loaded in a real headless Chromium as a
person would open them: files, attestations with publisher, verdict and hash, and alarms."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from harness.dists import build_wheel, project_dir, sha256_file
from harness.matrix import Client, join_when_ready, poll
from harness.synapse import free_port
from harness.upstream import http_request

from synapse_pypi.trust import ATTESTATION_TYPE

pytestmark = pytest.mark.synapse

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def rendered(url: str, profile: Path) -> str:
    """The DOM Chromium builds for `url`, headless, on a profile of its own, no network calls
    of its own (the flags this machine needs; see the environment notes)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Text(HTMLParser):
    """The text a person sees, and the elements the page holds."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def visible(dom: str) -> tuple[str, list[str]]:
    parser = _Text()
    parser.feed(dom)
    return re.sub(r"\s+", " ", " ".join(parser.text)), parser.tags


def test_a_person_sees_files_attestations_and_alarms(synapse_factory, upstream_factory, dists_dir, tmp_path):
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (.ci/run installs it)"
    path = build_wheel(project_dir(dists_dir, "shown"), "shown", "1.0")
    good = sha256_file(path)
    upstream = upstream_factory()
    port = free_port()
    hs = synapse_factory(port=port, module_config={"upstream_url": upstream.url, "upstream_retry_interval": 0,
                                                   "publishers": [f"@pub:localhost:{port}"]})
    admin = Client.register(hs, "admin", admin=True)
    publisher = Client.register(hs, "pub")
    bot = f"@pypi-bot:{hs.server_name}"
    assert http_request(f"{hs.url}/simple/shown/{path.name}", timeout=60)[0] == 200
    room = join_when_ready(admin, f"#pypi-shown:{hs.server_name}")
    poll(lambda: any(a["publisher"] == bot and a["verdict"] == "valid" for a in admin.call(
        "GET", f"/_synapse/pypi/v1/projects/shown/files/{path.name}")["attestations"]), what="attested")
    # The upstream changes the file; and someone writes markup into a slot of the room.
    tampered = upstream.fault(upstream.file_path("shown", path.name), "replace", content=b"tampered" * 500)
    admin.call("POST", "/_synapse/pypi/v1/projects/shown/reverify", {})
    assert http_request(f"{hs.url}/simple/shown/{path.name}", timeout=60)[0] == 200
    poll(lambda: admin.call("GET", "/_synapse/pypi/v1/projects/shown/flagged")["flagged"], what="the alarm")
    publisher.join(room)
    markup = '<img src=x onerror="alert(1)">.whl'
    publisher.send_state(room, ATTESTATION_TYPE, f"{markup}/{publisher.user_id}", {"schema": "<script>x</script>"})
    poll(lambda: [f for f in admin.call("GET", "/_synapse/pypi/v1/projects/shown/flagged")["flagged"]
                  if f["filename"] == markup], what="the markup reported")

    text, tags = visible(rendered(f"{hs.url}/pypi/shown/", tmp_path / "profile"))
    assert path.name in text and bot in text and "valid" in text and good in text
    assert "upstream_changed" in text and tampered["sha256"] in text
    assert "served with sha256" in text and f"#pypi-shown:{hs.server_name}" in text
    assert markup in text and "script" not in tags and "img" not in tags

    text, _ = visible(rendered(f"{hs.url}/pypi/", tmp_path / "profile"))
    assert "shown" in text and f"#pypi-shown:{hs.server_name}" in text and "1 alarms" in text
    assert http_request(f"{hs.url}/pypi/no%20such%20thing/", timeout=60)[0] == 404
