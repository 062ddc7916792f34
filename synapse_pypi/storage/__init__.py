"""The storage-backend API: where committed files go besides the local cache.

Modelled on Synapse's `media_storage_providers`. A backend is a class named in the
module config:

    storage_providers:
      - module: synapse_pypi.storage.KuboStorage
        config: {api_url: "http://127.0.0.1:5001"}

It is built as `Cls(parsed_config, context)`, where `parsed_config` is what its optional
`parse_config(config)` static method returned (or the raw mapping). Every verb is a
coroutine running on Synapse's reactor: do I/O asynchronously (treq) or through
`context.defer_to_thread`, never block. docs/storage-backends.md has a complete example.
"""

import functools
import inspect
from typing import Any, Awaitable, Callable, Optional

import attrs

__all__ = [
    "BackendContext",
    "StorageBackend",
    "StorageError",
    "StorageUnavailable",
    "KuboStorage",
    "GatewayStorage",
]


class StorageError(Exception):
    """A backend could not do what was asked; the message says what and why, in one line."""


class StorageUnavailable(StorageError):
    """The backend's service cannot be reached at all (node down): try again later."""


@attrs.frozen
class BackendContext:
    """What the module gives a backend.

    Attributes:
        reactor: Synapse's reactor, for treq and timers.
        data_directory: the module's data directory; a backend may keep files under
            `<data_directory>/<its own name>/`.
        defer_to_thread: `await context.defer_to_thread(fn, *args)` runs blocking code
            off the reactor.
        yieldable: wraps a Twisted Deferred before it is awaited, to keep Synapse's log
            contexts right (`make_deferred_yieldable`).
    """

    reactor: Any
    data_directory: str
    defer_to_thread: Callable[..., Awaitable[Any]]
    yieldable: Callable[[Any], Any] = lambda d: d


class StorageBackend:
    """Base class of storage backends. Override the verbs your store supports.

    Class attributes:
        reference_kind: what kind of reference `store` returns and `fetch` takes
            ("cid" for IPFS). Backends of one kind can read each other's references:
            a CID stored through Kubo can be fetched through a gateway.
        read_only: True if `store` and `remove` are not supported; such a backend is
            only asked to `fetch` and `has`.
    """

    reference_kind: str = "cid"
    read_only: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fetch = cls.__dict__.get("fetch")
        if fetch is not None and not _takes_max_size(fetch):
            # A backend written before `max_size` existed keeps working: the module always
            # passes it, and `write` enforces the bound for such a backend on its own.
            @functools.wraps(fetch)
            async def fetch_unbounded(self: Any, sha256: str, reference: str, write: Callable[[bytes], None],
                                      *, max_size: Optional[int] = None) -> None:
                await fetch(self, sha256, reference, write)

            cls.fetch = fetch_unbounded  # type: ignore[method-assign]  # the adapter above

    def __init__(self, config: Any, context: BackendContext):
        self.config = config
        self.context = context

    @staticmethod
    def parse_config(config: Any) -> Any:
        """Validate this backend's `config:` mapping when Synapse starts.

        Raises:
            synapse.module_api.errors.ConfigError: naming the bad key.
        """
        return config

    def describe(self) -> str:
        """A short human name for logs, e.g. "kubo at http://127.0.0.1:5001"."""
        return type(self).__name__

    async def start(self) -> None:
        """Check the service at start-up and log what was found. Must not raise for a
        service that is merely down (log it); raise only for a broken configuration."""

    async def store(self, path: str, sha256: str, size: int) -> str:
        """Store a committed, verified file and return its reference (e.g. its CID).

        Args:
            path: the file on local disk; read it, do not move or change it.
            sha256: its hex sha256, already verified.
            size: its length in bytes.

        Returns:
            The reference to fetch it by later; whatever the service returns (never
            assume a CID format).

        Raises:
            StorageUnavailable: the service is down; the module retries later.
            StorageError: the service refused this file.
        """
        raise StorageError(f"{self.describe()} is read-only")

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None], *,
                    max_size: Optional[int] = None) -> None:
        """Stream the file's bytes into `write`, chunk by chunk, as they arrive.

        The caller hashes what it is given and rejects a file whose sha256 is not
        `sha256`; a backend need not verify, but must not buffer the whole file. `write`
        raises once it has had more bytes than the file can have: let that propagate.

        Args:
            sha256: the file's expected hex sha256.
            reference: what `store` returned (for IPFS: the CID).
            write: called with each chunk.
            max_size: the most bytes the caller accepts (the file's size where it is known,
                else the cache budget), or None. Ask the service for no more than
                `max_size + 1` bytes where it can be told (Kubo's `cat` takes `length`), so
                that an over-long file is still detected but nothing beyond it is transferred
                or expanded; stop reading once more than `max_size` have arrived. Keyword
                only; a backend whose `fetch` does not take it still works (`write` alone
                then enforces the bound).

        Raises:
            StorageUnavailable: the service is down.
            StorageError: the reference is unknown or the transfer broke.
        """
        raise NotImplementedError

    async def has(self, sha256: str, reference: str) -> bool:
        """Whether the service holds (for IPFS: has pinned) the file."""
        raise NotImplementedError

    async def remove(self, sha256: str, reference: str) -> None:
        """Stop keeping the file (for IPFS: unpin it): it left the module's local cache
        (evicted, or purged by an admin). Removing what is not there is not an error.

        Raises:
            StorageUnavailable: the service is down; the module retries until it succeeds.
            StorageError: the service refused; the module retries a few times, then logs it.
        """
        raise StorageError(f"{self.describe()} is read-only")


def _takes_max_size(fetch: Any) -> bool:
    try:
        params = inspect.signature(fetch).parameters.values()
    except (TypeError, ValueError):  # not introspectable: call it the old way
        return False
    return any(p.name == "max_size" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


from synapse_pypi.storage._gateway import GatewayStorage  # noqa: E402
from synapse_pypi.storage._kubo import KuboStorage  # noqa: E402
