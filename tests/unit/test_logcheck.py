"""The log check every SynapseServer runs when disposed finds what it is meant to find."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.logcheck import log_trouble

LOG = """\
2026-12-01 22:36:54,291 - synapse.federation.federation_server - 1518 - INFO - x-1 - handling received PDU
2026-12-01 22:36:54,334 - synapse.federation.federation_server - 1540 - ERROR - x-1 - Failed to handle PDU $a
Traceback (most recent call last):
  File "/x/synapse/federation/federation_server.py", line 1530, in _process
    await self.on_receive_pdu(
synapse.api.errors.NotFoundError: 404: Could not find event $a
2026-12-01 22:44:24,684 - synapse.logging.context - 87 - WARNING - GET-1-peer - Re-starting finished log context GET-1-peer
2026-12-01 22:44:24,685 - synapse.logging.context - 87 - WARNING - GET-2 - Expected logging context GET-2 was lost
2026-12-01 22:44:24,686 - synapse_pypi._pages - 1 - WARNING - GET-3 - upstream unreachable
"""


def test_tracebacks_and_log_context_warnings_are_found_and_nothing_else() -> None:
    found = log_trouble(LOG)
    assert len(found) == 3
    assert found[0].endswith("Failed to handle PDU $a | synapse.api.errors.NotFoundError: 404: Could not find event $a")
    assert "Re-starting finished log context GET-1-peer" in found[1]
    assert "Expected logging context GET-2 was lost" in found[2]
    assert log_trouble(LOG.splitlines()[-1]) == []
