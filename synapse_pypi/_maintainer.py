"""The maintainer's side of the trust layer: `synapse-pypi keygen`, `attest` and `verify`.

These run on a maintainer's or a user's machine, not inside Synapse. They talk to a
homeserver over the Matrix client-server API with the standard library's urllib: the
commands are synchronous, short-lived and must not need a Twisted reactor.

* `keygen` writes an ed25519 signing key in the signedjson format (the one Synapse uses for
  its own ``signing.key``) and returns it, so the command can print its public form.
* `attest` hashes distribution files, signs one attestation per file with
  `trust.build_content` and sends it as a state event into the project's room.
* `verify` reads a project's room, checks every attestation's signature with
  `trust.verify_attestation`, and judges local files or a hash-pinned requirements file.

Every failure a user can cause is a `MaintainerError` whose message is one readable line.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from signedjson.types import SigningKey, VerifyKey

from synapse_pypi._names import NormalizedName, is_safe_filename
from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    Attestation,
    KeyFileError,
    KeyFormatError,
    Policy,
    RoomEvent,
    RoomView,
    Rules,
    build_content,
    fold,
    generate_key,
    key_id,
    load_key,
    parse_public_key,
    place_key_file,
    state_key_for,
    verify_key_base64,
)
from synapse_pypi.trust._fold import slot_owner

__all__ = [
    "DEFAULT_BOT_LOCALPART",
    "DEFAULT_KEY_PATH",
    "DEFAULT_ROOM_PREFIX",
    "DistName",
    "Finding",
    "Homeserver",
    "MaintainerError",
    "MatrixError",
    "PinnedRequirement",
    "Progress",
    "RequirementsError",
    "Status",
    "attest",
    "dist_name",
    "hash_file",
    "judge_file",
    "judge_pin",
    "keygen",
    "parse_pylock",
    "parse_requirements",
    "parse_trusted_key",
    "fold_room",
    "read_room",
    "verify",
]

DEFAULT_KEY_PATH = "synapse-pypi-signing.key"
DEFAULT_ROOM_PREFIX = "pypi-"
DEFAULT_BOT_LOCALPART = "pypi-bot"
CS = "/_matrix/client/v3"

_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A Matrix call should answer in seconds; a minute covers a join over federation.
_TIMEOUT_S = 60.0
# Synapse rate-limits state events; 429 says how long to wait. Bounded, so a misconfigured
# server cannot hold the command forever.
_MAX_RATE_LIMIT_WAITS = 5
_MAX_RATE_LIMIT_WAIT_S = 10.0


class MaintainerError(Exception):
    """A failure to report to the user as one line (and exit status 1)."""


class RequirementsError(MaintainerError):
    """A requirements file that cannot be read; the message names the file and line."""


# --- file names and hashes -------------------------------------------------------------------


@attrs.frozen
class DistName:
    """What a distribution's file name says.

    Attributes:
        filename: the base name, e.g. ``"alpha-1.0-py3-none-any.whl"``.
        project: the PEP 503 normalized project name.
        version: the normalized PEP 440 version, as the module writes it in attestations.
    """

    filename: str
    project: NormalizedName
    version: str


def dist_name(path: str) -> DistName:
    """Read project and version from a wheel or sdist file name.

    Binary distribution format and source distribution format specs: the name and version
    are the first parts of the file name; packaging parses both.

    Args:
        path: a path whose last component is the file name.

    Returns:
        The parsed name.

    Raises:
        MaintainerError: ``"<path>: not a wheel or sdist file name"``.
    """
    filename = os.path.basename(path)
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        raise MaintainerError(f"{path}: not a wheel or sdist file name") from None
    if not is_safe_filename(filename):
        raise MaintainerError(f"{path}: not a wheel or sdist file name")
    return DistName(filename, NormalizedName(canonicalize_name(name)), str(version))


class Progress:
    """A one-line text progress bar over a number of bytes, redrawn in place.

    Args:
        total: the bytes to be done.
        stream: where to draw (stderr: stdout carries the results).
        enabled: draw at all; when False every method does nothing.
        clock: seconds, monotonic; redraws are at most every `interval` seconds.
    """

    WIDTH = 30

    def __init__(
        self,
        total: int,
        stream: IO[str],
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self.total = total
        self.done = 0
        self.label = ""
        self._stream = stream
        self._enabled = enabled
        self._clock = clock
        self._interval = interval
        self._last = float("-inf")
        self._drawn = False

    def start(self, label: str) -> None:
        """Name what is being worked on now (a file name) and draw."""
        self.label = label
        self._draw(force=True)

    def advance(self, n: int) -> None:
        """Count `n` more bytes done."""
        self.done += n
        self._draw(force=False)

    def finish(self) -> None:
        """Draw the final state and end the line."""
        if self._enabled and self._drawn:
            self._draw(force=True)
            self._stream.write("\n")
            self._stream.flush()

    def render(self) -> str:
        """The bar as text, e.g. ``"[###-----]  37%  1.2 MiB/3.1 MiB  alpha-1.0.tar.gz"``."""
        fraction = 1.0 if self.total <= 0 else min(1.0, self.done / self.total)
        filled = int(round(fraction * self.WIDTH))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        label = self.label if len(self.label) <= 40 else "..." + self.label[-37:]
        return f"[{bar}] {int(fraction * 100):3d}%  {_human(self.done)}/{_human(self.total)}  {label}"

    def _draw(self, force: bool) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        self._drawn = True
        # \r and a clearing pad: a shorter line must not leave the end of a longer one.
        self._stream.write("\r" + self.render().ljust(79))
        self._stream.flush()


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


@attrs.frozen
class FileDigest:
    """A local file's size and sha256 (lower-case hex), as read."""

    path: str
    size: int
    sha256: str


