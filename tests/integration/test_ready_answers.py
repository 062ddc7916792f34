"""Warm pages given again at once (issue 11, item 4; `_ready_answers.py`), through a real
Synapse: the same bytes and headers as the full way, counted, logged, and never once anything
the page is made from has changed."""

from __future__ import annotations

import json
import secrets
from urllib.parse import quote

import pytest
from harness.dists import build_wheel, project_dir
from harness.matrix import Client, join_when_ready, poll
from harness.metrics import scrape, value
from harness.synapse import free_port

pytestmark = pytest.mark.synapse

JSON_V1 = "application/vnd.pypi.simple.v1+json"
PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


def _at_once(hs) -> float:
    return value(scrape(hs), "synapse_pypi_pages_answered_at_once_total")


def _answered_at_once(hs, path, headers):
    """Ask until one request was answered at once (it must come within a second of the one
    before); that answer."""
    seen = _at_once(hs)

    def ask():
        answer = hs.request("GET", path, headers=headers)
        return answer if _at_once(hs) > seen else None

    return poll(ask, timeout=60, what="a page answered at once")


def test_a_warm_page_is_given_again_at_once_as_the_full_way_gave_it(upstream_factory, synapse_factory, dists_dir):
    build_wheel(project_dir(dists_dir, "atonce"), "atonce", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url}, metrics=True)
    headers = {"Accept": PIP_ACCEPT, "User-Agent": "pip/26.0 test-at-once"}
    full = hs.request("GET", "/simple/atonce/", headers=headers)
    assert full[0] == 200
    fast = _answered_at_once(hs, "/simple/atonce/", headers)
    assert fast[0] == 200 and fast[2] == full[2]
    strip = lambda h: {k: v for k, v in h.items() if k != "date"}  # noqa: E731
    assert strip(fast[1]) == strip(full[1])
    assert fast[1]["server"].startswith("Synapse/")
    hits = upstream.hit_count("/simple/atonce/")

    # HEAD and a conditional GET are answered as the full way answers them, at once too.
    status, head_headers, body = hs.request("HEAD", "/simple/atonce/", headers=headers)
    assert status == 200 and body == b"" and head_headers["content-length"] == full[1]["content-length"]
    conditional = {**headers, "If-None-Match": full[1]["etag"]}
    status, _, body = hs.request("GET", "/simple/atonce/", headers=conditional)
    assert status == 304 and body == b""
    for method, extra, code in (("HEAD", headers, 200), ("GET", conditional, 304)):
        seen = _at_once(hs)
        poll(
            lambda m=method, h=extra, c=code, n=seen: hs.request(m, "/simple/atonce/", headers=h)[0] == c
            and _at_once(hs) > n,
            what=f"a {method} answered at once",
        )
    assert upstream.hit_count("/simple/atonce/") == hits

    # Another representation is another answer: the first HTML request goes the full way.
    status, html_headers, html = hs.request("GET", "/simple/atonce/", headers={"Accept": "text/html"})
    assert status == 200 and html.startswith(b"<!DOCTYPE html>") and html_headers["content-type"].startswith("text/html")

    # Every request is in the access log, in Synapse's format, with the client's user agent.
    poll(
        lambda: hs.log_text().count('"GET /simple/atonce/ HTTP/1.1" "pip/26.0 test-at-once"') >= 3,
        what="the access log lines",
    )
    assert '"HEAD /simple/atonce/ HTTP/1.1" "pip/26.0 test-at-once"' in hs.log_text()
    assert value(scrape(hs), "synapse_pypi_requests_total", route="simple_project", status="304") >= 1


def test_what_a_page_is_made_from_changing_is_seen_by_the_next_request(upstream_factory, synapse_factory, dists_dir):
    # An HTML upstream gives no sizes: the page gets the file's size once it is cached.
    whl = build_wheel(project_dir(dists_dir, "changes"), "changes", "1.0")
    upstream = upstream_factory(formats=("html",))
    hs = synapse_factory(module_config={"upstream_url": upstream.url}, metrics=True)
    headers = {"Accept": JSON_V1}
    assert hs.request("GET", "/simple/changes/", headers=headers)[0] == 200
    _, _, body = _answered_at_once(hs, "/simple/changes/", headers)
    assert "size" not in json.loads(body)["files"][0]
    # The download changes the cache; the very next page (well within the second an answer
    # may be given again) has the size.
    status, _, data = hs.request("GET", f"/simple/changes/{whl.name}")
    assert status == 200 and data == whl.read_bytes()
    status, _, body = hs.request("GET", "/simple/changes/", headers=headers)
    page = json.loads(body)
    assert page["files"][0]["size"] == whl.stat().st_size and page["meta"]["api-version"] == "1.1"


def test_no_answer_is_given_again_past_the_pages_ttl(upstream_factory, synapse_factory, dists_dir):
    build_wheel(project_dir(dists_dir, "nottl"), "nottl", "1.0")
    upstream = upstream_factory()
    hs = synapse_factory(module_config={"upstream_url": upstream.url, "page_ttl": 0}, metrics=True)
    for _ in range(5):
        assert hs.request("GET", "/simple/nottl/", headers={"Accept": JSON_V1})[0] == 200
    # Every request revalidated with the upstream; none was answered at once.
    assert upstream.hit_count("/simple/nottl/") == 5
    assert _at_once(hs) == 0


def test_a_ban_is_on_the_next_page_while_pages_are_answered_at_once(upstream_factory, synapse_factory, dists_dir):
    # Pages are asked for all the time (each answer may be given again for a second) while a
    # moderator bans a file: once the file is refused, no page asked after that lists it.
    wheel = build_wheel(project_dir(dists_dir, "ban-at-once"), "ban-at-once", "1.0")
    newer = build_wheel(project_dir(dists_dir, "ban-at-once"), "ban-at-once", "2.0")
    port = free_port()
    upstream = upstream_factory()
    hs = synapse_factory(
        port=port, metrics=True,
        module_config={"upstream_url": upstream.url, "moderators": [f"@mod:localhost:{port}"]},
    )
    admin, mod = Client.register(hs, "admin", admin=True), Client.register(hs, "mod")
    for path in (wheel, newer):
        assert hs.request("GET", f"/simple/ban-at-once/{path.name}")[0] == 200
    room = join_when_ready(admin, f"#pypi-ban-at-once:{hs.server_name}")
    mod.join(room)
    headers = {"Accept": JSON_V1}
    _answered_at_once(hs, "/simple/ban-at-once/", headers)

    def listed() -> list:
        return [f["filename"] for f in json.loads(hs.request("GET", "/simple/ban-at-once/", headers=headers)[2])["files"]]

    assert sorted(listed()) == sorted([wheel.name, newer.name])
    path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/{secrets.token_hex(8)}"
    mod.call("PUT", path, {"msgtype": "m.text", "body": f"!pypi ban {wheel.name} malware"})
    seen_at_once = _at_once(hs)

    def refused_and_unlisted() -> bool:
        before = listed()
        refused = hs.request("GET", f"/simple/ban-at-once/{wheel.name}")[0] == 404
        after = listed()
        if refused:
            assert after == [newer.name]
            return True
        assert wheel.name in before
        return False

    poll(refused_and_unlisted, what="the ban in force")
    # The pages asked while the ban came were answered at once, some of them.
    assert _at_once(hs) > seen_at_once
