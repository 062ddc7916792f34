"""Attestation events: building, parsing, signatures, and a verdict for every input."""

from __future__ import annotations

import base64
import copy
import types
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from canonicaljson import encode_canonical_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from signedjson.types import VerifyKey

from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    MAX_CONTENT_BYTES,
    SCHEMA_VERSION,
    Attestation,
    MalformedAttestation,
    Verdict,
    build_content,
    generate_key,
    key_id,
    parse_attestation,
    split_state_key,
    state_key_for,
    verify_attestation,
)

SEED_BASE64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
FIXED_KEY = decode_signing_key_base64("ed25519", "fixed", SEED_BASE64)
OTHER_KEY = generate_key("other")

BOT = "@pypi-bot:example.org"
EVE = "@eve:evil.example"
FILENAME = "example_pkg-1.0.post1-py3-none-any.whl"
SHA = "0123456789abcdef" * 4
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
URL = f"https://files.example.org/packages/{FILENAME}"
STATE_KEY = f"{FILENAME}/{BOT}"

# Signed once with the fixed seed; any change in what is signed or how (field names,
# canonical JSON, the signature encoding) changes this string.
FIXED_SIGNATURE = "hzA3I5oLQLs44wNzooAVH7bBn7z9tWohbpEUsP4ECCc+QU1HCn2JcEdk0iszngBNktZr4bZO0YGOlYBTEQTvAw"
# The canonical JSON that signature is over, byte for byte.
FIXED_MESSAGE = (
    b'{"cid":"bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",'
    b'"filename":"example_pkg-1.0.post1-py3-none-any.whl",'
    b'"hashes":{"sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},'
    b'"project":"example-pkg","publisher":"@pypi-bot:example.org","requires_python":">=3.8",'
    b'"schema":1,"size":1234,"timestamp":1700000000000,'
    b'"upstream_url":"https://files.example.org/packages/example_pkg-1.0.post1-py3-none-any.whl",'
    b'"version":"1.0.post1"}'
)

EXPECTED_CONTENT = {
    "schema": 1,
    "project": "example-pkg",
    "version": "1.0.post1",
    "filename": FILENAME,
    "size": 1234,
    "hashes": {"sha256": SHA},
    "cid": CID,
    "upstream_url": URL,
    "requires_python": ">=3.8",
    "timestamp": 1700000000000,
    "publisher": BOT,
    "signatures": {BOT: {"ed25519:fixed": FIXED_SIGNATURE}},
}

EXPECTED_ATTESTATION = Attestation(
    project="example-pkg",  # type: ignore[arg-type]
    version="1.0.post1",
    filename=FILENAME,
    size=1234,
    sha256=SHA,
    cid=CID,
    upstream_url=URL,
    requires_python=">=3.8",
    timestamp=1700000000000,
    publisher=BOT,
    key_id="ed25519:fixed",
    signature=FIXED_SIGNATURE,
)


def build(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "project": "example-pkg",
        "version": "1.0.post1",
        "filename": FILENAME,
        "size": 1234,
        "sha256": SHA,
        "cid": CID,
        "upstream_url": URL,
        "requires_python": ">=3.8",
        "timestamp": 1700000000000,
        "publisher": BOT,
        "signing_key": FIXED_KEY,
    }
    fields.update(overrides)
    return build_content(**fields)


def trusting(*keys: Any, publisher: str = BOT) -> Any:
    """A keys_for that trusts ``keys`` for ``publisher`` and nothing for anybody else."""
    table: dict[str, VerifyKey] = {key_id(k): get_verify_key(k) for k in keys}

    def keys_for(sender: str) -> Mapping[str, VerifyKey]:
        return table if sender == publisher else {}

    return keys_for


TRUST_FIXED = trusting(FIXED_KEY)


