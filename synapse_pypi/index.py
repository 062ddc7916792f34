"""One model of a simple-API project page; a parser per upstream format, a renderer per
output format, and our own lossless storage form.

* PEP 503: the HTML simple API (anchors, ``#<hash>=`` fragments, ``data-requires-python``).
* PEP 691: the JSON simple API; PEP 629: the ``api-version`` every page carries.
* PEP 592: yanked files; PEP 658/714: core metadata files; PEP 700: ``versions``, ``size``,
  ``upload-time``; PEP 740: ``provenance``; PEP 792: project status markers.
* PyPI's own ``meta._last-serial`` (JSON) and ``<!--SERIAL n-->`` (HTML): how recent a page is.

Pure logic: no Twisted, no Synapse. Every parser raises `MalformedPage` and nothing else
on bad input, however bad (the parsers are fuzzed).
"""

import codecs
import enum
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from html import escape, unescape
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import attrs
from packaging.utils import parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize

__all__ = [
    "API_VERSION",
    "DistFile",
    "MalformedPage",
    "ProjectPage",
    "ProjectStatus",
    "RootPage",
    "SerialVerdict",
    "Stopped",
    "api_version",
    "judge_serial",
    "page_from_json",
    "page_to_json",
    "root_from_json",
    "root_to_json",
    "parse_project",
    "parse_project_html",
    "parse_project_json",
    "parse_root",
    "parse_root_html",
    "parse_root_json",
    "parse_root_page",
    "render_project_html",
    "render_project_json",
    "render_root_html",
    "render_root_json",
]

# PEP 629: the newest simple API version we speak. 1.1 (PEP 700) adds versions, size and
# upload-time, size being mandatory; 1.4 (PEP 792) adds project status markers. A page
# claims only what it carries: see `api_version`.
API_VERSION = "1.4"
_API_BASE = "1.0"
_API_SIZES = "1.1"

# Our own storage form's version; bump it (and read the old ones) when the form changes.
# 2 added status, status_reason and last_serial.
_STORAGE_FORMAT = 2
_STORAGE_FORMATS = (1, 2)

# Hash names we read from HTML fragments and write there, best first. PEP 503 allows any
# hashlib name; pip and uv only check the first six, so sha256 leads (and PEP 691 asks
# indexes to provide it).
_HASH_PREFERENCE = (
    "sha256",
    "sha512",
    "sha384",
    "blake2b",
    "sha224",
    "sha1",
    "md5",
    "sha3_512",
    "sha3_384",
    "sha3_256",
    "sha3_224",
    "blake2s",
)
_FRAGMENT_HASHES = frozenset(hashlib.algorithms_guaranteed)
_HEX = re.compile(r"[0-9a-fA-F]+")
# PEP 700: upload-time is an ISO 8601 date-time, "yyyy-mm-ddThh:mm:ss.ffffffZ", the
# fraction optional. uv refuses a whole page with one it cannot read, so a value of any
# other shape is dropped rather than passed on (a wrong value is worse than none).
_UPLOAD_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})")
# A serial is a non-negative integer; more than 19 digits is no serial any index has.
_MAX_SERIAL = 2**63 - 1
_API_VERSION = re.compile(r"([0-9]+)\.([0-9]+)")

_JSON_TYPES = frozenset(
    {
        "application/vnd.pypi.simple.v1+json",
        "application/vnd.pypi.simple.latest+json",
        # Not a simple-API type, but some small indexes send their PEP 691 JSON as it.
        "application/json",
    }
)
_HTML_TYPES = frozenset(
    {
        "application/vnd.pypi.simple.v1+html",
        "application/vnd.pypi.simple.latest+html",
        "text/html",
        "application/xhtml+xml",
    }
)


class Stopped(Exception):
    """Parsing stopped because the caller's `stop` said so (nobody wants the page)."""


class MalformedPage(ValueError):
    """An index page we cannot use; the message is a one-line reason."""

    def __init__(self, reason: str):
        # One line whatever went into the message, so it reads well in a log and an HTTP error.
        super().__init__(" ".join(str(reason).split()))


class _FrozenDict(dict[str, str]):
    """A read-only, hashable dict, so that a frozen DistFile really is frozen (and hashable)
    while callers can still use it as the plain mapping the interface promises."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]  # dict declares __hash__ None
        return hash(frozenset(self.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("this mapping is read-only")

    # Typed as dict's methods; each only raises, which no caller can rely on otherwise.
    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> Any:
        # The default pickles a dict subclass by __setitem__, which we refuse.
        return (_FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return dict.__repr__(self)


def _hash_map(value: Mapping[str, str]) -> _FrozenDict:
    """Converter: hash name -> hex digest, both lower case, read-only."""
    if isinstance(value, _FrozenDict):
        return value
    return _FrozenDict((k.lower(), v.lower()) for k, v in dict(value).items())


def _core_metadata_value(value: "bool | Mapping[str, str]") -> "bool | Mapping[str, str]":
    """Converter: a bool stays; hashes become read-only, and no hashes at all means True
    (the metadata file exists, PEP 714, but we know no digest of it)."""
    if isinstance(value, bool):
        return value
    hashes = _hash_map(value)
    return hashes if hashes else True


def _yanked_value(value: bool | str) -> bool | str:
    """Converter: PEP 592 has no "yanked for no reason" string; an empty reason is True."""
    return value if value != "" else True


def _optional_text(value: str | None) -> str | None:
    """Converter: an empty string says nothing, like a missing value."""
    return value or None


def _upload_time(value: str | None) -> str | None:
    """Converter: a PEP 700 upload time, or None for anything of another shape."""
    return value if isinstance(value, str) and _UPLOAD_TIME.fullmatch(value) else None


@attrs.frozen
class DistFile:
    """One distribution file on a project page.

    Attributes:
        filename: the file's name (PEP 503: the anchor text; PEP 691: ``filename``).
        url: absolute upstream URL, resolved against the page URL, without fragment.
        hashes: lower-case hash name -> lower-case hex digest, e.g. ``{"sha256": "…"}``.
        requires_python: PEP 345 specifier set as the upstream gave it, or None.
        yanked: PEP 592: False, True, or the reason (a non-empty string).
        core_metadata: PEP 658/714: False, True, or the hashes of the ``.metadata`` file.
        size: PEP 700 size in bytes, or None when unknown.
        upload_time: PEP 700 ISO 8601 upload time as the upstream gave it, or None (also
            for a value of any other shape: uv refuses a page with one it cannot read).
        provenance: PEP 740 provenance URL (absolute), or None.
    """

    filename: str
    url: str
    hashes: Mapping[str, str] = attrs.field(converter=_hash_map)
    requires_python: str | None = attrs.field(default=None, converter=_optional_text)
    yanked: bool | str = attrs.field(default=False, converter=_yanked_value)
    core_metadata: bool | Mapping[str, str] = attrs.field(default=False, converter=_core_metadata_value)
    size: int | None = None
    upload_time: str | None = attrs.field(default=None, converter=_upload_time)
    provenance: str | None = None


class ProjectStatus(enum.Enum):
    """PEP 792 project status markers. A page without one is ACTIVE."""

    ACTIVE = "active"
    ARCHIVED = "archived"
    # The index must not offer any of the project's files (malware, say).
    QUARANTINED = "quarantined"
    DEPRECATED = "deprecated"


def _status_value(value: "ProjectStatus | str") -> ProjectStatus:
    return value if isinstance(value, ProjectStatus) else ProjectStatus(value)


@attrs.frozen
class ProjectPage:
    """The simple-API page of one project, whatever format it came in.

    Attributes:
        name: the project's normalized name.
        files: the files, in page order, one per file name (the first one wins).
        versions: PEP 700 versions: the upstream's list, else derived from the file names;
            deduplicated, sorted by `packaging.version.Version` where they parse.
        status: PEP 792 status; QUARANTINED means that no file may be offered or served
            (`quarantined`), whatever `files` holds.
        status_reason: PEP 792 free-text reason for the status, or None.
        last_serial: the upstream's serial for the project (PyPI's ``_last-serial``), or
            None when it gave none. Serials only grow: a smaller one is an older page.
    """

    name: NormalizedName
    files: tuple[DistFile, ...] = attrs.field(converter=lambda fs: tuple(fs))
    versions: tuple[str, ...] = attrs.field(converter=lambda vs: tuple(vs))
    status: ProjectStatus = attrs.field(default=ProjectStatus.ACTIVE, converter=_status_value)
    status_reason: str | None = attrs.field(default=None, converter=_optional_text)
    last_serial: int | None = None
    _by_filename: dict[str, DistFile] = attrs.field(init=False, eq=False, repr=False, hash=False)

    @property
    def quarantined(self) -> bool:
        """PEP 792: a quarantined project's files are neither listed nor served."""
        return self.status is ProjectStatus.QUARANTINED

    def __attrs_post_init__(self) -> None:
        by_filename: dict[str, DistFile] = {}
        for f in self.files:
            by_filename.setdefault(f.filename, f)
        object.__setattr__(self, "_by_filename", by_filename)

    def file(self, filename: str) -> DistFile | None:
        """The file called `filename`, or None when the page has no such file.

        The file path asks this before serving; a quarantined page still knows its files
        (so that an admin can see them), and the caller checks `quarantined` itself.
        """
        return self._by_filename.get(filename)


