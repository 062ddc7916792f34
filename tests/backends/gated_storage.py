"""A read-only storage backend for tests that sends the first half of a file, then waits for
a gate file to appear before it sends the rest.

It lets a test see what a client gets while a backend's transfer is still under way (before
the module can have verified anything), and then let the transfer finish. References are
file names in a directory (`path`), of kind "cid", so the admin API's known_files can teach
them. Loaded by Synapse with `tests/backends/` on its PYTHONPATH (not `tests/harness/`, whose
synapse.py would hide Synapse itself).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from synapse_pypi.storage import StorageBackend, StorageError

GATE_POLL_SECONDS = 0.05


class GatedStorage(StorageBackend):
    reference_kind = "cid"
    read_only = True

    @staticmethod
    def parse_config(config: dict) -> dict:
        return {"path": str(config["path"]), "gate": str(config["gate"])}

    def describe(self) -> str:
        return f"gated directory {self.config['path']}"

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], Any]) -> None:
        from twisted.internet import task

        if not reference.replace("-", "").isalnum():
            raise StorageError(f"bad reference {reference!r}")
        try:
            with open(os.path.join(self.config["path"], reference), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise StorageError(f"{reference} is not in {self.describe()}") from None
        half = len(data) // 2
        write(data[:half])
        while not os.path.exists(self.config["gate"]):
            # Polls the test's gate file: the test decides when the transfer may go on.
            await self.context.yieldable(task.deferLater(self.context.reactor, GATE_POLL_SECONDS, lambda: None))
        write(data[half:])

    async def has(self, sha256: str, reference: str) -> bool:
        return os.path.exists(os.path.join(self.config["path"], reference))