def hash_file(path: str, progress: Progress | None = None) -> FileDigest:
    """Hash a file chunk by chunk (never whole in memory).

    Args:
        path: the file.
        progress: counts the bytes as they are read, if given.

    Returns:
        The size (the bytes actually read) and sha256.

    Raises:
        MaintainerError: the file cannot be read.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
    except FileNotFoundError:
        raise MaintainerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MaintainerError(f"{path}: is a directory, not a distribution file") from None
    except OSError as e:
        raise MaintainerError(f"{path}: cannot read it: {e.strerror or e}") from None
    return FileDigest(path, size, digest.hexdigest())


def hash_files(paths: Sequence[str], stream: IO[str], show_progress: bool) -> list[FileDigest]:
    """Hash files in order, with one progress bar over all of them."""
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            raise MaintainerError(f"{path}: no such file") from None
        except OSError as e:
            raise MaintainerError(f"{path}: cannot read it: {e.strerror or e}") from None
    progress = Progress(total, stream, show_progress)
    digests = []
    for path in paths:
        progress.start(os.path.basename(path))
        digests.append(hash_file(path, progress))
    progress.finish()
    return digests


# --- keys ------------------------------------------------------------------------------------


def keygen(path: str, force: bool = False) -> SigningKey:
    """Write a new ed25519 signing key to `path` (mode 0600).

    The file is complete or absent: it is written under a ``*.partial`` name and then put in
    place, so an interrupted run never leaves half a key.

    Args:
        path: where to write it.
        force: replace an existing file; without it an existing file is an error.

    Returns:
        The new key (print it with `trust.public_key_string`).

    Raises:
        MaintainerError: the file exists (without `force`) or cannot be written.
    """
    if os.path.lexists(path) and not force:
        raise MaintainerError(f"{path} already exists; use --force to replace it (the old key is then lost)")
    key = generate_key()
    parent = os.path.dirname(os.path.abspath(path))
    try:
        placed = place_key_file(path, key, replace=force)
    except FileNotFoundError:
        raise MaintainerError(f"{path}: cannot write the key: the directory {parent} does not exist") from None
    except OSError as e:
        raise MaintainerError(f"{path}: cannot write the key: {e.strerror or e}") from None
    if not placed:
        # Another file appeared since the check above: it is never replaced without --force.
        raise MaintainerError(f"{path} already exists; use --force to replace it")
    return key


def read_signing_key(path: str) -> SigningKey:
    """Load the maintainer's signing key, with a hint when there is none.

    Raises:
        MaintainerError: missing or unreadable key file.
    """
    if not os.path.exists(path):
        raise MaintainerError(f"{path}: no such key file (make one with `synapse-pypi keygen`, or pass --key)")
    try:
        return load_key(path)
    except KeyFileError as e:
        raise MaintainerError(str(e)) from None


def parse_trusted_key(text: str) -> tuple[str, str, VerifyKey]:
    """Read a ``--trusted-key`` value: ``"@user:server ed25519:<id> <base64 key>"``.

    Returns:
        ``(user_id, key_id, verify_key)``.

    Raises:
        KeyFormatError: not a user id followed by a public key as `synapse-pypi keygen` prints it.
    """
    parts = text.split(None, 1)
    user, rest = (parts[0], parts[1]) if len(parts) == 2 else (text, "")
    if not user.startswith("@") or ":" not in user or not rest:
        raise KeyFormatError(f"expected '@user:server ed25519:<key id> <base64 key>', got {text!r}")
    kid, verify_key = parse_public_key(rest)
    return user, kid, verify_key


# --- the client-server API -------------------------------------------------------------------


class MatrixError(MaintainerError):
    """A Matrix error response: the HTTP status and the ``errcode``/``error`` it carried."""

    def __init__(self, status: int, errcode: str, error: str, what: str) -> None:
        super().__init__(f"{what}: {status} {errcode} {error}".strip())
        self.status = status
        self.errcode = errcode
        self.error = error


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The access token must not follow a redirect to another host; the client-server API
    # does not redirect, so one is reported as an error instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Homeserver:
    """One user's session on a homeserver, over the client-server API.

    Args:
        url: the homeserver's base URL, e.g. ``"https://matrix.example.org"``.
        token: the user's access token.
        timeout: seconds per request.
        sleep: how to wait before retrying a rate-limited request (tests may replace it).
    """

    def __init__(
        self, url: str, token: str, timeout: float = _TIMEOUT_S, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)

    def call(self, method: str, path: str, body: Any = None, what: str = "") -> Any:
        """One request; returns the decoded JSON body of a 200.

        Raises:
            MaintainerError: the token was refused (401), or the server cannot be reached or
                answers with something that is not JSON.
            MatrixError: any other error status, with the Matrix ``errcode``.
        """
        what = what or f"{method} {path.split('?')[0]}"
        for attempt in range(_MAX_RATE_LIMIT_WAITS + 1):
            status, payload = self._request(method, path, body)
            if status == 429 and attempt < _MAX_RATE_LIMIT_WAITS:
                wait = payload.get("retry_after_ms", 1000) if isinstance(payload, dict) else 1000
                wait_s = wait / 1000 if isinstance(wait, int) and wait >= 0 else 1.0
                self._sleep(min(wait_s, _MAX_RATE_LIMIT_WAIT_S))  # the server's back-off, bounded
                continue
            break
        if status == 200:
            return payload
        errcode = str(payload.get("errcode", "")) if isinstance(payload, dict) else ""
        error = str(payload.get("error", "")) if isinstance(payload, dict) else ""
        if status == 401 or errcode in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
            raise MaintainerError(f"the access token was refused by {self.url}")
        raise MatrixError(status, errcode, error[:300], what)

    def _request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise MaintainerError(f"cannot reach {self.url}: {reason}") from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            if status == 200:
                raise MaintainerError(f"{self.url}{path.split('?')[0]}: the answer is not JSON") from None
            payload = {}
        return status, payload

    # -- the calls these commands make ------------------------------------------------------

    def whoami(self) -> str:
        """The user id the token belongs to."""
        user_id = self.call("GET", f"{CS}/account/whoami").get("user_id")
        if not isinstance(user_id, str) or ":" not in user_id:
            raise MaintainerError(f"{self.url}: whoami did not return a user id")
        return user_id

    def resolve_alias(self, alias: str) -> tuple[str, list[str]] | None:
        """``(room_id, servers)`` for a room alias, or None when there is no such alias."""
        try:
            answer = self.call("GET", f"{CS}/directory/room/{_q(alias)}", what=f"looking up {alias}")
        except MatrixError as e:
            if e.status == 404:
                return None
            raise
        servers = [s for s in answer.get("servers") or [] if isinstance(s, str)]
        return str(answer["room_id"]), servers

    def join(self, room_id: str, servers: Iterable[str] = (), what: str = "") -> None:
        """Join a room (a no-op when already joined); `servers` help to join over federation."""
        query = urllib.parse.urlencode([("server_name", s) for s in servers] + [("via", s) for s in servers])
        path = f"{CS}/join/{_q(room_id)}" + (f"?{query}" if query else "")
        self.call("POST", path, {}, what=what or f"joining {room_id}")

    def state(self, room_id: str) -> list[dict[str, Any]]:
        """Every current state event of a room (the user must be joined)."""
        events = self.call("GET", f"{CS}/rooms/{_q(room_id)}/state", what=f"reading the state of {room_id}")
        if not isinstance(events, list):
            raise MaintainerError(f"{self.url}: the state of {room_id} is not a list of events")
        return [e for e in events if isinstance(e, dict)]

    def event(self, room_id: str, event_id: str) -> dict[str, Any] | None:
        """One event of a room by its id, or None when the server does not give it."""
        try:
            ev = self.call("GET", f"{CS}/rooms/{_q(room_id)}/event/{_q(event_id)}", what=f"reading {event_id}")
        except MatrixError as e:
            if e.status in (403, 404):
                return None
            raise
        return ev if isinstance(ev, dict) else None

    def state_event(self, room_id: str, event_type: str, state_key: str) -> dict[str, Any] | None:
        """The content of one state event, or None when there is none."""
        try:
            content = self.call("GET", _state_path(room_id, event_type, state_key))
        except MatrixError as e:
            if e.status == 404:
                return None
            raise
        return content if isinstance(content, dict) else None

    def put_state(self, room_id: str, event_type: str, state_key: str, content: Mapping[str, Any], what: str) -> str:
        """Send a state event; returns its event id."""
        answer = self.call("PUT", _state_path(room_id, event_type, state_key), dict(content), what=what)
        return str(answer.get("event_id", ""))


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _state_path(room_id: str, event_type: str, state_key: str) -> str:
    # The state key holds "/" ("<filename>/<mxid>"): quoted, so it stays one path segment.
    return f"{CS}/rooms/{_q(room_id)}/state/{_q(event_type)}/{_q(state_key)}"


def room_alias(project: str, server_name: str, prefix: str = DEFAULT_ROOM_PREFIX) -> str:
    """The alias of a project's room: ``#<prefix><project>:<server_name>``."""
    return f"#{prefix}{project}:{server_name}"


