"""Project names and file names: what we accept from a URL or an upstream page.

Pure logic: no Twisted, no Synapse.
"""

import re
import unicodedata

__all__ = ["MAX_NAME_LENGTH", "InvalidName", "NormalizedName", "is_safe_filename", "normalize"]

# Long enough for every real project; short enough that a name always fits in a room alias
# and a file system path component with room to spare.
MAX_NAME_LENGTH = 128

# Longest file name most file systems store (ext4, APFS, NTFS all stop at 255).
MAX_FILENAME_LENGTH = 255

# PEP 508 "Names": the only valid distribution names; compared case-insensitively.
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# PEP 503 "Normalized Names": runs of -, _ and . become one -, then lower case.
_SEPARATORS = re.compile(r"[-_.]+")


class NormalizedName(str):
    """A project name in PEP 503 normalized form, e.g. ``"zope-interface"``.

    Constructing one does not normalize: use `normalize` for text from outside.
    """

    __slots__ = ()


class InvalidName(ValueError):
    """A project name that PEP 508 does not allow; the message is one readable line."""


def normalize(name: str) -> NormalizedName:
    """Validate a project name and return its PEP 503 normalized form.

    Args:
        name: the name as a user or an index spelled it, e.g. ``"Zope.Interface"``.

    Returns:
        The normalized name, e.g. ``"zope-interface"``.

    Raises:
        InvalidName: the name is not a valid PEP 508 name or is longer than
            `MAX_NAME_LENGTH`.
    """
    if not isinstance(name, str):
        raise InvalidName(f"project name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidName("project name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"project name is longer than {MAX_NAME_LENGTH} characters")
    # fullmatch rather than match: "$" would also accept a trailing newline.
    if not _VALID_NAME.fullmatch(name):
        raise InvalidName(
            f"{name!r} is not a valid project name (PEP 508: ASCII letters, digits, "
            "'.', '_' and '-', starting and ending with a letter or digit)"
        )
    return NormalizedName(_SEPARATORS.sub("-", name).lower())


def is_safe_filename(filename: str) -> bool:
    """Whether a distribution file name can be used as one path component.

    File names come from upstream pages and from request paths, and end up in URLs, room
    state keys (``"<filename>/<mxid>"``) and cache paths, so they must not be able to
    climb out of a directory, hide, or smuggle control characters into logs.

    Args:
        filename: the name to check, e.g. ``"pkg-1.0-py3-none-any.whl"``.

    Returns:
        True when the name has no ``/``, ``\\``, NUL or other control character, is not
        ``.`` or ``..``, does not start with ``.``, and is 1 to 255 characters long.
    """
    if not isinstance(filename, str) or not filename or len(filename) > MAX_FILENAME_LENGTH:
        return False
    if filename.startswith("."):  # also rules out "." and ".."
        return False
    for char in filename:
        if char in "/\\" or unicodedata.category(char) == "Cc":
            return False
    return True
