"""Reading a UnixFS file out of its DAG, block by block (pure: blocks come from a callback).

A UnixFS file is a tree of blocks: dag-pb nodes whose UnixFS `Data` holds some of the file's
bytes and whose links point at the rest, in order, with `blocksizes` saying how many file
bytes lie under each link; and leaves, either dag-pb nodes of UnixFS type Raw/File or raw
blocks (codec 0x55), which are the bytes themselves. Kubo's own `cat` walks it the same way.

The walk is lazy and depth-first, so memory is a few blocks whatever the file's size, and it
never reads more of the DAG than the bytes asked for need: `offset` skips whole subtrees by
their `blocksizes` without reading them, and the walk ends once `length` bytes are out. A DAG
may link one block many times (its expanded size can be many times its stored size); that
costs nothing beyond the bytes asked for. A DAG that makes the walk read blocks without
giving bytes (empty leaves linked over and over) or that is deeper than any real file's is
refused with a `DagError`.

Specs: dag-pb (ipld/specs, "DAG-PB"), UnixFS v1 (ipfs/specs, "UnixFS").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

from synapse_pypi_node._cid import DAG_PB, RAW, Cid, varint

# UnixFS Data.Type
UNIXFS_RAW = 0
UNIXFS_DIRECTORY = 1
UNIXFS_FILE = 2
UNIXFS_METADATA = 3
UNIXFS_SYMLINK = 4
UNIXFS_HAMT_SHARD = 5

#: No real file needs more levels: Kubo's balanced layout (174 links a node) holds about
#: 2^71 bytes of 256 KiB chunks in ten, and its trickle layout stays well under this too.
MAX_DEPTH = 32
#: A walk may read this many blocks, plus two for every byte of the file it has passed,
#: before it is refused as a DAG that reads blocks without giving bytes. A real DAG reads
#: about one block per chunk of the file (at least one byte each) and a few above them.
BLOCK_ALLOWANCE = 64


class DagError(ValueError):
    """The blocks are not a UnixFS file this node can read; the message says why, in one line."""


class NotAFile(DagError):
    """The CID names a UnixFS directory, symlink or the like, not a file."""


# --------------------------------------------------------------------------------------------
# protobuf, as much as dag-pb and UnixFS use


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of each field: an int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: object
            value, pos = varint(buf, pos)
        elif wire == 2:
            n, pos = varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("field %d runs past the end of the block" % (number,))
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError("unsupported protobuf wire type %d" % (wire,))
        if pos > len(buf):
            raise ValueError("field %d runs past the end of the block" % (number,))
        yield number, wire, value


@dataclass(frozen=True)
class PBLink:
    cid: Cid
    name: Optional[str]
    tsize: Optional[int]


@dataclass(frozen=True)
class PBNode:
    links: Tuple[PBLink, ...]
    data: Optional[bytes]


def decode_dag_pb(block: bytes) -> PBNode:
    """Decode a dag-pb block (PBNode: Links = 2, Data = 1).

    Raises:
        DagError: if it is not valid dag-pb.
    """
    links: List[PBLink] = []
    data: Optional[bytes] = None
    try:
        for number, wire, value in _fields(block):
            if number == 2 and wire == 2:
                assert isinstance(value, bytes)
                links.append(_decode_link(value))
            elif number == 1 and wire == 2:
                if data is not None:
                    raise ValueError("two Data fields")
                assert isinstance(value, bytes)
                data = value
            else:
                raise ValueError("unexpected field %d (wire type %d) in PBNode" % (number, wire))
    except ValueError as e:
        raise DagError("invalid dag-pb block: %s" % (e,)) from None
    return PBNode(tuple(links), data)


def _decode_link(buf: bytes) -> PBLink:
    cid: Optional[Cid] = None
    name: Optional[str] = None
    tsize: Optional[int] = None
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            assert isinstance(value, bytes)
            cid = Cid.from_bytes(value)
        elif number == 2 and wire == 2:
            assert isinstance(value, bytes)
            name = value.decode("utf-8", "replace")
        elif number == 3 and wire == 0:
            assert isinstance(value, int)
            tsize = value
        else:
            raise ValueError("unexpected field %d (wire type %d) in PBLink" % (number, wire))
    if cid is None:
        raise ValueError("link without a Hash")
    return PBLink(cid, name, tsize)


@dataclass(frozen=True)
class UnixFSData:
    type: int
    data: bytes
    filesize: Optional[int]
    blocksizes: Tuple[int, ...]
    #: HAMT shards only: the hash function (0x22: murmur3-x64-64) and the fan-out.
    hash_type: Optional[int] = None
    fanout: Optional[int] = None


def decode_unixfs(buf: bytes) -> UnixFSData:
    """Decode UnixFS `Data` (Type = 1, Data = 2, filesize = 3, blocksizes = 4, hashType = 5,
    fanout = 6; the rest ignored).

    Raises:
        DagError: if it is not valid UnixFS data.
    """
    kind: Optional[int] = None
    data = b""
    filesize: Optional[int] = None
    sizes: List[int] = []
    hash_type: Optional[int] = None
    fanout: Optional[int] = None
    try:
        for number, wire, value in _fields(buf):
            if number == 1 and wire == 0:
                assert isinstance(value, int)
                kind = value
            elif number == 2 and wire == 2:
                assert isinstance(value, bytes)
                data = value
            elif number == 3 and wire == 0:
                assert isinstance(value, int)
                filesize = value
            elif number == 4 and wire == 0:
                assert isinstance(value, int)
                sizes.append(value)
            elif number == 4 and wire == 2:  # packed, as some encoders write repeated varints
                assert isinstance(value, bytes)
                pos = 0
                while pos < len(value):
                    size, pos = varint(value, pos)
                    sizes.append(size)
            elif number == 5 and wire == 0:
                assert isinstance(value, int)
                hash_type = value
            elif number == 6 and wire == 0:
                assert isinstance(value, int)
                fanout = value
    except ValueError as e:
        raise DagError("invalid UnixFS data: %s" % (e,)) from None
    if kind is None:
        raise DagError("invalid UnixFS data: no Type")
    return UnixFSData(kind, data, filesize, tuple(sizes), hash_type, fanout)


# --------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class FileNode:
    """One block of a file: its own bytes (which come before its children's) and its children.

    Attributes:
        data: the file bytes this block holds itself.
        children: the blocks holding the rest, in file order.
        sizes: the file bytes under each child, where the block says so consistently.
        size: the file bytes under this block, as it declares them.
    """

    data: bytes
    children: Tuple[Cid, ...]
    sizes: Optional[Tuple[int, ...]]
    size: int


def file_node(cid: Cid, block: bytes) -> FileNode:
    """Interpret one block of a UnixFS file.

    Raises:
        NotAFile: the block is a directory, symlink or other non-file UnixFS node.
        DagError: the block is not valid dag-pb/UnixFS, or of a codec files are not made of.
    """
    if cid.codec == RAW:
        return FileNode(block, (), None, len(block))
    if cid.codec != DAG_PB:
        raise DagError("%s: codec 0x%x is not a UnixFS block" % (cid, cid.codec))
    node = decode_dag_pb(block)
    if node.data is None:
        raise DagError("%s: dag-pb node without UnixFS data" % (cid,))
    fs = decode_unixfs(node.data)
    if fs.type in (UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD):
        # Kubo's words for `cat` of a directory.
        raise NotAFile("this dag node is a directory")
    if fs.type not in (UNIXFS_FILE, UNIXFS_RAW):
        raise NotAFile("this dag node is not a regular file (UnixFS type %d)" % (fs.type,))
    sizes = fs.blocksizes if len(fs.blocksizes) == len(node.links) else None
    if fs.filesize is not None:
        size = fs.filesize
    else:
        size = len(fs.data) + (sum(sizes) if sizes is not None else 0)
    return FileNode(fs.data, tuple(link.cid for link in node.links), sizes, size)


def read_file(load: Callable[[Cid], FileNode], root: Cid, offset: int = 0,
              length: Optional[int] = None, first: Optional[FileNode] = None) -> Iterator[bytes]:
    """The file's bytes from `offset`, at most `length` of them, as the blocks give them.

    Args:
        load: returns the FileNode of a CID (reading, and if need be fetching, its block).
        root: the file's CID.
        offset: bytes of the file to leave out at the start.
        length: the most bytes to give (None: to the end).
        first: the root's FileNode, if the caller has it already.

    Raises:
        DagError: (while iterating) a block is not part of a readable file, the DAG is too
            deep, or it reads blocks without giving bytes.
    """
    left = length
    skip = offset
    passed = 0  # file bytes read so far, skipped or given
    blocks = 1

    def take(data: bytes) -> bytes:
        nonlocal skip, left, passed
        passed += len(data)
        if skip >= len(data):
            skip -= len(data)
            return b""
        chunk = data[skip:] if skip else data
        skip = 0
        if left is not None:
            chunk = chunk[:left]
            left -= len(chunk)
        return chunk

    node = first if first is not None else load(root)
    chunk = take(node.data)
    if chunk:
        yield chunk
    # Each frame: a node and the index of its next child; the walk is depth-first, which is
    # file order, so `skip` and `left` apply to the blocks in the order they are read.
    stack: List[List[object]] = [[node, 0]]
    while stack and left != 0:
        frame = stack[-1]
        parent, i = frame
        assert isinstance(parent, FileNode) and isinstance(i, int)
        if skip and parent.sizes is not None:
            # Whole subtrees before the offset are passed over unread.
            while i < len(parent.children) and skip >= parent.sizes[i]:
                skip -= parent.sizes[i]
                i += 1
        if i >= len(parent.children):
            stack.pop()
            continue
        frame[1] = i + 1
        if len(stack) >= MAX_DEPTH:
            raise DagError("the DAG of %s is deeper than %d levels" % (root, MAX_DEPTH))
        blocks += 1
        if blocks > BLOCK_ALLOWANCE + 2 * passed:
            raise DagError(
                "the DAG of %s gave %d bytes from %d blocks: not a file" % (root, passed, blocks)
            )
        child = load(parent.children[i])
        chunk = take(child.data)
        if chunk:
            yield chunk
        if child.children:
            stack.append([child, 0])
