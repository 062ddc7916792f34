"""URL rules shared by the module's config and the command line (pure: no Synapse, no Twisted,
so that `synapse-pypi run` can check its options without loading Synapse into the wrapper)."""

from typing import Any
from urllib.parse import urlsplit


def index_url(value: Any, key: str) -> str:
    """An absolute http(s) URL, stripped, ending in a slash.

    Args:
        value: what the user gave.
        key: the option's name, for the message.

    Raises:
        ValueError: naming `key` and saying what is wrong.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be an http(s) URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"'{key}' must be an absolute http:// or https:// URL, not {value!r}")
    url = value.strip()
    # Page URLs are built by appending "<project>/", so the base must end in a slash.
    return url if url.endswith("/") else url + "/"
