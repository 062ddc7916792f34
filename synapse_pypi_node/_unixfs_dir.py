"""UnixFS directories: resolving `/ipfs/<cid>/a/b/c` and listing a directory (pure: blocks come
from a callback, as in `_dag.py`).

A UnixFS directory is a dag-pb node of UnixFS type Directory whose links are its entries, named.
Kubo turns a directory whose node would exceed 256 KiB (its `UnixFSShardingSizeThreshold`) into
a HAMT: a tree of nodes of type HAMTShard. Each shard node's links are named with a bucket index
in upper-case hex, padded to the width of `fanout - 1` ("0A" for Kubo's fanout of 256): a link
named by the index alone is a sub-shard; a link named index + name is the entry `name`. The
bucket of a name at depth d is the d-th group of log2(fanout) bits of the murmur3-x64-64 hash of
the name (big-endian), so a lookup reads one block a level, not the whole directory.

Specs: UnixFS v1 (ipfs/specs, "UnixFS", HAMTShard); boxo `ipld/unixfs/hamt` for the hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from synapse_pypi_node._cid import DAG_PB, RAW, Cid
from synapse_pypi_node._dag import (
    UNIXFS_DIRECTORY,
    UNIXFS_HAMT_SHARD,
    UNIXFS_RAW,
    DagError,
    PBNode,
    UnixFSData,
    decode_dag_pb,
    decode_unixfs,
)

#: The multicodec of the one hash function Kubo's HAMTs use.
MURMUR3_X64_64 = 0x22
#: A 64-bit hash gives this many levels at the smallest sensible fanout (2 bits a level).
MAX_HAMT_DEPTH = 32

Load = Callable[[Cid], bytes]


class NoLink(DagError):
    """A path names an entry its directory does not have (Kubo's words)."""


class NotADirectory(DagError):
    """The node is a file (or symlink...), not a directory."""


@dataclass(frozen=True)
class Entry:
    name: str
    cid: Cid
    #: The cumulative size of the entry's DAG, as its link says (Kubo's `Size`).
    tsize: Optional[int]


def node_type(cid: Cid, block: bytes) -> int:
    """The UnixFS type of a block (a raw block counts as UNIXFS_RAW: file bytes).

    Raises:
        DagError: the block is not UnixFS.
    """
    if cid.codec == RAW:
        return UNIXFS_RAW
    return _decode(cid, block)[1].type


def is_directory(cid: Cid, block: bytes) -> bool:
    return node_type(cid, block) in (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD)


def _decode(cid: Cid, block: bytes) -> Tuple[PBNode, UnixFSData]:
    if cid.codec != DAG_PB:
        raise DagError("%s: codec 0x%x is not a UnixFS block" % (cid, cid.codec))
    node = decode_dag_pb(block)
    if node.data is None:
        raise DagError("%s: dag-pb node without UnixFS data" % (cid,))
    return node, decode_unixfs(node.data)


def lookup(load: Load, cid: Cid, block: bytes, name: str) -> Optional[Entry]:
    """The entry `name` of the directory `cid` (whose block is `block`), or None.

    A file (or anything else that is not a directory) has no entries.

    Raises:
        DagError: a block is not valid UnixFS, or a HAMT is malformed.
    """
    if cid.codec == RAW:
        return None
    node, fs = _decode(cid, block)
    if fs.type == UNIXFS_DIRECTORY:
        for link in node.links:
            if link.name == name:
                return Entry(name, link.cid, link.tsize)
        return None
    if fs.type == UNIXFS_HAMT_SHARD:
        return _hamt_lookup(load, cid, node, fs, name)
    return None


def resolve(load: Load, root: Cid, segments: List[str]) -> List[Cid]:
    """The CIDs along `root/segments...`: the root first, the node named last.

    Raises:
        NoLink: a segment names nothing (message as Kubo's: `no link named "x" under <cid>`).
        DagError: a block is not valid UnixFS.
    """
    chain = [root]
    for name in segments:
        cid = chain[-1]
        entry = lookup(load, cid, load(cid), name)
        if entry is None:
            raise NoLink('no link named "%s" under %s' % (name, cid))
        chain.append(entry.cid)
    return chain


def entries(load: Load, cid: Cid, block: bytes) -> Iterator[Entry]:
    """The entries of a directory, plain or sharded (a HAMT's in bucket order).

    Raises:
        NotADirectory: the node is not a directory.
        DagError: a block is not valid UnixFS, or a HAMT is malformed.
    """
    if cid.codec == RAW:
        raise NotADirectory("%s is not a directory" % (cid,))
    node, fs = _decode(cid, block)
    if fs.type == UNIXFS_DIRECTORY:
        for link in node.links:
            yield Entry(link.name or "", link.cid, link.tsize)
    elif fs.type == UNIXFS_HAMT_SHARD:
        yield from _hamt_entries(load, cid, node, fs, 0)
    else:
        raise NotADirectory("%s is not a directory" % (cid,))


def directory_size(block: bytes, children: List[Entry]) -> int:
    """Kubo's cumulative size of a directory: its block plus what its links say lie below."""
    return len(block) + sum(e.tsize or 0 for e in children)


# --------------------------------------------------------------------------------------------
# HAMT


def _hamt_shape(cid: Cid, fs: UnixFSData) -> Tuple[int, int]:
    """(bits a level, hex width of a bucket index) of a HAMT node."""
    fanout = fs.fanout or 0
    if fanout < 2 or fanout & (fanout - 1) or fanout > 1 << 16:
        raise DagError("%s: HAMT fanout %d is not a power of two" % (cid, fanout))
    return fanout.bit_length() - 1, len("%X" % (fanout - 1))


def _hamt_child(load: Load, cid: Cid, depth: int) -> Tuple[PBNode, UnixFSData]:
    if depth >= MAX_HAMT_DEPTH:
        raise DagError("%s: HAMT deeper than %d levels" % (cid, MAX_HAMT_DEPTH))
    node, fs = _decode(cid, load(cid))
    if fs.type != UNIXFS_HAMT_SHARD:
        raise DagError("%s: a HAMT links a node of UnixFS type %d as a shard" % (cid, fs.type))
    return node, fs


def _hamt_entries(load: Load, cid: Cid, node: PBNode, fs: UnixFSData,
                  depth: int) -> Iterator[Entry]:
    _bits, width = _hamt_shape(cid, fs)
    for link in node.links:
        name = link.name or ""
        if len(name) < width:
            raise DagError("%s: HAMT link name %r is shorter than its bucket index" % (cid, name))
        if len(name) == width:
            child, child_fs = _hamt_child(load, link.cid, depth + 1)
            yield from _hamt_entries(load, link.cid, child, child_fs, depth + 1)
        else:
            yield Entry(name[width:], link.cid, link.tsize)


def _hamt_lookup(load: Load, cid: Cid, node: PBNode, fs: UnixFSData,
                 name: str) -> Optional[Entry]:
    if fs.hash_type != MURMUR3_X64_64:
        # A hash this node does not know: find the name the slow way, by reading every shard.
        for entry in _hamt_entries(load, cid, node, fs, 0):
            if entry.name == name:
                return entry
        return None
    digest = murmur3_x64_64(name.encode("utf-8"))
    depth = 0
    while True:
        bits, width = _hamt_shape(cid, fs)
        if (depth + 1) * bits > 64:
            raise DagError("%s: HAMT deeper than its 64-bit hash" % (cid,))
        index = (digest >> (64 - (depth + 1) * bits)) & ((1 << bits) - 1)
        prefix = "%0*X" % (width, index)
        for link in node.links:
            if link.name is None or not link.name.startswith(prefix):
                continue
            if link.name == prefix:  # a sub-shard: the next bits of the hash choose in it
                depth += 1
                cid = link.cid
                node, fs = _hamt_child(load, cid, depth)
                break
            return Entry(name, link.cid, link.tsize) if link.name[width:] == name else None
        else:
            return None


_M64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def murmur3_x64_64(data: bytes) -> int:
    """The first 64 bits of MurmurHash3 x64_128 with seed 0 (Go's murmur3.Sum64, as HAMTs use)."""
    h1 = h2 = 0
    n = len(data)
    end = n - n % 16
    for i in range(0, end, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
        h1 = (((_rotl(h1, 27) + h2) & _M64) * 5 + 0x52DCE729) & _M64
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
        h2 = (((_rotl(h2, 31) + h1) & _M64) * 5 + 0x38495AB5) & _M64
    tail = data[end:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    return (h1 + h2) & _M64
