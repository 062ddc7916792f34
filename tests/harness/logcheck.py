"""Log-context trouble in a Synapse log, by the log context it happened in.

Synapse warns when code re-enters a finished log context or loses one ("Re-starting finished
log context X", "Expected logging context X was lost", "Background process re-entered without
a proc: X"). Each such line names the context: a request (`GET-12`) or a background process
(`synapse_pypi_download-3`). `file_path_trouble` keeps the ones of the file read path: file
requests (whose path does not end in "/") and the chain's own background processes.
"""

from __future__ import annotations

import re

__all__ = ["file_path_trouble"]

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
