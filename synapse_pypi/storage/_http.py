"""HTTP plumbing shared by the IPFS backends (treq; bodies streamed, never buffered)."""

import json
from typing import Any, Callable, Optional

from treq.client import HTTPClient
from twisted.internet import error as internet_error
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IResponse

from synapse_pypi._upstream import UpstreamError, _BodyReader
from synapse_pypi.storage import BackendContext, StorageError, StorageUnavailable


class ServiceClient:
    """A treq client for one HTTP service (a Kubo RPC API, a gateway).

    Args:
        context: the backend context (reactor, yieldable).
        base_url: the service's base URL, without a trailing slash.
        timeout: seconds to wait for headers, and between body chunks.
    """

    def __init__(self, context: BackendContext, base_url: str, timeout: float):
        self._context = context
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        pool = HTTPConnectionPool(context.reactor, persistent=True)
        self._http = HTTPClient(Agent(context.reactor, connectTimeout=timeout, pool=pool))

    async def request(self, method: str, path: str, **kwargs: Any) -> IResponse:
        url = self.base_url + path
        try:
            return await self._context.yieldable(
                self._http.request(
                    method, url, unbuffered=True, timeout=self.timeout, reactor=self._context.reactor, **kwargs
                )
            )
        except internet_error.ConnectError as e:
            raise StorageUnavailable(f"{self.base_url}: cannot connect ({e.__class__.__name__})")
        except (internet_error.TimeoutError, ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed) as e:
            raise StorageUnavailable(f"{self.base_url}: no usable response ({e.__class__.__name__})")
        except Exception as e:
            if e.__class__.__name__ == "CancelledError":
                raise StorageUnavailable(f"{self.base_url}: no response within {self.timeout:g}s")
            raise

    async def read(self, response: IResponse, write: Callable[[bytes], None], max_size: Optional[int] = None) -> int:
        reader = _BodyReader(self.base_url, write, self._context.reactor, self.timeout, max_size)
        response.deliverBody(reader)
        try:
            await self._context.yieldable(reader.done)
        except UpstreamError as e:
            raise StorageError(f"{self.base_url}: {e.reason}")
        return reader.received

    async def read_all(self, response: IResponse, max_size: int = 1024 * 1024) -> bytes:
        chunks: list = []
        await self.read(response, chunks.append, max_size=max_size)
        return b"".join(chunks)

    async def json_lines(self, response: IResponse) -> list:
        body = await self.read_all(response)
        try:
            return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
        except (UnicodeDecodeError, ValueError):
            raise StorageError(f"{self.base_url}: answered with something that is not JSON: {body[:100]!r}")
