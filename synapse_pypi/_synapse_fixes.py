"""Work-arounds for two Synapse behaviours that the module's `on_new_event` callback exposes.

1. Finished log contexts.

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

2. Withheld redactions. A redaction that arrives over federation from another server than the
redacted event's is persisted, but Synapse's store withholds it (`get_event` answers "not
found"). With an `on_new_event` callback registered, the notifier asks the store for every new
event before waking anyone: for such a redaction that raises, the PDU is logged as failed with
a traceback, and the notifier skips waking clients and replication for the batch. Anyone can
send such redactions, so a hostile server could fill the log and stall notifications. The fix
lets `on_new_event` skip an event the store withholds, logged in one line: a withheld redaction
changed nothing, which is what the module's fold assumes of it anyway.
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


def skip_withheld_events_on_new_event() -> bool:
    """Apply the second work-around once; whether it is in place."""
    try:
        from synapse.api.errors import NotFoundError
        from synapse.module_api.callbacks.third_party_event_rules_callbacks import (
            ThirdPartyEventRulesModuleApiCallbacks as Callbacks,
        )
    except ImportError:  # pragma: no cover - only outside Synapse, or if Synapse moved it
        return False
    current = getattr(Callbacks, "on_new_event", None)
    if current is None:
        logger.info("Synapse's module callbacks have no on_new_event: not patched")
        return False
    if getattr(current, "_synapse_pypi_skips_withheld", False):
        return True

    async def on_new_event(self: Any, event_id: str) -> None:
        try:
            await current(self, event_id)
        except NotFoundError:
            logger.info("not telling modules about %s: the store withholds it (a redaction it did not apply)",
                        event_id)

    on_new_event._synapse_pypi_skips_withheld = True  # type: ignore[attr-defined]  # a marker on the function
    Callbacks.on_new_event = on_new_event  # type: ignore[method-assign]  # the one method patched
    return True