def server_of(user_id: str) -> str:
    """The server name part of a user id (``@a:example.org:8448`` -> ``example.org:8448``)."""
    return user_id.split(":", 1)[1]


# --- attest ----------------------------------------------------------------------------------


@attrs.frozen
class Attested:
    """One attestation `attest` sent."""

    filename: str
    sha256: str
    alias: str
    event_id: str


def attest(
    paths: Sequence[str],
    *,
    homeserver: Homeserver,
    key_path: str,
    server_name: str | None = None,
    room_prefix: str = DEFAULT_ROOM_PREFIX,
    publish_key: bool = False,
    show_progress: bool = False,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    clock: Callable[[], float] = time.time,
) -> list[Attested]:
    """Sign and publish an attestation for each distribution file.

    Everything that can be checked locally (file names, the key, the files themselves) is
    checked before the first request; all files are hashed before the first attestation is
    sent, so a file that cannot be read never leaves a release half attested.

    Args:
        paths: wheel and sdist files.
        homeserver: the session to publish with.
        key_path: the signing key file (from `keygen`).
        server_name: the homeserver's server_name for room aliases; by default the server of
            the user the token belongs to.
        room_prefix: the module's ``room_alias_prefix``.
        publish_key: also publish the key as a ``dev.synapse-pypi.key`` state event in the
            user's own slot, before the attestations (so the module can verify them as they
            arrive).
        show_progress: draw a progress bar on `err` while hashing.
        out: where the ``attested …`` lines go.
        err: where notes and the progress bar go.
        clock: seconds since the epoch, for the attestation timestamps.

    Returns:
        What was sent, in order.

    Raises:
        MaintainerError: with the one-line reason (see docs/maintainers.md).
    """
    if not paths:
        raise MaintainerError("no files given")
    names = [dist_name(p) for p in paths]
    key = read_signing_key(key_path)
    for path in paths:
        if not os.path.isfile(path):
            raise MaintainerError(f"{path}: no such file")

    user_id = homeserver.whoami()
    server = server_name or server_of(user_id)
    rooms: dict[str, tuple[str, str]] = {}  # project -> (alias, room id)
    for name in names:
        if name.project not in rooms:
            alias = room_alias(name.project, server, room_prefix)
            rooms[name.project] = (alias, _join_project_room(homeserver, alias, name.project))

    digests = hash_files(paths, err, show_progress)

    kid = key_id(key)
    notes = []
    for alias, room_id in rooms.values():
        if publish_key:
            _put(homeserver, room_id, alias, KEY_TYPE, user_id, {"keys": {kid: verify_key_base64(key)}})
            print(f"published key {kid} for {user_id} in {alias}", file=out)
        else:
            published = homeserver.state_event(room_id, KEY_TYPE, user_id) or {}
            if kid not in (published.get("keys") or {}):
                notes.append(
                    f"note: key {kid} is not published in {alias}; these attestations count only where it is "
                    "pinned (trusted_keys, maintainer_keys). Add --publish-key to publish it."
                )

    sent = []
    for name, digest in zip(names, digests):
        alias, room_id = rooms[name.project]
        content = build_content(
            project=name.project,
            version=name.version,
            filename=name.filename,
            size=digest.size,
            sha256=digest.sha256,
            cid=None,
            upstream_url=None,
            requires_python=None,
            timestamp=int(clock() * 1000),
            publisher=user_id,
            signing_key=key,
        )
        event_id = _put(homeserver, room_id, alias, ATTESTATION_TYPE, state_key_for(name.filename, user_id), content)
        print(f"attested {name.filename} sha256 {digest.sha256} in {alias}", file=out)
        out.flush()
        sent.append(Attested(name.filename, digest.sha256, alias, event_id))
    for note in notes:  # after the results: a failure above makes them moot
        print(note, file=err)
    return sent


