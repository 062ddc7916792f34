"""A shared mirror per test module: one upstream and one Synapse per database backend.

Tests that share it use their own project names, so they do not see each other's cache.
Tests that stop the upstream or restart Synapse build their own with the function-scoped
factories in tests/conftest.py.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from harness.mirror import UPSTREAM_TIMEOUT, Mirror, populate, require_backend
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def mirror(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    kind = str(request.param)
    require_backend(kind)
    base = tmp_path_factory.mktemp(f"mirror-{kind}")
    root = base / "dists"
    populate(root)
    upstream = UpstreamServer(root, base / "upstream").start()
    hs = None
    try:
        hs = SynapseServer(
            base / "hs",
            db=kind,
            # A short retry interval: tests see a remembered failure end within a second.
            module_config={"upstream_url": upstream.url, "upstream_timeout": UPSTREAM_TIMEOUT, "upstream_retry_interval": "1s"},
        )
        hs.start()
        yield Mirror(upstream, hs, root)
    finally:
        if hs is not None:
            hs.dispose()
        upstream.stop()


