"""The ModuleApi calls that write to Matrix, each in a log context of its own.

Synapse notifies `on_new_event` callbacks about every event it persists in a chain started
with `run_in_background` in the sender's log context, and that chain outlives the send (it
reads the event and the room's state again first). A caller whose context is finished by then
(a background process, a request) would have the chain re-enter a finished context: Synapse's
"Re-starting finished log context" and "Called stop on logcontext ... without recording a start
rusage" warnings, a pair per event, thousands in a busy hour. So each write runs in a child
context made for it and never finished (as `PreserveLoggingContext` leaves it): the chain can
come back to it whenever it likes, and its resource usage still counts for the caller.
"""

from typing import Any, Awaitable, Callable, Tuple, TypeVar

T = TypeVar("T")


def in_own_context(server_name: str, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> Any:
    """Start `fn` in a child log context of its own that is never finished; the Deferred
    (which does not follow the log-context rules: await it through make_deferred_yieldable).
    For Synapse calls that may outlive their caller's context (a write's notifications, a
    lookup abandoned after a timeout)."""
    from synapse.logging.context import LoggingContext, PreserveLoggingContext, current_context, run_in_background

    parent = current_context()
    context = LoggingContext(
        name=f"{parent}-{what}" if parent else what,
        server_name=server_name,
        parent_context=parent if parent else None,
    )
    with PreserveLoggingContext(context):
        return run_in_background(fn, *args, **kwargs)


class MatrixWrites:
    """Writes through the module API, each in a context of its own.

    Args:
        api: the ModuleApi.
    """

    def __init__(self, api: Any):
        self._api = api

    async def _own_context(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        from synapse.logging.context import make_deferred_yieldable

        return await make_deferred_yieldable(in_own_context(self._api.server_name, what, fn, *args, **kwargs))

    async def send(self, event: Any) -> Any:
        """`create_and_send_event_into_room`: the event as persisted."""
        return await self._own_context("send", self._api.create_and_send_event_into_room, event)

    async def create_room(self, user_id: str, config: Any, ratelimit: bool) -> Tuple[str, Any]:
        return await self._own_context("create_room", self._api.create_room, user_id, config, ratelimit=ratelimit)

    async def membership(self, **kwargs: Any) -> Any:
        """`update_room_membership` (joins)."""
        return await self._own_context("membership", self._api.update_room_membership, **kwargs)

    async def register_user(self, localpart: str, **kwargs: Any) -> Any:
        return await self._own_context("register", self._api.register_user, localpart, **kwargs)
