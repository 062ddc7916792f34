"""A mirror for integration tests: an upstream with the standard projects and a Synapse."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import attrs
import pytest

from harness.dists import build_sdist, build_wheel, project_dir, write_provenance, yank
from harness.synapse import SynapseServer, postgres_available
from harness.upstream import UpstreamServer, http_request

# Short enough that the timeout tests finish quickly, long enough for a loaded machine.
UPSTREAM_TIMEOUT = "3s"


def require_backend(kind: str) -> None:
    if kind == "postgres":
        ok, why = postgres_available()
        if not ok:
            msg = f"PostgreSQL not reachable on 127.0.0.1:5432: {why}"
            if os.environ.get("SYNAPSE_PYPI_REQUIRE_POSTGRES") == "1":
                pytest.fail(msg)
            pytest.skip(msg)


def populate(root: Path) -> None:
    """The standard projects: a dependency chain, yanked and Requires-Python files, an
    sdist, provenance."""
    alpha = project_dir(root, "alpha")
    build_wheel(alpha, "alpha", "1.0", requires=["beta>=1.0"])
    build_wheel(alpha, "alpha", "2.0", requires=["beta>=1.0"], requires_python=">=3.8")
    old = build_wheel(alpha, "alpha", "0.5")
    yank(old, "broken build")
    beta = project_dir(root, "beta")
    build_wheel(beta, "beta", "1.0")
    build_sdist(beta, "beta", "1.0")
    gamma = project_dir(root, "gamma")
    write_provenance(build_wheel(gamma, "gamma", "1.0"))
    build_wheel(project_dir(root, "Delta_Pkg"), "Delta_Pkg", "1.0")


@attrs.define
class Mirror:
    upstream: UpstreamServer
    hs: SynapseServer
    root: Path

    def get(self, path: str, headers: Optional[Dict[str, str]] = None, method: str = "GET") -> Tuple[int, Any, bytes]:
        """A request to the homeserver; redirects are not followed."""
        return http_request(
            self.hs.url + path, method=method, headers=headers or {}, timeout=60, follow_redirects=False
        )

    def blob_path(self, sha256: str) -> Path:
        return self.hs.data_directory / "cache" / "sha256" / sha256[:2] / sha256[2:4] / sha256


def fetch(url: str, headers: Optional[Dict[str, str]] = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
        return r.read()