def verdict_of(content: Any, state_key: str = STATE_KEY, sender: str = BOT, keys_for: Any = TRUST_FIXED) -> Verdict:
    verdict, _, _ = verify_attestation(content, state_key, sender, False, keys_for)
    return verdict


def test_constants() -> None:
    assert ATTESTATION_TYPE == "dev.synapse-pypi.attestation"
    assert SCHEMA_VERSION == 1
    assert MAX_CONTENT_BYTES == 65536


# --- state keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "publisher"),
    [
        (FILENAME, BOT),
        ("pkg-1.0.tar.gz", "@alice:localhost:8448"),
        # Historical user ids may contain "/" in the localpart: split at the first "/".
        ("pkg-1.0.tar.gz", "@a/b/c:example.org"),
    ],
)
def test_state_key_round_trip(filename: str, publisher: str) -> None:
    state_key = state_key_for(filename, publisher)
    assert state_key == f"{filename}/{publisher}"
    assert split_state_key(state_key) == (filename, publisher)


def test_split_state_key_needs_a_slash() -> None:
    with pytest.raises(MalformedAttestation, match="is not '<filename>/<publisher>'"):
        split_state_key(FILENAME)


# --- building and known vectors -------------------------------------------------------------


def test_build_content_known_vector() -> None:
    content = build()
    assert content == EXPECTED_CONTENT
    # An independent check of the same bytes with the public key alone.
    get_verify_key(FIXED_KEY).verify(FIXED_MESSAGE, base64.b64decode(FIXED_SIGNATURE + "=="))
    # And with signedjson's own verifier.
    verify_signed_json(content, BOT, get_verify_key(FIXED_KEY))


def test_build_content_leaves_out_none() -> None:
    content = build(cid=None, upstream_url=None, requires_python=None)
    assert set(content) == {
        "schema",
        "project",
        "version",
        "filename",
        "size",
        "hashes",
        "timestamp",
        "publisher",
        "signatures",
    }
    verdict, attestation, _ = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert verdict is Verdict.VALID
    assert attestation == attrs.evolve(
        EXPECTED_ATTESTATION,
        cid=None,
        upstream_url=None,
        requires_python=None,
        signature=content["signatures"][BOT]["ed25519:fixed"],
    )


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"project": "Example.Pkg"}, "must be the normalized name 'example-pkg'"),
        ({"sha256": SHA.upper()}, "is not 64 lower-case hex characters"),
        ({"version": "one"}, "is not a PEP 440 version"),
        ({"filename": "../x.whl"}, "is not a safe file name"),
        ({"size": -1}, "'size' must be between 0 and 2**53 - 1"),
    ],
)
def test_build_content_refuses_what_readers_would_refuse(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedAttestation) as info:
        build(**overrides)
    assert fragment in str(info.value)


def test_parse_round_trip() -> None:
    assert parse_attestation(build(), STATE_KEY, BOT) == EXPECTED_ATTESTATION


def test_verify_round_trip() -> None:
    assert verify_attestation(build(), STATE_KEY, BOT, False, TRUST_FIXED) == (
        Verdict.VALID,
        EXPECTED_ATTESTATION,
        "signed by @pypi-bot:example.org with ed25519:fixed",
    )


def test_verify_with_a_random_key() -> None:
    key = generate_key()
    content = build(signing_key=key)
    verdict, attestation, _ = verify_attestation(content, STATE_KEY, BOT, False, trusting(key))
    assert verdict is Verdict.VALID
    assert attestation is not None
    assert attestation.key_id == key_id(key)


def test_synapse_style_immutable_content_verifies() -> None:
    """Synapse hands content over as read-only mappings with tuples for arrays."""

    def freeze(value: Any) -> Any:
        if isinstance(value, dict):
            return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
        if isinstance(value, list):
            return tuple(freeze(v) for v in value)
        return value

    content = dict(build())
    content["extra"] = [1, {"nested": ["x"]}]
    content = sign_json({k: v for k, v in content.items() if k != "signatures"}, BOT, FIXED_KEY)
    assert verdict_of(freeze(content)) is Verdict.VALID