def _join_project_room(homeserver: Homeserver, alias: str, project: str) -> str:
    found = homeserver.resolve_alias(alias)
    if found is None:
        raise MaintainerError(f"no room {alias}: the mirror has not served {project} yet (or uses another --room-prefix)")
    room_id, servers = found
    try:
        # Joining a room one is in already changes nothing, so there is no need to ask first.
        homeserver.join(room_id, servers, what=f"joining {alias}")
    except MatrixError as e:
        raise MaintainerError(f"cannot join {alias}: {e.status} {e.errcode} {e.error}".rstrip()) from None
    return room_id


def _put(homeserver: Homeserver, room_id: str, alias: str, event_type: str, state_key: str, content: Any) -> str:
    try:
        return homeserver.put_state(room_id, event_type, state_key, content, what=f"sending {event_type} to {alias}")
    except MatrixError as e:
        if e.status == 403:
            raise MaintainerError(
                f"you lack the power level to attest in {alias} (ask a room admin for publisher power)"
            ) from None
        raise


# --- verify ----------------------------------------------------------------------------------


class Status(enum.Enum):
    """What `verify` says about a file or a pinned hash."""

    VERIFIED = "verified"
    UNKNOWN = "unknown"
    CONTRADICTED = "contradicted"
    BANNED = "banned"


