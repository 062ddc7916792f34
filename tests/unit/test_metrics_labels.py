"""The metrics module (synapse_pypi/_metrics.py): labels stay bounded, state is read from
every live module and forgotten with it, and the docs and the Grafana dashboard name only
metrics that exist."""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from prometheus_client import REGISTRY
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from synapse_pypi import _metrics
from synapse_pypi._matrix_queue import MatrixQueue, QueueSettings, RequestGauge

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-synapse-pypi.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def exposed() -> dict:
    """family name -> every sample name it exposes (counters end in _total, histograms have
    _bucket, _sum and _count), for the module's metrics."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name: {family.name + s for s in suffixes[family.type]}
        for family in REGISTRY.collect()
        if family.name.startswith(_metrics.PREFIX)
    }


def exposed_names() -> set:
    return set().union(*exposed().values())


@pytest.mark.parametrize(
    "postpath, route",
    [
        ([], "simple_root"),
        ([b""], "simple_root"),
        ([b"Foo"], "simple_project"),
        ([b"foo", b""], "simple_project"),
        ([b"foo", b"foo-1.0-py3-none-any.whl"], "file"),
        ([b"foo", b"foo-1.0-py3-none-any.whl.metadata"], "metadata"),
        ([b"foo", b"bar", b"baz"], "other"),
    ],
)
def test_the_route_label_is_one_of_a_few_values_whatever_the_path(postpath, route):
    assert _metrics.route_of(postpath) == route
    assert route in _metrics.ROUTES


def test_a_request_is_counted_by_route_and_status_once_it_is_over():
    ok, lost = DummyRequest([b"foo", b""]), DummyRequest([b"foo", b"x.whl"])
    before_ok = sample("synapse_pypi_requests_total", route="simple_project", status="404")
    before_lost = sample("synapse_pypi_requests_total", route="file", status=_metrics.ABORTED)
    _metrics.track_request(ok, "simple_project")
    _metrics.track_request(lost, "file")
    ok.code = 404  # as twisted.web.http.Request keeps it (DummyRequest keeps responseCode)
    assert sample("synapse_pypi_requests_total", route="simple_project", status="404") == before_ok
    ok.finish()
    lost.responseHeaders.setRawHeaders(b"content-length", [b"1000"])
    lost.sentLength = 999
    lost.processingFailed(Failure(ConnectionError("client went away")))
    assert sample("synapse_pypi_requests_total", route="simple_project", status="404") == before_ok + 1
    assert sample("synapse_pypi_requests_total", route="file", status=_metrics.ABORTED) == before_lost + 1


def test_a_client_that_closes_after_reading_the_whole_body_is_not_counted_as_aborted():
    # What happens with sendfile: the client has every byte and closes before the reactor
    # finished the response.
    request = DummyRequest([b"foo", b"x.whl"])
    request.code = 200
    before = {s: sample("synapse_pypi_requests_total", route="file", status=s) for s in ("200", _metrics.ABORTED)}
    _metrics.track_request(request, "file")
    request.responseHeaders.setRawHeaders(b"content-length", [b"1000"])
    request.sentLength = 1000
    request.processingFailed(Failure(ConnectionError("client closed")))
    assert sample("synapse_pypi_requests_total", route="file", status="200") == before["200"] + 1
    assert sample("synapse_pypi_requests_total", route="file", status=_metrics.ABORTED) == before[_metrics.ABORTED]


def test_upstream_requests_are_timed_on_the_injected_clock_failures_apart():
    clock = MemoryReactorClock()
    count = {o: sample("synapse_pypi_upstream_request_seconds_count", kind="page", outcome=o) for o in ("response", "error")}
    total = sample("synapse_pypi_upstream_request_seconds_sum", kind="page", outcome="response")
    with _metrics.upstream_timer("page", clock):
        clock.advance(0.75)
    with pytest.raises(TimeoutError):
        with _metrics.upstream_timer("page", clock):
            clock.advance(3)
            raise TimeoutError()
    assert sample("synapse_pypi_upstream_request_seconds_count", kind="page", outcome="response") == count["response"] + 1
    assert sample("synapse_pypi_upstream_request_seconds_sum", kind="page", outcome="response") == total + 0.75
    assert sample("synapse_pypi_upstream_request_seconds_count", kind="page", outcome="error") == count["error"] + 1
    # 0.75 s lands in the 1 s bucket, not in the 0.5 s one.
    assert sample("synapse_pypi_upstream_request_seconds_bucket", kind="page", outcome="response", le="1.0") >= 1


# -- state read at scrape time --------------------------------------------------------------


@attrs.define
class _Policy:
    source: str
    publisher: str


@attrs.define
class _Rec:
    policy: _Policy


@attrs.define
class _Project:
    recs: list

    def bans(self) -> list:
        return [(None, r) for r in self.recs]


@attrs.define
class _Trust:
    """What the collector reads of the trust service (its public surface), with state we set."""

    bot: str = "@pypi-bot:here"
    projects: dict = attrs.Factory(dict)
    generations: dict = attrs.Factory(dict)
    found: dict = attrs.Factory(dict)

    @property
    def known_rooms(self) -> dict:
        return self.projects

    def counters(self) -> dict:
        return dict(self.found)

    def project_generation(self, project: str) -> tuple:
        return self.generations.get(project, ())


@attrs.define
class _Cache:
    total_size: int = 0
    max_size: int = 0


@attrs.define
class _Backends:
    pending_adds: int = 0


def _run_nothing(*args: Any) -> None:
    """The queue's background runner, never running its worker (jobs stay queued)."""


