"""Throughput of the libkubo node over its RPC API (not collected by pytest; run by hand):

    python tests/kubo/bench_kubo_node.py [SIZE_MB]

Starts two nodes on 127.0.0.1, adds a random file to the first through `add` (a streamed,
chunked multipart upload), reads it back with `cat`, then has the second node fetch it over
bitswap with `cat`, and prints MB/s for each step and each node's peak RSS.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.kubo import KuboNodeProcess, random_file  # noqa: E402

MB = 1024 * 1024


def upload(path: Path, boundary: str) -> Iterator[bytes]:
    yield (b"--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n" % boundary.encode())
    with open(path, "rb") as f:
        while True:
            chunk = f.read(MB)
            if not chunk:
                break
            yield chunk
    yield b"\r\n--%s--\r\n" % boundary.encode()


def cat(node: KuboNodeProcess, cid: str) -> Tuple[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=600)
    conn.request("POST", "/api/v0/cat?arg=%s&timeout=10m" % cid)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    h, n = hashlib.sha256(), 0
    while True:
        chunk = resp.read(MB)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    conn.close()
    return h.hexdigest(), n


def peak_rss_mb(pid: int) -> int:
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory(prefix="kubo-bench-") as tmp:
        base = Path(tmp)
        data = base / "big.bin"
        want = random_file(data, size)
        a = KuboNodeProcess(base / "a" / "repo", base / "a", gateway=False).start()
        b = KuboNodeProcess(base / "b" / "repo", base / "b", gateway=False).start()
        try:
            boundary = uuid.uuid4().hex
            t = time.monotonic()
            reply = a.rpc("add", body=upload(data, boundary),
                          headers={"Content-Type": "multipart/form-data; boundary=" + boundary},
                          timeout=600)
            add_s = time.monotonic() - t
            cid = json.loads(reply.body.splitlines()[-1])["Hash"]

            t = time.monotonic()
            got, n = cat(a, cid)
            cat_s = time.monotonic() - t
            assert (got, n) == (want, size * MB)

            assert b.rpc("swarm/connect", [("arg", a.multiaddr)]).status == 200
            t = time.monotonic()
            got, n = cat(b, cid)
            swap_s = time.monotonic() - t
            assert (got, n) == (want, size * MB)

            print("file: %d MB, CID %s" % (size, cid))
            print("add (HTTP upload + AddFile):    %6.1f s  %6.1f MB/s" % (add_s, size / add_s))
            print("cat, local (blockstore walk):  %6.1f s  %6.1f MB/s" % (cat_s, size / cat_s))
            print("cat, over bitswap from a peer:  %6.1f s  %6.1f MB/s" % (swap_s, size / swap_s))
            print("peak RSS: node a %d MB, node b %d MB" % (peak_rss_mb(a.pid), peak_rss_mb(b.pid)))
        finally:
            a.stop()
            b.stop()


if __name__ == "__main__":
    main()
