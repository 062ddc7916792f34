"""Signing keys: generation, the key file, key ids and the public form config takes."""

from __future__ import annotations

import ast
import io
import os
import re
import stat
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)

from synapse_pypi import trust
from synapse_pypi.trust import (
    KEY_TYPE,
    KeyFileError,
    KeyFormatError,
    generate_key,
    key_id,
    load_or_create_key,
    parse_public_key,
    public_key_string,
    verify_key_base64,
)

# RFC 8032-style known vector: the seed 00 01 02 … 1f and its ed25519 public key.
SEED_BASE64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
PUBLIC_BASE64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
FIXED_KEY = decode_signing_key_base64("ed25519", "fixed", SEED_BASE64)


def test_key_type() -> None:
    assert KEY_TYPE == "dev.synapse-pypi.key"


def test_known_key_vector() -> None:
    assert key_id(FIXED_KEY) == "ed25519:fixed"
    assert verify_key_base64(FIXED_KEY) == PUBLIC_BASE64
    assert public_key_string(FIXED_KEY) == f"ed25519:fixed {PUBLIC_BASE64}"
    # The verify key gives the same answers as the signing key it belongs to.
    verify_key = get_verify_key(FIXED_KEY)
    assert key_id(verify_key) == "ed25519:fixed"
    assert public_key_string(verify_key) == f"ed25519:fixed {PUBLIC_BASE64}"


def test_generate_key_random_version() -> None:
    keys = [generate_key() for _ in range(20)]
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9]{6}", key.version), key.version
        assert key.alg == "ed25519"
        assert key_id(key) == f"ed25519:{key.version}"
    assert len({k.version for k in keys}) > 1
    assert len({k.encode() for k in keys}) == len(keys)


def test_generate_key_given_version() -> None:
    key = generate_key("my_key_1")
    assert key_id(key) == "ed25519:my_key_1"
    # A usable key: what it signs, its public half verifies.
    signed = key.sign(b"message")
    _, verify_key = parse_public_key(public_key_string(key))
    assert verify_key.verify(signed) == b"message"


@pytest.mark.parametrize("version", ["", "a b", "a:b", "a/b", "é", "x" * 65])
def test_generate_key_bad_version(version: str) -> None:
    with pytest.raises(KeyFormatError, match="key version"):
        generate_key(version)


@pytest.mark.parametrize(
    "text",
    [
        f"ed25519:fixed {PUBLIC_BASE64}",
        f"  ed25519:fixed   {PUBLIC_BASE64}\n",
        f"ed25519:fixed {PUBLIC_BASE64}=",
    ],
)
def test_parse_public_key(text: str) -> None:
    kid, verify_key = parse_public_key(text)
    assert kid == "ed25519:fixed"
    assert verify_key.encode() == get_verify_key(FIXED_KEY).encode()
    assert verify_key.alg == "ed25519"
    assert verify_key.version == "fixed"


