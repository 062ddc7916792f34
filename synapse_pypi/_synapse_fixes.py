"""A work-around for one Synapse behaviour that the module's `on_new_event` callback exposes.

`EventCreationHandler.handle_new_client_event` runs inside a `Measure` block, which enters a
child log context named like its caller's and finishes it when the handler returns. Inside, the
handler notifies about the new event with `run_in_background(_notify)`, in that child context,
and does not wait: with any `on_new_event` callback registered, the notification reads the
event and the room's state first, so it is still running when the `Measure` block ends, and
comes back to a finished context. Synapse logs a "Re-starting finished log context" and a
"Called stop on logcontext ... without recording a start rusage" warning for each such return:
for every event any local user or the module sends, thousands an hour on a busy mirror (the
issue is element-hq/synapse#13366).

The fix gives the background tasks that `synapse.handlers.message` starts a child log context of
their own that is never finished (as `PreserveLoggingContext` leaves it), so the notification
can come back to it whenever it likes. Nothing else changes: the task runs as before, its
result is awaited as before, logs carry the same request name. If Synapse's code has moved on
(the name is not there, or is no longer Synapse's own `run_in_background`), nothing is patched.
"""

import logging
from typing import Any

logger = logging.getLogger(__name__)


def give_notifications_their_own_context(server_name: str) -> bool:
    """Apply the work-around once; whether it is in place."""
    try:
        from synapse.handlers import message
        from synapse.logging import context
    except ImportError:  # pragma: no cover - only outside Synapse
        return False
    current = getattr(message, "run_in_background", None)
    if getattr(current, "_synapse_pypi_own_context", False):
        return True
    if current is not context.run_in_background:
        logger.info("synapse.handlers.message no longer uses run_in_background as expected: not patched")
        return False
    original = context.run_in_background

    def run_in_background(f: Any, *args: Any, **kwargs: Any) -> Any:
        parent = context.current_context()
        own = context.LoggingContext(
            name=str(parent) if parent else "background",
            server_name=server_name,
            parent_context=parent if parent else None,
        )
        with context.PreserveLoggingContext(own):
            return original(f, *args, **kwargs)

    run_in_background._synapse_pypi_own_context = True  # type: ignore[attr-defined]  # a marker on the function
    message.run_in_background = run_in_background  # the one name patched
    return True
