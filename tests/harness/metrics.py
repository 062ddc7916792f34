"""Reading the module's Prometheus metrics from a real Synapse's `metrics` listener (a
SynapseServer made with `metrics=True`)."""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

from prometheus_client.parser import text_string_to_metric_families

from .matrix import poll
from .synapse import SynapseServer
from .upstream import http_request

__all__ = ["Samples", "scrape", "value"]

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]

# Synapse's own collector of cache metrics iterates a dict that the reactor grows when a
# cache is first used (synapse/util/metrics.py): such a scrape fails with 500, and
# Prometheus takes the next one. Our collector must never be the cause.
SYNAPSE_RACE = 'synapse/util/metrics.py", line'


def scrape(hs: SynapseServer) -> Samples:
    """The module's samples (`synapse_pypi_*`), as Prometheus reads them."""

    def once() -> bytes | None:
        status, _, body = http_request(hs.metrics_url, timeout=30)
        if status == 500:
            log = hs.log_text()
            assert "synapse_pypi/_metrics.py" not in log and SYNAPSE_RACE in log, log[-3000:]
            return None
        assert status == 200, body[:500]
        return body

    body = poll(once, timeout=30, what="a scrape of the metrics listener")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            if s.name.startswith("synapse_pypi_"):
                samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not seen yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)
