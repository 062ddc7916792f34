"""Every client a user has, in the versions they have (named in harness/clients.py
`CLIENTS`), installs a project with dependencies through a real Synapse: cold, and again
with the upstream stopped.

pip 22.3 and 23.0.1 (Debian 12) fail on a JSON page that carries PEP 691's old
"dist-info-metadata" key, which PEP 714 took out of JSON; 24.0 is Ubuntu 24.04's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

import attrs
import pytest
from harness.clients import (
    CLIENTS,
    client_python,
    describe,
    installed_version,
    make_venv,
    pip_install,
    run_client,
    tool_bin,
    uv_install,
)
from harness.dists import build_sdist, build_wheel, project_dir
from harness.synapse import SynapseServer
from harness.upstream import UpstreamServer

pytestmark = pytest.mark.synapse

PIPS = [t for t in CLIENTS if t.startswith("pip-") and not t.startswith("pip-tools")]
UVS = [t for t in CLIENTS if t.startswith("uv-")]
POETRY = next(t for t in CLIENTS if t.startswith("poetry-"))
PDM = next(t for t in CLIENTS if t.startswith("pdm-"))
PIP_TOOLS = next(t for t in CLIENTS if t.startswith("pip-tools-"))


@attrs.define
class ClientMirror:
    upstream: UpstreamServer
    hs: SynapseServer
    root: Path

    def publish(self, prefix: str) -> dict[str, str]:
        """`<prefix>-app` -> `<prefix>-lib` (wheel and sdist, and a 2.0 for Python >= 4)
        -> `<prefix>-base`: names no other test asks for, so the first install is cold.
        Returns {distribution: the version an install must pick}."""
        app, lib, base = f"{prefix}-app", f"{prefix}-lib", f"{prefix}-base"
        build_wheel(project_dir(self.root, app), app, "1.0", requires=[f"{lib}>=1"])
        build_wheel(project_dir(self.root, lib), lib, "1.0", requires=[base])
        build_sdist(project_dir(self.root, lib), lib, "1.0", requires=[base])
        build_wheel(project_dir(self.root, lib), lib, "2.0", requires=[base], requires_python=">=4")
        # No PEP 658 sidecar here: clients must read the wheel itself, as with an upstream
        # that offers no metadata.
        build_wheel(project_dir(self.root, base), base, "0.1", metadata_sidecar=False)
        return {app: "1.0", lib: "1.0", base: "0.1"}

    def upstream_down(self) -> _Down:
        return _Down(self.upstream)


class _Down:
    """Stops the upstream for a `with` block and starts it again (same port) after."""

    def __init__(self, upstream: UpstreamServer):
        self._upstream = upstream

    def __enter__(self) -> None:
        self._upstream.stop()

    def __exit__(self, *exc: object) -> None:
        self._upstream.start()


@pytest.fixture(scope="module")
def client_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientMirror]:
    base = tmp_path_factory.mktemp("clients")
    root = base / "dists"
    root.mkdir()
    upstream = UpstreamServer(root, base / "upstream").start()
    hs = None
    try:
        # TTL 0: with the upstream stopped, every page is a failed revalidation answered
        # from the cache, the path a user's outage takes.
        hs = SynapseServer(
            base / "hs", module_config={"upstream_url": upstream.url, "page_ttl": 0, "upstream_timeout": "3s"}
        )
        hs.start()
        yield ClientMirror(upstream, hs, root)
    finally:
        if hs is not None:
            hs.dispose()
        upstream.stop()


def _prefix(tool: str) -> str:
    return "c-" + re.sub(r"[^a-z0-9]+", "-", tool.lower())


def _assert_versions(python: Path, expected: dict[str, str]) -> None:
    for dist, version in expected.items():
        assert installed_version(python, dist) == version, f"{dist} is not at {version}"


def _assert_cold(mirror: ClientMirror, expected: dict[str, str]) -> None:
    hits = mirror.upstream.hits()
    for dist in expected:
        assert hits.get(f"/simple/{dist}/", 0) >= 1, hits


def _install_twice(mirror: ClientMirror, tmp_path: Path, tool: str, install: Callable[[Path], object]) -> None:
    expected = mirror.publish(_prefix(tool))
    python = make_venv(tmp_path / "cold", client_python(tool))
    result = install(python)
    assert result.returncode == 0, describe(result)  # type: ignore[attr-defined]
    _assert_versions(python, expected)
    _assert_cold(mirror, expected)
    with mirror.upstream_down():
        python = make_venv(tmp_path / "offline", client_python(tool))
        result = install(python)
        assert result.returncode == 0, describe(result)  # type: ignore[attr-defined]
        _assert_versions(python, expected)


@pytest.mark.parametrize("tool", PIPS)
def test_pip(client_mirror: ClientMirror, tmp_path: Path, tool: str) -> None:
    app = f"{_prefix(tool)}-app"
    _install_twice(client_mirror, tmp_path, tool, lambda py: pip_install(py, client_mirror.hs.index_url, app, pip=tool))


@pytest.mark.parametrize("tool", UVS)
def test_uv(client_mirror: ClientMirror, tmp_path: Path, tool: str) -> None:
    app = f"{_prefix(tool)}-app"
    _install_twice(client_mirror, tmp_path, tool, lambda py: uv_install(py, client_mirror.hs.index_url, app, uv=tool))


def _tool_env(tmp_path: Path) -> dict[str, str]:
    """A home of its own, so no user or machine config of poetry or pdm applies."""
    home = tmp_path / "home"
    for sub in ("config", "cache", "data"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_DATA_HOME": str(home / "data"),
        "POETRY_CONFIG_DIR": str(home / "config" / "poetry"),
        "POETRY_CACHE_DIR": str(home / "cache" / "poetry"),
        "POETRY_DATA_DIR": str(home / "data" / "poetry"),
        "POETRY_VIRTUALENVS_IN_PROJECT": "true",
        "POETRY_NO_INTERACTION": "1",
        "PDM_CACHE_DIR": str(home / "cache" / "pdm"),
        "PDM_CHECK_UPDATE": "false",
        "PDM_IGNORE_SAVED_PYTHON": "1",
        "PDM_NON_INTERACTIVE": "1",
    }


def _project(directory: Path, dependency: str, tool_table: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        "[project]\n"
        'name = "consumer"\n'
        'version = "0.1.0"\n'
        'requires-python = ">=3.8"\n'
        f'dependencies = ["{dependency}"]\n\n' + tool_table
    )
    return directory


def _project_tool(mirror: ClientMirror, tmp_path: Path, tool: str, tool_table: str, command: list[str]) -> None:
    """Install a small project with `command` in its directory, cold; then, with the
    upstream stopped, in a copy with the lock file, a fresh venv and fresh caches."""
    expected = mirror.publish(_prefix(tool))
    app = next(iter(expected))
    cold = _project(tmp_path / "cold", app, tool_table.format(index=mirror.hs.index_url))
    result = run_client(command, env=_tool_env(tmp_path / "cold-home"), cwd=cold, timeout=300)
    assert result.returncode == 0, describe(result)
    _assert_versions(cold / ".venv" / "bin" / "python", expected)
    _assert_cold(mirror, expected)
    lock = next(p for p in cold.iterdir() if p.name.endswith(".lock"))
    with mirror.upstream_down():
        offline = _project(tmp_path / "offline", app, tool_table.format(index=mirror.hs.index_url))
        shutil.copy(lock, offline / lock.name)
        result = run_client(command, env=_tool_env(tmp_path / "offline-home"), cwd=offline, timeout=300)
        assert result.returncode == 0, describe(result)
        _assert_versions(offline / ".venv" / "bin" / "python", expected)


def test_poetry_install(client_mirror: ClientMirror, tmp_path: Path) -> None:
    table = (
        "[tool.poetry]\npackage-mode = false\n\n"
        '[[tool.poetry.source]]\nname = "mirror"\nurl = "{index}"\npriority = "primary"\n'
    )
    _project_tool(client_mirror, tmp_path, POETRY, table, [tool_bin(POETRY, "poetry"), "install", "--no-interaction"])


def test_pdm_install(client_mirror: ClientMirror, tmp_path: Path) -> None:
    # A source named "pypi" replaces pdm's default index: only the mirror is asked.
    table = '[tool.pdm]\ndistribution = false\n\n[[tool.pdm.source]]\nname = "pypi"\nurl = "{index}"\n'
    command = [tool_bin(PDM, "pdm"), "install", "--no-self"]
    _project_tool(client_mirror, tmp_path, PDM, table, command)


def test_pip_compile(client_mirror: ClientMirror, tmp_path: Path) -> None:
    mirror = client_mirror
    expected = mirror.publish(_prefix(PIP_TOOLS))
    app = next(iter(expected))
    (tmp_path / "requirements.in").write_text(app + "\n")

    def compile_(name: str) -> str:
        out = tmp_path / f"{name}.txt"
        result = run_client(
            [
                tool_bin(PIP_TOOLS, "pip-compile"),
                "--quiet",
                "--no-emit-index-url",
                "--rebuild",
                "--index-url",
                mirror.hs.index_url,
                "--cache-dir",
                str(tmp_path / f"{name}-cache"),
                "--output-file",
                str(out),
                str(tmp_path / "requirements.in"),
            ],
            cwd=tmp_path,
            timeout=300,
        )
        assert result.returncode == 0, describe(result)
        return out.read_text()

    pins = compile_("cold")
    for dist, version in expected.items():
        assert f"{dist}=={version}" in pins, pins
    _assert_cold(mirror, expected)
    with mirror.upstream_down():
        assert compile_("offline").split("\n# ")[0] == pins.split("\n# ")[0]
