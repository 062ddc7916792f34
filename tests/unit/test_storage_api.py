"""The storage-backend API's `fetch` bound (`max_size`) is keyword-only and optional: the
module always passes it, and a backend written before it existed still works."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Optional

from synapse_pypi.storage import GatewayStorage, KuboStorage, StorageBackend


class OldStyle(StorageBackend):
    """A backend from before `max_size`, like the first docs example."""

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None]) -> None:
        write(b"old:" + reference.encode())


class NewStyle(StorageBackend):
    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None], *,
                    max_size: Optional[int] = None) -> None:
        write(b"bound:%d" % (max_size if max_size is not None else -1))


class Flexible(StorageBackend):
    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None], **options: Any) -> None:
        write(repr(sorted(options.items())).encode())


def _fetch(backend: StorageBackend, **kwargs: Any) -> bytes:
    out: List[bytes] = []
    asyncio.run(backend.fetch("0" * 64, "ref", out.append, **kwargs))
    return b"".join(out)


def test_old_backends_take_the_bound_and_ignore_it() -> None:
    backend = OldStyle(None, None)  # type: ignore[arg-type]  # fetch needs no context here
    assert _fetch(backend, max_size=10) == b"old:ref"
    assert _fetch(backend) == b"old:ref"
    assert OldStyle.fetch.__name__ == "fetch" and OldStyle.fetch.__doc__ == OldStyle.fetch.__wrapped__.__doc__


def test_new_backends_get_the_bound() -> None:
    assert _fetch(NewStyle(None, None), max_size=10) == b"bound:10"  # type: ignore[arg-type]
    assert _fetch(NewStyle(None, None)) == b"bound:-1"  # type: ignore[arg-type]
    assert _fetch(Flexible(None, None), max_size=3) == b"[('max_size', 3)]"  # type: ignore[arg-type]
    # The bundled backends are not wrapped: they take the bound themselves.
    for cls in (KuboStorage, GatewayStorage, NewStyle, Flexible):
        assert not hasattr(cls.fetch, "__wrapped__"), cls