@attrs.frozen
class RootPage:
    """The root list (``/simple/``): normalized names, and the upstream's serial."""

    names: tuple[NormalizedName, ...] = attrs.field(converter=lambda ns: tuple(ns))
    last_serial: int | None = None


def api_version(page: ProjectPage) -> str:
    """The api-version a page can honestly claim (PEP 629).

    1.1 needs a size on every file (PEP 700 makes it mandatory); 1.4 (PEP 792) is claimed for
    a page with a status other than the default, and only when it also meets 1.1, since each
    minor version includes the ones before it. A quarantined page lists no files, so it always
    can. A page with a status but a file without a size says 1.0, and the renderers then leave
    its status out (`_status_meta`): PEP 792 markers belong to 1.4 (a client reading a 1.0
    page is to assume "active"), so a 1.0 page that carried them would contradict itself.
    What is lost is advice (archived, deprecated: the files are offered either way), and it
    comes back once the cache knows every size. The stored page keeps the status.
    """
    if page.quarantined:
        # No files are listed, so no size is missing.
        return API_VERSION
    if any(f.size is None for f in page.files):
        return _API_BASE
    if page.status is not ProjectStatus.ACTIVE or page.status_reason is not None:
        return API_VERSION
    return _API_SIZES


class SerialVerdict(enum.Enum):
    """How an upstream page's serial compares with the one of the page we have."""

    # Newer, the same, or nothing to compare: take the upstream's page.
    TAKE = "take"
    # Older: a stale cache or a replayed page. Keep ours.
    OLDER = "older"
    # No serial where ours has one: it cannot show that it is not older. Keep ours, for now.
    MISSING = "missing"
    # No serial for longer than the grace period: the upstream has stopped sending serials
    # (another index behind the same URL, say). Take it, or the page would never change again.
    GONE = "gone"


def judge_serial(new: int | None, old: int | None, missing_for_ms: int, grace_ms: int) -> SerialVerdict:
    """Whether an upstream page may replace ours, by their serials (PyPI's ``_last-serial``).

    Serials only grow, so a smaller one is an older page. A page without a serial after one
    with a serial is held back too (a stale copy from a cache or a fallback server that drops
    the serial looks just like that), but only for `grace_ms`: an upstream that stopped
    sending serials for good must not freeze the page for ever.

    Args:
        new: the upstream's serial, or None.
        old: the serial of the page we have, or None.
        missing_for_ms: how long the upstream has been sending this page without a serial
            while ours has one (0 the first time).
        grace_ms: how long a page without a serial is held back.
    """
    if old is None:
        return SerialVerdict.TAKE
    if new is not None:
        return SerialVerdict.OLDER if new < old else SerialVerdict.TAKE
    return SerialVerdict.MISSING if missing_for_ms < grace_ms else SerialVerdict.GONE


# --- shared helpers ----------------------------------------------------------------------


