"""HTTP byte ranges (RFC 9110 §14): which part of a file of known size a `Range` asks for.

Only single ranges are honoured. A header that is malformed, names another unit or asks for
several ranges is ignored and the whole file is sent, which the RFC allows; pip and uv only
ever ask for one range. Pure: no Twisted, no Synapse.
"""

import re
from typing import Optional, Tuple

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class RangeNotSatisfiable(ValueError):
    """The range lies wholly outside the file (answer 416 with `bytes */<size>`)."""


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """The byte range a `Range` header asks for, as (first, last) inclusive offsets.

    Args:
        header: the header's value, or None.
        size: the file's length in bytes.

    Returns:
        (first, last) within the file, or None to send the whole file.

    Raises:
        RangeNotSatisfiable: a well-formed single range that selects nothing of the file.
    """
    if header is None or "," in header:
        return None
    m = _RANGE_RE.match(header)
    if m is None:
        return None
    first_s, last_s = m.groups()
    if not first_s and not last_s:
        return None
    if not first_s:
        # A suffix range: the last N bytes.
        suffix = int(last_s)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"bytes=-{suffix} of a {size}-byte file")
        return max(0, size - suffix), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # syntactically invalid: ignore it
    if first >= size:
        raise RangeNotSatisfiable(f"bytes={first}- of a {size}-byte file")
    last = int(last_s) if last_s else size - 1
    return first, min(last, size - 1)


def content_range(first: int, last: int, size: int) -> str:
    """The `Content-Range` value of a 206 answer."""
    return f"bytes {first}-{last}/{size}"