def test_verify_does_not_change_its_input() -> None:
    content = build()
    before = copy.deepcopy(content)
    verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert content == before


# --- signatures -----------------------------------------------------------------------------

# Each signed field, changed to another value the schema accepts ("schema" has no other
# valid value: test_malformed covers it).
TAMPERS = [
    ("project", "example-pkg2"),
    ("version", "1.0.post2"),
    ("size", 1235),
    ("hashes", {"sha256": "f" * 64}),
    ("hashes", {"sha256": SHA, "md5": "0" * 32}),
    ("cid", CID[:-1] + "a"),
    ("upstream_url", URL.replace("files.", "evil.")),
    ("requires_python", ">=3.9"),
    ("timestamp", 1700000000001),
    ("extra", "an added field is signed over too"),
]


@pytest.mark.parametrize(("field", "value"), TAMPERS)
def test_tampered_field_is_bad_signature(field: str, value: Any) -> None:
    content = build()
    content[field] = value
    verdict, attestation, reason = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert verdict is Verdict.BAD_SIGNATURE
    assert reason == "the signature of @pypi-bot:example.org under ed25519:fixed does not verify"
    # What the event claims is still readable, for the notice.
    assert attestation is not None
    assert attestation.key_id == "ed25519:fixed"


def test_removed_optional_field_is_bad_signature() -> None:
    for field in ("cid", "upstream_url", "requires_python"):
        content = build()
        del content[field]
        assert verdict_of(content) is Verdict.BAD_SIGNATURE, field


def test_tampered_filename_is_bad_signature() -> None:
    content = build()
    content["filename"] = "example_pkg-1.0.post1.tar.gz"
    assert verdict_of(content, state_key=f"example_pkg-1.0.post1.tar.gz/{BOT}") is Verdict.BAD_SIGNATURE


@pytest.mark.parametrize(
    "signature",
    [
        FIXED_SIGNATURE[:-1] + ("B" if FIXED_SIGNATURE[-1] != "B" else "C"),
        FIXED_SIGNATURE[:-2],
        FIXED_SIGNATURE + "==",
        FIXED_SIGNATURE.replace("+", "-"),
        "not base64 at all!",
        "",
    ],
)
def test_damaged_signature_is_bad_signature(signature: str) -> None:
    content = build()
    content["signatures"][BOT]["ed25519:fixed"] = signature
    assert verdict_of(content) is Verdict.BAD_SIGNATURE


def test_signature_by_another_key_under_the_trusted_id() -> None:
    impostor = decode_signing_key_base64("ed25519", "fixed", "A" * 43)
    assert verdict_of(build(signing_key=impostor)) is Verdict.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("keys_for", "expected_reason"),
    [
        (trusting(), "@pypi-bot:example.org signed with ed25519:fixed, none of which is trusted for this publisher"),
        (trusting(OTHER_KEY), "@pypi-bot:example.org signed with ed25519:fixed, none of which is trusted"),
        # The right key, but trusted for somebody else.
        (trusting(FIXED_KEY, publisher=EVE), "@pypi-bot:example.org signed with ed25519:fixed, none of which"),
    ],
)
def test_unknown_key(keys_for: Any, expected_reason: str) -> None:
    verdict, attestation, reason = verify_attestation(build(), STATE_KEY, BOT, False, keys_for)
    assert verdict is Verdict.UNKNOWN_KEY
    assert attestation == EXPECTED_ATTESTATION
    assert reason.startswith(expected_reason)


def test_signature_by_someone_else_does_not_count() -> None:
    """A trusted key's signature counts only under the sender's own name."""
    content = build()
    content["signatures"] = {EVE: {"ed25519:fixed": FIXED_SIGNATURE}, BOT: {"ed25519:x": FIXED_SIGNATURE}}
    assert verdict_of(content, keys_for=trusting(FIXED_KEY, publisher=EVE)) is Verdict.UNKNOWN_KEY