@attrs.frozen
class Finding:
    """One line of `verify`'s report.

    Attributes:
        status: the verdict.
        subject: the file name, or the requirement as ``name==version``.
        sha256: the local file's or the pinned hash.
        detail: who attested what, or why nothing counts.
    """

    status: Status
    subject: str
    sha256: str
    detail: str

    def line(self) -> str:
        return f"{self.status.value:<12} {self.subject} sha256:{self.sha256}  {self.detail}"


@attrs.frozen
class PinnedRequirement:
    """One requirement of a requirements file and its ``--hash=sha256:`` pins.

    Attributes:
        line: the (first) line number it was written on.
        name: the normalized project name.
        version: the pinned version (``==`` or ``===``), or None when not pinned to one.
        hashes: the sha256 pins, lower-case hex, in file order.
        text: the requirement as written, without options.
    """

    line: int
    name: NormalizedName
    version: str | None
    hashes: tuple[str, ...]
    text: str


# pip's rules (pip/_internal/req/req_file.py): a comment starts at a "#" at the start of a
# line or after white space; a line ending in "\" continues on the next, except that a
# comment line ends the continuation.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_HASH_OPTION = re.compile(r"(?:^|\s)--hash(?:=|\s+)(\S*)")
# What is left of a requirement line after its --hash options: per-requirement options
# (--config-settings, --global-option …) start at white space then "-".
_OPTION_START = re.compile(r"\s-")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    joined: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.endswith("\\") or _COMMENT.match(line):
            if _COMMENT.match(line):
                line = " " + line  # so the comment is still recognised once joined
            if joined:
                joined.append(line)
                yield first, "".join(joined)
                joined = []
            else:
                yield number, line
        else:
            if not joined:
                first = number
            joined.append(line[:-1])
    if joined:
        yield first, "".join(joined)


def parse_requirements(text: str, source: str = "requirements.txt") -> list[PinnedRequirement]:
    """Read the requirements and their sha256 pins from a requirements file.

    Written as hash-pinning lock tools write them (``pip-compile --generate-hashes``,
    ``uv pip compile --generate-hashes``)::

        alpha==1.0 \\
            --hash=sha256:<hex> \\
            --hash=sha256:<hex>
            # via beta

    Blank lines and comments are skipped; so are option lines (``--index-url``, ``-r``,
    ``-e``, ``-c`` …: anything starting with ``-``) and pins with other algorithms (an
    attestation carries sha256 only). Environment markers are allowed and not evaluated: a
    pin is a hash, whichever platform it is for.

    Args:
        text: the file's content.
        source: its name, for error messages.

    Returns:
        The requirements in file order; ``hashes`` may be empty.

    Raises:
        RequirementsError: ``"<source>:<line>: …"`` for a requirement that cannot be read or
            a sha256 pin that is not 64 hex characters.
    """
    found = []
    for number, raw in _logical_lines(text):
        line = _COMMENT.sub("", raw).strip()
        if not line or line.startswith("-"):
            continue
        hashes = []
        for match in _HASH_OPTION.finditer(line):
            algorithm, colon, value = match.group(1).partition(":")
            if not colon or not value:
                raise RequirementsError(f"{source}:{number}: --hash must be '<algorithm>:<hex>', got {match.group(1)!r}")
            if algorithm.lower() != "sha256":
                continue
            value = value.lower()
            if not _SHA256.fullmatch(value):
                raise RequirementsError(f"{source}:{number}: sha256 {value!r} is not 64 hex characters")
            if value not in hashes:
                hashes.append(value)
        spec = _OPTION_START.split(_HASH_OPTION.sub(" ", line), maxsplit=1)[0].strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement as e:
            # packaging's message points at the column on more lines; one line is enough here.
            reason = str(e).splitlines()[0] if str(e) else "invalid"
            raise RequirementsError(f"{source}:{number}: cannot read requirement {spec!r}: {reason}") from None
        found.append(
            PinnedRequirement(number, NormalizedName(canonicalize_name(req.name)), _pinned_version(req), tuple(hashes), spec)
        )
    return found