def _queue() -> MatrixQueue:
    clock = MemoryReactorClock()
    return MatrixQueue(clock, _run_nothing, RequestGauge(clock), QueueSettings(max_pending=1))


async def _job() -> None:
    pass


def test_every_live_module_is_read_at_scrape_time_and_a_gone_one_is_forgotten():
    before = {name: sample(name) for name in ("synapse_pypi_frauds_total", "synapse_pypi_matrix_queue_jobs",
                                              "synapse_pypi_storage_pending_adds", "synapse_pypi_cache_bytes")}
    dropped = sample("synapse_pypi_matrix_jobs_total", outcome="dropped")
    first = _metrics.watch(_metrics.Watched(_Trust(found={"fraud_count": 2}), _queue(), _Cache(100, 1000), _Backends(3)))
    queue = _queue()
    assert queue.submit("p", ("a",), _job)
    assert not queue.submit("q", ("b",), _job)  # full: dropped
    # A second module in the same process (as unit tests build them): no name registered twice.
    second = _metrics.watch(_metrics.Watched(_Trust(found={"fraud_count": 1}), queue, _Cache(50, 1000)))
    assert sample("synapse_pypi_frauds_total") == before["synapse_pypi_frauds_total"] + 3
    assert sample("synapse_pypi_matrix_queue_jobs") == before["synapse_pypi_matrix_queue_jobs"] + 1
    assert sample("synapse_pypi_matrix_jobs_total", outcome="dropped") == dropped + 1
    assert sample("synapse_pypi_storage_pending_adds") == before["synapse_pypi_storage_pending_adds"] + 3
    assert sample("synapse_pypi_cache_bytes") == before["synapse_pypi_cache_bytes"] + 150
    del first
    gc.collect()
    assert sample("synapse_pypi_frauds_total") == before["synapse_pypi_frauds_total"] + 1
    assert sample("synapse_pypi_storage_pending_adds") == before["synapse_pypi_storage_pending_adds"]
    assert sample("synapse_pypi_cache_bytes") == before["synapse_pypi_cache_bytes"] + 50
    del second


def test_bans_are_counted_by_source_and_publisher_and_recounted_when_a_room_changes():
    trust = _Trust()
    bot, peer = trust.bot, "@pypi-bot:peer"
    trust.projects["a"] = _Project([_Rec(_Policy("moderator", bot)), _Rec(_Policy("upstream", bot))])
    trust.projects["b"] = _Project([_Rec(_Policy("moderator", peer))])
    watched = _metrics.Watched(trust, _queue(), _Cache())
    assert watched.bans() == {("moderator", "this_mirror"): 1, ("upstream", "this_mirror"): 1,
                              ("moderator", "others"): 1}
    # A ban lifted in project a: its rooms' generation moves, so it is counted again.
    trust.projects["a"].recs.pop()
    trust.generations["a"] = (1,)
    # Project b is no longer loaded.
    del trust.projects["b"]
    assert watched.bans() == {("moderator", "this_mirror"): 1}


def test_every_ban_source_is_exposed_at_zero_before_the_first_ban():
    names = {(s.labels["source"], s.labels["publisher"]) for family in REGISTRY.collect()
             if family.name == "synapse_pypi_bans" for s in family.samples}
    assert {("moderator", "this_mirror"), ("upstream", "others"), ("admin", "this_mirror")} <= names


# -- the docs -------------------------------------------------------------------------------


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bsynapse_pypi_\w+", expr)}
    assert used and used <= exposed_names(), used - exposed_names()
    # And every metric of the module has a panel.
    for family, names in exposed().items():
        assert used & names, f"no panel shows {family}"


def test_operations_md_documents_every_metric_and_names_no_other():
    text = OPERATIONS.read_text(encoding="utf-8")
    named = set(re.findall(r"\bsynapse_pypi_\w+", text))
    families = exposed()
    assert named <= exposed_names() | set(families), named - exposed_names() - set(families)
    for family, names in families.items():
        # As Prometheus shows it: counters with _total, a histogram by its own name.
        shown = family if len(names) > 1 else next(iter(names))
        assert f"`{shown}`" in text, f"docs/operations.md does not document {shown}"
    assert "(grafana-synapse-pypi.json)" in text


def test_the_alert_rules_of_operations_md_parse_and_use_only_existing_metrics():
    text = OPERATIONS.read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    (rules_block,) = [b for b in blocks if b.startswith("groups:")]
    rules = yaml.safe_load(rules_block)["groups"][0]["rules"]
    assert len(rules) >= 5
    for rule in rules:
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"], rule
        used = set(re.findall(r"\bsynapse_pypi_\w+", rule["expr"]))
        assert used and used <= exposed_names(), (rule["alert"], used - exposed_names())