def _short(value: object, limit: int = 80) -> str:
    """A value for an error message: quoted, escaped to one line, not too long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_api_version(value: object, where: str) -> None:
    """PEP 629: a client must refuse a major version it does not know (we know 1)."""
    if not isinstance(value, str):
        raise MalformedPage(f"{where}: api-version is not a string: {_short(value)}")
    match = _API_VERSION.fullmatch(value)
    if match is None:
        raise MalformedPage(f"{where}: api-version {_short(value)} is not <major>.<minor>")
    # Compare digits as text: int() refuses very long numbers with its own error.
    if match.group(1).lstrip("0") != "1":
        raise MalformedPage(f"{where}: unsupported api-version {_short(value)} (this index reads 1.x)")


# An absolute http(s) URL that urljoin would hand back unchanged and urlsplit would
# accept: a plain ASCII host, no empty "?" or "#", nothing to normalise. Most file URLs
# on a page look like this, and skipping urljoin for them halves a link's cost.
_PLAIN_ABSOLUTE = re.compile(
    r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!$-:=@-Z_a-z~]*)?(\?[!$-;=?@-Z_a-z~]+)?(#[!$-;=?@-Z_a-z~]+)?"
)
# A relative reference without a scheme, query or dot segment ("f.whl#sha256=...",
# "/files/f.whl"): joined to a plain base by hand, as urljoin would.
_PLAIN_RELATIVE = re.compile(r"(/?)((?:[!$&-.0-9=@-Z_a-z~]+/)*[!$&-.0-9=@-Z_a-z~]*)(#[!$-;=?@-Z_a-z~]+)?")
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
# An ASCII file name that is_safe_filename would accept, checked in one regex step.
_PLAIN_FILENAME = re.compile(r"[!-\-0-\[\]-~][ -\.0-\[\]-~]{0,254}")


def _resolve(base: str, href: str, what: str) -> str:
    """An absolute http(s) URL from a possibly relative one (PEP 503, PEP 691: relative
    URLs are relative to the page). Other schemes are refused: a hostile upstream must
    not make us open file: or other local URLs."""
    if _PLAIN_ABSOLUTE.fullmatch(href):
        return href
    joined = _join_plain(base, href)
    if joined is not None:
        return joined
    try:
        url = urljoin(base, href.strip())
        parts = urlsplit(url)
    except ValueError as e:  # e.g. a broken IPv6 literal in the netloc
        raise MalformedPage(f"{what}: invalid URL {_short(href)}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise MalformedPage(f"{what}: URL {_short(url)} is not an absolute http(s) URL")
    return url


@functools.lru_cache(maxsize=64)
def _plain_base(base: str) -> tuple[str, str] | None:
    """(origin, directory) of a base URL that `_join_plain` can join to, else None."""
    match = _PLAIN_ABSOLUTE.fullmatch(base)
    if match is None or "?" in base or "#" in base or _DOT_SEGMENT.search(match.group(2) or ""):
        return None
    origin = base[: match.start(2)] if match.group(2) else base
    directory = base[: base.rfind("/") + 1] if match.group(2) else base + "/"
    return origin, directory


def _join_plain(base: str, href: str) -> str | None:
    """urljoin(base, href) for the common relative links, without urljoin's cost; None
    when the link needs the general rules."""
    match = _PLAIN_RELATIVE.fullmatch(href)
    if match is None or not match.group(2) or ":" in match.group(2).split("/", 1)[0] or _DOT_SEGMENT.search(match.group(2)):
        return None
    parts = _plain_base(base)
    if parts is None:
        return None
    if match.group(1):
        return parts[0] + href
    return parts[1] + href


def _filename_from_url(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _check_filename(filename: str, what: str) -> str:
    if not _PLAIN_FILENAME.fullmatch(filename) and not is_safe_filename(filename):
        raise MalformedPage(f"{what}: unsafe or empty file name {_short(filename)}")
    return filename


def _hex(value: str, what: str) -> str:
    if not _HEX.fullmatch(value):
        raise MalformedPage(f"{what}: hash value {_short(value)} is not hex")
    return value.lower()


def _fragment_hashes(fragment: str, what: str) -> dict[str, str]:
    """Hashes from a URL fragment (PEP 503: ``#<hashname>=<hexdigest>``). Fragments that
    are not hashes (``#egg=...``, ``#subdirectory=...``) are no concern of ours."""
    hashes: dict[str, str] = {}
    for part in fragment.split("&"):
        key, sep, value = part.partition("=")
        key = key.lower()
        if sep and key in _FRAGMENT_HASHES:
            hashes.setdefault(key, _hex(value, what))
    return hashes


def _preferred_hash(hashes: Mapping[str, str]) -> tuple[str, str] | None:
    for name in _HASH_PREFERENCE:
        if name in hashes:
            return name, hashes[name]
    return None


def _status(value: object, reason: object, what: str) -> tuple[ProjectStatus, str | None]:
    """PEP 792 status and reason. An unknown status is refused rather than read as
    "active": the closed set is the PEP's, and a quarantine must never be missed."""
    if value is None:
        status = ProjectStatus.ACTIVE
    elif not isinstance(value, str):
        raise MalformedPage(f"{what}: project status must be a string, not {_type_name(value)}")
    else:
        try:
            status = ProjectStatus(value.strip().lower())
        except ValueError:
            valid = ", ".join(s.value for s in ProjectStatus)
            raise MalformedPage(f"{what}: unknown project status {_short(value)} (PEP 792 has: {valid})") from None
    if reason is not None and not isinstance(reason, str):
        raise MalformedPage(f"{what}: project status reason must be a string, not {_type_name(reason)}")
    if isinstance(reason, str):
        _json_str(reason, f"{what}: project status reason")
    return status, reason or None


def _serial(value: object) -> int | None:
    """A serial, or None for anything that is not one: it is PyPI's private field, and a
    page is still usable without it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SERIAL:
        return None
    return value


_STOP_EVERY = 4096


def _check_stop(stop: Callable[[], bool] | None, count: int) -> None:
    """Raise `Stopped` when `stop` says so; asked once every few thousand items."""
    if stop is not None and count % _STOP_EVERY == 0 and stop():
        raise Stopped()


def _sort_versions(versions: Iterable[str]) -> tuple[str, ...]:
    """Deduplicated, in `Version` order where they parse, the rest after them by text."""

    def key(text: str) -> tuple[Any, ...]:
        try:
            return (0, Version(text), text)
        except ValueError:  # InvalidVersion, or a number too long for int()
            return (1, text)

    return tuple(sorted(set(versions), key=key))


def versions_from_filenames(filenames: Iterable[str]) -> tuple[str, ...]:
    """PEP 700 versions for an upstream that gave none: the versions in the file names
    that packaging can read (wheels and sdists); other files (eggs, installers) are left out."""
    versions: dict[str, Version] = {}
    for filename in filenames:
        try:
            if filename.endswith(".whl"):
                version = parse_wheel_filename(filename)[1]
            else:
                version = parse_sdist_filename(filename)[1]
        except ValueError:  # InvalidWheelFilename, InvalidSdistFilename, InvalidVersion
            continue
        versions.setdefault(str(version), version)
    # The order _sort_versions gives, without parsing every version a second time.
    return tuple(sorted(versions, key=lambda text: (versions[text], text)))


def _unique_files(files: Iterable[DistFile]) -> tuple[DistFile, ...]:
    # Two links with one name cannot both be served under that name; keep the first,
    # as pip would find it first.
    seen: set[str] = set()
    unique = []
    for f in files:
        if f.filename not in seen:
            seen.add(f.filename)
            unique.append(f)
    return tuple(unique)


def _as_name(name: str) -> NormalizedName:
    return name if isinstance(name, NormalizedName) else normalize(name)


def _split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    media, *raw_params = content_type.split(";")
    params = {}
    for param in raw_params:
        key, _, value = param.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _html_as_utf8(body: bytes, params: Mapping[str, str]) -> bytes:
    """HTML bodies in another declared charset, transcoded to the UTF-8 our parser reads."""
    charset = params.get("charset")
    if not charset:
        return body
    try:
        if codecs.lookup(charset).name == "utf-8":
            return body
        return bytes(body).decode(charset).encode("utf-8")
    except (LookupError, ValueError) as e:  # unknown or non-text codec; UnicodeError
        raise MalformedPage(f"cannot decode the page as {_short(charset)}: {e}") from None


def _looks_like_json(body: bytes) -> bool:
    return bytes(body).lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


# --- HTML (PEP 503) ----------------------------------------------------------------------


@attrs.define
class _Anchor:
    attrs: dict[str, str | None]  # the name shadows the module in this class body only
    text: list[str] = attrs.field(factory=list)  # type: ignore[attr-defined]  # see above


@attrs.define
class _HtmlDocument:
    """What we read from an HTML page: anchors, the first ``<base href>``, the
    ``pypi:*`` meta tags (PEP 629 version, PEP 792 status) and PyPI's serial comment."""

    anchors: list[_Anchor] = attrs.field(factory=list)
    base: str | None = None
    api_versions: list[str | None] = attrs.field(factory=list)
    meta: dict[str, str | None] = attrs.field(factory=dict)
    serial: int | None = None


# The HTML tokenizer's pieces (WHATWG HTML "tokenization", reduced to what an index page
# needs). Each one matches at a given position and never scans past what it consumes, so
# the whole scan is linear in the page: html.parser is not (an unclosed "<a " rescans the
# rest of the page, so a junk page of many of them took minutes).
_TAG_NAME = re.compile(r"[A-Za-z][^\t\n\f\r />]*")
_SPACE = re.compile(r"[\t\n\f\r /]*")
_ATTRIBUTE_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r />=]*")
_EQUALS = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED_VALUE = re.compile(r"[^\t\n\f\r >]*")
# Where markup may start; any other "<" is text, skipped without a Python step per byte.
_MARKUP_START = re.compile(r"<[A-Za-z!?/]")
_SERIAL_COMMENT = re.compile(r"\s*SERIAL\s+([0-9]{1,19})\s*")
# Attributes read per tag; the rest of a tag with more is skipped (a real anchor has a
# handful; a junk page of one endless tag would otherwise cost a Python step each).
_MAX_ATTRIBUTES = 64
# Elements whose content is text, not markup: a "<a" in a script is no link.
_RAW_TEXT = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"})


class _HtmlScanner:
    """One pass over a page, collecting `_HtmlDocument`'s parts.

    Browsers' recovery rules where they matter to us: an ``<a>`` inside an ``<a>``
    closes the first, attributes repeat with the first one counting, names are case
    insensitive, character references are decoded in text and attribute values, and a
    page that ends inside a tag or comment simply ends there.
    """

    def __init__(self, text: str):
        self._text = text
        self._pos = 0
        self._open: _Anchor | None = None
        self.document = _HtmlDocument()

    def scan(self) -> _HtmlDocument:
        text, search = self._text, _MARKUP_START.search
        end = len(text)
        while self._pos < end:
            match = search(text, self._pos)
            if match is None:
                self._add_text(text[self._pos :])
                break
            lt = match.start()
            if lt > self._pos:
                self._add_text(text[self._pos : lt])
            self._pos = lt
            if not self._markup():
                # Not markup after all ("</ >"): the "<" is text.
                self._add_text("<")
                self._pos = lt + 1
        self._close_anchor()
        return self.document

    def _add_text(self, data: str) -> None:
        if self._open is not None:
            self._open.text.append(data)

    def _markup(self) -> bool:
        """Consume the markup at `_pos` (which is at a "<"); False if it is text."""
        text, pos = self._text, self._pos
        following = text[pos + 1 : pos + 2]
        if following == "!":
            if text.startswith("<!--", pos):
                self._comment(pos + 4)
            else:  # <!DOCTYPE ...>, <![CDATA[ ... ]> and the like: up to the next ">"
                self._skip_to_gt(pos + 2)
            return True
        if following == "?":  # a processing instruction: a bogus comment
            self._skip_to_gt(pos + 2)
            return True
        if following == "/":
            match = _TAG_NAME.match(text, pos + 2)
            if match is None:
                if text.startswith(">", pos + 2):
                    self._pos = pos + 3  # "</>" is dropped
                else:
                    self._skip_to_gt(pos + 2)
                return True
            if match.group().lower() == "a":
                self._close_anchor()
            self._skip_to_gt(match.end())
            return True
        match = _TAG_NAME.match(text, pos + 1)
        if match is None:
            return False
        self._start_tag(match.group().lower(), match.end())
        return True

    def _skip_to_gt(self, start: int) -> None:
        gt = self._text.find(">", start)
        self._pos = len(self._text) if gt < 0 else gt + 1

    def _comment(self, start: int) -> None:
        close = self._text.find("-->", start)
        body = self._text[start : len(self._text) if close < 0 else close]
        self._pos = len(self._text) if close < 0 else close + 3
        # PyPI writes the project's serial as <!--SERIAL 123--> (what its
        # X-PyPI-Last-Serial header says); the JSON pages have meta._last-serial.
        match = _SERIAL_COMMENT.fullmatch(body) if len(body) < 64 else None
        if match is not None and self.document.serial is None:
            self.document.serial = int(match.group(1))

    def _start_tag(self, name: str, pos: int) -> None:
        text = self._text
        end = len(text)
        attributes: dict[str, str | None] = {}
        read = 0
        while True:
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # matches the empty string
            if pos >= end:
                self._pos = end  # the page ends inside a tag: the tag is dropped
                return
            if text[pos] == ">":
                pos += 1
                break
            read += 1
            if read > _MAX_ATTRIBUTES:
                gt = text.find(">", pos)
                if gt < 0:
                    self._pos = end
                    return
                pos = gt + 1
                break
            match = _ATTRIBUTE_NAME.match(text, pos)
            assert match is not None  # any character but space, "/" and ">" starts a name
            key = match.group().lower()
            pos = match.end()
            value: str | None = None
            equals = _EQUALS.match(text, pos)
            if equals is not None:
                pos = equals.end()
                quote_char = text[pos : pos + 1]
                if quote_char in ('"', "'"):
                    close = text.find(quote_char, pos + 1)
                    if close < 0:
                        self._pos = end  # the page ends inside a quoted value
                        return
                    value = unescape(text[pos + 1 : close])
                    pos = close + 1
                else:
                    unquoted = _UNQUOTED_VALUE.match(text, pos)
                    assert unquoted is not None  # matches the empty string
                    value = unescape(unquoted.group())
                    pos = unquoted.end()
            # Of repeated attributes the first counts.
            attributes.setdefault(key, value)
        self._pos = pos
        self._element(name, attributes)
        if name in _RAW_TEXT:
            # Up to the matching end tag, case-insensitively; one search, no rescans.
            match = re.compile("</" + re.escape(name) + r"[\t\n\f\r />]", re.IGNORECASE).search(text, pos)
            content_end = end if match is None else match.start()
            self._add_text(text[pos:content_end])
            self._pos = content_end

    def _element(self, name: str, attributes: dict[str, str | None]) -> None:
        document = self.document
        if name == "a":
            # An <a> inside an <a> is a parse error that browsers recover from by
            # closing the first one; do the same.
            self._close_anchor()
            self._open = _Anchor(attributes)
        elif name == "base" and document.base is None and attributes.get("href"):
            document.base = attributes["href"]
        elif name == "meta":
            key = (attributes.get("name") or "").lower()
            if key == "pypi:repository-version":
                document.api_versions.append(attributes.get("content"))
            elif key.startswith("pypi:"):
                document.meta.setdefault(key, attributes.get("content"))

    def _close_anchor(self) -> None:
        if self._open is not None:
            self._open.text = [unescape("".join(self._open.text))]
            self.document.anchors.append(self._open)
            self._open = None


def _parse_html(body: bytes) -> _HtmlDocument:
    """The anchors, base and PEP 629 version of an HTML page, the version checked."""
    try:
        # PEP 503 pages are UTF-8; a BOM is tolerated.
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MalformedPage(f"HTML page is not UTF-8: {e}") from None
    document = _HtmlScanner(text).scan()
    for version in document.api_versions:
        _check_api_version(version, "pypi:repository-version meta tag")
    return document


def _html_core_metadata(value: str | None, what: str) -> bool | dict[str, str]:
    """PEP 658: ``"true"`` or ``"<hashname>=<hexdigest>"``; anything else means no file
    (advertising a metadata file that may not exist would send installers after a 404)."""
    if value is None:
        return False
    if value.strip().lower() == "true":
        return True
    name, sep, digest = value.strip().partition("=")
    name = name.lower()
    if sep and name in _FRAGMENT_HASHES:
        return {name: _hex(digest, what)}
    return False


def _file_from_anchor(anchor: _Anchor, base: str, number: int) -> DistFile | None:
    href = anchor.attrs.get("href")
    if href is None or not href.strip():
        return None  # PEP 503 files are links; an anchor without a target is decoration
    what = f"link {number}"
    url, _, fragment = _resolve(base, href, what).partition("#")
    # PEP 503: the anchor text is the file name. Some pages leave it empty; the URL's
    # last segment is the next best.
    filename = "".join(anchor.text).strip(" \t\n\r\f") or _filename_from_url(url)
    _check_filename(filename, what)
    requires_python = anchor.attrs.get("data-requires-python") or None
    yanked: bool | str = False
    if "data-yanked" in anchor.attrs:
        # PEP 592: the attribute's presence means yanked; its value, if any, is the reason.
        yanked = anchor.attrs["data-yanked"] or True
    # PEP 714: read the new attribute, fall back to the old one; the new one wins.
    if "data-core-metadata" in anchor.attrs:
        core_metadata = _html_core_metadata(anchor.attrs["data-core-metadata"], what)
    else:
        core_metadata = _html_core_metadata(anchor.attrs.get("data-dist-info-metadata"), what)
    provenance = anchor.attrs.get("data-provenance")
    return DistFile(
        filename=filename,
        url=url,
        hashes=_fragment_hashes(fragment, what),
        requires_python=requires_python,
        yanked=yanked,
        core_metadata=core_metadata,
        provenance=_resolve(base, provenance, what) if provenance else None,
    )


def parse_project_html(
    body: bytes, page_url: str, name: NormalizedName, stop: Callable[[], bool] | None = None
) -> ProjectPage:
    """Read a PEP 503 project page.

    Args:
        body: the page as received (UTF-8).
        page_url: the URL the page came from; relative links are resolved against it
            (or against the page's ``<base href>``).
        name: the project's normalized name.

    Returns:
        The page; versions are derived from the file names (HTML carries none).

    Raises:
        MalformedPage: the page cannot be read or a link has no usable file name or URL.
    """
    name = _as_name(name)
    page = _parse_html(body)
    # HTML: links are relative to the first <base href>, itself relative to the page.
    base = page_url if page.base is None else _resolve(page_url, page.base, "<base href>")
    files = []
    seen: set[tuple[str | None, str]] = set()
    for number, anchor in enumerate(page.anchors, 1):
        _check_stop(stop, number)
        # The same link again can only lose to the first: skip it before resolving it.
        link = (anchor.attrs.get("href"), anchor.text[0] if anchor.text else "")
        if link in seen:
            continue
        seen.add(link)
        dist = _file_from_anchor(anchor, base, number)
        if dist is not None:
            files.append(dist)
    unique = _unique_files(files)
    status, reason = _status(
        page.meta.get("pypi:project-status"), page.meta.get("pypi:project-status-reason"), "pypi:project-status meta tag"
    )
    return ProjectPage(
        name,
        unique,
        versions_from_filenames(f.filename for f in unique),
        status=status,
        status_reason=reason,
        last_serial=_serial(page.serial),
    )


def parse_root_html(body: bytes) -> tuple[NormalizedName, ...]:
    """Read a PEP 503 root page (``/simple/``).

    Args:
        body: the page as received (UTF-8).

    Returns:
        The normalized project names in page order, without repeats. Names that are not
        valid project names are left out: one odd entry among many should not cost the
        whole index.

    Raises:
        MalformedPage: the page cannot be read at all.
    """
    return _root_html(body).names


def _root_html(body: bytes) -> RootPage:
    names: dict[NormalizedName, None] = {}
    document = _parse_html(body)
    for anchor in document.anchors:
        href = anchor.attrs.get("href")
        if href is None or not href.strip():
            continue
        text = "".join(anchor.text).strip(" \t\n\r\f")
        if not text:
            text = unquote(href.strip().rstrip("/").rsplit("/", 1)[-1])
        try:
            names.setdefault(normalize(text), None)
        except InvalidName:
            continue
    return RootPage(tuple(names), _serial(document.serial))


# --- JSON (PEP 691) ----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(body: bytes) -> Any:
    try:
        # RFC 8259: JSON between systems is UTF-8. json.loads(bytes) would also guess
        # UTF-16/32, which no index sends; decode ourselves to refuse it.
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MalformedPage(f"JSON page is not UTF-8: {e}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise MalformedPage(f"invalid JSON: {e}") from None


def _type_name(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _json_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MalformedPage(f"{what} must be a string, not {_type_name(value)}")
    try:
        # JSON can carry lone surrogates ("\ud800"); nothing downstream can encode them.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedPage(f"{what} is not valid Unicode") from None
    return value


def _json_optional_str(value: object, what: str) -> str | None:
    return None if value is None else _json_str(value, what)


def _json_object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPage(f"{what} must be an object, not {_type_name(value)}")
    return value


def _json_list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedPage(f"{what} must be an array, not {_type_name(value)}")
    return value


def _json_hashes(value: object, what: str) -> dict[str, str]:
    hashes = {}
    for key, digest in _json_object(value, what).items():
        key = _json_str(key, f"{what} key")
        digest = _json_str(digest, f"{what}[{key!r}]")
        hashes[key.lower()] = _hex(digest, f"{what}[{key!r}]")
    return hashes


def _check_meta(data: Mapping[str, Any], what: str) -> dict[str, Any]:
    if "meta" not in data:
        raise MalformedPage(f"{what} has no meta (PEP 691 requires meta.api-version)")
    meta = _json_object(data["meta"], f"{what} meta")
    if "api-version" not in meta:
        raise MalformedPage(f"{what} meta has no api-version")
    _check_api_version(meta["api-version"], f"{what} meta")
    return meta


def _json_core_metadata(value: object, what: str) -> bool | dict[str, str]:
    if isinstance(value, bool):
        return value
    if isinstance(value, dict):
        return _json_hashes(value, what)
    raise MalformedPage(f"{what} must be a boolean or an object of hashes, not {_type_name(value)}")


def _file_from_json(item: object, page_url: str, index: int) -> DistFile:
    what = f"files[{index}]"
    entry = _json_object(item, what)
    if "filename" not in entry:
        raise MalformedPage(f"{what} has no filename")
    filename = _json_str(entry["filename"], f"{what}.filename")
    _check_filename(filename, what)
    if "url" not in entry:
        raise MalformedPage(f"{what} ({filename}) has no url")
    href = _json_str(entry["url"], f"{what}.url")
    if not href.strip():
        raise MalformedPage(f"{what} ({filename}) has an empty url")
    url, _, fragment = _resolve(page_url, href, what).partition("#")
    # The JSON hashes are authoritative; a fragment in the URL only fills in others.
    hashes = _fragment_hashes(fragment, what)
    if entry.get("hashes") is not None:
        hashes.update(_json_hashes(entry["hashes"], f"{what}.hashes"))

    requires_python = _json_optional_str(entry.get("requires-python"), f"{what}.requires-python")

    yanked_value = entry.get("yanked", False)
    yanked: bool | str
    if yanked_value is None or isinstance(yanked_value, bool):
        yanked = bool(yanked_value)
    elif isinstance(yanked_value, str):
        # PEP 592/691: a string is the reason; an empty one still means yanked.
        yanked = _json_str(yanked_value, f"{what}.yanked") or True
    else:
        raise MalformedPage(f"{what}.yanked must be a boolean or a string, not {_type_name(yanked_value)}")

    # PEP 714: "core-metadata" replaces "dist-info-metadata"; read both, the new one wins.
    core_metadata: bool | dict[str, str] = False
    for key in ("core-metadata", "dist-info-metadata"):
        if entry.get(key) is not None:
            core_metadata = _json_core_metadata(entry[key], f"{what}.{key}")
            break

    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedPage(f"{what}.size must be a non-negative integer, not {_short(size)}")

    upload_time = _json_optional_str(entry.get("upload-time"), f"{what}.upload-time")
    provenance = _json_optional_str(entry.get("provenance"), f"{what}.provenance")

    return DistFile(
        filename=filename,
        url=url,
        hashes=hashes,
        requires_python=requires_python or None,
        yanked=yanked,
        core_metadata=core_metadata,
        size=size,
        upload_time=upload_time,
        provenance=_resolve(page_url, provenance, f"{what}.provenance") if provenance else None,
    )


def parse_project_json(
    body: bytes, page_url: str, name: NormalizedName, stop: Callable[[], bool] | None = None
) -> ProjectPage:
    """Read a PEP 691 project page.

    Args:
        body: the page as received (UTF-8 JSON).
        page_url: the URL the page came from; relative file URLs are resolved against it.
        name: the project's normalized name; the page's ``name`` must normalize to it.

    Returns:
        The page. Versions are the page's PEP 700 ``versions`` when it has them, else
        derived from the file names.

    Raises:
        MalformedPage: invalid JSON, a field of the wrong type, an unsafe file name, a
            page for another project or an api-version other than 1.x.
    """
    name = _as_name(name)
    data = _json_object(_load_json(body), "project page")
    meta = _check_meta(data, "project page")
    if "name" not in data:
        raise MalformedPage("project page has no name")
    page_name = _json_str(data["name"], "project page name")
    try:
        normalized = normalize(page_name)
    except InvalidName as e:
        raise MalformedPage(f"project page name: {e}") from None
    if normalized != name:
        raise MalformedPage(f"page is for project {normalized!r}, not {name!r}")
    if "files" not in data:
        raise MalformedPage("project page has no files")
    entries = []
    for i, item in enumerate(_json_list(data["files"], "files")):
        _check_stop(stop, i)
        entries.append(_file_from_json(item, page_url, i))
    files = _unique_files(entries)
    if data.get("versions") is not None:
        versions = [
            _json_str(v, f"versions[{i}]") for i, v in enumerate(_json_list(data["versions"], "versions"))
        ]
        sorted_versions = _sort_versions(versions)
    else:
        # PEP 691 api-version 1.0 pages have no versions; derive them (PEP 700).
        sorted_versions = versions_from_filenames(f.filename for f in files)
    status, reason = ProjectStatus.ACTIVE, None
    if data.get("project-status") is not None:
        # PEP 792: {"status": "quarantined", "reason": "..."}
        marker = _json_object(data["project-status"], "project-status")
        status, reason = _status(marker.get("status"), marker.get("reason"), "project-status")
    return ProjectPage(
        name,
        files,
        sorted_versions,
        status=status,
        status_reason=reason,
        last_serial=_serial(meta.get("_last-serial")),
    )


def parse_root_json(body: bytes) -> tuple[NormalizedName, ...]:
    """Read a PEP 691 root page (``/simple/``).

    Args:
        body: the page as received (UTF-8 JSON).

    Returns:
        The normalized project names in page order, without repeats; invalid names are
        left out.

    Raises:
        MalformedPage: invalid JSON, fields of the wrong type or an api-version other
            than 1.x.
    """
    return _root_json(body).names


def _root_json(body: bytes) -> RootPage:
    data = _json_object(_load_json(body), "root page")
    meta = _check_meta(data, "root page")
    if "projects" not in data:
        raise MalformedPage("root page has no projects")
    names: dict[NormalizedName, None] = {}
    for i, item in enumerate(_json_list(data["projects"], "projects")):
        entry = _json_object(item, f"projects[{i}]")
        if "name" not in entry:
            raise MalformedPage(f"projects[{i}] has no name")
        raw = _json_str(entry["name"], f"projects[{i}].name")
        try:
            names.setdefault(normalize(raw), None)
        except InvalidName:
            continue
    return RootPage(tuple(names), _serial(meta.get("_last-serial")))


# --- dispatch ----------------------------------------------------------------------------


def parse_project(
    body: bytes, content_type: str, page_url: str, name: NormalizedName, stop: Callable[[], bool] | None = None
) -> ProjectPage:
    """Read a project page in whichever format its Content-Type names.

    Args:
        body: the page as received.
        content_type: the response's Content-Type (JSON or HTML simple-API types,
            ``text/html``); when empty, the body is sniffed.
        page_url: the URL the page came from (after redirects).
        name: the project's normalized name.
        stop: asked every few thousand links; True stops the parse with `Stopped` (the
            page is big and nobody wants it any more).

    Returns:
        The page.

    Raises:
        MalformedPage: an unknown content type, or a page the format's parser refuses.
        Stopped: `stop` said so.
    """
    media, params = _split_content_type(content_type)
    if media in _JSON_TYPES or (not media and _looks_like_json(body)):
        return parse_project_json(body, page_url, name, stop)
    if media in _HTML_TYPES or not media:
        return parse_project_html(_html_as_utf8(body, params), page_url, name, stop)
    raise MalformedPage(f"unexpected content type {_short(content_type)} for a project page")


def parse_root(body: bytes, content_type: str) -> tuple[NormalizedName, ...]:
    """Read a root page in whichever format its Content-Type names.

    Args:
        body: the page as received.
        content_type: the response's Content-Type; when empty, the body is sniffed.

    Returns:
        The normalized project names, in page order, without repeats.

    Raises:
        MalformedPage: an unknown content type, or a page the format's parser refuses.
    """
    return parse_root_page(body, content_type).names


def parse_root_page(body: bytes, content_type: str) -> RootPage:
    """Like `parse_root`, with the upstream's serial (``_last-serial``, ``<!--SERIAL n-->``).

    Raises:
        MalformedPage: an unknown content type, or a page the format's parser refuses.
    """
    media, params = _split_content_type(content_type)
    if media in _JSON_TYPES or (not media and _looks_like_json(body)):
        return _root_json(body)
    if media in _HTML_TYPES or not media:
        return _root_html(_html_as_utf8(body, params))
    raise MalformedPage(f"unexpected content type {_short(content_type)} for the root page")


# --- rendering ---------------------------------------------------------------------------


def _html_head(title: str, version: str, extra: Iterable[tuple[str, str]] = ()) -> list[str]:
    out = [
        "<!DOCTYPE html>\n<html>\n  <head>\n",
        # PEP 629: every page says which API version it speaks.
        f'    <meta name="pypi:repository-version" content="{version}">\n',
    ]
    out.extend(f'    <meta name="{name}" content="{escape(content)}">\n' for name, content in extra)
    out.append(f"    <title>{escape(title)}</title>\n  </head>\n  <body>\n")
    return out


def _serial_comment(serial: int | None) -> str:
    # What PyPI writes, so that a mirror of this mirror reads the serial from HTML too.
    return "" if serial is None else f"<!--SERIAL {serial}-->\n"


def _status_meta(page: ProjectPage, version: str) -> list[tuple[str, str]]:
    """PEP 792 meta tags; "active" with no reason is the default and is left out, and so is
    any status on a page that cannot claim 1.4 (`version`, see `api_version`)."""
    if version != API_VERSION or (page.status is ProjectStatus.ACTIVE and page.status_reason is None):
        return []
    tags = [("pypi:project-status", page.status.value)]
    if page.status_reason is not None:
        tags.append(("pypi:project-status-reason", page.status_reason))
    return tags


def _offered(page: ProjectPage) -> tuple[DistFile, ...]:
    # PEP 792: an index must not offer any file of a quarantined project.
    return () if page.quarantined else page.files


def _html_core_metadata_value(value: bool | Mapping[str, str]) -> str:
    preferred = _preferred_hash(value) if not isinstance(value, bool) else None
    return f"{preferred[0]}={preferred[1]}" if preferred else "true"


def _href(f: DistFile, file_url: Callable[[DistFile], str]) -> str:
    """The caller's URL for `f` with a PEP 503 ``#<hashname>=<hexdigest>`` fragment, so
    that installers check the bytes whichever server they come from."""
    preferred = _preferred_hash(f.hashes)
    url = file_url(f)
    return url if preferred is None else f"{url}#{preferred[0]}={preferred[1]}"


def render_project_html(page: ProjectPage, file_url: Callable[[DistFile], str]) -> bytes:
    """Render a project page as PEP 503 HTML (with PEP 592/658/714/740 attributes).

    Args:
        page: the page.
        file_url: gives each file's href (the caller passes a relative URL). A
            ``#<hash>=`` fragment is appended: sha256 when known, else another hash.

    Returns:
        The UTF-8 page; every value is HTML-escaped.
    """
    title = f"Links for {page.name}"
    version = api_version(page)
    out = _html_head(title, version, _status_meta(page, version))
    out.append(f"    <h1>{escape(title)}</h1>\n")
    for f in _offered(page):
        attributes = [("href", _href(f, file_url))]
        if f.requires_python is not None:
            attributes.append(("data-requires-python", f.requires_python))
        if f.yanked is not False:
            # PEP 592: an empty value is "yanked, no reason given".
            attributes.append(("data-yanked", "" if f.yanked is True else str(f.yanked)))
        if f.core_metadata is not False:
            # PEP 714: emit the new attribute and, for older clients, the old one.
            value = _html_core_metadata_value(f.core_metadata)
            attributes.append(("data-core-metadata", value))
            attributes.append(("data-dist-info-metadata", value))
        if f.provenance is not None:
            attributes.append(("data-provenance", f.provenance))
        rendered = " ".join(f'{key}="{escape(value)}"' for key, value in attributes)
        out.append(f"    <a {rendered}>{escape(f.filename)}</a><br>\n")
    out.append("  </body>\n</html>\n")
    out.append(_serial_comment(page.last_serial))
    return "".join(out).encode("utf-8")


def _file_to_json(f: DistFile, url: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": f.filename, "url": url, "hashes": dict(f.hashes)}
    if f.requires_python is not None:
        entry["requires-python"] = f.requires_python
    entry["yanked"] = f.yanked
    if f.core_metadata is not False:
        # PEP 714: the new key only. pip 22.3-23.1 fail on the old "dist-info-metadata"
        # key in JSON (TypeError: unhashable type: 'dict'), Debian 12's pip 23.0.1 among
        # them; HTML carries both attributes.
        entry["core-metadata"] = f.core_metadata if isinstance(f.core_metadata, bool) else dict(f.core_metadata)
    # PEP 700: size and upload-time only when known (a wrong value is worse than none).
    if f.size is not None:
        entry["size"] = f.size
    if f.upload_time is not None:
        entry["upload-time"] = f.upload_time
    if f.provenance is not None:
        entry["provenance"] = f.provenance
    return entry


def render_project_json(page: ProjectPage, file_url: Callable[[DistFile], str]) -> bytes:
    """Render a project page as PEP 691 JSON, with the api-version `api_version` gives
    (1.1 and PEP 700 when every file has a size, 1.4 with a PEP 792 status as well).

    Args:
        page: the page.
        file_url: gives each file's ``url`` (the caller passes a relative URL). A
            ``#<hash>=`` fragment is appended as in HTML: sha256 when known, else another.

    Returns:
        The UTF-8 (in fact ASCII) JSON document.
    """
    version = api_version(page)
    document: dict[str, Any] = {
        "meta": _json_meta(version, page.last_serial),
        "name": page.name,
        "files": _FILES_MARK,
        "versions": [] if page.quarantined else list(page.versions),
    }
    if _status_meta(page, version):
        marker = {"status": page.status.value}
        if page.status_reason is not None:
            marker["reason"] = page.status_reason
        document["project-status"] = marker
    head, _, tail = _dumps(document).partition(json.dumps(_FILES_MARK))
    # One dumps per file, not one for the whole page: json's C encoder holds the GIL for
    # as long as it runs (a second for 200,000 files), so a page rendered in a thread
    # would stall the reactor; between small calls the reactor gets its turns. The
    # fragment is redundant next to "hashes" but costs nothing, and keeps the URL the same
    # in both formats for clients that read hashes only from URLs.
    files = ",".join(_dumps(_file_to_json(f, _href(f, file_url))) for f in _offered(page))
    return (head + "[" + files + "]" + tail).encode("utf-8")


# A placeholder for the files list while the rest of a page is encoded.
_FILES_MARK = "\x00files\x00"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_meta(version: str, serial: int | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": version}
    if serial is not None:
        meta["_last-serial"] = serial
    return meta


# The root list has nothing that any 1.x version adds to it; it says 1.1, as it always did.
_ROOT_API_VERSION = _API_SIZES


def render_root_html(names: Iterable[str], last_serial: int | None = None) -> bytes:
    """Render the root page (``/simple/``) as PEP 503 HTML.

    Args:
        names: project names; each links to ``<name>/`` relative to the root page.
        last_serial: the upstream's serial, written as PyPI does (``<!--SERIAL n-->``).

    Returns:
        The UTF-8 page.
    """
    out = _html_head("Simple index", _ROOT_API_VERSION)
    # One format string per name: for a 600,000-name root this loop is the whole cost.
    out.extend(f'    <a href="{escape(quote(name))}/">{escape(name)}</a><br>\n' for name in names)
    out.append("  </body>\n</html>\n")
    out.append(_serial_comment(last_serial))
    return "".join(out).encode("utf-8")


def render_root_json(names: Iterable[str], last_serial: int | None = None) -> bytes:
    """Render the root page (``/simple/``) as PEP 691 JSON.

    Args:
        names: project names.
        last_serial: the upstream's serial, as ``meta._last-serial``.

    Returns:
        The UTF-8 (in fact ASCII) JSON document.
    """
    head = _dumps({"meta": _json_meta(_ROOT_API_VERSION, last_serial)})[:-1]
    # One dumps per name, for the reactor's sake (see render_project_json).
    projects = ",".join('{"name":' + json.dumps(name) + "}" for name in names)
    return (head + ',"projects":[' + projects + "]}").encode("utf-8")


# --- storage form ------------------------------------------------------------------------


def page_to_json(page: ProjectPage) -> str:
    """Our own storage form of a page: every field, lossless (`page_from_json` reads it).

    Args:
        page: the page.

    Returns:
        A JSON text.
    """
    document = {
        "format": _STORAGE_FORMAT,
        "name": str(page.name),
        "files": [
            {
                "filename": f.filename,
                "url": f.url,
                "hashes": dict(f.hashes),
                "requires_python": f.requires_python,
                "yanked": f.yanked,
                "core_metadata": f.core_metadata
                if isinstance(f.core_metadata, bool)
                else dict(f.core_metadata),
                "size": f.size,
                "upload_time": f.upload_time,
                "provenance": f.provenance,
            }
            for f in page.files
        ],
        "versions": list(page.versions),
        "status": page.status.value,
        "status_reason": page.status_reason,
        "last_serial": page.last_serial,
    }
    return json.dumps(document, separators=(",", ":"))


_STORED_FILE_KEYS = (
    "filename",
    "url",
    "hashes",
    "requires_python",
    "yanked",
    "core_metadata",
    "size",
    "upload_time",
    "provenance",
)


def _stored_str(entry: Mapping[str, Any], key: str, what: str, optional: bool = False) -> Any:
    if key not in entry:
        raise MalformedPage(f"stored page: {what} has no {key}")
    value = entry[key]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedPage(f"stored page: {what}.{key} must be a string, not {_type_name(value)}")
    return value


def _stored_hashes(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise MalformedPage(f"stored page: {what} must be an object of strings")
    return value


def _stored_file(item: object, index: int) -> DistFile:
    what = f"files[{index}]"
    if not isinstance(item, dict):
        raise MalformedPage(f"stored page: {what} must be an object, not {_type_name(item)}")
    for key in _STORED_FILE_KEYS:
        if key not in item:
            raise MalformedPage(f"stored page: {what} has no {key}")
    filename = _stored_str(item, "filename", what)
    if not is_safe_filename(filename):
        raise MalformedPage(f"stored page: {what}: unsafe file name {_short(filename)}")
    yanked = item["yanked"]
    if not isinstance(yanked, (bool, str)):
        raise MalformedPage(f"stored page: {what}.yanked must be a boolean or a string")
    core_metadata = item["core_metadata"]
    if not isinstance(core_metadata, bool):
        core_metadata = _stored_hashes(core_metadata, f"{what}.core_metadata")
    size = item["size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise MalformedPage(f"stored page: {what}.size must be an integer or null")
    return DistFile(
        filename=filename,
        url=_stored_str(item, "url", what),
        hashes=_stored_hashes(item["hashes"], f"{what}.hashes"),
        requires_python=_stored_str(item, "requires_python", what, optional=True),
        yanked=yanked,
        core_metadata=core_metadata,
        size=size,
        upload_time=_stored_str(item, "upload_time", what, optional=True),
        provenance=_stored_str(item, "provenance", what, optional=True),
    )


def page_from_json(text: str) -> ProjectPage:
    """Read a page stored by `page_to_json`.

    Args:
        text: the stored JSON text.

    Returns:
        The page, equal to the one that was stored.

    Raises:
        MalformedPage: the text is not a stored page of a format we read.
    """
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as e:
        raise MalformedPage(f"stored page: invalid JSON: {e}") from None
    if not isinstance(document, dict):
        raise MalformedPage("stored page: not an object")
    storage_format = document.get("format")
    if storage_format not in _STORAGE_FORMATS or isinstance(storage_format, bool):
        raise MalformedPage(f"stored page: unknown storage format {_short(storage_format)}")
    name = _stored_str(document, "name", "page")
    try:
        normalized = normalize(name)
    except InvalidName as e:
        raise MalformedPage(f"stored page: {e}") from None
    if normalized != name:
        raise MalformedPage(f"stored page: name {_short(name)} is not normalized")
    files = document.get("files")
    versions = document.get("versions")
    if not isinstance(files, list):
        raise MalformedPage("stored page: files must be an array")
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise MalformedPage("stored page: versions must be an array of strings")
    status, reason, serial = ProjectStatus.ACTIVE, None, None
    if storage_format >= 2:
        for key in ("status", "status_reason", "last_serial"):
            if key not in document:
                raise MalformedPage(f"stored page has no {key}")
        try:
            status = ProjectStatus(document["status"])
        except ValueError:
            raise MalformedPage(f"stored page: unknown status {_short(document['status'])}") from None
        reason = _stored_str(document, "status_reason", "page", optional=True)
        serial = document["last_serial"]
        if serial is not None and _serial(serial) is None:
            raise MalformedPage(f"stored page: last_serial {_short(serial)} is not a serial")
    return ProjectPage(
        normalized,
        tuple(_stored_file(item, i) for i, item in enumerate(files)),
        tuple(versions),
        status=status,
        status_reason=reason,
        last_serial=serial,
    )


def root_to_json(root: RootPage) -> str:
    """Our own storage form of the root list (`root_from_json` reads it).

    Args:
        root: the root list.

    Returns:
        A JSON text.
    """
    return json.dumps({"format": _STORAGE_FORMAT, "names": list(root.names), "last_serial": root.last_serial})


def root_from_json(text: str) -> RootPage:
    """Read a root list stored by `root_to_json`, or by the first version (a bare array).

    Raises:
        MalformedPage: the text is not a stored root list.
    """
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, TypeError, RecursionError) as e:
        raise MalformedPage(f"stored root list: invalid JSON: {e}") from None
    serial = None
    if isinstance(document, dict):
        if document.get("format") not in _STORAGE_FORMATS:
            raise MalformedPage(f"stored root list: unknown storage format {_short(document.get('format'))}")
        serial = document.get("last_serial")
        if serial is not None and _serial(serial) is None:
            raise MalformedPage(f"stored root list: last_serial {_short(serial)} is not a serial")
        document = document.get("names")
    if not isinstance(document, list) or not all(isinstance(n, str) for n in document):
        raise MalformedPage("stored root list: names must be an array of strings")
    return RootPage(tuple(NormalizedName(n) for n in document), serial)