def test_extra_signers_are_ignored() -> None:
    content = sign_json(build(), EVE, OTHER_KEY)
    assert set(content["signatures"]) == {BOT, EVE}
    assert verdict_of(content) is Verdict.VALID


def test_unsigned_is_not_signed_over() -> None:
    """signedjson leaves "unsigned" out of what it signs; it carries nothing we read."""
    content = build()
    content["unsigned"] = {"age": 5}
    verdict, attestation, _ = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert verdict is Verdict.VALID
    assert attestation == EXPECTED_ATTESTATION


def test_key_rotation() -> None:
    """Signed with an old and a new key: valid for readers trusting either or both."""
    content = sign_json(build(), BOT, OTHER_KEY)
    assert sorted(content["signatures"][BOT]) == ["ed25519:fixed", "ed25519:other"]
    for keys_for, expected_id in [
        (trusting(FIXED_KEY), "ed25519:fixed"),
        (trusting(OTHER_KEY), "ed25519:other"),
        (trusting(FIXED_KEY, OTHER_KEY), "ed25519:fixed"),
    ]:
        verdict, attestation, _ = verify_attestation(content, STATE_KEY, BOT, False, keys_for)
        assert verdict is Verdict.VALID
        assert attestation is not None
        assert attestation.key_id == expected_id
        assert attestation.signature == content["signatures"][BOT][expected_id]


def test_every_trusted_signature_must_verify() -> None:
    content = sign_json(build(), BOT, OTHER_KEY)
    content["signatures"][BOT]["ed25519:other"] = FIXED_SIGNATURE
    verdict, attestation, reason = verify_attestation(content, STATE_KEY, BOT, False, trusting(FIXED_KEY, OTHER_KEY))
    assert verdict is Verdict.BAD_SIGNATURE
    assert attestation is not None
    assert attestation.key_id == "ed25519:other"
    assert reason == "the signature of @pypi-bot:example.org under ed25519:other does not verify"
    # A reader trusting only the good key sees a valid attestation.
    assert verdict_of(content, keys_for=trusting(FIXED_KEY)) is Verdict.VALID


# --- redaction and impersonation ------------------------------------------------------------


@pytest.mark.parametrize("content", [{}, "junk", None, EXPECTED_CONTENT])
def test_redacted_comes_first(content: Any) -> None:
    assert verify_attestation(content, "no slash", EVE, True, TRUST_FIXED) == (
        Verdict.REDACTED,
        None,
        "the attestation has been redacted",
    )


def test_impersonation_by_slot() -> None:
    # Eve copies the bot's signed content into the bot's slot.
    assert verify_attestation(build(), STATE_KEY, EVE, False, trusting(FIXED_KEY, publisher=EVE)) == (
        Verdict.IMPERSONATION,
        None,
        f"{EVE} wrote into the slot of {BOT} (state_key {STATE_KEY})",
    )


def test_impersonation_by_publisher_field() -> None:
    # Eve copies the bot's signed content into her own slot.
    assert verify_attestation(build(), f"{FILENAME}/{EVE}", EVE, False, TRUST_FIXED) == (
        Verdict.IMPERSONATION,
        None,
        f"{EVE} sent an attestation naming {BOT} as publisher",
    )


def test_impersonation_before_malformed() -> None:
    assert verdict_of({"junk": True}, sender=EVE) is Verdict.IMPERSONATION
    assert verdict_of({"publisher": BOT, "schema": 99}, state_key=f"{FILENAME}/{EVE}", sender=EVE) is (
        Verdict.IMPERSONATION
    )