def _pinned_version(req: Requirement) -> str | None:
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


@attrs.frozen
class RoomAttestations:
    """The valid attestations of a project's room, as `read_room` found them.

    Attributes:
        project: the normalized project name.
        alias: the room alias looked up.
        room_id: the room, or None when the alias does not exist or the room was refused.
        valid: every valid attestation for this project.
        skipped: how many attestation events did not count (redacted, invalid, untrusted key).
        refused: why the room was not read, when it was not (say, the mirror's bot did not make it).
        bans: the valid bans in the room (mirrors that trust it serve none of what they name).
    """

    project: str
    alias: str
    room_id: str | None
    valid: tuple[Attestation, ...]
    skipped: int
    refused: str = ""
    bans: tuple[Policy, ...] = ()

    def ban_for(self, filename: str | None, version: str | None) -> Policy | None:
        for ban in self.bans:
            if ban.kind == "project" or ban.covers(filename or "", version):
                return ban
        return None

    def for_file(self, filename: str) -> list[Attestation]:
        return [a for a in self.valid if a.filename == filename]


def read_room(
    events: Iterable[Mapping[str, Any]],
    project: str,
    pinned: Mapping[str, Mapping[str, VerifyKey]],
    alias: str = "",
    room_id: str | None = None,
) -> RoomAttestations:
    """Judge the attestations in a room's state with the mirror's own fold (trust/_fold.py).

    A key published in the room counts in its owner's slot while the owner holds the room's key
    power level (the room's create event says which; 60 by default); `pinned` keys count whatever
    the level. Redactions count only from the event's sender or a user at the room's redact level.

    Args:
        events: the room's state events, in client-server API format (with the owners' own
            events under slots someone else wrote last, see `owners_events`).
        project: the room's project; attestations for another project do not count.
        pinned: more trusted keys, by user id then key id (``--trusted-key``).
        alias: the room's alias (for the result).
        room_id: the room's id (for the result).

    Returns:
        The valid attestations and how many others there were.
    """
    view = fold_room(events, project, pinned, room_id or "")
    records = view.records()
    valid = sorted((r.attestation for r in records if r.valid and r.attestation is not None),
                   key=lambda a: (a.filename, a.publisher))
    skipped = len(records) - len(valid) + len(view.intruders())
    bans = tuple(r.policy for r in view.policies() if r.valid and r.policy is not None and r.policy.recommendation == "ban")
    return RoomAttestations(project, alias, room_id, tuple(valid), skipped, bans=bans)


def fold_room(
    events: Iterable[Mapping[str, Any]], project: str, pinned: Mapping[str, Mapping[str, VerifyKey]], room_id: str
) -> RoomView:
    """The mirror's view of a room, from client-server API events."""
    room_events = [e for e in (RoomEvent.from_client(ev) for ev in events) if e is not None]
    return fold(room_id, Rules(project=project, local=True, pinned=pinned), room_events)


def _who(atts: Iterable[Attestation]) -> str:
    return ", ".join(sorted({a.publisher for a in atts}))


def judge_file(filename: str, sha256: str, room: RoomAttestations) -> Finding:
    """Verified, unknown or contradicted: a local file against its room's attestations.

    * contradicted: a valid attestation for this file name says another sha256 (whether or
      not another one agrees: publishers disagreeing is worth a look);
    * verified: a valid attestation for this file name says this sha256;
    * unknown: no valid attestation for this file name.
    """
    try:
        version: str | None = dist_name(filename).version
    except MaintainerError:
        version = None
    ban = room.ban_for(filename, version)
    if ban is not None:
        return Finding(Status.BANNED, filename, sha256, _banned(ban))
    atts = room.for_file(filename)
    agree = [a for a in atts if a.sha256 == sha256]
    differ = [a for a in atts if a.sha256 != sha256]
    if differ:
        others = "; ".join(f"{a.publisher} attested {a.sha256}" for a in differ)
        return Finding(Status.CONTRADICTED, filename, sha256, others)
    if agree:
        return Finding(Status.VERIFIED, filename, sha256, f"attested by {_who(agree)}")
    return Finding(Status.UNKNOWN, filename, sha256, _nothing_here(room, "for this file"))


