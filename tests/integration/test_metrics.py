"""Operations (issue 13, item 7; issue 14, item 5): the module's Prometheus metrics, scraped
from the `metrics` listener of a real Synapse while a real upstream serves real wheels."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import attrs
import pytest
from harness.dists import build_wheel, project_dir
from harness.matrix import Client, poll
from harness.metrics import scrape, value
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer, http_request

pytestmark = pytest.mark.synapse


@attrs.define
class Metered:
    hs: SynapseServer
    upstream: UpstreamServer
    root: Path
    admin: Client

    def get(self, path: str) -> tuple:
        return http_request(self.hs.url + path, timeout=60)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metered]:
    base = tmp_path_factory.mktemp("metrics")
    root = base / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, base / "upstream").start()
    hs = SynapseServer(base / "hs", module_config={"upstream_url": upstream.url}, metrics=True)
    try:
        hs.start()
        yield Metered(hs, upstream, root, Client.register(hs, "admin", admin=True))
    finally:
        hs.dispose()
        upstream.stop()


def test_requests_cache_bytes_and_upstream_latency_are_counted(metered):
    wheel = build_wheel(project_dir(metered.root, "metered"), "metered", "1.0", payload_size=300_000)
    data = wheel.read_bytes()
    before = scrape(metered.hs)

    assert metered.get("/simple/metered/")[0] == 200  # cold page
    status, _, body = metered.get(f"/simple/metered/{wheel.name}")  # cold file: from the upstream
    assert status == 200 and body == data
    status, _, body = metered.get(f"/simple/metered/{wheel.name}")  # warm: from the cache
    assert status == 200 and body == data
    assert metered.get("/simple/no-such-project/")[0] == 404
    assert metered.get("/simple/metered/metered-9.9-py3-none-any.whl")[0] == 404

    def moved(name: str, **labels: str) -> float:
        return value(scrape(metered.hs), name, **labels) - value(before, name, **labels)

    # A request is counted when its response is finished: poll for the last one.
    poll(lambda: moved("synapse_pypi_requests_total", route="file", status="404") == 1, what="the 404 counted")
    after = scrape(metered.hs)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("synapse_pypi_requests_total", route="simple_project", status="200") == 1
    assert delta("synapse_pypi_requests_total", route="simple_project", status="404") == 1
    assert delta("synapse_pypi_requests_total", route="file", status="200") == 2
    # One miss (the first download), then one hit; the 404s never reached the cache.
    assert delta("synapse_pypi_cache_lookups_total", route="file", result="miss") == 1
    assert delta("synapse_pypi_cache_lookups_total", route="file", result="hit") == 1
    assert delta("synapse_pypi_served_bytes_total", source="upstream") == len(data)
    assert delta("synapse_pypi_served_bytes_total", source="cache") == len(data)
    assert delta("synapse_pypi_served_bytes_total", source="backend") == 0
    # The upstream was asked for both pages (the 404 too) and for the file.
    assert delta("synapse_pypi_upstream_request_seconds_count", kind="page", outcome="response") >= 2
    assert delta("synapse_pypi_upstream_request_seconds_count", kind="file", outcome="response") >= 1
    assert delta("synapse_pypi_upstream_request_seconds_sum", kind="file", outcome="response") > 0
    assert value(after, "synapse_pypi_cache_bytes") >= len(data)
    assert value(after, "synapse_pypi_cache_max_bytes") > 0
    for name in ("synapse_pypi_frauds_total", "synapse_pypi_alarms_total", "synapse_pypi_conflicts_total",
                 "synapse_pypi_matrix_queue_jobs", "synapse_pypi_storage_pending_adds"):
        assert (name, frozenset()) in after, name
    # Serving the file made its room and our attestation, through the Matrix queue.
    poll(lambda: moved("synapse_pypi_attestations_published_total") >= 1, what="the attestation counted")
    poll(lambda: value(scrape(metered.hs), "synapse_pypi_matrix_jobs_total", outcome="done") >= 2,
         what="the room and the attestation done by the queue")


def test_a_ban_shows_in_the_ban_metric_until_it_is_lifted(metered):
    wheel = build_wheel(project_dir(metered.root, "metered-ban"), "metered-ban", "1.0")
    assert metered.get(f"/simple/metered-ban/{wheel.name}")[0] == 200
    before = scrape(metered.hs)
    banned = {"source": "admin", "publisher": "this_mirror"}
    assert value(before, "synapse_pypi_bans", **banned) == 0
    path = "/_synapse/pypi/v1/projects/metered-ban/bans"
    metered.admin.call("POST", path, {"target": wheel.name, "reason": "compromised build"})
    assert metered.get(f"/simple/metered-ban/{wheel.name}")[0] == 404
    poll(lambda: value(scrape(metered.hs), "synapse_pypi_bans", **banned) == 1, what="the ban in the metric")
    after = scrape(metered.hs)
    for source in ("moderator", "upstream"):
        assert value(after, "synapse_pypi_bans", source=source, publisher="this_mirror") == 0
    for route, status in (("admin", "200"), ("file", "404")):
        labels = {"route": route, "status": status}
        assert value(after, "synapse_pypi_requests_total", **labels) - value(before, "synapse_pypi_requests_total", **labels) == 1

    metered.admin.call("POST", path, {"target": wheel.name, "unban": True})
    poll(lambda: value(scrape(metered.hs), "synapse_pypi_bans", **banned) == 0, what="the lifted ban gone from the metric")


OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_the_nginx_block_of_operations_md_proxies_and_drops_stalled_clients(metered, tmp_path):
    from harness.nginx import NginxServer, nginx_binary
    from harness.synapse import free_port

    if nginx_binary() is None:
        pytest.fail("nginx is not installed: apt-get install nginx")
    block = OPERATIONS.read_text(encoding="utf-8").split("```nginx\n", 1)[1].split("```", 1)[0]
    inner = block[block.index("{") + 1: block.rindex("}")]
    # TLS and the server's name are the deployment's: the harness listens on loopback, plain HTTP.
    kept = [line for line in inner.splitlines()
            if not line.strip().startswith(("listen ", "http2 ", "server_name ", "ssl_"))]
    body = "\n".join(kept).replace("127.0.0.1:8008", f"127.0.0.1:{metered.hs.port}").replace(
        "/var/lib/synapse-pypi/pypi/cache/", f"{metered.hs.data_directory / 'cache'}/")
    # The same directives with a shorter header timeout, so that the test does not wait 15 s.
    assert "client_header_timeout 15s;" in body
    body = body.replace("client_header_timeout 15s;", "client_header_timeout 1s;")
    wheel = build_wheel(project_dir(metered.root, "proxied"), "proxied", "1.0", payload_size=200_000)
    nginx = NginxServer(tmp_path / "nginx", body, free_port()).start()
    try:
        status, _, page = http_request(f"{nginx.url}/simple/proxied/", timeout=60)
        assert status == 200 and wheel.name.encode() in page
        status, _, data = http_request(f"{nginx.url}/simple/proxied/{wheel.name}", timeout=60)
        assert status == 200 and data == wheel.read_bytes()
        # Body limits: nothing to upload to the index; the admin API and Matrix get theirs.
        assert http_request(f"{nginx.url}/simple/", method="POST", body=b"x" * 100_000, timeout=60)[0] == 413
        auth = {"Authorization": f"Bearer {metered.admin.token}"}
        assert http_request(f"{nginx.url}/_synapse/pypi/v1/trust", headers=auth, timeout=60)[0] == 200
        assert http_request(f"{nginx.url}/_matrix/client/versions", timeout=60)[0] == 200
        # A client that stops in the middle of its headers is disconnected (nginx answers
        # nothing, or 408), instead of holding a connection for ever.
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=60) as sock:
            sock.sendall(b"GET /simple/ HTTP/1.1\r\nHost: pypi.example.org\r\n")
            got = b""
            while True:
                chunk = sock.recv(65536)  # the 60 s socket timeout fails the test if it never closes
                if not chunk:
                    break
                got += chunk
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]
    finally:
        nginx.stop()