def test_slot_prefix_is_not_enough() -> None:
    """A sender whose mxid merely extends the slot owner's does not own the slot."""
    assert verdict_of(build(), state_key=f"{FILENAME}/{BOT}.evil") is Verdict.IMPERSONATION
    assert verdict_of(build(), state_key=f"{FILENAME}/{BOT}", sender=BOT + ".evil") is Verdict.IMPERSONATION


# --- malformed content ----------------------------------------------------------------------

BIG = "x" * (MAX_CONTENT_BYTES + 1)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


# (path into the content, new value or DELETE, fragment of the reason)
DELETE = object()
MALFORMED = [
    (("schema",), 2, "'schema' must be 1, got 2"),
    (("schema",), "1", "'schema' must be 1, got 1"),
    (("schema",), True, "'schema' must be 1, got True"),
    (("schema",), DELETE, "'schema' is missing"),
    (("project",), "Example-Pkg", "must be the normalized name 'example-pkg'"),
    (("project",), "example pkg", "not a valid project name"),
    (("project",), "a" * 129, "longer than 128 characters"),
    (("project",), "", "project name is empty"),
    (("project",), ["example-pkg"], "'project' must be a string, not an array"),
    (("version",), "one", "'version' one is not a PEP 440 version"),
    (("version",), " 1.0", "is not a PEP 440 version"),
    (("version",), "1.0\n", "is not a PEP 440 version"),
    (("version",), "1" * 129, "'version' is longer than 128 characters"),
    (("version",), 1, "'version' must be a string, not an integer"),
    (("filename",), "other-1.0.tar.gz", "does not match the state_key's file"),
    (("filename",), "a\\b.whl", "is not a safe file name"),
    (("filename",), "a\x00b.whl", "is not a safe file name"),
    (("filename",), "", "is not a safe file name"),
    (("filename",), None, "'filename' must be a string, not null"),
    (("size",), -1, "'size' must be between 0 and 2**53 - 1, got -1"),
    (("size",), 2**53, "integer outside the range canonical JSON allows"),
    (("size",), True, "'size' must be an integer, not a boolean"),
    (("size",), 1.0, "floating point"),
    (("size",), "1234", "'size' must be an integer, not a string"),
    (("hashes",), DELETE, "'hashes' is missing"),
    (("hashes",), SHA, "'hashes' must be an object, not a string"),
    (("hashes",), {}, "'hashes.sha256' is missing"),
    (("hashes", "sha256"), SHA.upper(), "is not 64 lower-case hex characters"),
    (("hashes", "sha256"), SHA[:-1], "is not 64 lower-case hex characters"),
    (("hashes", "sha256"), SHA + "0", "is not 64 lower-case hex characters"),
    (("hashes", "sha256"), SHA[:-1] + "g", "is not 64 lower-case hex characters"),
    (("hashes", "sha256"), 1, "must be a string"),
    (("hashes",), {"sha256": SHA, **{f"h{i}": "x" for i in range(8)}}, "'hashes' has more than 8 entries"),
    (("hashes", "md5"), "x" * 257, "must be a string of at most 256"),
    (("hashes", "md5"), 5, "must be a string of at most 256"),
    (("hashes", "x" * 33), "x", "'hashes' has a name longer than 32 characters"),
    (("cid",), "", "'cid' '' is not a CID"),
    (("cid",), "bafy-x", "is not a CID"),
    (("cid",), "b" * 257, "'cid' is longer than 256 characters"),
    (("cid",), None, "'cid' must be a string, not null"),
    (("upstream_url",), "ftp://example.org/x.whl", "is not an http(s) URL"),
    (("upstream_url",), "HTTPS://example.org/x.whl", "is not an http(s) URL"),
    (("upstream_url",), "https://example.org/\nx.whl", "is not an http(s) URL"),
    (("upstream_url",), "https://" + "x" * 2041, "'upstream_url' is longer than 2048 characters"),
    (("requires_python",), 3, "'requires_python' must be a string, not an integer"),
    (("requires_python",), ">=" + "3" * 255, "'requires_python' is longer than 256 characters"),
    (("timestamp",), -1, "'timestamp' must be between 0"),
    (("timestamp",), "1700000000000", "'timestamp' must be an integer"),
    (("timestamp",), DELETE, "'timestamp' is missing"),
    (("publisher",), DELETE, "'publisher' is missing"),
    (("publisher",), 7, "'publisher' must be a string, not an integer"),
    (("signatures",), DELETE, "'signatures' is missing"),
    (("signatures",), [], "'signatures' must be an object, not an array"),
    (("signatures",), {}, "has no signature by the publisher"),
    (("signatures",), {EVE: {"ed25519:x": "y"}}, "has no signature by the publisher"),
    (("signatures", BOT), {}, "has no signature by the publisher"),
    (("signatures", BOT), "sig", "must be an object, not a string"),
    (("signatures", BOT, "ed25519:fixed"), 5, "must be a string of at most 256 characters"),
    (("signatures", BOT, "ed25519:fixed"), "A" * 257, "must be a string of at most 256 characters"),
    (("signatures", BOT, "ed25519:" + "k" * 121), "x", "key id of @pypi-bot:example.org is longer than 128"),
    (("signatures", BOT), {f"ed25519:k{i}": "x" for i in range(9)}, "has more than 8 signatures"),
    (("signatures",), {f"@u{i}:x": {} for i in range(9)}, "'signatures' has more than 8 signers"),
    (("signatures", "@" + "u" * 255), {}, "has a signer longer than 255 characters"),
    # Unknown fields are allowed, but not without bounds or outside JSON.
    (("extra",), BIG, f"content is larger than {MAX_CONTENT_BYTES} bytes"),
    (("extra",), ["x" * 1000] * 70, f"content is larger than {MAX_CONTENT_BYTES} bytes"),
    (("extra",), {f"k{i}": "é" * 600 for i in range(70)}, f"content is larger than {MAX_CONTENT_BYTES} bytes (8"),
    (("extra",), _nested(40), "nested deeper than 32 levels"),
    (("extra",), 0.5, "floating point"),
    (("extra",), 2**53, "integer outside the range"),
    (("extra",), -(2**53), "integer outside the range"),
    (("extra",), 10**5000, "integer outside the range"),
    (("extra",), {1: "x"}, "non-string object key (an integer)"),
    (("extra",), {"x"}, "not JSON (set)"),
    (("extra",), b"bytes", "not JSON (bytes)"),
    (("extra",), "\ud800", "cannot be encoded as canonical JSON"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), MALFORMED, ids=[m[2][:40] for m in MALFORMED])