def judge_pin(req: PinnedRequirement, sha256: str, room: RoomAttestations) -> Finding:
    """Verified, unknown or contradicted: one ``--hash`` pin against the project's room.

    A pin does not say which file it is for, so:

    * verified: a file of the project is attested with this sha256 (and no valid attestation
      for that file says otherwise, which would be contradicted);
    * contradicted: files of the pinned version are attested, and none of them with *any* of
      the requirement's pinned hashes: the lock file and the attestations have nothing in
      common for that release;
    * unknown: otherwise. In particular, the pins of files nobody attested (a lock file pins
      every wheel of a release; the mirror attests those it served) are unknown, not
      contradicted, as long as one pin of the requirement matches.
    """
    subject = f"{req.name}=={req.version}" if req.version else req.text
    matching = [a for a in room.valid if a.sha256 == sha256]
    for ban in [room.ban_for(None, req.version)] + [room.ban_for(a.filename, a.version) for a in matching]:
        if ban is not None:
            return Finding(Status.BANNED, subject, sha256, _banned(ban))
    if matching:
        disputed = [a for m in matching for a in room.for_file(m.filename) if a.sha256 != sha256]
        if disputed:
            others = "; ".join(f"{a.publisher} attested {a.sha256} for {a.filename}" for a in disputed)
            return Finding(Status.CONTRADICTED, subject, sha256, others)
        files = ", ".join(sorted({a.filename for a in matching}))
        return Finding(Status.VERIFIED, subject, sha256, f"{files}, attested by {_who(matching)}")
    same_release = [a for a in room.valid if req.version is not None and _same_version(a.version, req.version)]
    if same_release and not any(a.sha256 in req.hashes for a in same_release):
        files = "; ".join(f"{a.filename} is {a.sha256} ({a.publisher})" for a in same_release)
        return Finding(Status.CONTRADICTED, subject, sha256, f"no pinned hash is attested: {files}")
    return Finding(Status.UNKNOWN, subject, sha256, _nothing_here(room, "with this sha256"))


def _banned(ban: Policy) -> str:
    return f"{ban.kind} {ban.entity} banned: {ban.reason} (by {ban.publisher}, source: {ban.source})"


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def _nothing_here(room: RoomAttestations, what: str) -> str:
    if room.refused:
        return f"{room.alias} not read: {room.refused}"
    if room.room_id is None:
        return f"no room {room.alias}"
    return f"no valid attestation {what} in {room.alias}"


@attrs.frozen
class LockedFile:
    """One file of a PEP 751 lock file (``pylock.toml``)."""

    project: NormalizedName
    filename: str
    sha256: str


def parse_pylock(text: str, source: str = "pylock.toml") -> list[LockedFile]:
    """Every wheel and sdist a PEP 751 lock file names, with its sha256.

    Raises:
        RequirementsError: not TOML, not a lock file, or a file without a sha256.
    """
    import tomllib

    try:
        lock = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RequirementsError(f"{source}: not TOML: {e}") from None
    packages = lock.get("packages")
    if not isinstance(lock.get("lock-version"), str) or not isinstance(packages, list):
        raise RequirementsError(f"{source}: not a PEP 751 lock file (no lock-version and [[packages]])")
    out = []
    for i, package in enumerate(packages):
        if not isinstance(package, dict) or not isinstance(package.get("name"), str):
            raise RequirementsError(f"{source}: packages[{i}] has no name")
        project = NormalizedName(canonicalize_name(package["name"]))
        files = list(package.get("wheels") or [])
        if isinstance(package.get("sdist"), dict):
            files.append(package["sdist"])
        for f in files:
            name = f.get("name") if isinstance(f, dict) else None
            if not isinstance(name, str) and isinstance(f, dict) and isinstance(f.get("url"), str):
                name = urllib.parse.unquote(f["url"].rsplit("/", 1)[-1].split("#")[0])
            sha = (f.get("hashes") or {}).get("sha256") if isinstance(f, dict) else None
            if not isinstance(name, str) or not isinstance(sha, str) or not _SHA256.fullmatch(sha.lower()):
                raise RequirementsError(f"{source}: a file of {project} has no name or no sha256")
            out.append(LockedFile(project, name, sha.lower()))
    return out


