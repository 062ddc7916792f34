"""No request forgery (issue 13, item 6): file and metadata URLs from an upstream page, and
every redirect, are fetched only from global addresses or from the upstream's own origin,
unless the admin allows the host. A real Synapse, a real upstream on 127.0.0.1, and small
listeners on other loopback addresses and ports that record any connection made to them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.dists import build_wheel, project_dir
from harness.listener import RecordingListener
from harness.matrix import poll
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer, http_request

pytestmark = pytest.mark.synapse


@attrs.define
class Forgery:
    hs: SynapseServer
    upstream: UpstreamServer
    root: Path
    wheels: Path
    allowed: RecordingListener  # 127.0.0.2, its port allowed by upstream_allowed_file_hosts
    other_port: RecordingListener  # 127.0.0.2 on another port: not allowed
    beside_upstream: RecordingListener  # 127.0.0.1, the upstream's address, another port

    def offer(self, project: str, base: str, listener: RecordingListener | None = None) -> tuple[Path, str]:
        """An upstream page for `project` whose one wheel (with core metadata) is at
        `base`/files/...; `listener`, if given, serves the wheel's bytes. (path, file URL)"""
        wheel = build_wheel(project_dir(self.wheels, project), project, "1.0")
        data = wheel.read_bytes()
        url = f"{base}/files/{project}/{wheel.name}"
        page = {
            "meta": {"api-version": "1.1"},
            "name": project,
            "files": [{
                "filename": wheel.name, "url": url, "hashes": {"sha256": hashlib.sha256(data).hexdigest()},
                "size": len(data), "core-metadata": {"sha256": "0" * 64},
            }],
        }
        (project_dir(self.root, project) / ".page.json").write_text(json.dumps(page))
        if listener is not None:
            listener.body = data
        return wheel, url

    def get(self, path: str) -> tuple[int, dict, bytes]:
        return http_request(f"{self.hs.url}{path}", timeout=60)

    def blob(self, data: bytes) -> Path:
        sha256 = hashlib.sha256(data).hexdigest()
        return self.hs.data_directory / "cache" / "sha256" / sha256[:2] / sha256[2:4] / sha256

    def refusals_logged(self, url: str) -> list[str]:
        return [line for line in self.hs.log_text().splitlines() if "forbidden address" in line and url in line]


@pytest.fixture(scope="module")
def forgery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forgery]:
    base = tmp_path_factory.mktemp("forgery")
    listeners = [RecordingListener("127.0.0.2"), RecordingListener("127.0.0.2"), RecordingListener("127.0.0.1")]
    upstream = UpstreamServer(base / "dists", base / "upstream")
    hs = None
    try:
        for listener in listeners:
            listener.start()
        upstream.start()
        hs = SynapseServer(base / "hs", module_config={
            "upstream_url": upstream.url,
            "upstream_timeout": "3s",
            "upstream_allowed_file_hosts": [f"127.0.0.2:{listeners[0].port}"],
        })
        hs.start()
        yield Forgery(hs, upstream, base / "dists", base / "wheels", *listeners)
    finally:
        if hs is not None:
            hs.dispose()
        upstream.stop()
        for listener in listeners:
            listener.stop()


def _assert_refused(forgery: Forgery, project: str, wheel: Path, url: str, why: str,
                    listener: RecordingListener) -> None:
    status, _, body = forgery.get(f"/simple/{project}/")
    assert status == 200, body
    status, _, body = forgery.get(f"/simple/{project}/{wheel.name}")
    assert status == 502, (status, body[:300])
    text = body.decode()
    assert "the upstream pointed at a forbidden address" in text and url in text and why in text
    # Logged once, with the URL and the reason; nothing cached, and nothing reached the listener.
    poll(lambda: forgery.refusals_logged(url), what="the refusal in the log")
    assert len(forgery.refusals_logged(url)) == 1, forgery.refusals_logged(url)
    assert not forgery.blob(wheel.read_bytes()).exists()
    assert listener.connections == 0 and listener.paths == []


def test_a_file_on_another_loopback_address_is_refused_and_nothing_reaches_it(forgery: Forgery) -> None:
    listener = forgery.other_port
    wheel, url = forgery.offer("other-address", listener.base_url, listener)
    _assert_refused(forgery, "other-address", wheel, url, "127.0.0.2 is a loopback address", listener)
    # The core metadata URL (the file's URL + ".metadata") is refused the same way.
    status, _, body = forgery.get(f"/simple/other-address/{wheel.name}.metadata")
    assert status == 502 and b"forbidden address" in body, body
    assert listener.connections == 0


def test_the_upstreams_own_address_on_another_port_is_refused(forgery: Forgery) -> None:
    # Only the upstream's own origin (scheme, host and port) is exempt, not its address.
    listener = forgery.beside_upstream
    assert listener.port != forgery.upstream.port
    wheel, url = forgery.offer("beside-upstream", listener.base_url, listener)
    _assert_refused(forgery, "beside-upstream", wheel, url, "127.0.0.1 is a loopback address", listener)


def test_a_name_is_checked_on_the_address_it_resolves_to(forgery: Forgery) -> None:
    # "localhost" is no IP literal: only the resolved address (127.0.0.1 or ::1) gives it away.
    listener = forgery.beside_upstream
    wheel, url = forgery.offer("by-name", f"http://localhost:{listener.port}", listener)
    _assert_refused(forgery, "by-name", wheel, url, "localhost resolves to", listener)


def test_a_redirect_to_a_forbidden_address_is_refused(forgery: Forgery) -> None:
    listener = forgery.other_port
    wheel, url = forgery.offer("redirected", forgery.upstream.base_url)
    path = forgery.upstream.file_path("redirected", wheel.name)
    target = f"{listener.base_url}{path}"
    forgery.upstream.fault(path, "redirect", location=target)
    _assert_refused(forgery, "redirected", wheel, target, "127.0.0.2 is a loopback address", listener)
    # The upstream was asked (its own origin is fine); the hop it pointed at was not followed.
    assert forgery.upstream.hit_count(path) == 1


def test_an_allowed_host_is_fetched_from(forgery: Forgery) -> None:
    listener = forgery.allowed
    wheel, url = forgery.offer("allowed-host", listener.base_url, listener)
    assert forgery.get("/simple/allowed-host/")[0] == 200
    status, _, body = forgery.get(f"/simple/allowed-host/{wheel.name}")
    assert status == 200 and body == wheel.read_bytes()
    assert listener.paths == [f"/files/allowed-host/{wheel.name}"]
    poll(lambda: forgery.blob(body).exists(), what="the allowed file cached")
    assert forgery.refusals_logged(url) == []