def test_malformed(path: tuple[str, ...], value: Any, fragment: str) -> None:
    content = build()
    target = content
    for part in path[:-1]:
        target = target[part]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value

    verdict, attestation, reason = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert (verdict, attestation) == (Verdict.MALFORMED, None)
    assert fragment in reason
    assert "\n" not in reason
    assert len(reason) < 300

    with pytest.raises(MalformedAttestation) as info:
        parse_attestation(content, STATE_KEY, BOT)
    assert str(info.value) == reason


def test_content_just_under_the_limit_is_fine() -> None:
    content = build()
    del content["signatures"]
    overhead = len(encode_canonical_json({**build(), "extra": ""}))
    content["extra"] = "x" * (MAX_CONTENT_BYTES - overhead)
    content = sign_json(content, BOT, FIXED_KEY)
    assert len(encode_canonical_json(content)) == MAX_CONTENT_BYTES
    assert verdict_of(content) is Verdict.VALID
    content["extra"] += "x"
    assert verdict_of(content) is Verdict.MALFORMED


@pytest.mark.parametrize("content", [None, "string", 5, [EXPECTED_CONTENT], (), b"{}"])
def test_content_not_an_object(content: Any) -> None:
    verdict, attestation, reason = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert (verdict, attestation) == (Verdict.MALFORMED, None)
    assert reason.startswith("content must be a JSON object, not ")


