"""The pure rules of an upload (synapse_pypi/_upload_rules.py)."""

from __future__ import annotations

import hashlib
import os

import pytest
from harness.uploads import form_fields, multipart_body
from packaging.version import Version

from synapse_pypi._errors import HttpError
from synapse_pypi._upload_rules import (
    Admission,
    admit,
    check_core_metadata,
    check_digests,
    check_form,
    digests_of,
    may_publish,
    parse_form,
)

WHEEL = "corp_x-1.0-py3-none-any.whl"


def _form(content: bytes = b"PK\x03\x04 binary \r\n\r\n--not-a-boundary \x00\xff", filename: str = WHEEL, **changes: str):
    fields = {**form_fields("corp-x", "1.0", content), **changes}
    body, content_type = multipart_body(fields, filename, content)
    return parse_form(body, content_type)


def test_the_file_part_keeps_its_bytes_and_name() -> None:
    content = os.urandom(5000) + b"\r\n--\r\n"
    form = _form(content)
    assert form.content == content and form.filename == WHEEL
    assert form.get("name") == "corp-x" and form.get(":action") == "file_upload"
    want = check_form(form)
    assert (want.project, want.version, want.filename) == ("corp-x", Version("1.0"), WHEEL)
    assert want.digests == {"sha256": hashlib.sha256(content).hexdigest()}
    check_digests(WHEEL, want.digests, digests_of(content))


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"name": "corp-y"}, "the form says 'corp-y'"),
        ({"name": "-bad-"}, "'name'"),
        ({"version": "one"}, "'version'"),
        ({"version": "1.1"}, "the file name has version 1.0"),
        ({"filetype": "bdist_egg"}, "try one of: bdist_wheel, sdist"),
        ({":action": "submit"}, "':action'"),
        ({"protocol_version": "2"}, "'protocol_version'"),
        ({"sha256_digest": ""}, "no digest"),
        ({"attestations": "{}"}, "JSON list"),
        ({"filetype": "sdist"}, "sdist"),
    ],
)
def test_bad_forms_say_which_field(changes: dict, words: str) -> None:
    with pytest.raises(HttpError) as e:
        check_form(_form(**changes))
    assert e.value.code == 400 and words in e.value.reason


def test_bad_file_names_and_digests() -> None:
    for filename in ("../x.whl", "corp_x-1.0.whl", "corp_x-1.0.exe"):
        with pytest.raises(HttpError) as e:
            check_form(_form(filename=filename))
        assert e.value.code == 400
    with pytest.raises(HttpError) as e:
        check_digests(WHEEL, {"md5": "0" * 32}, digests_of(b"x"))
    assert "md5 mismatch" in e.value.reason
    with pytest.raises(HttpError):
        parse_form(b"name=x", "application/x-www-form-urlencoded")


def test_sdist_names() -> None:
    want = check_form(_form(filename="corp_x-1.0.tar.gz", filetype="sdist"))
    assert want.filetype == "sdist"


def test_core_metadata_must_match() -> None:
    meta = b"Metadata-Version: 2.1\nName: Corp.X\nVersion: 1.0.0\nRequires-Python: >=3.9\n"
    assert check_core_metadata(WHEEL, meta, "corp-x", Version("1.0")) == ">=3.9"
    with pytest.raises(HttpError, match="METADATA names project"):
        check_core_metadata(WHEEL, meta.replace(b"Corp.X", b"other"), "corp-x", Version("1.0"))
    with pytest.raises(HttpError, match="METADATA has version"):
        check_core_metadata(WHEEL, meta, "corp-x", Version("1.1"))


def test_who_may_publish() -> None:
    uploaders = {"corp-x": ("@carol:hs",), "*": ("@ci:hs",)}
    assert may_publish("@admin:hs", "corp-x", True, {}, None, 60)
    assert may_publish("@carol:hs", "corp-x", False, uploaders, None, 60)
    assert not may_publish("@carol:hs", "corp-y", False, uploaders, None, 60)
    assert may_publish("@ci:hs", "corp-y", False, uploaders, None, 60)
    assert may_publish("@dave:hs", "corp-x", False, uploaders, 60, 60)
    assert not may_publish("@dave:hs", "corp-x", False, uploaders, 50, 60)


def test_shadowing_rule() -> None:
    assert admit("x", None, False, False) is Admission.LOCAL
    assert admit("x", None, True, True) is Admission.LOCAL  # local already: the upstream came later
    assert admit("x", "merge", False, True) is Admission.MERGE
    assert admit("x", "replace", False, True) is Admission.REPLACE
    with pytest.raises(HttpError) as e:
        admit("x", None, False, True)
    assert e.value.code == 403 and "local_projects" in e.value.reason
    with pytest.raises(HttpError) as e:
        admit("x", None, False, None)
    assert e.value.code == 503