def test_parse_public_key_round_trip() -> None:
    key = generate_key()
    kid, verify_key = parse_public_key(public_key_string(key))
    assert kid == key_id(key)
    assert verify_key.encode() == key.verify_key.encode()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "two parts"),
        ("ed25519:fixed", "two parts"),
        (f"ed25519:fixed {PUBLIC_BASE64} extra", "two parts"),
        (f"fixed {PUBLIC_BASE64}", "must be 'ed25519:<key id>'"),
        (f"curve25519:fixed {PUBLIC_BASE64}", "'curve25519' is not supported"),
        (f"ED25519:fixed {PUBLIC_BASE64}", "'ED25519' is not supported"),
        (f"ed25519: {PUBLIC_BASE64}", "key version ''"),
        (f"ed25519:a-b {PUBLIC_BASE64}", "key version 'a-b'"),
        ("ed25519:fixed " + PUBLIC_BASE64[:-1], "43 characters of base64"),
        ("ed25519:fixed " + PUBLIC_BASE64 + "A", "43 characters of base64"),
        ("ed25519:fixed " + PUBLIC_BASE64[:-1] + "!", "43 characters of base64"),
        # URL-safe base64 is not the Matrix form; and "=" only as the one padding character.
        ("ed25519:fixed " + PUBLIC_BASE64.replace("/", "_"), "43 characters of base64"),
        ("ed25519:fixed " + PUBLIC_BASE64 + "==", "43 characters of base64"),
        # A whole signing key file line is not a public key.
        (f"ed25519 fixed {SEED_BASE64}", "two parts"),
    ],
)
def test_parse_public_key_malformed(text: str, fragment: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        parse_public_key(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_parse_public_key_not_a_string() -> None:
    with pytest.raises(KeyFormatError, match="must be a string, not bytes"):
        parse_public_key(b"ed25519:fixed " + PUBLIC_BASE64.encode())  # type: ignore[arg-type]


def test_key_format_error_is_a_value_error() -> None:
    assert issubclass(KeyFormatError, ValueError)


@given(st.text(max_size=120))
def test_parse_public_key_never_raises_anything_else(text: str) -> None:
    try:
        kid, verify_key = parse_public_key(text)
    except KeyFormatError as e:
        message = str(e)
    else:
        assert kid.startswith("ed25519:")
        assert len(verify_key.encode()) == 32
        return
    assert message
    assert "\n" not in message


@given(st.binary(min_size=32, max_size=32), st.from_regex(r"[A-Za-z0-9_]{1,64}", fullmatch=True))
def test_public_key_string_round_trips(raw: bytes, version: str) -> None:
    key = decode_signing_key_base64("ed25519", version, encode_signing_key_base64(nacl.signing.SigningKey(raw)))
    kid, verify_key = parse_public_key(public_key_string(key))
    assert kid == f"ed25519:{version}"
    assert verify_key.encode() == key.verify_key.encode()


# --- the key file ---------------------------------------------------------------------------


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_load_or_create_key_creates_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "signing.key"
    key = load_or_create_key(str(path))

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text == f"ed25519 {key.version} {encode_signing_key_base64(key)}\n"
    # Exactly what signedjson (and Synapse) read.
    (read_back,) = read_signing_keys(io.StringIO(text))
    assert read_back.encode() == key.encode()
    assert _leftovers(path.parent) == []

    again = load_or_create_key(str(path))
    assert again.encode() == key.encode()
    assert key_id(again) == key_id(key)
    assert path.read_text() == text


def test_load_existing_signedjson_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    with open(path, "w") as f:
        write_signing_keys(f, [FIXED_KEY])
    key = load_or_create_key(str(path))
    assert key_id(key) == "ed25519:fixed"
    assert public_key_string(key) == f"ed25519:fixed {PUBLIC_BASE64}"


def test_load_tolerates_blank_lines_and_padding(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text(f"\n  ed25519   fixed {SEED_BASE64}=  \n\n")
    assert public_key_string(load_or_create_key(str(path))) == f"ed25519:fixed {PUBLIC_BASE64}"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "found 0 lines"),
        (b"\n\n", "found 0 lines"),
        (f"ed25519 a {SEED_BASE64}\ned25519 b {SEED_BASE64}\n".encode(), "found 2 lines"),
        (f"ed25519 {SEED_BASE64}\n".encode(), "expected one line"),
        (f"ed25519 fixed {SEED_BASE64} 1\n".encode(), "expected one line"),
        (f"curve25519 fixed {SEED_BASE64}\n".encode(), "'curve25519' is not supported"),
        (f"ed25519 a:b {SEED_BASE64}\n".encode(), "key version 'a:b'"),
        (b"ed25519 fixed AAEC\n", "the key seed must be 43 characters of base64"),
        (f"ed25519 fixed {SEED_BASE64[:-1]}*\n".encode(), "the key seed must be 43 characters of base64"),
        (b"\xff\xfe garbage", "not ASCII text"),
        (b"x" * 5000, "longer than 4096 bytes"),
    ],
)
def test_corrupt_key_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        load_or_create_key(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message
    assert "\n" not in message
    # A corrupt key is never silently replaced: that would change the server's identity.
    assert path.read_bytes() == content


def test_key_file_is_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.mkdir()
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(path))}: cannot read the signing key"):
        load_or_create_key(str(path))


def test_key_file_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    path = tmp_path / "blocker" / "signing.key"
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(path))}: "):
        load_or_create_key(str(path))


def test_concurrent_creator_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers starting at once end up with the same key: the first file in place wins."""
    path = tmp_path / "signing.key"
    real_link = os.link

    def link_after_someone_else(src: str, dst: str) -> None:
        with open(dst, "w") as f:
            write_signing_keys(f, [FIXED_KEY])
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_someone_else)
    key = load_or_create_key(str(path))
    assert public_key_string(key) == f"ed25519:fixed {PUBLIC_BASE64}"
    assert path.read_text() == f"ed25519 fixed {SEED_BASE64}\n"
    assert _leftovers(tmp_path) == []


def test_no_hard_links_falls_back_to_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "signing.key"

    def no_links(src: str, dst: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    key = load_or_create_key(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(str(path)).encode() == key.encode()
    assert _leftovers(tmp_path) == []


def test_loose_permissions_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "signing.key"
    with open(path, "w") as f:
        write_signing_keys(f, [FIXED_KEY])
    path.chmod(0o644)
    with caplog.at_level("WARNING", logger="synapse_pypi.trust._keys"):
        load_or_create_key(str(path))
    assert [r.getMessage() for r in caplog.records] == [
        f"signing key file {path} is readable by others (mode 644); chmod 600 it"
    ]


# --- purity ---------------------------------------------------------------------------------


_TRUST_DIR = Path(trust.__file__).parent
_PACKAGE_DIR = _TRUST_DIR.parent


def _imported(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    return imported


def test_the_purity_check_covers_every_trust_module() -> None:
    # The fold and the bans are where room content is judged: they must stay in the list.
    assert {"_fold.py", "_bans.py", "_attestation.py", "_keys.py", "_policy.py"} <= {
        p.name for p in _TRUST_DIR.glob("*.py")
    }


@pytest.mark.parametrize("module", sorted(p.name for p in _TRUST_DIR.glob("*.py")))
def test_trust_core_imports_no_twisted_or_synapse(module: str) -> None:
    """DESIGN.md §2: pure logic never imports Twisted or Synapse; nor does any module of
    ours that it imports (followed through the package)."""
    start = _TRUST_DIR / module
    assert _imported(start), module
    seen: set[Path] = set()
    todo = [start]
    forbidden = []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported(path):
            if name.split(".")[0] in ("twisted", "synapse", "treq"):
                forbidden.append(f"{path.relative_to(_PACKAGE_DIR)}: {name}")
            elif name.startswith("synapse_pypi."):
                sub = _PACKAGE_DIR.joinpath(*name.split(".")[1:])
                todo += [p for p in (sub.with_suffix(".py"), sub / "__init__.py") if p.exists()]
    assert forbidden == []
