"""ed25519 signing keys: the key file, key ids and the public form config takes.

A publisher (this server, a maintainer, a peer mirror) signs attestations with one ed25519 key.
Its public half is written ``"ed25519:<version> <unpadded base64>"``: that is what
``synapse-pypi`` prints and what ``trusted_keys`` in the config takes.

Pure logic and local files: no Twisted, no Synapse.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import os
import re
import secrets
import string
import tempfile
from typing import cast

import nacl.exceptions
import nacl.signing
from signedjson.key import (
    NACL_ED25519,
    decode_signing_key_base64,
    decode_verify_key_bytes,
    get_verify_key,
    write_signing_keys,
)
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

__all__ = [
    "KEY_TYPE",
    "KeyFileError",
    "KeyFormatError",
    "generate_key",
    "key_id",
    "load_or_create_key",
    "parse_public_key",
    "place_key_file",
    "public_key_string",
    "verify_key_base64",
]

logger = logging.getLogger(__name__)

# State event type under which a publisher may publish its verify key (state_key = its mxid).
KEY_TYPE = "dev.synapse-pypi.key"

# Matrix key ids are "<algorithm>:<identifier>" with the identifier in [a-zA-Z0-9_]
# (client-server spec, "Key algorithms"); the bound keeps ids short in logs and state.
_VERSION = re.compile(r"[A-Za-z0-9_]{1,64}")
_GENERATED_VERSION_LENGTH = 6
_GENERATED_VERSION_ALPHABET = string.ascii_letters + string.digits

# 32 bytes of key or seed: 43 characters of standard base64, plus "=" when padded.
_KEY_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=?")
_KEY_BYTES = 32

# A key file holds one short line; anything much longer is not one of ours.
_MAX_KEY_FILE = 4096


class KeyFormatError(ValueError):
    """A public key or key id that cannot be used; the message is one readable line."""


class KeyFileError(Exception):
    """A signing key file that cannot be read or written; the message names the path."""


def _check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise KeyFormatError(f"key version {version!r} must be 1 to 64 characters of A-Z, a-z, 0-9 and '_'")
    return version


def _decode_key_bytes(text: str, what: str) -> bytes:
    # decode_base64 alone would skip characters outside the alphabet and accept any length,
    # so the shape is checked first: a typo must not quietly become a different key.
    if not _KEY_BASE64.fullmatch(text):
        raise KeyFormatError(f"{what} must be 43 characters of base64 (32 bytes), got {_preview(text)}")
    try:
        raw = decode_base64(text.rstrip("="))
    except (binascii.Error, ValueError) as e:  # pragma: no cover - the pattern rules this out
        raise KeyFormatError(f"{what} is not valid base64: {e}") from None
    if len(raw) != _KEY_BYTES:  # pragma: no cover - the pattern rules this out
        raise KeyFormatError(f"{what} must be {_KEY_BYTES} bytes, got {len(raw)}")
    return raw


def _preview(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def generate_key(version: str | None = None) -> SigningKey:
    """Make a new ed25519 signing key.

    Args:
        version: the key's identifier (the part after ``ed25519:``); a random six-character
            one such as ``"a1B2c3"`` when not given.

    Returns:
        A signedjson signing key with ``alg`` and ``version`` set.

    Raises:
        KeyFormatError: ``version`` is not 1 to 64 characters of ``[A-Za-z0-9_]``.
    """
    if version is None:
        version = "".join(secrets.choice(_GENERATED_VERSION_ALPHABET) for _ in range(_GENERATED_VERSION_LENGTH))
    return _signing_key(nacl.signing.SigningKey.generate().encode(), _check_version(version))


def _signing_key(seed: bytes, version: str) -> SigningKey:
    # The same construction signedjson uses, from a seed we already hold.
    return decode_signing_key_base64(NACL_ED25519, version, encode_base64(seed))


def key_id(key: SigningKey | VerifyKey) -> str:
    """The key's id as it appears in ``signatures``.

    Args:
        key: a signedjson signing or verify key.

    Returns:
        ``"ed25519:<version>"``.
    """
    return f"{key.alg}:{key.version}"


def _verify_key(key: SigningKey | VerifyKey) -> VerifyKey:
    # signedjson's key types are protocols over nacl's classes: ask nacl which one this is.
    if isinstance(key, nacl.signing.SigningKey):
        return get_verify_key(cast(SigningKey, key))
    return cast(VerifyKey, key)


def verify_key_base64(key: SigningKey | VerifyKey) -> str:
    """The public (verify) key as unpadded standard base64, the Matrix way.

    Args:
        key: a signedjson signing key (its public half is used) or verify key.

    Returns:
        43 characters of base64.
    """
    return encode_base64(_verify_key(key).encode())


def public_key_string(key: SigningKey | VerifyKey) -> str:
    """The public form of a key: what config's ``trusted_keys`` takes and ``synapse-pypi`` prints.

    Args:
        key: a signedjson signing key (its public half is used) or verify key.

    Returns:
        ``"ed25519:<version> <unpadded base64 verify key>"``; `parse_public_key` reads it back.
    """
    return f"{key_id(key)} {verify_key_base64(key)}"


def parse_public_key(text: str) -> tuple[str, VerifyKey]:
    """Read a public key written as `public_key_string` writes it.

    Args:
        text: ``"ed25519:<version> <base64 verify key>"``; surrounding white space is ignored
            and the base64 may carry its ``=`` padding.

    Returns:
        ``(key_id, verify_key)``, e.g. ``("ed25519:a1B2c3", <VerifyKey>)``.

    Raises:
        KeyFormatError: anything else: not two parts, no ``ed25519:`` id, an empty or
            ill-formed version, base64 that is not exactly 32 bytes, or not a string.
    """
    if not isinstance(text, str):
        raise KeyFormatError(f"a public key must be a string, not {type(text).__name__}")
    parts = text.split()
    if len(parts) != 2:
        raise KeyFormatError(f"a public key is 'ed25519:<key id> <base64 key>' (two parts), got {_preview(text)}")
    kid, key_text = parts
    algorithm, colon, version = kid.partition(":")
    if not colon:
        raise KeyFormatError(f"public key id {_preview(kid)} must be 'ed25519:<key id>'")
    if algorithm != NACL_ED25519:
        raise KeyFormatError(f"public key algorithm {_preview(algorithm)} is not supported: only 'ed25519' is")
    _check_version(version)
    raw = _decode_key_bytes(key_text, "public key")
    try:
        verify_key = decode_verify_key_bytes(kid, raw)
    except (ValueError, nacl.exceptions.CryptoError) as e:  # pragma: no cover - 32 bytes always load
        raise KeyFormatError(f"public key {_preview(key_text)} cannot be loaded: {e}") from None
    return kid, verify_key


def load_or_create_key(path: str) -> SigningKey:
    """Load this server's signing key, creating the file on first use.

    The file is in the format ``signedjson.key.write_signing_keys`` writes (and Synapse uses
    for its own ``signing.key``): one line ``"ed25519 <version> <base64 seed>"``.

    Args:
        path: where the key lives; missing parent directories are created (mode 0700) and a
            new file is created with mode 0600.

    Returns:
        The signing key.

    Raises:
        KeyFileError: the file exists but is not exactly one ed25519 key, or cannot be read
            or written. The message is one line naming ``path``.
    """
    key = _read_key_file(path)
    if key is not None:
        return key
    return _create_key_file(path)


def load_key(path: str) -> SigningKey:
    """Load an existing signing key file (never creates one).

    Raises:
        KeyFileError: the file is missing or is not exactly one ed25519 key.
    """
    key = _read_key_file(path)
    if key is None:
        raise KeyFileError(f"{path}: no such key file (the homeserver creates it on first start)")
    return key


def _read_key_file(path: str) -> SigningKey | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a signing key file (it is not ASCII text)") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read the signing key: {e.strerror or e}") from None
    if len(text) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path}: not a signing key file (longer than {_MAX_KEY_FILE} bytes)")
    key = _parse_key_file(path, text)
    try:
        mode = os.stat(path).st_mode
    except OSError:  # pragma: no cover - we have just read it
        mode = 0
    if mode & 0o077:
        logger.warning("signing key file %s is readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    return key


def _parse_key_file(path: str, text: str) -> SigningKey:
    lines = [line for line in text.splitlines() if line.strip()]
    expected = "expected one line 'ed25519 <key id> <base64 seed>'"
    if len(lines) != 1:
        raise KeyFileError(f"{path}: not a signing key file ({expected}, found {len(lines)} lines)")
    parts = lines[0].split()
    if len(parts) != 3:
        raise KeyFileError(f"{path}: not a signing key file ({expected})")
    algorithm, version, seed_text = parts
    if algorithm != NACL_ED25519:
        raise KeyFileError(f"{path}: key algorithm {_preview(algorithm)} is not supported: only 'ed25519' is")
    try:
        _check_version(version)
        seed = _decode_key_bytes(seed_text, "the key seed")
    except KeyFormatError as e:
        raise KeyFileError(f"{path}: {e}") from None
    return _signing_key(seed, version)


def _create_key_file(path: str) -> SigningKey:
    key = generate_key()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        if not place_key_file(path, key, replace=False):
            # Several workers started at once: they all end up with the one key that won,
            # not each with its own.
            winner = _read_key_file(path)
            if winner is not None:
                return winner
            place_key_file(path, key, replace=True)  # pragma: no cover - the winner vanished again
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create the signing key: {e.strerror or e}") from None
    logger.info("created signing key %s in %s", key_id(key), path)
    return key


def place_key_file(path: str, key: SigningKey, replace: bool) -> bool:
    """Write `key` to `path` in the format of Synapse's signing keys, completely or not at all.

    The file is written under a ``*.partial`` name (mode 0600 from the start, whatever the
    umask, so the seed is never readable by others) and then put in place. With `replace`,
    an existing file is replaced; without it, an existing file is left alone and the result
    is False.

    Raises:
        OSError: the directory is missing or not writable.
    """
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            write_signing_keys(f, [key])
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            # A hard link puts the complete file in place atomically *without* replacing one
            # that appeared meanwhile (os.replace would).
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:
                # A file system without hard links: the plain atomic rename, if still free.
                if os.path.lexists(path):
                    return False
                os.replace(tmp, path)
        _fsync_directory(parent)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync_directory(directory: str) -> None:
    # Make the new name durable; best effort, as not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - platform dependent
        pass
    finally:
        os.close(fd)
