"""Attestations: one signed state event per file and publisher in the project's room.

An attestation says "publisher P vouches that file F of project X has this sha256 and size".
It is the content of a state event of type `ATTESTATION_TYPE` whose ``state_key`` is
``"<filename>/<publisher mxid>"``, so every publisher has a slot of its own (DESIGN.md §5).
The content is signed with signedjson (ed25519 over the canonical JSON, ``signatures`` and
``unsigned`` left out), under the publisher's mxid.

Everything here reads content that anyone able to send the event type wrote, so parsing is
strict and bounded, and `verify_attestation` turns every input into a `Verdict`.

Pure logic: no Twisted, no Synapse.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import nacl.exceptions
from canonicaljson import encode_canonical_json
from packaging.version import InvalidVersion, Version
from signedjson.sign import sign_json
from signedjson.types import SigningKey, VerifyKey
from unpaddedbase64 import decode_base64

from synapse_pypi._names import InvalidName, NormalizedName, is_safe_filename, normalize

__all__ = [
    "ATTESTATION_TYPE",
    "MAX_CONTENT_BYTES",
    "SCHEMA_VERSION",
    "Attestation",
    "MalformedAttestation",
    "VERIFIED_AGAINST",
    "SignedAttestation",
    "Verdict",
    "build_content",
    "check_signatures",
    "parse_attestation",
    "read_attestation",
    "split_state_key",
    "state_key_for",
    "verify_attestation",
]

ATTESTATION_TYPE = "dev.synapse-pypi.attestation"
SCHEMA_VERSION = 1

# Matrix caps a whole event at 64 KiB; an attestation needs well under 1 KiB, so this bounds
# the work any one event can cause and leaves room for fields later versions may add.
MAX_CONTENT_BYTES = 64 * 1024

# Bounds on the fields. Versions and names: as long as anything real; URLs: what browsers
# and proxies accept; the rest: an order of magnitude above what a real value needs.
_MAX_VERSION = 128
_MAX_CID = 256
_MAX_URL = 2048
_MAX_REQUIRES_PYTHON = 256
_MAX_HASHES = 8
_MAX_HASH_NAME = 32
_MAX_HASH_VALUE = 256
_MAX_SIGNERS = 8
_MAX_SIGNATURES_PER_SIGNER = 8
_MAX_SIGNER = 255  # the Matrix limit on a user id
_MAX_KEY_ID = 128
_MAX_SIGNATURE = 256
_MAX_DEPTH = 32
# Canonical JSON, as Matrix uses it, only has integers in this range (and no floats).
_MAX_SAFE_INT = 2**53 - 1

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CID = re.compile(r"[A-Za-z0-9]{1,256}")
# The characters PEP 440 versions are written with (epoch "!", local "+", separators).
_VERSION_CHARS = re.compile(r"[A-Za-z0-9._+!-]+")
# An ed25519 signature: 64 bytes, unpadded standard base64 as signedjson writes it.
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}")

# What a publisher checked the bytes against before attesting them: the upstream index's
# published hash, or other publishers' attestations (a mirror serving from IPFS while its
# upstream is down). Only a mirror's own upstream-verified attestation counts as its own
# corroboration in the serve policy; attestations without the field are from before it
# existed, when every mirror attestation was checked against the upstream.
# "upload": the publisher received the bytes as an upload to its own index (no upstream).
VERIFIED_AGAINST = ("upstream", "attestations", "upload")


class MalformedAttestation(ValueError):
    """Attestation content that does not follow the schema; the message is one readable line."""


class Verdict(enum.Enum):
    """What `verify_attestation` found; ``.value`` is a short human phrase."""

    VALID = "valid"
    MALFORMED = "malformed attestation"
    BAD_SIGNATURE = "signature does not verify"
    UNKNOWN_KEY = "not signed by a trusted key"
    IMPERSONATION = "sent into another publisher's slot"
    WRONG_PROJECT = "attestation for another project"
    REDACTED = "redacted"

    @property
    def phrase(self) -> str:
        """The human phrase, e.g. ``"signature does not verify"``."""
        return str(self.value)


@attrs.frozen
class Attestation:
    """The parsed content of one attestation event.

    Attributes:
        project: the PEP 503 normalized project name.
        version: the release version as written in the event (PEP 440 parseable).
        filename: the distribution file name; also the first part of the state key.
        size: the file size in bytes.
        sha256: the file's sha256, 64 lower-case hex characters.
        cid: the IPFS CID of the file, if the publisher has one.
        upstream_url: where the publisher fetched the file from, if anywhere.
        requires_python: the upstream's ``requires-python`` for the file, if any.
        timestamp: when the publisher attested, in milliseconds since the epoch.
        publisher: the mxid of the sender, which is also the signing entity.
        key_id: the key id of the signature this object was checked with (from
            `verify_attestation`) or, from `parse_attestation` alone, the first of the
            publisher's key ids in sorted order.
        signature: the unpadded base64 signature under ``key_id``.
        verified_against: what the publisher checked the bytes against (`VERIFIED_AGAINST`),
            if it says.
    """

    project: NormalizedName
    version: str
    filename: str
    size: int
    sha256: str
    cid: str | None
    upstream_url: str | None
    requires_python: str | None
    timestamp: int
    publisher: str
    key_id: str
    signature: str
    verified_against: str | None = None


def state_key_for(filename: str, publisher: str) -> str:
    """The state key of ``publisher``'s attestation slot for ``filename``.

    Args:
        filename: the distribution file name (never contains ``/``).
        publisher: the publisher's mxid.

    Returns:
        ``"<filename>/<publisher>"``.
    """
    return f"{filename}/{publisher}"


def split_state_key(state_key: str) -> tuple[str, str]:
    """Split a state key made by `state_key_for` back into its parts.

    The split is at the *first* ``/``: file names never contain one, while historical Matrix
    user ids may (their localpart is any printable ASCII but ``:``).

    Args:
        state_key: ``"<filename>/<publisher>"``.

    Returns:
        ``(filename, publisher)``; either part may be empty, which the caller judges.

    Raises:
        MalformedAttestation: there is no ``/`` in ``state_key``.
    """
    if not isinstance(state_key, str):
        raise MalformedAttestation(f"state_key must be a string, not {type(state_key).__name__}")
    filename, slash, publisher = state_key.partition("/")
    if not slash:
        raise MalformedAttestation(f"state_key {_show(state_key)} is not '<filename>/<publisher>'")
    return filename, publisher


def build_content(
    *,
    project: str,
    version: str,
    filename: str,
    size: int,
    sha256: str,
    cid: str | None,
    upstream_url: str | None,
    requires_python: str | None,
    timestamp: int,
    publisher: str,
    signing_key: SigningKey,
    verified_against: str | None = None,
) -> dict[str, Any]:
    """Make the signed content of an attestation event.

    Optional fields that are None are left out. The result is checked with
    `parse_attestation`, so what this builds is always what the room's readers accept.

    Args:
        project: the normalized project name, e.g. ``"zope-interface"``.
        version: the release version, e.g. ``"1.0"``.
        filename: the distribution file name.
        size: the file size in bytes.
        sha256: the file's sha256 as lower-case hex.
        cid: the file's IPFS CID, or None.
        upstream_url: where the file came from, or None.
        requires_python: the upstream's ``requires-python``, or None.
        timestamp: milliseconds since the epoch.
        publisher: the mxid that will send the event (and signs as).
        signing_key: the publisher's signing key.
        verified_against: what the bytes were checked against (`VERIFIED_AGAINST`), or None.

    Returns:
        The content, with ``signatures: {publisher: {"ed25519:<version>": <signature>}}``.
        Send it with ``state_key_for(filename, publisher)``.

    Raises:
        MalformedAttestation: a value does not fit the schema (e.g. a project name that is
            not normalized, an upper-case hash).
    """
    # Checked before the state key is made from it: a "/" would move the slot.
    if not is_safe_filename(filename):
        raise MalformedAttestation(f"'filename' {_show(filename)} is not a safe file name")
    content: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "project": project,
        "version": version,
        "filename": filename,
        "size": size,
        "hashes": {"sha256": sha256},
        "timestamp": timestamp,
        "publisher": publisher,
    }
    optional = (
        ("cid", cid),
        ("upstream_url", upstream_url),
        ("requires_python", requires_python),
        ("verified_against", verified_against),
    )
    for name, value in optional:
        if value is not None:
            content[name] = value
    signed = sign_json(content, publisher, signing_key)
    parse_attestation(signed, state_key_for(filename, publisher), publisher)
    return signed


def parse_attestation(content: Mapping[str, Any], state_key: str, sender: str) -> Attestation:
    """Check attestation content against the schema and read it. Signatures are *not* checked.

    Args:
        content: the event content.
        state_key: the event's state key, ``"<filename>/<sender>"``.
        sender: the event's sender.

    Returns:
        The attestation. ``key_id``/``signature`` are the sender's first signature in key id
        order; `verify_attestation` reports the one it verified.

    Raises:
        MalformedAttestation: anything that is not a well-formed attestation by ``sender`` in
            ``sender``'s slot: wrong types, out-of-range or oversized values, a content larger
            than `MAX_CONTENT_BYTES`, no signature by ``sender``, and so on.
    """
    plain = _plain_content(content)
    return _parse_plain(plain, state_key, sender)


@attrs.define(eq=False)
class SignedAttestation:
    """An attestation event that passed every check but the signature (`read_attestation`).

    Signature checks are remembered per key, so judging the same event again after a key or
    power-level change costs a dictionary lookup, not an ed25519 verification.

    Attributes:
        attestation: what the event claims (key_id/signature: the sender's first).
        message: the canonical JSON the signatures are over.
        signatures: the sender's own signatures, key id -> unpadded base64.
    """

    attestation: Attestation
    message: bytes
    signatures: Mapping[str, str]
    _checked: dict[tuple[str, bytes], bool] = attrs.field(factory=dict, init=False, repr=False)

    def verifies(self, kid: str, verify_key: VerifyKey) -> bool:
        """Whether the signature under `kid` verifies with `verify_key` (remembered)."""
        key = (kid, bytes(verify_key.encode()))
        ok = self._checked.get(key)
        if ok is None:
            ok = self._checked[key] = _signature_verifies(self.message, self.signatures[kid], verify_key)
        return ok


def read_attestation(
    content: Mapping[str, Any], state_key: str, sender: str
) -> SignedAttestation | tuple[Verdict, str]:
    """Every check of `verify_attestation` that does not depend on keys or redaction.

    Never raises on any event content, state key or sender.

    Returns:
        The signed attestation, or ``(Verdict.IMPERSONATION | Verdict.MALFORMED, reason)``.
    """
    if not isinstance(sender, str):
        return Verdict.MALFORMED, f"sender must be a string, not {type(sender).__name__}"
    try:
        _, slot_owner = split_state_key(state_key)
    except MalformedAttestation as e:
        return Verdict.MALFORMED, str(e)
    if slot_owner != sender:
        return (
            Verdict.IMPERSONATION,
            f"{_show(sender)} wrote into the slot of {_show(slot_owner)} (state_key {_show(state_key)})",
        )
    claimed = content.get("publisher") if isinstance(content, Mapping) else None
    if isinstance(claimed, str) and claimed != sender:
        return Verdict.IMPERSONATION, f"{_show(sender)} sent an attestation naming {_show(claimed)} as publisher"
    try:
        plain = _plain_content(content)
        attestation = _parse_plain(plain, state_key, sender)
    except MalformedAttestation as e:
        return Verdict.MALFORMED, str(e)
    # The schema has made sure these are a dict of str -> str, present and non-empty.
    own_signatures: dict[str, str] = plain["signatures"][sender]
    message = encode_canonical_json({k: v for k, v in plain.items() if k not in ("signatures", "unsigned")})
    return SignedAttestation(attestation, message, dict(own_signatures))


def check_signatures(
    signed: SignedAttestation, trusted: Mapping[str, VerifyKey]
) -> tuple[Verdict, Attestation, str]:
    """Judge a `read_attestation` result against the keys trusted for its sender.

    Every signature made with a trusted key must verify, so a tampered event fails whichever
    key a reader trusts.

    Returns:
        ``(VALID | UNKNOWN_KEY | BAD_SIGNATURE, attestation, reason)``; the attestation names
        the key id it was checked with.
    """
    attestation = signed.attestation
    sender = attestation.publisher
    usable = sorted(kid for kid in signed.signatures if kid in trusted)
    if not usable:
        return (
            Verdict.UNKNOWN_KEY,
            attestation,
            (
                f"{_show(sender)} signed with {', '.join(_show(k) for k in sorted(signed.signatures))}, "
                "none of which is trusted for this publisher"
            ),
        )
    for kid in usable:
        if not signed.verifies(kid, trusted[kid]):
            return (
                Verdict.BAD_SIGNATURE,
                attrs.evolve(attestation, key_id=kid, signature=signed.signatures[kid]),
                f"the signature of {_show(sender)} under {_show(kid)} does not verify",
            )
    kid = usable[0]
    return (
        Verdict.VALID,
        attrs.evolve(attestation, key_id=kid, signature=signed.signatures[kid]),
        f"signed by {_show(sender)} with {_show(kid)}",
    )


def verify_attestation(
    content: Mapping[str, Any],
    state_key: str,
    sender: str,
    redacted: bool,
    keys_for: Callable[[str], Mapping[str, VerifyKey]],
) -> tuple[Verdict, Attestation | None, str]:
    """Judge one attestation event. Never raises on any event content, state key or sender.

    Checks, in this order: redacted → `Verdict.REDACTED`; a slot (state key) or a
    ``publisher`` field naming someone other than the sender → `Verdict.IMPERSONATION`;
    schema → `Verdict.MALFORMED`; none of the sender's signatures under a key that
    ``keys_for(sender)`` trusts → `Verdict.UNKNOWN_KEY`; a signature under a trusted key that
    does not verify → `Verdict.BAD_SIGNATURE`; else `Verdict.VALID`. Every signature made with
    a trusted key must verify, so a tampered event fails whichever key a reader trusts.

    Args:
        content: the event content (``{}`` once redacted).
        state_key: the event's state key.
        sender: the event's sender mxid.
        redacted: whether the event has been redacted.
        keys_for: the verify keys trusted for a publisher, by key id
            (``{"ed25519:a1B2c3": <VerifyKey>}``). Exceptions it raises are not caught.

    Returns:
        ``(verdict, attestation, reason)``. ``attestation`` is None for REDACTED,
        IMPERSONATION and MALFORMED; for UNKNOWN_KEY and BAD_SIGNATURE it is what the event
        claims, for notices only: only a VALID attestation vouches for anything. ``reason`` is
        one readable line.
    """
    if redacted:
        return Verdict.REDACTED, None, "the attestation has been redacted"
    read = read_attestation(content, state_key, sender)
    if isinstance(read, tuple):
        return read[0], None, read[1]
    return check_signatures(read, keys_for(sender))


def _signature_verifies(message: bytes, signature: str, verify_key: VerifyKey) -> bool:
    # The same check as signedjson.sign.verify_signed_json, but keyed by the id the
    # signature is filed under rather than by the attributes of the key object; and strict
    # about the base64, which decode_base64 is not (it skips stray characters).
    if not _SIGNATURE.fullmatch(signature):
        return False
    try:
        verify_key.verify(message, decode_base64(signature))
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


# --- parsing -------------------------------------------------------------------------------


def _show(value: object, limit: int = 80) -> str:
    """A short, one-line, escaped rendering of a value from an event, for reasons."""
    if isinstance(value, str) and value and value.isprintable() and len(value) <= limit and value.strip() == value:
        return value
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        # repr of a huge int is slow, and refused beyond sys.get_int_max_str_digits().
        return repr(value) if value.bit_length() <= 64 else "<a large integer>"
    shown = repr(value) if isinstance(value, str) else f"<{type(value).__name__}>"
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class _Budget:
    """Counts a lower bound of the encoded size while content is copied, to stop early."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise MalformedAttestation(f"content is larger than {MAX_CONTENT_BYTES} bytes")


def _plain_content(content: object) -> dict[str, Any]:
    """Copy event content into plain dicts, lists, str, int, bool and None, within bounds.

    Synapse hands content over as its own immutable mapping types; a plain copy is what
    canonical JSON encodes without help and what the checks below can trust.
    """
    if not isinstance(content, Mapping):
        raise MalformedAttestation(f"content must be a JSON object, not {_json_type(content)}")
    budget = _Budget(MAX_CONTENT_BYTES)
    plain = _plain(content, budget, 0)
    try:
        size = len(encode_canonical_json(plain))
    except (UnicodeError, ValueError, TypeError) as e:
        raise MalformedAttestation(f"content cannot be encoded as canonical JSON: {type(e).__name__}") from None
    if size > MAX_CONTENT_BYTES:
        raise MalformedAttestation(f"content is larger than {MAX_CONTENT_BYTES} bytes ({size})")
    assert isinstance(plain, dict)
    return plain


def _plain(value: object, budget: _Budget, depth: int) -> object:
    if depth > _MAX_DEPTH:
        raise MalformedAttestation(f"content is nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        budget.spend(4)
        return value
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise MalformedAttestation("content has an integer outside the range canonical JSON allows")
        budget.spend(1)
        return int(value)
    if isinstance(value, str):
        budget.spend(len(value) + 2)
        return value
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        budget.spend(2)
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedAttestation(f"content has a non-string object key ({_json_type(k)})")
            budget.spend(len(k) + 4)
            out[k] = _plain(v, budget, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        budget.spend(2)
        items = []
        for item in value:
            budget.spend(1)
            items.append(_plain(item, budget, depth + 1))
        return items
    if isinstance(value, float):
        raise MalformedAttestation("content has a floating point number, which canonical JSON does not allow")
    raise MalformedAttestation(f"content has a value that is not JSON ({_json_type(value)})")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    return type(value).__name__


def _require(content: Mapping[str, object], name: str) -> object:
    if name not in content:
        raise MalformedAttestation(f"{name!r} is missing")
    return content[name]


def _string(content: Mapping[str, object], name: str, max_length: int, *, optional: bool = False) -> str | None:
    if optional and name not in content:
        return None
    value = _require(content, name)
    if not isinstance(value, str):
        raise MalformedAttestation(f"{name!r} must be a string, not {_json_type(value)}")
    if len(value) > max_length:
        raise MalformedAttestation(f"{name!r} is longer than {max_length} characters")
    return value


def _integer(content: Mapping[str, object], name: str) -> int:
    value = _require(content, name)
    # bool is an int in Python but not in JSON.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedAttestation(f"{name!r} must be an integer, not {_json_type(value)}")
    if not 0 <= value <= _MAX_SAFE_INT:
        raise MalformedAttestation(f"{name!r} must be between 0 and 2**53 - 1, got {value}")
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _parse_plain(content: dict[str, Any], state_key: str, sender: str) -> Attestation:
    if not isinstance(sender, str):
        raise MalformedAttestation(f"sender must be a string, not {type(sender).__name__}")
    slot_filename, slot_owner = split_state_key(state_key)
    if slot_owner != sender:
        raise MalformedAttestation(f"state_key {_show(state_key)} is not a slot of the sender {_show(sender)}")

    schema = _require(content, "schema")
    if type(schema) is not int or schema != SCHEMA_VERSION:
        raise MalformedAttestation(f"'schema' must be {SCHEMA_VERSION}, got {_show(schema)}")

    project = _string(content, "project", 1 << 16)
    assert project is not None
    try:
        normalized = normalize(project)
    except InvalidName as e:
        raise MalformedAttestation(f"'project': {e}") from None
    if normalized != project:
        raise MalformedAttestation(f"'project' must be the normalized name {normalized!r}, got {_show(project)}")

    version = _string(content, "version", _MAX_VERSION)
    assert version is not None
    if not _VERSION_CHARS.fullmatch(version):
        raise MalformedAttestation(f"'version' {_show(version)} is not a PEP 440 version")
    try:
        Version(version)
    except InvalidVersion:
        raise MalformedAttestation(f"'version' {_show(version)} is not a PEP 440 version") from None

    filename = _string(content, "filename", 1 << 16)
    assert filename is not None
    if not is_safe_filename(filename):
        raise MalformedAttestation(f"'filename' {_show(filename)} is not a safe file name")
    if filename != slot_filename:
        raise MalformedAttestation(
            f"'filename' {_show(filename)} does not match the state_key's file {_show(slot_filename)}"
        )

    size = _integer(content, "size")
    sha256 = _parse_hashes(_require(content, "hashes"))

    cid = _string(content, "cid", _MAX_CID, optional=True)
    if cid is not None and not _CID.fullmatch(cid):
        raise MalformedAttestation(f"'cid' {_show(cid)} is not a CID (1 to {_MAX_CID} letters and digits)")

    upstream_url = _string(content, "upstream_url", _MAX_URL, optional=True)
    if upstream_url is not None and (
        not upstream_url.startswith(("http://", "https://")) or _has_control(upstream_url)
    ):
        raise MalformedAttestation(f"'upstream_url' {_show(upstream_url)} is not an http(s) URL")

    requires_python = _string(content, "requires_python", _MAX_REQUIRES_PYTHON, optional=True)
    timestamp = _integer(content, "timestamp")
    verified_against = _string(content, "verified_against", 32, optional=True)
    if verified_against is not None and verified_against not in VERIFIED_AGAINST:
        raise MalformedAttestation(
            f"'verified_against' must be one of {', '.join(VERIFIED_AGAINST)}, got {_show(verified_against)}"
        )

    publisher = _string(content, "publisher", _MAX_SIGNER)
    if publisher != sender:
        raise MalformedAttestation(f"'publisher' {_show(publisher)} is not the sender {_show(sender)}")

    signatures = _parse_signatures(_require(content, "signatures"))
    own = signatures.get(sender)
    if not own:
        raise MalformedAttestation(f"'signatures' has no signature by the publisher {_show(sender)}")
    first = min(own)

    return Attestation(
        project=normalized,
        version=version,
        filename=filename,
        size=size,
        sha256=sha256,
        cid=cid,
        upstream_url=upstream_url,
        requires_python=requires_python,
        timestamp=timestamp,
        publisher=publisher,
        key_id=first,
        signature=own[first],
        verified_against=verified_against,
    )


def _parse_hashes(hashes: object) -> str:
    if not isinstance(hashes, dict):
        raise MalformedAttestation(f"'hashes' must be an object, not {_json_type(hashes)}")
    if len(hashes) > _MAX_HASHES:
        raise MalformedAttestation(f"'hashes' has more than {_MAX_HASHES} entries")
    for name, value in hashes.items():
        if len(name) > _MAX_HASH_NAME:
            raise MalformedAttestation(f"'hashes' has a name longer than {_MAX_HASH_NAME} characters")
        if not isinstance(value, str) or len(value) > _MAX_HASH_VALUE:
            raise MalformedAttestation(f"'hashes.{_show(name, 40)}' must be a string of at most {_MAX_HASH_VALUE}")
    sha256 = hashes.get("sha256")
    if sha256 is None:
        raise MalformedAttestation("'hashes.sha256' is missing")
    if not _SHA256.fullmatch(sha256):
        raise MalformedAttestation(f"'hashes.sha256' {_show(sha256)} is not 64 lower-case hex characters")
    return str(sha256)


def _parse_signatures(signatures: object) -> dict[str, dict[str, str]]:
    if not isinstance(signatures, dict):
        raise MalformedAttestation(f"'signatures' must be an object, not {_json_type(signatures)}")
    if len(signatures) > _MAX_SIGNERS:
        raise MalformedAttestation(f"'signatures' has more than {_MAX_SIGNERS} signers")
    for signer, by_key in signatures.items():
        if len(signer) > _MAX_SIGNER:
            raise MalformedAttestation(f"'signatures' has a signer longer than {_MAX_SIGNER} characters")
        if not isinstance(by_key, dict):
            raise MalformedAttestation(f"'signatures' of {_show(signer)} must be an object, not {_json_type(by_key)}")
        if len(by_key) > _MAX_SIGNATURES_PER_SIGNER:
            raise MalformedAttestation(f"{_show(signer)} has more than {_MAX_SIGNATURES_PER_SIGNER} signatures")
        for kid, signature in by_key.items():
            if len(kid) > _MAX_KEY_ID:
                raise MalformedAttestation(f"a key id of {_show(signer)} is longer than {_MAX_KEY_ID} characters")
            if not isinstance(signature, str) or len(signature) > _MAX_SIGNATURE:
                raise MalformedAttestation(
                    f"the signature of {_show(signer)} under {_show(kid)} must be a string of at most "
                    f"{_MAX_SIGNATURE} characters"
                )
    return signatures
