#!/usr/bin/env python3
"""A real upstream package index for the integration tests (stdlib only, run as a subprocess).

    python upstream_server.py --root DIR --port 0 --port-file FILE [--formats json,html]
                              [--relative-urls]

Serves a PEP 503 (HTML) / PEP 691 (JSON, api-version 1.1 or 1.4) simple index of the tree
`DIR/<normalized project>/<files>`, read again on every request so a test can add files
while the server runs. Sidecar files next to a distribution file change what is listed:

    <file>.metadata    PEP 658/714 core metadata (served at <file URL>.metadata and hashed
                       into the page)
    <file>.yanked      PEP 592: yanked, the content is the reason (may be empty)
    <file>.provenance  PEP 740: served at <file URL>.provenance and linked from the page

and next to the projects:

    <project>/.status  PEP 792: the first line is the project status, the rest its reason
                       (the page then says api-version 1.4)
    <project>/.serial  PyPI's last serial of the project (JSON meta._last-serial, HTML
                       <!--SERIAL n-->, header X-PyPI-Last-Serial)
    .serial            the same for the root list
    <project>/.page.json, <project>/.page.html, .page.json, .page.html
                       served as they are instead of the generated project page (or root
                       list), in the format the client negotiated (a huge or junk page
                       without a tree behind it)

Routes:
    GET /simple/                      project list (JSON or HTML by Accept, PEP 691)
    GET /simple/<project>/            project page (non-normalized names redirect)
    GET /files/<project>/<filename>   the file (and .metadata / .provenance sidecars)
Pages and files carry an ETag and Last-Modified and answer 304 to If-None-Match /
If-Modified-Since.

Control API (never counted, never faulted):
    GET  /_control/hits          {path: number of requests, 304s and faulted ones included}
    POST /_control/reset         forget the hit counts
    POST /_control/fault         add a fault, JSON body (see FAULT_KINDS below)
    POST /_control/clear-faults  remove every fault and replacement; release hung requests

A fault is {"path": "/files/p/f.whl" | "/simple/*" (prefix), "kind": ..., "count": N (optional:
apply to the next N requests only)} plus per-kind fields:
    status      "status": 500            answer with that status and a short body
    timeout     "stage": "before"|"headers"|"body"   hang at that point until clear-faults or stop
    reset       "stage": "before"|"headers"|"body"   abort the TCP connection (RST) at that point
    truncate    "bytes": N (default half) announce the full Content-Length, send N bytes, close;
                "rate" (optional) paces the body as for slow
    malformed   "body_b64": optional       200 with a garbage body in the negotiated type
    wrong-bytes                            same length, different bytes (every byte XOR 0x5A)
    slow        "rate": bytes per second   throttle the body
    redirect    "location": URL, "status": 302 (default)   answer with a redirect there
    replace     "content_b64" | "content_path" (optional; default: wrong-bytes of the original)
                the file at "path" (an exact /files/... path) is served with the new content and
                the project page lists the new sha256 and size, as an attacker who controls the
                upstream would do. Lasts until clear-faults; "count" does not apply.
The most recently added matching fault wins.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import email.parser
import email.utils
import hashlib
import html
import json
import os
import re
import signal
import socket
import struct
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
JSON_LATEST = "application/vnd.pypi.simple.latest+json"
HTML_LATEST = "application/vnd.pypi.simple.latest+html"
TEXT_HTML = "text/html"
API_VERSION = "1.1"
STATUS_API_VERSION = "1.4"  # PEP 792

SIDECAR_SUFFIXES = (".metadata", ".yanked", ".provenance")
FAULT_KINDS = ("status", "timeout", "reset", "truncate", "malformed", "wrong-bytes", "slow", "replace", "redirect")
CHUNK = 64 * 1024


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _xor(data: bytes) -> bytes:
    return bytes(b ^ 0x5A for b in data)


class State:
    """Everything shared between request threads."""

    def __init__(self, root: str, formats: list[str], relative_urls: bool) -> None:
        self.root = root
        self.formats = formats
        self.relative_urls = relative_urls
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.faults: list[dict[str, Any]] = []
        self.replacements: dict[str, bytes] = {}
        # Hung requests wait on the event current when they hung; clear-faults sets it
        # and installs a fresh one.
        self.release = threading.Event()
        self.port = 0
        self._hash_cache: dict[tuple[str, int, int, int], str] = {}
        self._rp_cache: dict[tuple[str, int, int, int], str | None] = {}

    # -- hits and faults ---------------------------------------------------------------

    def hit(self, path: str) -> None:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1

    def match_fault(self, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in reversed(self.faults):
                pattern = fault["path"]
                if fault["kind"] == "replace":
                    continue
                if pattern == path or (pattern.endswith("*") and path.startswith(pattern[:-1])):
                    if fault.get("count") is not None:
                        fault["count"] -= 1
                        if fault["count"] <= 0:
                            self.faults.remove(fault)
                    return dict(fault)
        return None

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.replacements.clear()
            old, self.release = self.release, threading.Event()
        old.set()

    # -- the tree --------------------------------------------------------------------

    def _key(self, path: str) -> tuple[str, int, int, int]:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns, st.st_ino)

    def sha256(self, path: str) -> str:
        key = self._key(path)
        with self.lock:
            cached = self._hash_cache.get(key)
        if cached is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1024 * 1024), b""):
                    h.update(chunk)
            cached = h.hexdigest()
            with self.lock:
                self._hash_cache[key] = cached
        return cached

    def requires_python(self, path: str) -> str | None:
        key = self._key(path)
        with self.lock:
            if key in self._rp_cache:
                return self._rp_cache[key]
        value = _read_requires_python(path)
        with self.lock:
            self._rp_cache[key] = value
        return value

    def projects(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and os.path.isdir(os.path.join(self.root, n)))

    def file_url(self, project: str, filename: str) -> str:
        if self.relative_urls:
            # Relative to /simple/<project>/, as PEP 503 allows.
            return f"../../files/{project}/{quote(filename)}"
        return f"http://127.0.0.1:{self.port}/files/{project}/{quote(filename)}"

    def project_files(self, project: str) -> tuple[list[dict[str, Any]], float]:
        """The files of one project as dicts, and the newest mtime (for Last-Modified)."""
        pdir = os.path.join(self.root, project)
        newest = os.stat(pdir).st_mtime
        files = []
        for fn in sorted(os.listdir(pdir)):
            path = os.path.join(pdir, fn)
            if (
                fn.startswith(".")
                or fn.endswith(SIDECAR_SUFFIXES)
                or fn.endswith(".partial")
                or not os.path.isfile(path)
            ):
                continue
            st = os.stat(path)
            newest = max(newest, st.st_mtime)
            with self.lock:
                replaced = self.replacements.get(f"/files/{project}/{fn}")
            if replaced is not None:
                sha, size = hashlib.sha256(replaced).hexdigest(), len(replaced)
            else:
                sha, size = self.sha256(path), st.st_size
            yanked: Any = False
            if os.path.exists(path + ".yanked"):
                with open(path + ".yanked", encoding="utf-8") as f:
                    yanked = f.read().strip() or True
            core_metadata: Any = False
            if os.path.exists(path + ".metadata"):
                core_metadata = {"sha256": self.sha256(path + ".metadata")}
            url = self.file_url(project, fn)
            files.append(
                {
                    "filename": fn,
                    "url": url,
                    "hashes": {"sha256": sha},
                    "requires-python": self.requires_python(path),
                    "size": size,
                    "upload-time": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).strftime(
                        "%Y-%m-%dT%H:%M:%S.%fZ"
                    ),
                    "yanked": yanked,
                    # PEP 714: JSON carries only the new key (pips 22.3-23.1 fail on the
                    # old one); HTML carries both attributes.
                    "core-metadata": core_metadata,
                    "provenance": url + ".provenance" if os.path.exists(path + ".provenance") else None,
                }
            )
        return files, newest


def _read_requires_python(path: str) -> str | None:
    raw: bytes | None = None
    try:
        if path.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                for n in zf.namelist():
                    parts = n.split("/")
                    if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                        raw = zf.read(n)
                        break
        elif path.endswith(".tar.gz"):
            with tarfile.open(path, "r:gz") as tf:
                for m in tf.getmembers():
                    if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"):
                        f = tf.extractfile(m)
                        raw = f.read() if f else None
                        break
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return None
    if raw is None:
        return None
    value = email.parser.BytesHeaderParser().parsebytes(raw).get("Requires-Python")
    return str(value).strip() if value else None


def _read_serial(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _read_status(project_dir: str) -> tuple[str, str | None] | None:
    try:
        with open(os.path.join(project_dir, ".status"), encoding="utf-8") as f:
            status, _, reason = f.read().partition("\n")
    except OSError:
        return None
    return status.strip(), reason.strip() or None


def _meta(version: str, serial: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": version}
    if serial is not None:
        meta["_last-serial"] = serial
    return meta


def _serial_comment(serial: int | None) -> str:
    return "" if serial is None else f"<!--SERIAL {serial}-->\n"


def _version_of(filename: str) -> str | None:
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return parts[1] if len(parts) >= 5 else None
    for ext in (".tar.gz", ".zip", ".tar.bz2"):
        if filename.endswith(ext):
            stem = filename[: -len(ext)]
            return stem.rsplit("-", 1)[1] if "-" in stem else None
    return None


def negotiate(accept: str | None, formats: list[str]) -> str | None:
    """PEP 691 content negotiation: the media type to answer with, or None for 406."""
    offered: list[str] = []
    if "html" in formats:
        offered += [TEXT_HTML, HTML_V1, HTML_LATEST]
    if "json" in formats:
        offered += [JSON_V1, JSON_LATEST]
    ranges: list[tuple[str, float, int]] = []
    for i, part in enumerate((accept or "*/*").split(",")):
        fields = [f.strip() for f in part.split(";")]
        mtype = fields[0].lower()
        if not mtype:
            continue
        q = 1.0
        for param in fields[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        ranges.append((mtype, q, i))

    best: tuple[tuple[float, int, int, int], str] | None = None
    for pref, offer in enumerate(offered):
        for mtype, q, order in ranges:
            if mtype == offer:
                specific = 2
            elif mtype.endswith("/*") and offer.startswith(mtype[:-1]):
                specific = 1
            elif mtype == "*/*":
                specific = 0
            else:
                continue
            if q <= 0:
                continue
            # Highest q, then the most specific range, then the client's order, then ours.
            key = (q, specific, -order, -pref)
            if best is None or key > best[0]:
                best = (key, offer)
    if best is None:
        return None
    chosen = best[1]
    # PEP 691: answer "latest" with the concrete version that was served.
    return {JSON_LATEST: JSON_V1, HTML_LATEST: HTML_V1}.get(chosen, chosen)


def render_index(state: State, ctype: str, serial: int | None = None) -> bytes:
    projects = state.projects()
    if ctype == JSON_V1:
        return json.dumps({"meta": _meta(API_VERSION, serial), "projects": [{"name": p} for p in projects]}).encode()
    links = "".join(f'    <a href="/simple/{quote(p)}/">{html.escape(p)}</a>\n' for p in projects)
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">\n'
        "    <title>Simple index</title>\n  </head>\n  <body>\n"
        f"{links}  </body>\n</html>\n{_serial_comment(serial)}"
    ).encode()


def render_project(
    project: str,
    files: list[dict[str, Any]],
    ctype: str,
    serial: int | None = None,
    status: tuple[str, str | None] | None = None,
) -> bytes:
    version = STATUS_API_VERSION if status else API_VERSION
    if ctype == JSON_V1:
        versions = sorted({v for v in (_version_of(f["filename"]) for f in files) if v})
        document: dict[str, Any] = {"meta": _meta(version, serial), "name": project, "versions": versions, "files": files}
        if status:
            document["project-status"] = {"status": status[0], **({"reason": status[1]} if status[1] else {})}
        return json.dumps(document).encode()
    out = [
        "<!DOCTYPE html>\n<html>\n  <head>\n",
        f'    <meta name="pypi:repository-version" content="{version}">\n',
    ]
    if status:
        out.append(f'    <meta name="pypi:project-status" content="{html.escape(status[0])}">\n')
        if status[1]:
            out.append(f'    <meta name="pypi:project-status-reason" content="{html.escape(status[1])}">\n')
    out += [
        f"    <title>Links for {html.escape(project)}</title>\n  </head>\n  <body>\n",
        f"    <h1>Links for {html.escape(project)}</h1>\n",
    ]
    for f in files:
        attrs = [f'href="{html.escape(f["url"])}#sha256={f["hashes"]["sha256"]}"']
        if f["requires-python"]:
            attrs.append(f'data-requires-python="{html.escape(f["requires-python"])}"')
        if f["yanked"] is not False:
            reason = "" if f["yanked"] is True else f["yanked"]
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if f["core-metadata"]:
            value = f"sha256={f['core-metadata']['sha256']}"
            # PEP 714: emit both attributes so old and new clients see the metadata.
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')
        if f["provenance"]:
            attrs.append(f'data-provenance="{html.escape(f["provenance"])}"')
        out.append(f"    <a {' '.join(attrs)}>{html.escape(f['filename'])}</a><br />\n")
    out.append("  </body>\n</html>\n")
    out.append(_serial_comment(serial))
    return "".join(out).encode()


class _Aborted(Exception):
    """The connection was deliberately broken; stop handling this request."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "synapse-pypi-test-upstream/1"
    # Idle keep-alive connections are closed after this long so threads do not pile up.
    timeout = 300
    state: State  # set on the class by main()

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.log_date_time_string()} {format % args}\n")
        sys.stderr.flush()

    # -- entry points ------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/_control/"):
            self._simple(405, b"method not allowed\n")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            self._control_post(path, body)
        except (ValueError, KeyError, OSError) as e:
            self._json(400, {"error": str(e)})

    # -- control API -------------------------------------------------------------------

    def _control_post(self, path: str, body: bytes) -> None:
        state = self.state
        if path == "/_control/reset":
            with state.lock:
                state.hits.clear()
            self._json(200, {"ok": True})
        elif path == "/_control/clear-faults":
            state.clear_faults()
            self._json(200, {"ok": True})
        elif path == "/_control/fault":
            fault = json.loads(body or b"{}")
            if not isinstance(fault, dict):
                raise ValueError("fault must be a JSON object")
            kind, fpath = fault.get("kind"), fault.get("path")
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}, try one of: {', '.join(FAULT_KINDS)}")
            if not isinstance(fpath, str) or not fpath.startswith("/"):
                raise ValueError("fault needs a 'path' starting with '/'")
            if kind == "status" and not isinstance(fault.get("status"), int):
                raise ValueError("a 'status' fault needs an integer 'status'")
            if kind == "redirect" and not isinstance(fault.get("location"), str):
                raise ValueError("a 'redirect' fault needs a 'location' URL")
            if kind == "slow" and not (isinstance(fault.get("rate"), (int, float)) and fault["rate"] > 0):
                raise ValueError("a 'slow' fault needs a positive 'rate' (bytes per second)")
            if kind in ("timeout", "reset") and fault.get("stage", "before") not in ("before", "headers", "body"):
                raise ValueError("'stage' must be one of: before, headers, body")
            if kind == "replace":
                self._json(200, self._add_replacement(fault))
                return
            with state.lock:
                state.faults.append(fault)
            self._json(200, {"ok": True})
        else:
            self._simple(404, b"no such control endpoint\n")

    def _add_replacement(self, fault: dict[str, Any]) -> dict[str, Any]:
        local = self._local_file(fault["path"])
        if local is None or fault["path"].endswith("*"):
            raise ValueError("a 'replace' fault needs the exact /files/<project>/<filename> of an existing file")
        if "content_b64" in fault:
            content = base64.b64decode(fault["content_b64"])
        elif "content_path" in fault:
            with open(fault["content_path"], "rb") as f:
                content = f.read()
        else:
            with open(local, "rb") as f:
                content = _xor(f.read())
        with self.state.lock:
            self.state.replacements[fault["path"]] = content
        return {"ok": True, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}

    # -- routing -----------------------------------------------------------------------

    def _dispatch(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/_control/"):
            if path == "/_control/hits":
                with self.state.lock:
                    hits = dict(self.state.hits)
                self._json(200, hits)
            else:
                self._simple(404, b"no such control endpoint\n")
            return
        self.state.hit(path)
        fault = self.state.match_fault(path)
        try:
            if fault and not self._pre_fault(fault):
                return
            self._route(path, head, fault)
        except _Aborted:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _pre_fault(self, fault: dict[str, Any]) -> bool:
        """Faults that act before any routing. False if the request is done."""
        kind, stage = fault["kind"], fault.get("stage", "before")
        if kind == "status":
            body = f"fault injected: status {fault['status']}\n".encode()
            self.send_response(fault["status"])
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return False
        if kind == "redirect":
            self.send_response(int(fault.get("status", 302)))
            self.send_header("Location", fault["location"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False
        if kind == "timeout" and stage == "before":
            self._hang()
        if kind == "reset" and stage == "before":
            self._reset()
        return True

    def _route(self, path: str, head: bool, fault: dict[str, Any] | None) -> None:
        if path == "/simple":
            self._redirect("/simple/")
        elif path == "/simple/":
            self._page(head, fault, None)
        elif path.startswith("/simple/"):
            name = unquote(path[len("/simple/") :])
            bare = name.rstrip("/")
            if not bare or "/" in bare:
                self._simple(404, b"not found\n")
            elif bare != normalize(bare) or not name.endswith("/"):
                self._redirect(f"/simple/{quote(normalize(bare))}/")
            elif not os.path.isdir(os.path.join(self.state.root, bare)):
                self._simple(404, f"no project {bare}\n".encode())
            else:
                self._page(head, fault, bare)
        elif path.startswith("/files/"):
            self._file(path, head, fault)
        else:
            self._simple(404, b"not found\n")

    def _local_file(self, path: str) -> str | None:
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "files":
            return None
        project, filename = unquote(parts[2]), unquote(parts[3])
        if project in ("", ".", "..") or filename in ("", ".", "..") or project.startswith("."):
            return None
        local = os.path.join(self.state.root, project, filename)
        return local if os.path.isfile(local) else None

    # -- pages and files ---------------------------------------------------------------

    def _page(self, head: bool, fault: dict[str, Any] | None, project: str | None) -> None:
        ctype = negotiate(self.headers.get("Accept"), self.state.formats)
        if ctype is None:
            offered = ", ".join(
                ([JSON_V1] if "json" in self.state.formats else [])
                + ([HTML_V1, TEXT_HTML] if "html" in self.state.formats else [])
            )
            self._simple(406, f"not acceptable; this index serves: {offered}\n".encode(), vary=True)
            return
        if project is None:
            serial = _read_serial(os.path.join(self.state.root, ".serial"))
            verbatim = self._verbatim_page(self.state.root, ctype)
            if verbatim is not None:
                ctype, path = verbatim
                with open(path, "rb") as f:
                    body = f.read()
            else:
                body = render_index(self.state, ctype, serial)
            mtime = os.stat(self.state.root).st_mtime
        else:
            pdir = os.path.join(self.state.root, project)
            serial = _read_serial(os.path.join(pdir, ".serial"))
            verbatim = self._verbatim_page(pdir, ctype)
            if verbatim is not None:
                ctype, path = verbatim
                with open(path, "rb") as f:
                    body = f.read()
                mtime = os.stat(path).st_mtime
            else:
                files, mtime = self.state.project_files(project)
                body = render_project(project, files, ctype, serial, _read_status(pdir))
        if fault and fault["kind"] == "malformed":
            body = base64.b64decode(fault["body_b64"]) if "body_b64" in fault else _garbage(ctype)
        full_ctype = ctype + ("; charset=utf-8" if ctype == TEXT_HTML else "")
        etag = '"' + hashlib.sha256(ctype.encode() + b"\0" + body).hexdigest()[:32] + '"'
        headers = {"Content-Type": full_ctype, "ETag": etag, "Last-Modified": _http_date(mtime), "Vary": "Accept"}
        if serial is not None:
            headers["X-PyPI-Last-Serial"] = str(serial)
        if self._not_modified(etag, mtime):
            self._send_304(headers)
            return
        self._send(200, headers, len(body), [body], head, fault)

    def _verbatim_page(self, pdir: str, ctype: str) -> tuple[str, str] | None:
        """(content type, path) of a stored page to serve as it is: the negotiated format's,
        else the other one's if the client accepts that format too."""
        for fmt, kind in (("json", JSON_V1), ("html", HTML_V1)):
            path = os.path.join(pdir, f".page.{fmt}")
            if not os.path.exists(path):
                continue
            if kind == ctype or (ctype == TEXT_HTML and kind == HTML_V1):
                return ctype, path
            other = negotiate(self.headers.get("Accept"), [fmt])
            if other is not None:
                return other, path
        return None

    def _file(self, path: str, head: bool, fault: dict[str, Any] | None) -> None:
        local = self._local_file(path)
        if local is None:
            self._simple(404, b"no such file\n")
            return
        st = os.stat(local)
        with self.state.lock:
            replaced = self.state.replacements.get(path)
        if replaced is not None:
            size, sha = len(replaced), hashlib.sha256(replaced).hexdigest()
            chunks: Iterable[bytes] = [replaced]
        else:
            size, sha = st.st_size, self.state.sha256(local)
            chunks = _read_chunks(local)
        if fault and fault["kind"] == "malformed":
            garbage = base64.b64decode(fault["body_b64"]) if "body_b64" in fault else b"\x00garbage\xff" * 7
            size, sha, chunks = len(garbage), hashlib.sha256(garbage).hexdigest(), [garbage]
        if local.endswith(".provenance"):
            ctype = "application/json"
        elif local.endswith(".metadata"):
            ctype = "text/plain; charset=utf-8"
        else:
            ctype = "application/octet-stream"
        etag = f'"{sha[:32]}"'
        headers = {"Content-Type": ctype, "ETag": etag, "Last-Modified": _http_date(st.st_mtime)}
        if self._not_modified(etag, st.st_mtime):
            self._send_304(headers)
            return
        self._send(200, headers, size, chunks, head, fault)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            tags = [t.strip() for t in inm.split(",")]
            return "*" in tags or etag in tags or f"W/{etag}" in tags
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= since
        return False

    # -- writing, with faults -----------------------------------------------------------

    def _send(
        self,
        status: int,
        headers: dict[str, str],
        length: int,
        chunks: Iterable[bytes],
        head: bool,
        fault: dict[str, Any] | None,
    ) -> None:
        kind = fault["kind"] if fault else None
        stage = fault.get("stage", "before") if fault else None
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.flush()
        if kind == "timeout" and stage == "headers":
            self._hang()
        if kind == "reset" and stage == "headers":
            self._reset()
        if head:
            return

        limit = length
        if kind == "truncate":
            limit = int(fault.get("bytes", length // 2))  # type: ignore[union-attr]
        elif kind in ("timeout", "reset") and stage == "body":
            limit = length // 2
        transform: Callable[[bytes], bytes] = _xor if kind == "wrong-bytes" else (lambda b: b)
        rate = float(fault["rate"]) if kind in ("slow", "truncate") and fault.get("rate") else 0.0  # type: ignore[index,union-attr]

        sent = 0
        start = time.monotonic()
        for chunk in _rechunk(chunks, max(1, int(rate / 20)) if rate else CHUNK):
            if sent >= limit:
                break
            chunk = transform(chunk[: limit - sent])
            if rate:
                # Pace the body: this is the fault itself, not synchronisation.
                delay = start + sent / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            self.wfile.write(chunk)
            sent += len(chunk)
        if sent < length:
            if kind == "timeout":
                self._hang()
            if kind == "reset":
                self._reset()
            # truncate: close with a FIN after the short body.
            self.close_connection = True

    def _hang(self) -> None:
        self.state.release.wait()
        raise _Aborted()

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST. Close the file objects first: the
        # socket is only really closed once nothing refers to it any more.
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()
        raise _Aborted()

    def _send_304(self, headers: dict[str, str]) -> None:
        self.send_response(304)
        for k in ("ETag", "Last-Modified", "Vary"):
            if k in headers:
                self.send_header(k, headers[k])
        self.end_headers()

    def _redirect(self, location: str) -> None:
        self.send_response(301)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _simple(self, status: int, body: bytes, vary: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if vary:
            self.send_header("Vary", "Accept")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _garbage(ctype: str) -> bytes:
    if ctype == JSON_V1:
        return b'{"meta": {"api-version": "1.1"}, "files": [{"filename": \x00\xff garbage'
    return b"<html><body><a href=\x00\xff\xfe garbage <<< not a page"


def _read_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK), b"")


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    for chunk in chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Many pip/uv connections arrive at once.
    request_queue_size = 64


def _bind(port: int, deadline: float) -> Server:
    while True:
        try:
            return Server(("127.0.0.1", port), Handler)
        except OSError as e:
            # Restarting on the same port: the previous process may not have released it yet.
            if port == 0 or time.monotonic() > deadline or e.errno not in (98, 48):  # EADDRINUSE
                raise
            threading.Event().wait(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="tree of <normalized project>/<files>")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--formats", default="json,html", help="comma-separated subset of json,html")
    p.add_argument("--relative-urls", action="store_true", help="link files relative to the page")
    args = p.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in ("json", "html") for f in formats):
        p.error("--formats must be a comma-separated subset of: json, html")

    state = State(os.path.abspath(args.root), formats, args.relative_urls)
    Handler.state = state
    httpd = _bind(args.port, time.monotonic() + 10)
    state.port = httpd.server_address[1]

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(state.port))
        os.replace(tmp, args.port_file)
    sys.stderr.write(f"upstream serving {state.root} on http://127.0.0.1:{state.port}/simple/ ({','.join(formats)})\n")
    sys.stderr.flush()
    try:
        httpd.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        state.release.set()
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
