"""Helpers shared by the benchmark scripts in this directory.

The scripts run as `python benchmarks/bench_x.py`, which puts this directory first on
sys.path, so they import this module as `_common`. It is not a benchmark itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

POLL_INTERVAL = 0.05

T = TypeVar("T")


class BenchError(RuntimeError):
    """Something the benchmark depends on did not work; the message says what."""


# -- progress ----------------------------------------------------------------------------------


def log(msg: str) -> None:
    """One line of progress on stderr (stdout is for the table and the JSON)."""
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Log the start of a step and, once it is over, how long it took."""
    t0 = time.monotonic()
    log(f"{name} ...")
    yield
    log(f"{name}: {time.monotonic() - t0:.1f} s")


def poll(cond: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Call `cond` until it returns something truthy; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)  # polling interval, not synchronisation


def median(xs: Sequence[float]) -> float:
    """The median as a float (statistics.median keeps ints as ints, JSON shows the difference)."""
    return float(statistics.median(xs))


# -- /proc -------------------------------------------------------------------------------------


def read_status_kb(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"/proc/{pid}/status has no {key}")


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM (peak RSS) of one of our processes to its current RSS; False where the
    kernel does not allow it.

    Writing 5 to clear_refs only resets the high-water mark (proc(5)); it does not touch
    page reference bits, so it does not disturb the process being measured.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- a commit's code -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def export_commit(rev: str, dest: Path) -> tuple[str, bool]:
    """Export `rev`'s synapse_pypi/ (and synapse_pypi_node/, where the commit has it) into
    `dest` with `git archive`, for putting first on a PYTHONPATH.

    Returns:
        (the full commit id, whether it has the synapse_pypi_node package).
    """

    def git(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, check=True, **kwargs)
        except (OSError, subprocess.CalledProcessError) as e:
            raise BenchError(f"git {' '.join(cmd)}: {getattr(e, 'stderr', b'') or e!r}") from None

    commit = git("rev-parse", "--verify", rev + "^{commit}", text=True).stdout.strip()
    packages = ["synapse_pypi"]
    has_node = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}:synapse_pypi_node"],
                              capture_output=True).returncode == 0
    if has_node:
        packages.append("synapse_pypi_node")
    dest.mkdir(parents=True, exist_ok=True)
    # The package's sample_homeserver.yaml is a symlink to the top-level one.
    archive = git("archive", commit, *packages, "sample_homeserver.yaml")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return commit, has_node


def use_node_from(dest: Path, has_node_package: bool) -> None:
    """Make tests/harness/kubo.py start nodes from an export (`export_commit`)."""
    import harness.kubo

    if has_node_package:
        harness.kubo.NODE_PYTHONPATH[:] = [str(dest)]
    else:  # before the node had a package of its own
        harness.kubo.NODE_COMMAND[:] = [sys.executable, str(dest / "synapse_pypi" / "kubo_node.py")]


# -- the script's main -------------------------------------------------------------------------


def run_benchmark(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path], dict[str, Any]],
    render_table: Callable[[dict[str, Any]], str],
    work_prefix: str,
    *,
    json_on_stdout: bool = False,
) -> int:
    """Run `run(args, work)` in a fresh temporary directory and report; the exit code.

    SIGTERM raises SystemExit, so the finally blocks still stop every process and remove the
    directory (unless `args.keep`). A BenchError is logged and gives 1. The table goes to
    stdout; the JSON summary to `args.json` if given, and with `json_on_stdout` also to
    stdout after the table (then the file is written without a log line, as bench_index.py
    always did).
    """

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: stop processes, remove files

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix=work_prefix))
    try:
        summary = run(args, work)
    except BenchError as e:
        log(f"benchmark failed: {e}")
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(render_table(summary))
    # Serialised only when wanted: a summary that is not JSON fails only where JSON was asked for.
    text = json.dumps(summary, indent=2) if json_on_stdout or args.json else ""
    if json_on_stdout:
        print(text)
    if args.json:
        args.json.write_text(text + "\n")
        if not json_on_stdout:
            log(f"wrote {args.json}")
    return 0
