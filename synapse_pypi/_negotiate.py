"""Content negotiation for the simple API (PEP 691 "Version + Format Selection").

Pure logic: no Twisted, no Synapse.
"""

import enum
import re

__all__ = ["HTML_V1", "JSON_V1", "TEXT_HTML", "Format", "accepts_gzip", "choose_format"]

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
# PEP 503 pages predate PEP 691; old clients and browsers ask for this.
TEXT_HTML = "text/html"

# PEP 691: "latest" names whatever version the server thinks is newest; for us that is v1.
_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}


class Format(enum.Enum):
    """The two page formats we render; the value is the format's PEP 691 content type."""

    HTML_V1 = HTML_V1
    JSON_V1 = JSON_V1


# What we can send, best first: on a tie of quality the earlier one wins. JSON first
# because it is the richer format (PEP 700 fields) and the one modern installers prefer.
_OFFERS = (
    (JSON_V1, Format.JSON_V1),
    (HTML_V1, Format.HTML_V1),
    (TEXT_HTML, Format.HTML_V1),
)

# RFC 9110 §12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _parse_accept(value: str) -> list[tuple[str, str, float]]:
    """Split an Accept value into (type, subtype, q) triples, lower case.

    A range that does not parse is left out rather than failing the whole header: one
    client's odd entry should not cost it the page.
    """
    ranges = []
    for item in value.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if not media:
            continue
        if media == "*":
            # Old Java clients send a bare "*"; everyone reads it as "*/*".
            media = "*/*"
        media = _ALIASES.get(media, media)
        kind, slash, subtype = media.partition("/")
        if not slash or not _TOKEN.match(kind) or not _TOKEN.match(subtype):
            continue
        if kind == "*" and subtype != "*":
            continue  # "*/json" is not a media range (RFC 9110 §12.5.1)
        q = 1.0
        valid = True
        for param in params:
            key, _, val = param.partition("=")
            if key.strip().lower() == "q":
                val = val.strip()
                if not _QVALUE.match(val):
                    valid = False
                    break
                q = float(val)
                # Parameters after q are accept-extensions, not part of the range.
                break
        if valid:
            ranges.append((kind, subtype, q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, str, float]]) -> float:
    """The q the client gives `offer`: the most specific matching range decides
    (RFC 9110 §12.5.1); among equally specific ones, the highest q."""
    kind, _, subtype = offer.partition("/")
    best_specificity = -1
    best_q = 0.0
    for r_kind, r_subtype, q in ranges:
        if r_kind == kind and r_subtype == subtype:
            specificity = 2
        elif r_kind == kind and r_subtype == "*":
            specificity = 1
        elif r_kind == "*" and r_subtype == "*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
        elif specificity == best_specificity:
            best_q = max(best_q, q)
    return best_q


def choose_format(accept: str | None, format_param: str | None) -> tuple[Format, str] | None:
    """Pick the page format and the Content-Type to send with it.

    Args:
        accept: the request's Accept header, or None when it has none.
        format_param: the ``?format=`` query value, or None. PEP 691 lets a client pick
            the format with it where it cannot set headers; it wins over Accept and is
            read with the same syntax (a content type, optionally with q, or a list).

    Returns:
        ``(format, content_type)``: ``text/html`` when that is what the client asked for,
        the ``vnd.pypi.simple.v1`` type otherwise. None when nothing we serve is
        acceptable (the caller answers 406).
    """
    if format_param is not None and format_param.strip():
        # An explicit choice: if it names nothing we serve, that is a 406.
        ranges = _parse_accept(format_param)
    else:
        # RFC 9110 §12.5.1 lets a server ignore an Accept it cannot parse; treating it as
        # absent serves the client something rather than a 406 for a typo.
        ranges = _parse_accept(accept) if accept is not None else []
        if not ranges:
            # PEP 691: no Accept header means a PEP 503 client; answer as text/html as before.
            return Format.HTML_V1, TEXT_HTML
    best: tuple[float, str, Format] | None = None
    for content_type, fmt in _OFFERS:
        q = _quality(content_type, ranges)
        # Strictly greater: on a tie the earlier offer (our preference) stays.
        if q > 0 and (best is None or q > best[0]):
            best = (q, content_type, fmt)
    if best is None:
        return None
    return best[2], best[1]


def accepts_gzip(header: bytes | None) -> bool:
    """Whether an Accept-Encoding header accepts gzip (RFC 9110: a q of 0 refuses it)."""
    if not header:
        return False
    for part in header.decode("latin-1").lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.", "0.0", "0.00", "0.000"))
    return False