def verify(
    paths: Sequence[str],
    requirements: Sequence[str],
    *,
    pylocks: Sequence[str] = (),
    homeserver: Homeserver,
    server_name: str | None = None,
    room_prefix: str = DEFAULT_ROOM_PREFIX,
    bot_localpart: str = DEFAULT_BOT_LOCALPART,
    trusted_keys: Sequence[tuple[str, str, VerifyKey]] = (),
    show_progress: bool = False,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
) -> list[Finding]:
    """Check files and requirements files against a homeserver's attestations.

    Prints one line per file or pin, then a summary line.

    Args:
        paths: distribution files.
        requirements: requirements files with ``--hash`` pins.
        homeserver: the session to read with (it joins the project rooms: they are public).
        server_name: the server_name in room aliases; by default the server of the user.
        room_prefix: the module's ``room_alias_prefix``.
        bot_localpart: the module's ``bot_localpart``: only rooms its bot made are read.
        trusted_keys: ``(user_id, key_id, verify_key)`` trusted in addition to the keys
            published in the rooms.
        show_progress: draw a progress bar on `err` while hashing.
        out: where the report goes.
        err: where notes and the progress bar go.

    Returns:
        The findings, in the order printed.

    Raises:
        MaintainerError: a file or requirements file that cannot be read, a file name that
            is not a distribution's, or a homeserver that refuses or cannot be reached.
    """
    if not paths and not requirements and not pylocks:
        raise MaintainerError("nothing to verify: give distribution files, -r requirements.txt or a pylock.toml")
    names = [dist_name(p) for p in paths]
    reqs: list[PinnedRequirement] = []
    for source in requirements:
        reqs.extend(parse_requirements(_read_text(source), source))
    locked: list[LockedFile] = []
    for source in pylocks:
        locked.extend(parse_pylock(_read_text(source), source))
    digests = hash_files(paths, err, show_progress)

    pinned: dict[str, dict[str, VerifyKey]] = {}
    for user, kid, verify_key in trusted_keys:
        pinned.setdefault(user, {})[kid] = verify_key
    server = server_name or server_of(homeserver.whoami())
    rooms: dict[str, RoomAttestations] = {}

    def room_for(project: str) -> RoomAttestations:
        if project not in rooms:
            alias = room_alias(project, server, room_prefix)
            rooms[project] = _read_project_room(homeserver, project, alias, pinned, f"@{bot_localpart}:{server}")
        return rooms[project]

    findings = []
    for name, digest in zip(names, digests):
        findings.append(judge_file(name.filename, digest.sha256, room_for(name.project)))
        print(findings[-1].line(), file=out)
    for lf in locked:
        findings.append(judge_file(lf.filename, lf.sha256, room_for(lf.project)))
        print(findings[-1].line(), file=out)
    for req in reqs:
        if not req.hashes:
            print(f"skipped      {req.text}  (line {req.line}: no --hash=sha256 pin)", file=out)
            continue
        room = room_for(req.name)
        for sha256 in req.hashes:
            findings.append(judge_pin(req, sha256, room))
            print(findings[-1].line(), file=out)
    counts = {s: sum(1 for f in findings if f.status is s) for s in Status}
    print(", ".join(f"{counts[s]} {s.value}" for s in Status), file=out)
    return findings


def _read_text(source: str) -> str:
    try:
        with open(source, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise MaintainerError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MaintainerError(f"{source}: cannot read it: {getattr(e, 'strerror', None) or e}") from None


def _read_project_room(
    homeserver: Homeserver, project: str, alias: str, pinned: Mapping[str, Mapping[str, VerifyKey]], bot: str
) -> RoomAttestations:
    found = homeserver.resolve_alias(alias)
    if found is None:
        return RoomAttestations(project, alias, None, (), 0)
    room_id, servers = found
    try:
        homeserver.join(room_id, servers, what=f"joining {alias}")
    except MatrixError as e:
        raise MaintainerError(f"cannot join {alias} to read it: {e.status} {e.errcode} {e.error}".rstrip()) from None
    events = owners_events(homeserver, room_id, homeserver.state(room_id))
    creator = next((e.get("sender") for e in events if e.get("type") == "m.room.create"), None)
    if creator != bot:
        # Anyone can make a room and bind an alias the mirror has not taken yet: only the
        # mirror's bot's rooms say anything about what the mirror serves, as the mirror
        # itself reads them.
        return RoomAttestations(project, alias, None, (), 0, refused=f"made by {creator}, not by the mirror's bot {bot}")
    return read_room(events, project, pinned, alias, room_id)


# How many overwrites of one slot are walked back, as the module does.
MAX_SLOT_HISTORY = 20


def owners_events(homeserver: Homeserver, room_id: str, events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The room's state as the mirror reads it: for an attestation, policy or key slot that
    someone other than its owner wrote last (`slot_owner`, the module's own rule), the owner's
    own last event there too (found by walking back through ``unsigned.replaces_state``), so an
    intruder cannot erase a vouch, a ban or a key. The intruder's event stays in: it is
    reported, never counted."""
    out: list[Mapping[str, Any]] = []
    for ev in events:
        out.append(ev)
        owner = slot_owner(str(ev.get("type")), ev.get("state_key"))
        if owner is not None and ev.get("sender") != owner:
            prev = _owners_last(homeserver, room_id, ev, owner)
            if prev is not None:
                out.append(prev)
    return out


def _owners_last(
    homeserver: Homeserver, room_id: str, ev: Mapping[str, Any], publisher: str
) -> Mapping[str, Any] | None:
    for _ in range(MAX_SLOT_HISTORY):
        unsigned = ev.get("unsigned")
        replaced = unsigned.get("replaces_state") if isinstance(unsigned, dict) else None
        if not isinstance(replaced, str):
            return None
        prev = homeserver.event(room_id, replaced)
        if prev is None:
            return None
        if prev.get("sender") == publisher:
            return prev
        ev = prev
    return None