@pytest.mark.parametrize(
    ("state_key", "sender", "reason"),
    [
        (FILENAME, BOT, f"state_key {FILENAME} is not '<filename>/<publisher>'"),
        ("", BOT, "state_key '' is not '<filename>/<publisher>'"),
        (None, BOT, "state_key must be a string, not NoneType"),
        (STATE_KEY, None, "sender must be a string, not NoneType"),
    ],
)
def test_bad_state_key_or_sender(state_key: Any, sender: Any, reason: str) -> None:
    assert verify_attestation(build(), state_key, sender, False, TRUST_FIXED) == (Verdict.MALFORMED, None, reason)


def test_reasons_escape_what_senders_wrote() -> None:
    content = build()
    content["version"] = "1.0\n\x1b[31mEVIL" + "x" * 500
    _, _, reason = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert reason == "'version' is longer than 128 characters"
    content["version"] = "1.0\n\x1b[31m"
    _, _, reason = verify_attestation(content, STATE_KEY, BOT, False, TRUST_FIXED)
    assert reason == "'version' '1.0\\n\\x1b[31m' is not a PEP 440 version"


def test_verdict_phrases() -> None:
    assert {v.name: v.phrase for v in Verdict} == {
        "VALID": "valid",
        "MALFORMED": "malformed attestation",
        "BAD_SIGNATURE": "signature does not verify",
        "UNKNOWN_KEY": "not signed by a trusted key",
        "IMPERSONATION": "sent into another publisher's slot",
        "WRONG_PROJECT": "attestation for another project",
        "REDACTED": "redacted",
    }


# --- fuzzing --------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Content near the real thing reaches deeper checks than arbitrary objects do.
near_content = st.builds(
    lambda base, updates, deletes: {
        **{k: v for k, v in base.items() if k not in deletes},
        **updates,
    },
    st.just(EXPECTED_CONTENT),
    st.dictionaries(st.sampled_from([*sorted(EXPECTED_CONTENT), "extra", "unsigned"]), json_values, max_size=3),
    st.sets(st.sampled_from(sorted(EXPECTED_CONTENT))),
)
any_content = json_values | near_content | st.dictionaries(st.text(max_size=12), json_values, max_size=12)
state_keys = st.text(max_size=40) | st.just(STATE_KEY) | st.builds(lambda s: f"{FILENAME}/{s}", st.text(max_size=30))
senders = st.text(max_size=30) | st.just(BOT)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(any_content, state_keys, senders, st.booleans())
def test_verify_never_raises(content: Any, state_key: str, sender: str, redacted: bool) -> None:
    verdict, attestation, reason = verify_attestation(content, state_key, sender, redacted, TRUST_FIXED)
    assert isinstance(verdict, Verdict)
    assert isinstance(reason, str)
    assert reason
    assert "\n" not in reason
    if verdict in (Verdict.REDACTED, Verdict.IMPERSONATION, Verdict.MALFORMED):
        assert attestation is None
    else:
        assert isinstance(attestation, Attestation)
        assert attestation.publisher == sender
    if redacted:
        assert verdict is Verdict.REDACTED


@settings(max_examples=300)
@given(
    st.sampled_from([*sorted(set(EXPECTED_CONTENT) - {"signatures"}), "extra"]),
    json_values,
)
def test_any_change_to_a_signed_field_breaks_validity(field: str, value: Any) -> None:
    content = copy.deepcopy(EXPECTED_CONTENT)
    if content.get(field) == value and type(content.get(field)) is type(value):
        return
    content[field] = value
    assert verdict_of(content) is not Verdict.VALID


def test_expected_content_is_valid() -> None:
    """The fuzz tests above start from this; make sure it is the real thing."""
    assert verdict_of(copy.deepcopy(EXPECTED_CONTENT)) is Verdict.VALID
