"""A read-only backend for mirrors that run no Kubo: files by CID from an HTTP gateway.

The gateway is not trusted: every byte is hashed by the caller and a file whose sha256
does not match what was attested is rejected.
"""

from typing import Any, Callable, Optional
from urllib.parse import quote

import attrs

from synapse_pypi._config import ConfigError, parse_positive_duration_ms
from synapse_pypi._upstream import TooLarge
from synapse_pypi.storage import BackendContext, StorageBackend, StorageError
from synapse_pypi.storage._http import ServiceClient
from synapse_pypi.storage._kubo import _check_http_url


@attrs.frozen
class GatewayConfig:
    gateway_url: str
    timeout_s: float = 60.0


class GatewayStorage(StorageBackend):
    """Fetches `GET <gateway_url>/ipfs/<cid>`; cannot store or remove.

    Config:
        gateway_url: the gateway's base URL (required), e.g. http://127.0.0.1:8081.
        timeout: how long to wait, per request and between chunks (default 60s).
    """

    reference_kind = "cid"
    read_only = True

    def __init__(self, config: GatewayConfig, context: BackendContext):
        super().__init__(config, context)
        self._client = ServiceClient(context, config.gateway_url, config.timeout_s)

    @staticmethod
    def parse_config(config: Any) -> GatewayConfig:
        if not isinstance(config, dict) or "gateway_url" not in config:
            raise ConfigError("GatewayStorage needs 'gateway_url'", path=("gateway_url",))
        unknown = sorted(set(config) - {"gateway_url", "timeout"})
        if unknown:
            raise ConfigError(f"unknown option '{unknown[0]}'; try one of: gateway_url, timeout", path=(unknown[0],))
        kwargs: dict = {"gateway_url": _check_http_url(config["gateway_url"], "gateway_url")}
        if "timeout" in config:
            kwargs["timeout_s"] = parse_positive_duration_ms(config["timeout"], "timeout") / 1000
        return GatewayConfig(**kwargs)

    def describe(self) -> str:
        return f"gateway at {self.config.gateway_url}"

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None], *,
                    max_size: Optional[int] = None) -> None:
        response = await self._client.request(
            "GET", f"/ipfs/{quote(reference)}", headers={"Accept": "application/octet-stream"}
        )
        if response.code != 200:
            await self._client.read_all(response, max_size=64 * 1024)
            raise StorageError(f"{self.describe()}: /ipfs/{reference} answered {response.code}")
        await self._client.read(response, write if max_size is None else _bounded(write, max_size))

    async def has(self, sha256: str, reference: str) -> bool:
        response = await self._client.request("HEAD", f"/ipfs/{quote(reference)}")
        await self._client.read_all(response, max_size=64 * 1024)
        return response.code == 200


def _bounded(write: Callable[[bytes], None], max_size: int) -> Callable[[bytes], None]:
    """`write`, refusing the first chunk that takes the body past `max_size`.

    A gateway sends the whole file whatever its size (a CID can name a DAG that expands to
    terabytes): the transfer is cut there (the body reader stops the connection on TooLarge),
    whatever the caller's own `write` checks.
    """
    received = 0

    def bounded(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        if received > max_size:
            raise TooLarge(f"more than the {max_size} bytes expected")
        write(chunk)

    return bounded
