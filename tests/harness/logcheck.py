"""Trouble in a Synapse log: log-context warnings and tracebacks (`log_trouble`, which every
SynapseServer checks when it is disposed: see harness/synapse.py), and the log-context warnings
of the file read path alone (`file_path_trouble`).

Synapse warns when code re-enters a finished log context or loses one ("Re-starting finished
log context X", "Expected logging context X was lost", "Background process re-entered without
a proc: X"). Each such line names the context: a request (`GET-12`) or a background process
(`synapse_pypi_download-3`). `file_path_trouble` keeps the ones of the file read path: file
requests (whose path does not end in "/") and the chain's own background processes.
"""

from __future__ import annotations

import re

__all__ = ["file_path_trouble", "log_trouble"]

_TROUBLE = re.compile(
    r" - (?:WARNING|ERROR) - (?P<ctx>[\w.-]+) - (?:Re-starting finished log context|Expected logging context"
    r"|Called stop on logcontext|Background process re-entered)"
)
_REQUEST = re.compile(r" - INFO - (?P<ctx>(?:GET|HEAD)-\d+) - .*Processed request: .*\"(?:GET|HEAD) (?P<path>\S+) ")
FILE_PATH_PROCESSES = ("synapse_pypi_download-", "synapse_pypi_core_metadata-", "synapse_pypi_storage_drain-")


def file_path_trouble(log: str) -> list[str]:
    """The log-context warnings raised in file requests or the file chain's processes."""
    paths = {m["ctx"]: m["path"] for m in _REQUEST.finditer(log)}
    out = []
    for line in log.splitlines():
        m = _TROUBLE.search(line)
        if m is None:
            continue
        ctx = m["ctx"]
        path = paths.get(ctx, "")
        if ctx.startswith(FILE_PATH_PROCESSES) or (path.startswith("/simple/") and not path.endswith("/")):
            out.append(line)
    return out


_TRACEBACK = "Traceback (most recent call last):"


def log_trouble(log: str) -> list[str]:
    """Every log-context warning, and every traceback (as the line that logged it and the
    exception it ends with), one line each."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if _TROUBLE.search(line):
            out.append(line)
        elif line.startswith(_TRACEBACK):
            logged = lines[i - 1] if i else ""
            end = next((lines[j] for j in range(i + 1, len(lines))
                        if lines[j] and not lines[j].startswith((" ", "\t", _TRACEBACK))), "")
            out.append(f"{logged} | {end}".strip(" |"))
    return out
