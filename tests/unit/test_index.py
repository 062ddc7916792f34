"""The project-page model: parsers (PEP 503 HTML, PEP 691 JSON), renderers, storage form."""

import json
import os
import pickle
from collections.abc import Callable
from html import escape
from typing import Any
from urllib.parse import quote, urljoin

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synapse_pypi import index
from synapse_pypi._names import NormalizedName, is_safe_filename
from synapse_pypi.index import DistFile, MalformedPage, ProjectPage

PAGE_URL = "https://example.org/simple/foo/"
FOO = NormalizedName("foo")
SHA = "a" * 64
SHA_B = "b" * 64
# SYNAPSE_PYPI_FUZZ_EXAMPLES=20000 for a long fuzzing run.
FUZZ = settings(
    max_examples=int(os.environ.get("SYNAPSE_PYPI_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def html_page(*anchors: str, head: str = "") -> bytes:
    return (f"<!DOCTYPE html><html><head>{head}</head><body>" + "\n".join(anchors) + "</body></html>").encode()


def json_page(files: list, name: Any = "foo", meta: Any = None, **extra: Any) -> bytes:
    document: dict = {"meta": {"api-version": "1.1"} if meta is None else meta, "name": name, "files": files}
    document.update(extra)
    return json.dumps(document).encode()


def one_file(page: ProjectPage) -> DistFile:
    assert len(page.files) == 1
    return page.files[0]


def assert_malformed(fn: Callable[..., Any], *args: Any, match: str) -> None:
    with pytest.raises(MalformedPage, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)


# --- model -------------------------------------------------------------------------------


def test_model_is_frozen_hashable_and_indexed() -> None:
    f = DistFile("foo-1.0.tar.gz", "https://example.org/f", {"SHA256": SHA.upper()})
    assert f.hashes == {"sha256": SHA}  # lower case, as documented
    with pytest.raises(TypeError):
        f.hashes["md5"] = "00"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        f.size = 3  # type: ignore[misc]
    other = DistFile("foo-2.0.tar.gz", "https://example.org/g", {}, core_metadata={"sha256": SHA})
    page = ProjectPage(FOO, [f, other], ["1.0", "2.0"])
    assert page.files == (f, other) and page.versions == ("1.0", "2.0")
    assert page.file("foo-2.0.tar.gz") is other
    assert page.file("nope") is None
    assert hash(page) == hash(ProjectPage(FOO, (f, other), ("1.0", "2.0")))
    # The lookup follows evolve.
    assert attrs.evolve(page, files=(other,)).file("foo-1.0.tar.gz") is None
    # The web layer checks isinstance(..., dict).
    assert isinstance(other.core_metadata, dict)
    assert pickle.loads(pickle.dumps(page)) == page


def test_empty_values_are_normalized() -> None:
    f = DistFile("a.whl", "https://example.org/a.whl", {}, requires_python="", yanked="", core_metadata={})
    # No hashes for the metadata file still means it exists; an empty reason is still yanked.
    assert (f.requires_python, f.yanked, f.core_metadata) == (None, True, True)


# --- HTML parsing ------------------------------------------------------------------------


def test_parse_html_full() -> None:
    body = html_page(
        '<a href="../../files/foo-1.0.tar.gz#sha256=' + SHA.upper() + '" data-requires-python="&gt;=3.8">'
        "foo-1.0.tar.gz</a>",
        '<a href="https://cdn.example.org/foo-2.0-py3-none-any.whl#md5=0123abcd&amp;egg=foo" '
        'data-yanked="broken &amp; bad" data-core-metadata="sha256=' + SHA_B + '" '
        'data-provenance="/prov/foo-2.0-py3-none-any.whl.provenance">foo-2.0-py3-none-any.whl</a>',
        "<a>not a link</a>",
        '<a name="anchor-without-href">foo-3.0.tar.gz</a>',
        head='<meta name="pypi:repository-version" content="1.0">',
    )
    page = index.parse_project_html(body, PAGE_URL, FOO)
    assert page == ProjectPage(
        FOO,
        (
            DistFile(
                filename="foo-1.0.tar.gz",
                url="https://example.org/files/foo-1.0.tar.gz",
                hashes={"sha256": SHA},
                requires_python=">=3.8",
            ),
            DistFile(
                filename="foo-2.0-py3-none-any.whl",
                url="https://cdn.example.org/foo-2.0-py3-none-any.whl",
                hashes={"md5": "0123abcd"},
                yanked="broken & bad",
                core_metadata={"sha256": SHA_B},
                provenance="https://example.org/prov/foo-2.0-py3-none-any.whl.provenance",
            ),
        ),
        ("1.0", "2.0"),
    )


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        # PEP 592: present means yanked, with or without a value.
        ('<a href="f.tar.gz" data-yanked>f.tar.gz</a>', True),
        ('<a href="f.tar.gz" data-yanked="">f.tar.gz</a>', True),
        ('<a href="f.tar.gz" data-yanked="security">f.tar.gz</a>', "security"),
        ('<a href="f.tar.gz" data-yanked="&lt;bad&gt;">f.tar.gz</a>', "<bad>"),
        ('<a href="f.tar.gz">f.tar.gz</a>', False),
    ],
)
def test_parse_html_yanked(anchor: str, expected: Any) -> None:
    assert one_file(index.parse_project_html(html_page(anchor), PAGE_URL, FOO)).yanked == expected


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ('data-core-metadata="true"', True),
        ('data-core-metadata="TRUE"', True),
        (f'data-core-metadata="sha256={SHA}"', {"sha256": SHA}),
        (f'data-core-metadata="SHA256={SHA.upper()}"', {"sha256": SHA}),
        # PEP 714: the old attribute is read too; the new one wins.
        (f'data-dist-info-metadata="sha256={SHA}"', {"sha256": SHA}),
        ('data-dist-info-metadata="true"', True),
        (f'data-core-metadata="sha256={SHA}" data-dist-info-metadata="sha256={SHA_B}"', {"sha256": SHA}),
        (f'data-dist-info-metadata="sha256={SHA_B}" data-core-metadata="true"', True),
        ("", False),
        ('data-core-metadata="false"', False),
        ('data-core-metadata="what"', False),
        ("data-core-metadata", False),
    ],
)
def test_parse_html_core_metadata(attributes: str, expected: Any) -> None:
    body = html_page(f'<a href="f.whl" {attributes}>f.whl</a>')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).core_metadata == expected


@pytest.mark.parametrize(
    ("href", "url", "hashes"),
    [
        ("foo-1.0.tar.gz", "https://example.org/simple/foo/foo-1.0.tar.gz", {}),
        ("/files/foo-1.0.tar.gz", "https://example.org/files/foo-1.0.tar.gz", {}),
        ("//other.example.org/x/foo-1.0.tar.gz", "https://other.example.org/x/foo-1.0.tar.gz", {}),
        ("http://example.org/foo-1.0.tar.gz", "http://example.org/foo-1.0.tar.gz", {}),
        (f"  foo-1.0.tar.gz#sha256={SHA}  ", "https://example.org/simple/foo/foo-1.0.tar.gz", {"sha256": SHA}),
        ("f.tar.gz?x=1#sha512=FF", "https://example.org/simple/foo/f.tar.gz?x=1", {"sha512": "ff"}),
        ("f.tar.gz#sha3_256=01", "https://example.org/simple/foo/f.tar.gz", {"sha3_256": "01"}),
        ("f.tar.gz#egg=foo-1.0", "https://example.org/simple/foo/f.tar.gz", {}),
        ("f.tar.gz#subdirectory=x&sha1=ab", "https://example.org/simple/foo/f.tar.gz", {"sha1": "ab"}),
    ],
)
def test_parse_html_urls_and_fragments(href: str, url: str, hashes: dict) -> None:
    f = one_file(index.parse_project_html(html_page(f'<a href="{href}">foo-1.0.tar.gz</a>'), PAGE_URL, FOO))
    assert (f.url, f.hashes) == (url, hashes)


def test_parse_html_base_href() -> None:
    body = html_page('<a href="foo-1.0.tar.gz">foo-1.0.tar.gz</a>', head='<base href="/mirror/">')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).url == "https://example.org/mirror/foo-1.0.tar.gz"


def test_parse_html_filename_from_url_when_text_is_empty() -> None:
    body = html_page('<a href="/f/caf%C3%A9-1.0.tar.gz#sha256=' + SHA + '">  </a>', '<a href="/g/bar-2.0.zip"/>')
    page = index.parse_project_html(body, PAGE_URL, FOO)
    assert [f.filename for f in page.files] == ["caf\u00e9-1.0.tar.gz", "bar-2.0.zip"]
    assert page.files[0].hashes == {"sha256": SHA}


def test_parse_html_text_whitespace_and_entities() -> None:
    body = html_page('<a href="x">\n   foo&#45;1.0.tar.gz\n</a>', '<a href="y">a&amp;b.zip</a>')
    page = index.parse_project_html(body, PAGE_URL, FOO)
    assert [f.filename for f in page.files] == ["foo-1.0.tar.gz", "a&b.zip"]


def test_parse_html_requires_python_entities() -> None:
    body = html_page('<a href="x" data-requires-python="&gt;=3.8,&lt;4,!=3.9.*">f.tar.gz</a>')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).requires_python == ">=3.8,<4,!=3.9.*"
    body = html_page('<a href="x" data-requires-python="">f.tar.gz</a>')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).requires_python is None


def test_parse_html_first_of_duplicates_wins() -> None:
    body = html_page('<a href="a/f.tar.gz" href="b">f.tar.gz</a>', '<a href="c/f.tar.gz">f.tar.gz</a>')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).url == "https://example.org/simple/foo/a/f.tar.gz"


def test_parse_html_unclosed_and_nested_anchors() -> None:
    body = b'<a href="a">a.zip<a href="b">b.zip'
    page = index.parse_project_html(body, PAGE_URL, FOO)
    assert [(f.filename, f.url) for f in page.files] == [
        ("a.zip", "https://example.org/simple/foo/a"),
        ("b.zip", "https://example.org/simple/foo/b"),
    ]


def test_parse_html_bom_and_empty_page() -> None:
    body = b"\xef\xbb\xbf" + html_page('<a href="f.zip">f.zip</a>')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).filename == "f.zip"
    assert index.parse_project_html(b"", PAGE_URL, FOO) == ProjectPage(FOO, (), ())


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"<a href='f.zip'>caf\xe9.zip</a>", "not UTF-8"),
        (html_page('<a href="x">../evil.zip</a>'), "unsafe"),
        (html_page('<a href="x">.hidden</a>'), "unsafe"),
        (html_page('<a href="x">a\\b.zip</a>'), "unsafe"),
        (html_page('<a href="/files/"></a>'), "unsafe or empty"),
        (html_page('<a href="javascript:alert(1)">f.zip</a>'), "not an absolute http"),
        (html_page('<a href="file:///etc/passwd">f.zip</a>'), "not an absolute http"),
        (html_page('<a href="http://[::1/f.zip">f.zip</a>'), "invalid URL"),
        (html_page('<a href="f.zip#sha256=xyz">f.zip</a>'), "not hex"),
        (html_page('<a href="f.zip" data-core-metadata="sha256=">f.zip</a>'), "not hex"),
        (html_page(head='<meta name="pypi:repository-version" content="2.0">'), "unsupported api-version"),
        (html_page(head='<meta name="pypi:repository-version" content="one">'), "not <major>.<minor>"),
        (html_page(head='<meta name="pypi:repository-version">'), "not a string"),
    ],
)
def test_parse_html_malformed(body: bytes, match: str) -> None:
    assert_malformed(index.parse_project_html, body, PAGE_URL, FOO, match=match)


def test_parse_html_accepts_later_minor_versions() -> None:
    body = html_page('<a href="f.zip">f.zip</a>', head='<meta name="pypi:repository-version" content="1.99">')
    assert one_file(index.parse_project_html(body, PAGE_URL, FOO)).filename == "f.zip"


# --- JSON parsing ------------------------------------------------------------------------


def test_parse_json_full() -> None:
    body = json_page(
        [
            {
                "filename": "foo-1.0.tar.gz",
                "url": "../../files/foo-1.0.tar.gz",
                "hashes": {"sha256": SHA.upper(), "BLAKE2B": "ab"},
                "requires-python": ">=3.8",
                "yanked": False,
                "size": 1234,
                "upload-time": "2024-01-02T03:04:05.000006Z",
                "core-metadata": {"sha256": SHA_B},
                "dist-info-metadata": True,
                "provenance": "/prov/foo-1.0.tar.gz.provenance",
                "unknown-key": "ignored",
            },
            {
                "filename": "foo-2.0-py3-none-any.whl",
                "url": "https://cdn.example.org/foo-2.0-py3-none-any.whl#sha256=" + SHA_B,
                "hashes": {},
                "yanked": "broken",
            },
        ],
        name="Foo",
        versions=["2.0", "1.0", "3.0a1"],
    )
    page = index.parse_project_json(body, PAGE_URL, FOO)
    assert page == ProjectPage(
        FOO,
        (
            DistFile(
                filename="foo-1.0.tar.gz",
                url="https://example.org/files/foo-1.0.tar.gz",
                hashes={"sha256": SHA, "blake2b": "ab"},
                requires_python=">=3.8",
                core_metadata={"sha256": SHA_B},
                size=1234,
                upload_time="2024-01-02T03:04:05.000006Z",
                provenance="https://example.org/prov/foo-1.0.tar.gz.provenance",
            ),
            DistFile(
                filename="foo-2.0-py3-none-any.whl",
                url="https://cdn.example.org/foo-2.0-py3-none-any.whl",
                hashes={"sha256": SHA_B},
                yanked="broken",
            ),
        ),
        ("1.0", "2.0", "3.0a1"),
    )


@pytest.mark.parametrize(
    ("extra", "field", "expected"),
    [
        ({}, "yanked", False),
        ({"yanked": True}, "yanked", True),
        ({"yanked": ""}, "yanked", True),
        ({"yanked": "reason"}, "yanked", "reason"),
        ({"yanked": None}, "yanked", False),
        ({"core-metadata": True}, "core_metadata", True),
        ({"core-metadata": False, "dist-info-metadata": True}, "core_metadata", False),
        ({"dist-info-metadata": {"sha256": SHA}}, "core_metadata", {"sha256": SHA}),
        ({"core-metadata": {}}, "core_metadata", True),
        ({"core-metadata": None, "dist-info-metadata": True}, "core_metadata", True),
        ({}, "core_metadata", False),
        ({}, "size", None),
        ({"size": 0}, "size", 0),
        ({"size": None}, "size", None),
        ({"requires-python": ""}, "requires_python", None),
        ({"requires-python": None}, "requires_python", None),
        ({"hashes": None}, "hashes", {}),
        ({"provenance": None}, "provenance", None),
        ({"provenance": "https://other.example.org/p"}, "provenance", "https://other.example.org/p"),
        ({"upload-time": None}, "upload_time", None),
    ],
)
def test_parse_json_fields(extra: dict, field: str, expected: Any) -> None:
    entry = {"filename": "f-1.0.tar.gz", "url": "f-1.0.tar.gz", "hashes": {}, **extra}
    f = one_file(index.parse_project_json(json_page([entry]), PAGE_URL, FOO))
    assert getattr(f, field) == expected


def test_parse_json_versions_derived_when_absent() -> None:
    files = [
        {"filename": name, "url": name, "hashes": {}}
        for name in [
            "foo-1.0.tar.gz",
            "foo-1.0-py3-none-any.whl",
            "foo-10.0.tar.gz",
            "foo-2.0rc1.zip",
            "foo-0.9-1-cp311-cp311-manylinux_2_17_x86_64.whl",
            "foo-1.0.win32.exe",
            "foo-banana.tar.gz",
            "foo-1.0.tar.bz2",
        ]
    ]
    page = index.parse_project_json(json_page(files, meta={"api-version": "1.0"}), PAGE_URL, FOO)
    assert page.versions == ("0.9", "1.0", "2.0rc1", "10.0")


def test_parse_json_versions_sorted_and_deduplicated() -> None:
    body = json_page([], versions=["2.0", "banana", "1.0", "1.0", "10.0", "1.0.0", "apple"])
    assert index.parse_project_json(body, PAGE_URL, FOO).versions == ("1.0", "1.0.0", "2.0", "10.0", "apple", "banana")


def test_parse_json_first_of_duplicate_files_wins() -> None:
    files = [{"filename": "f.zip", "url": "a", "hashes": {}}, {"filename": "f.zip", "url": "b", "hashes": {}}]
    assert one_file(index.parse_project_json(json_page(files), PAGE_URL, FOO)).url == PAGE_URL + "a"


GOOD_FILE = {"filename": "f.zip", "url": "f.zip", "hashes": {"sha256": SHA}}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"[]", "must be an object"),
        (b"\xff{}", "not UTF-8"),
        (json.dumps({"meta": {"api-version": "1.0"}, "name": "foo", "files": []}).encode("utf-16"), "not UTF-8"),
        (b'{"meta": {"api-version": "1.0"}, "name": "foo", "files": [], "x": NaN}', "invalid JSON"),
        (b"[" * 100000 + b"]" * 100000, "invalid JSON"),
        (json.dumps({"name": "foo", "files": []}).encode(), "no meta"),
        (json_page([], meta=[]), "meta must be an object"),
        (json_page([], meta={}), "no api-version"),
        (json_page([], meta={"api-version": 1.0}), "not a string"),
        (json_page([], meta={"api-version": "2.0"}), "unsupported api-version"),
        (json_page([], meta={"api-version": "1"}), "not <major>.<minor>"),
        (json_page([], meta={"api-version": "9" * 5000 + ".0"}), "unsupported api-version"),
        (json.dumps({"meta": {"api-version": "1.0"}, "files": []}).encode(), "has no name"),
        (json_page([], name="bar"), "page is for project 'bar', not 'foo'"),
        (json_page([], name="-bad-"), "not a valid project name"),
        (json_page([], name=3), "name must be a string, not a number"),
        (json_page([], name="\ud800"), "not valid Unicode"),
        (json.dumps({"meta": {"api-version": "1.0"}, "name": "foo"}).encode(), "has no files"),
        (json_page({}), "files must be an array"),
        (json_page(["f.zip"]), r"files\[0\] must be an object, not a string"),
        (json_page([{"url": "f.zip", "hashes": {}}]), "has no filename"),
        (json_page([{**GOOD_FILE, "filename": None}]), "filename must be a string, not null"),
        (json_page([{**GOOD_FILE, "filename": "../f.zip"}]), "unsafe"),
        (json_page([{**GOOD_FILE, "filename": ""}]), "unsafe or empty"),
        (json_page([{**GOOD_FILE, "filename": ".f.zip"}]), "unsafe"),
        (json_page([{"filename": "f.zip", "hashes": {}}]), "has no url"),
        (json_page([{**GOOD_FILE, "url": ""}]), "empty url"),
        (json_page([{**GOOD_FILE, "url": 7}]), "url must be a string"),
        (json_page([{**GOOD_FILE, "url": "ftp://example.org/f.zip"}]), "not an absolute http"),
        (json_page([{**GOOD_FILE, "hashes": []}]), "hashes must be an object"),
        (json_page([{**GOOD_FILE, "hashes": {"sha256": 5}}]), "must be a string"),
        (json_page([{**GOOD_FILE, "hashes": {"sha256": "xyz"}}]), "not hex"),
        (json_page([{**GOOD_FILE, "hashes": {"sha256": ""}}]), "not hex"),
        (json_page([{**GOOD_FILE, "yanked": 1}]), "yanked must be a boolean or a string"),
        (json_page([{**GOOD_FILE, "core-metadata": "true"}]), "core-metadata must be a boolean or an object"),
        (json_page([{**GOOD_FILE, "dist-info-metadata": 1}]), "dist-info-metadata must be a boolean"),
        (json_page([{**GOOD_FILE, "core-metadata": {"sha256": "zz"}}]), "not hex"),
        (json_page([{**GOOD_FILE, "size": -1}]), "size must be a non-negative integer"),
        (json_page([{**GOOD_FILE, "size": True}]), "size must be a non-negative integer"),
        (json_page([{**GOOD_FILE, "size": 1.5}]), "size must be a non-negative integer"),
        (json_page([{**GOOD_FILE, "size": "12"}]), "size must be a non-negative integer"),
        (json_page([{**GOOD_FILE, "requires-python": 3}]), "requires-python must be a string"),
        (json_page([{**GOOD_FILE, "upload-time": 0}]), "upload-time must be a string"),
        (json_page([{**GOOD_FILE, "provenance": {}}]), "provenance must be a string"),
        (json_page([{**GOOD_FILE, "provenance": "data:x"}]), "not an absolute http"),
        (json_page([], versions="1.0"), "versions must be an array"),
        (json_page([], versions=[1.0]), r"versions\[0\] must be a string"),
    ],
)
def test_parse_json_malformed(body: bytes, match: str) -> None:
    assert_malformed(index.parse_project_json, body, PAGE_URL, FOO, match=match)


# --- dispatch ----------------------------------------------------------------------------

HTML_BODY = html_page('<a href="f.zip">f.zip</a>')
JSON_BODY = json_page([GOOD_FILE])


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (JSON_BODY, "application/vnd.pypi.simple.v1+json"),
        (JSON_BODY, "Application/Vnd.PyPI.Simple.V1+JSON; charset=utf-8"),
        (JSON_BODY, "application/vnd.pypi.simple.latest+json"),
        (JSON_BODY, "application/json"),
        (JSON_BODY, ""),
        (HTML_BODY, "text/html"),
        (HTML_BODY, "text/html; charset=UTF-8"),
        (HTML_BODY, "application/vnd.pypi.simple.v1+html"),
        (HTML_BODY, ""),
    ],
)
def test_parse_project_dispatch(body: bytes, content_type: str) -> None:
    page = index.parse_project(body, content_type, PAGE_URL, FOO)
    assert one_file(page).filename == "f.zip"
    assert one_file(page).url == PAGE_URL + "f.zip"


def test_parse_project_declared_charset() -> None:
    body = '<a href="f.zip">caf\u00e9.zip</a>'.encode("latin-1")
    page = index.parse_project(body, 'text/html; charset="ISO-8859-1"', PAGE_URL, FOO)
    assert one_file(page).filename == "caf\u00e9.zip"


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        ("text/plain", "unexpected content type"),
        ("application/vnd.pypi.simple.v2+json", "unexpected content type"),
        ("text/html; charset=no-such-codec", "cannot decode"),
        ("text/html; charset=rot13", "cannot decode"),
    ],
)
def test_parse_project_bad_content_type(content_type: str, match: str) -> None:
    assert_malformed(index.parse_project, HTML_BODY, content_type, PAGE_URL, FOO, match=match)


# --- root pages --------------------------------------------------------------------------


def test_parse_root_html() -> None:
    body = html_page(
        '<a href="/simple/foo/">foo</a>',
        '<a href="Foo_Bar/">Foo_Bar</a>',
        '<a href="foo-bar/">foo-bar</a>',
        '<a href="zope-interface/"></a>',
        '<a href="x/">not valid!</a>',
        "<a>no-href</a>",
        '<a href="javascript:x">also-fine</a>',
    )
    assert index.parse_root_html(body) == ("foo", "foo-bar", "zope-interface", "also-fine")
    assert all(type(n) is NormalizedName for n in index.parse_root_html(body))


def test_parse_root_json() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.0"},
            "projects": [{"name": "Foo"}, {"name": "foo"}, {"name": "b_a.r"}, {"name": "!bad"}],
        }
    ).encode()
    assert index.parse_root_json(body) == ("foo", "b-a-r")
    assert index.parse_root(body, "application/vnd.pypi.simple.v1+json") == ("foo", "b-a-r")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"nope", "invalid JSON"),
        (json.dumps({"meta": {"api-version": "1.0"}}).encode(), "no projects"),
        (json.dumps({"meta": {"api-version": "3.0"}, "projects": []}).encode(), "unsupported"),
        (json.dumps({"meta": {"api-version": "1.0"}, "projects": {}}).encode(), "projects must be an array"),
        (json.dumps({"meta": {"api-version": "1.0"}, "projects": ["foo"]}).encode(), "must be an object"),
        (json.dumps({"meta": {"api-version": "1.0"}, "projects": [{}]}).encode(), "has no name"),
        (json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": 1}]}).encode(), "must be a string"),
    ],
)
def test_parse_root_json_malformed(body: bytes, match: str) -> None:
    assert_malformed(index.parse_root_json, body, match=match)


def test_parse_root_dispatch_and_errors() -> None:
    assert index.parse_root(html_page('<a href="x/">x</a>'), "text/html") == ("x",)
    assert index.parse_root(html_page('<a href="x/">x</a>'), "") == ("x",)
    assert_malformed(index.parse_root, b"x", "image/png", match="unexpected content type")
    assert_malformed(index.parse_root_html, b"\xff\xfe", match="not UTF-8")


# --- rendering ---------------------------------------------------------------------------

RICH = DistFile(
    filename="foo-1.0-py3-none-any.whl",
    url="https://files.example.org/foo-1.0-py3-none-any.whl",
    hashes={"md5": "00ff", "sha256": SHA},
    requires_python=">=3.8",
    yanked='bad "quote" & <tag>',
    core_metadata={"sha256": SHA_B},
    size=1234,
    upload_time="2024-01-02T03:04:05Z",
    provenance="https://example.org/prov/foo.provenance",
)
PLAIN = DistFile(filename="foo-0.1.tar.gz", url="https://files.example.org/foo-0.1.tar.gz", hashes={})
PAGE = ProjectPage(FOO, (RICH, PLAIN), ("0.1", "1.0"))


def relative(f: DistFile) -> str:
    return quote(f.filename)


def test_render_project_html_exact() -> None:
    assert index.render_project_html(PAGE, relative).decode() == (
        "<!DOCTYPE html>\n<html>\n  <head>\n"
        # PLAIN has no size: the page cannot claim 1.1 (PEP 700 makes size mandatory).
        '    <meta name="pypi:repository-version" content="1.0">\n'
        "    <title>Links for foo</title>\n  </head>\n  <body>\n"
        "    <h1>Links for foo</h1>\n"
        f'    <a href="foo-1.0-py3-none-any.whl#sha256={SHA}" data-requires-python="&gt;=3.8" '
        'data-yanked="bad &quot;quote&quot; &amp; &lt;tag&gt;" '
        f'data-core-metadata="sha256={SHA_B}" data-dist-info-metadata="sha256={SHA_B}" '
        'data-provenance="https://example.org/prov/foo.provenance">foo-1.0-py3-none-any.whl</a><br>\n'
        '    <a href="foo-0.1.tar.gz">foo-0.1.tar.gz</a><br>\n'
        "  </body>\n</html>\n"
    )


@pytest.mark.parametrize(
    ("changes", "snippet"),
    [
        ({"hashes": {"md5": "00ff"}}, 'href="f.whl#md5=00ff"'),
        ({"hashes": {"sha512": "01", "md5": "00"}}, 'href="f.whl#sha512=01"'),
        ({"hashes": {"x-unknown": "01"}}, 'href="f.whl"'),
        ({"yanked": True}, 'data-yanked=""'),
        ({"core_metadata": True}, 'data-core-metadata="true" data-dist-info-metadata="true"'),
        ({"core_metadata": {"md5": "00"}}, 'data-core-metadata="md5=00"'),
        ({"requires_python": "<4&>=3"}, 'data-requires-python="&lt;4&amp;&gt;=3"'),
    ],
)
def test_render_project_html_attributes(changes: dict, snippet: str) -> None:
    f = attrs.evolve(DistFile("f.whl", "https://example.org/f.whl", {}), **changes)
    assert snippet in index.render_project_html(ProjectPage(FOO, (f,), ()), lambda f: "f.whl").decode()


def test_render_html_escapes_everything() -> None:
    evil = DistFile('<script>"x"&\'.whl', "https://example.org/x", {}, requires_python='"><script>')
    body = index.render_project_html(ProjectPage(FOO, (evil,), ()), lambda f: '"><script>').decode()
    assert "<script>" not in body
    page = index.parse_project_html(body.encode(), PAGE_URL, FOO)
    assert one_file(page).filename == evil.filename
    assert one_file(page).requires_python == evil.requires_python


def test_render_project_json_exact() -> None:
    assert json.loads(index.render_project_json(PAGE, relative)) == {
        "meta": {"api-version": "1.0"},
        "name": "foo",
        "files": [
            {
                "filename": "foo-1.0-py3-none-any.whl",
                "url": f"foo-1.0-py3-none-any.whl#sha256={SHA}",
                "hashes": {"md5": "00ff", "sha256": SHA},
                "requires-python": ">=3.8",
                "yanked": 'bad "quote" & <tag>',
                # PEP 714: JSON carries core-metadata only (pip 22.3-23.1 crash on the old key).
                "core-metadata": {"sha256": SHA_B},
                "size": 1234,
                "upload-time": "2024-01-02T03:04:05Z",
                "provenance": "https://example.org/prov/foo.provenance",
            },
            # Unknown size, upload time, requires-python: the keys are left out.
            {"filename": "foo-0.1.tar.gz", "url": "foo-0.1.tar.gz", "hashes": {}, "yanked": False},
        ],
        "versions": ["0.1", "1.0"],
    }


def test_render_project_json_core_metadata_true() -> None:
    page = ProjectPage(FOO, (attrs.evolve(PLAIN, core_metadata=True),), ())
    (entry,) = json.loads(index.render_project_json(page, relative))["files"]
    assert entry["core-metadata"] is True and "dist-info-metadata" not in entry


def test_render_root() -> None:
    names = ["foo", "zope-interface", "a&b"]
    html = index.render_root_html(names).decode()
    assert '<meta name="pypi:repository-version" content="1.1">' in html
    assert '<a href="foo/">foo</a>' in html
    assert '<a href="a%26b/">a&amp;b</a>' in html
    assert json.loads(index.render_root_json(names)) == {
        "meta": {"api-version": "1.1"},
        "projects": [{"name": "foo"}, {"name": "zope-interface"}, {"name": "a&b"}],
    }


# --- property tests: round trips ---------------------------------------------------------

HEX = st.text("0123456789abcdef", min_size=1, max_size=64)
ALGOS = st.sampled_from(["sha256", "sha512", "sha384", "md5", "sha1", "blake2b", "sha3_256"])
HASHES = st.dictionaries(ALGOS, HEX, max_size=3)
PROJECT_NAMES = st.from_regex(r"[a-z0-9]{1,10}(-[a-z0-9]{1,10}){0,3}", fullmatch=True).map(NormalizedName)
VERSION_TEXT = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}((a|b|rc)[0-9])?", fullmatch=True)


@st.composite
def filenames(draw: Any) -> str:
    kind = draw(st.sampled_from(["sdist", "wheel", "zip", "any"]))
    project = draw(PROJECT_NAMES).replace("-", "_")
    version = draw(VERSION_TEXT)
    if kind == "sdist":
        return f"{project}-{version}.tar.gz"
    if kind == "wheel":
        return f"{project}-{version}-py3-none-any.whl"
    if kind == "zip":
        return f"{project}-{version}.zip"
    text = draw(st.text(min_size=1, max_size=30))
    # HTML anchor text loses surrounding whitespace; such names are not in real indexes.
    return text.strip(" \t\n\r\f") or "x"


SAFE_FILENAMES = filenames().filter(is_safe_filename)
ABSOLUTE_URLS = st.text(max_size=30).map(lambda p: "https://example.org/p/" + quote(p))


@st.composite
def dist_files(draw: Any) -> DistFile:
    return DistFile(
        filename=draw(SAFE_FILENAMES),
        url=draw(ABSOLUTE_URLS),
        hashes=draw(HASHES),
        requires_python=draw(st.none() | st.text(min_size=1)),
        yanked=draw(st.booleans() | st.text(min_size=1)),
        core_metadata=draw(st.booleans() | st.dictionaries(ALGOS, HEX, min_size=1, max_size=2)),
        size=draw(st.none() | st.integers(min_value=0, max_value=2**63)),
        upload_time=draw(st.none() | st.text()),
        provenance=draw(st.none() | ABSOLUTE_URLS),
    )


@st.composite
def pages(draw: Any) -> ProjectPage:
    files = draw(st.lists(dist_files(), max_size=6, unique_by=lambda f: f.filename))
    versions = draw(st.lists(VERSION_TEXT | st.text(max_size=8), max_size=6))
    # Parsers give versions sorted and deduplicated; so must a page that round-trips.
    return ProjectPage(draw(PROJECT_NAMES), files, index._sort_versions(versions))


def preferred(hashes: Any) -> dict:
    for name in ("sha256", "sha512", "sha384", "blake2b", "sha1", "md5", "sha3_256"):
        if name in hashes:
            return {name: hashes[name]}
    return {}


def page_url(page: ProjectPage) -> str:
    return f"https://example.org/simple/{page.name}/"


@given(pages())
@settings(deadline=None)
def test_json_round_trip(page: ProjectPage) -> None:
    body = index.render_project_json(page, relative)
    parsed = index.parse_project_json(body, page_url(page), page.name)
    expected = attrs.evolve(
        page, files=[attrs.evolve(f, url=urljoin(page_url(page), relative(f))) for f in page.files]
    )
    assert parsed == expected


@given(pages())
@settings(deadline=None)
def test_html_round_trip(page: ProjectPage) -> None:
    body = index.render_project_html(page, relative)
    parsed = index.parse_project_html(body, page_url(page), page.name)
    # HTML carries one hash per link and per metadata file, and no PEP 700 fields.
    expected_files = tuple(
        attrs.evolve(
            f,
            url=urljoin(page_url(page), relative(f)),
            hashes=preferred(f.hashes),
            core_metadata=f.core_metadata if isinstance(f.core_metadata, bool) else preferred(f.core_metadata),
            size=None,
            upload_time=None,
        )
        for f in page.files
    )
    assert parsed.files == expected_files
    assert parsed.name == page.name
    assert parsed.versions == index.versions_from_filenames(f.filename for f in page.files)


@given(pages())
@settings(deadline=None)
def test_storage_round_trip(page: ProjectPage) -> None:
    text = index.page_to_json(page)
    restored = index.page_from_json(text)
    assert restored == page
    assert hash(restored) == hash(page)
    assert index.page_to_json(restored) == text


@given(st.lists(PROJECT_NAMES, unique=True, max_size=20))
def test_root_round_trip(names: list) -> None:
    assert index.parse_root_html(index.render_root_html(names)) == tuple(names)
    assert index.parse_root_json(index.render_root_json(names)) == tuple(names)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "invalid JSON"),
        ("[]", "not an object"),
        ('{"format": 3}', "unknown storage format"),
        ('{"format": true}', "unknown storage format"),
        ('{"format": 1, "name": "Foo", "files": [], "versions": []}', "not normalized"),
        ('{"format": 1, "name": "foo", "files": {}, "versions": []}', "files must be an array"),
        ('{"format": 1, "name": "foo", "files": [], "versions": [1]}', "versions must be an array of strings"),
        ('{"format": 1, "name": "foo", "files": [1], "versions": []}', "must be an object"),
        ('{"format": 1, "name": "foo", "files": [{"filename": "../x"}], "versions": []}', "has no url"),
        (index.page_to_json(ProjectPage(FOO, (PLAIN,), ())).replace("foo-0.1.tar.gz", "../x"), "unsafe"),
    ],
)
def test_page_from_json_malformed(text: str, match: str) -> None:
    assert_malformed(index.page_from_json, text, match=match)


def test_page_from_json_requires_every_field() -> None:
    stored = json.loads(index.page_to_json(PAGE))
    for key in stored["files"][0]:
        broken = json.loads(index.page_to_json(PAGE))
        del broken["files"][0][key]
        with pytest.raises(MalformedPage):
            index.page_from_json(json.dumps(broken))


# --- fuzzing: only MalformedPage may escape ----------------------------------------------


def check_page(page: ProjectPage) -> None:
    """What every parsed page guarantees, checked on whatever a fuzzer got through."""
    assert isinstance(page, ProjectPage)
    for f in page.files:
        assert is_safe_filename(f.filename)
        assert f.url.startswith(("http://", "https://")) and "#" not in f.url
        assert all(k == k.lower() and v == v.lower() for k, v in f.hashes.items())
        assert f.yanked is True or f.yanked is False or (isinstance(f.yanked, str) and f.yanked)
        assert f.size is None or (isinstance(f.size, int) and f.size >= 0)
    assert len({f.filename for f in page.files}) == len(page.files)
    # Whatever we parsed, we can render and store.
    index.render_project_html(page, relative)
    index.render_project_json(page, relative)
    assert index.page_from_json(index.page_to_json(page)) == page


def fuzz_project(body: bytes, content_type: str = "") -> None:
    for parse in (
        lambda: index.parse_project_html(body, PAGE_URL, FOO),
        lambda: index.parse_project_json(body, PAGE_URL, FOO),
        lambda: index.parse_project(body, content_type, PAGE_URL, FOO),
    ):
        try:
            page = parse()
        except MalformedPage as e:
            assert "\n" not in str(e)
        else:
            check_page(page)
    for parse_root in (
        lambda: index.parse_root_html(body),
        lambda: index.parse_root_json(body),
        lambda: index.parse_root(body, content_type),
    ):
        try:
            names = parse_root()
        except MalformedPage:
            pass
        else:
            assert all(isinstance(n, NormalizedName) for n in names)


CONTENT_TYPES = st.sampled_from(
    [
        "",
        "text/html",
        "application/vnd.pypi.simple.v1+json",
        "application/vnd.pypi.simple.v1+html",
        "text/html; charset=latin-1",
        "text/html; charset=utf-16",
        "text/html; charset=idna",
        "text/html; charset=punycode",
        "text/html; charset=uu",
        "text/plain",
    ]
) | st.text(max_size=40)


@given(st.binary(max_size=2000), CONTENT_TYPES)
@FUZZ
def test_fuzz_random_bytes(body: bytes, content_type: str) -> None:
    fuzz_project(body, content_type)


HTML_TOKENS = st.sampled_from(
    [
        "<a ", "<a>", "</a>", "<A HREF=", "href=", "href", '"', "'", "=", ">", "/>", " ", "\n",
        "data-yanked", "data-requires-python=", "data-core-metadata=", "data-dist-info-metadata=",
        "data-provenance=", "true", "sha256=", "#sha256=", "#md5=", "&", "&gt;", "&#0;", "&#xd800;",
        "&amp;", "abc123", "f-1.0.tar.gz", "foo-1.0-py3-none-any.whl", "../", "/", "..", ".",
        "http://", "https://example.org/", "javascript:", "//", "[", "]", "::1", "?", "<base href=",
        '<meta name="pypi:repository-version" content=', "1.0", "2.0", "<!", "<!--", "-->", "<![",
        "<?", "<script>", "</script>", "\x00", "\\", "\u00e9", "%2F", "%00", "%C3%A9",
    ]
)




JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

def mostly(good: Any, bad: Any = None) -> Any:
    """Usually `good`, sometimes anything: deep enough to reach every check, broad
    enough to hit each one with the wrong thing."""
    return st.one_of(good, good, good, bad if bad is not None else JSON_VALUES)


ATTRIBUTE_NAMES = st.sampled_from(
    [
        "href", "HREF", "data-yanked", "data-requires-python", "data-core-metadata",
        "data-dist-info-metadata", "data-provenance", "name", "rel",
    ]
)
ATTRIBUTE_VALUES = st.sampled_from(
    [
        "f.zip", "f-1.0.tar.gz#sha256=ab", "https://example.org/f.whl#md5=AB&egg=x", "#md5=zz", "true",
        "sha256=ab", "sha256=", "md5=xyz", "&gt;=3", "", " ", "javascript:x", "http://[::1", "/x/",
        "&#0;", "&#xd800;", "//example.org/", "../..", "%00", "%2e%2e", "?x#y",
    ]
) | st.text(max_size=10)


@st.composite
def html_attribute(draw: Any) -> str:
    name = draw(ATTRIBUTE_NAMES)
    value = draw(st.none() | ATTRIBUTE_VALUES)
    if value is None:
        return name
    style = draw(st.sampled_from(["double", "single", "bare"]))
    if style == "double":
        return f'{name}="{escape(value)}"'
    if style == "single":
        return f"{name}='{value}'"
    return f"{name}={value}"


HTML_ANCHORS = st.builds(
    lambda attributes, text, close: "<a " + " ".join(attributes) + ">" + text + close,
    st.lists(html_attribute(), max_size=5).map(lambda a: ["href=f.zip", *a] if a[:1] != ["href"] else a),
    mostly(SAFE_FILENAMES, st.text(max_size=10) | HTML_TOKENS),
    st.sampled_from(["</a>", "", "</a><br>\n", "<a>"]),
)
HTML_HEADS = st.sampled_from(
    ["", '<base href="/base/">', "<base href='javascript:x'>", "<base href=http://[::1>"]
) | st.builds(
    lambda v: f'<meta name="pypi:repository-version" content="{v}">',
    st.sampled_from(["1.0", "1.1", "2.0", "", "x", "01.3"]),
)
HTML_DOCUMENTS = st.lists(st.one_of(HTML_ANCHORS, HTML_ANCHORS, HTML_HEADS, HTML_TOKENS, st.text(max_size=5)), max_size=25)


@given(HTML_DOCUMENTS)
@FUZZ
def test_fuzz_html(tokens: list) -> None:
    fuzz_project("".join(tokens).encode("utf-8", "surrogatepass"), "text/html")


URLS = st.sampled_from(
    ["f.zip", "/x/f.zip", "https://example.org/f.zip", "http://[::1", "mailto:x", "", " ", "#sha256=ab", "f#md5=XYZ"]
)
HASH_OBJECTS = HASHES | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2)
FILE_FIELDS = {
    "hashes": mostly(HASH_OBJECTS),
    "requires-python": mostly(st.text(max_size=10)),
    "yanked": mostly(st.booleans() | st.text(max_size=5)),
    "core-metadata": mostly(st.booleans() | HASH_OBJECTS),
    "dist-info-metadata": mostly(st.booleans() | HASH_OBJECTS),
    "size": mostly(st.integers(min_value=-2, max_value=2**70)),
    "upload-time": mostly(st.text(max_size=10)),
    "provenance": mostly(URLS),
}
BAD_FILENAMES = st.sampled_from(["", "..", ".x", "a/b", "a\\b", "a\x00b", "\ud800.zip"]) | JSON_VALUES
JSON_FILES = mostly(
    st.fixed_dictionaries(
        {"filename": mostly(SAFE_FILENAMES, BAD_FILENAMES), "url": mostly(URLS)}, optional=FILE_FIELDS
    )
    | st.fixed_dictionaries({}, optional={"filename": SAFE_FILENAMES, "url": URLS, **FILE_FIELDS})
)
API_VERSIONS = st.sampled_from(["1.0", "1.1", "1.99"]) | st.sampled_from(["2.0", "x", "1", "", "0.1"]) | JSON_VALUES
METAS = mostly(st.fixed_dictionaries({"api-version": mostly(st.sampled_from(["1.0", "1.1"]), API_VERSIONS)}))
PROJECT_DOCUMENTS = mostly(
    st.fixed_dictionaries(
        {
            "meta": METAS,
            "name": mostly(st.sampled_from(["foo", "Foo", "FOO"]), st.sampled_from(["bar", "", "-", "\ud800"])),
            "files": mostly(st.lists(JSON_FILES, max_size=4)),
        },
        optional={"versions": mostly(st.lists(mostly(st.text(max_size=6)), max_size=4))},
    )
    | st.fixed_dictionaries({}, optional={"meta": METAS, "name": st.just("foo"), "files": st.just([])})
)
ROOT_DOCUMENTS = mostly(
    st.fixed_dictionaries(
        {
            "meta": METAS,
            "projects": mostly(st.lists(mostly(st.fixed_dictionaries({"name": mostly(st.text(max_size=8))})), max_size=4)),
        }
    )
)


@given(PROJECT_DOCUMENTS | ROOT_DOCUMENTS, st.booleans())
@FUZZ
def test_fuzz_json_structures(document: Any, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    fuzz_project(body, "application/vnd.pypi.simple.v1+json")


STORED_FILE_VALUES = {
    "filename": mostly(SAFE_FILENAMES, BAD_FILENAMES),
    "url": mostly(st.text(max_size=10)),
    "hashes": mostly(HASH_OBJECTS),
    "requires_python": mostly(st.none() | st.text(max_size=5)),
    "yanked": mostly(st.booleans() | st.text(max_size=5)),
    "core_metadata": mostly(st.booleans() | HASH_OBJECTS),
    "size": mostly(st.none() | st.integers()),
    "upload_time": mostly(st.none() | st.text(max_size=5)),
    "provenance": mostly(st.none() | st.text(max_size=5)),
}
STORED_PAGES = mostly(
    st.fixed_dictionaries(
        {
            "format": mostly(st.just(1)),
            "name": mostly(st.just("foo"), st.sampled_from(["Foo", "", "-"]) | JSON_VALUES),
            "files": mostly(st.lists(mostly(st.fixed_dictionaries(STORED_FILE_VALUES)), max_size=3)),
            "versions": mostly(st.lists(mostly(st.text(max_size=5)), max_size=3)),
        }
    )
    | st.fixed_dictionaries({}, optional=STORED_FILE_VALUES)
)


@given(STORED_PAGES | st.text(max_size=200))
@FUZZ
def test_fuzz_page_from_json(document: Any) -> None:
    text = document if isinstance(document, str) else json.dumps(document)
    try:
        page = index.page_from_json(text)
    except MalformedPage as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(page, ProjectPage)
        assert all(is_safe_filename(f.filename) for f in page.files)
        assert index.page_from_json(index.page_to_json(page)) == page


# --- honest pages: api-version, serial, PEP 792 status, upload-time ---------------------

SIZED = attrs.evolve(PLAIN, size=10)


@pytest.mark.parametrize(
    ("page", "version"),
    [
        (ProjectPage(FOO, (RICH, PLAIN), ()), "1.0"),  # PLAIN has no size: PEP 700 needs one
        (ProjectPage(FOO, (RICH, SIZED), ()), "1.1"),
        (ProjectPage(FOO, (), ()), "1.1"),
        (ProjectPage(FOO, (RICH,), (), status="archived"), "1.4"),
        (ProjectPage(FOO, (RICH,), (), status_reason="read the docs"), "1.4"),
        (ProjectPage(FOO, (RICH, PLAIN), (), status="deprecated"), "1.0"),
        (ProjectPage(FOO, (PLAIN,), (), status="quarantined"), "1.4"),  # nothing listed
    ],
)
def test_api_version_claims_only_what_the_page_carries(page: ProjectPage, version: str) -> None:
    assert index.api_version(page) == version
    assert json.loads(index.render_project_json(page, relative))["meta"]["api-version"] == version
    assert f'<meta name="pypi:repository-version" content="{version}">' in index.render_project_html(
        page, relative
    ).decode()


def test_a_status_is_left_out_of_a_page_that_cannot_claim_1_4() -> None:
    # PEP 792 markers come with 1.4, which includes 1.1's mandatory size: a page with a
    # file of unknown size says 1.0 and carries no status (a 1.0 client assumes "active").
    page = ProjectPage(FOO, (RICH, PLAIN), (), status="archived", status_reason="read the docs")
    rendered = json.loads(index.render_project_json(page, relative))
    assert rendered["meta"]["api-version"] == "1.0" and "project-status" not in rendered
    assert [f["filename"] for f in rendered["files"]] == [RICH.filename, PLAIN.filename]  # still offered
    html = index.render_project_html(page, relative).decode()
    assert '<meta name="pypi:repository-version" content="1.0">' in html and "pypi:project-status" not in html
    # The stored page keeps it, and once every size is known it is shown with 1.4.
    assert index.page_from_json(index.page_to_json(page)).status is index.ProjectStatus.ARCHIVED
    sized = attrs.evolve(page, files=(RICH, SIZED))
    rendered = json.loads(index.render_project_json(sized, relative))
    assert rendered["meta"]["api-version"] == "1.4"
    assert rendered["project-status"] == {"status": "archived", "reason": "read the docs"}
    html = index.render_project_html(sized, relative).decode()
    assert '<meta name="pypi:project-status" content="archived">' in html
    assert '<meta name="pypi:project-status-reason" content="read the docs">' in html
    # A quarantined page lists no file, so it always says 1.4 and its status.
    quarantined = attrs.evolve(page, status="quarantined")
    assert json.loads(index.render_project_json(quarantined, relative))["project-status"]["status"] == "quarantined"


def test_json_carries_core_metadata_only_and_html_both() -> None:
    # PEP 714: pip 22.3-23.1 crash on "dist-info-metadata" in JSON (unhashable dict).
    page = ProjectPage(FOO, (RICH,), ())
    assert b"dist-info-metadata" not in index.render_project_json(page, relative)
    html = index.render_project_html(page, relative).decode()
    assert f'data-core-metadata="sha256={SHA_B}" data-dist-info-metadata="sha256={SHA_B}"' in html
    # Reading stays liberal: the old key alone still counts, in both formats.
    old = json_page([{"filename": "f.whl", "url": "f.whl", "hashes": {}, "dist-info-metadata": {"sha256": SHA}}])
    assert one_file(index.parse_project_json(old, PAGE_URL, FOO)).core_metadata == {"sha256": SHA}
    old_html = html_page(f'<a href="f.whl" data-dist-info-metadata="sha256={SHA}">f.whl</a>')
    assert one_file(index.parse_project_html(old_html, PAGE_URL, FOO)).core_metadata == {"sha256": SHA}


def test_status_and_serial_read_from_json_and_html_and_rendered_back() -> None:
    body = json_page(
        [{"filename": "f.whl", "url": "f.whl", "hashes": {}, "size": 3}],
        meta={"api-version": "1.4", "_last-serial": 1234},
        **{"project-status": {"status": "quarantined", "reason": "malware, see the advisory"}},
    )
    page = index.parse_project_json(body, PAGE_URL, FOO)
    assert page.status is index.ProjectStatus.QUARANTINED and page.quarantined
    assert page.status_reason == "malware, see the advisory"
    assert page.last_serial == 1234
    assert page.file("f.whl") is not None  # known, so the file path can refuse it by name
    rendered = json.loads(index.render_project_json(page, relative))
    assert rendered["files"] == [] and rendered["versions"] == []  # PEP 792: nothing offered
    assert rendered["project-status"] == {"status": "quarantined", "reason": "malware, see the advisory"}
    assert rendered["meta"] == {"api-version": "1.4", "_last-serial": 1234}
    html = index.render_project_html(page, relative)
    assert b"<a " not in html
    again = index.parse_project_html(html, PAGE_URL, FOO)
    assert (again.status, again.status_reason, again.last_serial) == (page.status, page.status_reason, 1234)
    assert index.page_from_json(index.page_to_json(page)) == page

    head = '<meta name="pypi:project-status" content="archived"><meta name="pypi:project-status-reason" content="done &amp; dusted">'
    archived = index.parse_project_html(html_page('<a href="f.whl">f.whl</a>', head=head) + b"<!--SERIAL 77-->", PAGE_URL, FOO)
    assert (archived.status, archived.status_reason, archived.last_serial) == (
        index.ProjectStatus.ARCHIVED, "done & dusted", 77
    )
    assert [f.filename for f in archived.files] == ["f.whl"]  # archived files are still offered


@pytest.mark.parametrize(
    ("status", "match"),
    [({"status": "gone"}, "unknown project status"), ({"status": 3}, "must be a string"), ("x", "must be an object")],
)
def test_unknown_or_malformed_status_is_refused(status: Any, match: str) -> None:
    # A status we cannot read might be a quarantine: never read it as "active".
    body = json_page([], **{"project-status": status})
    assert_malformed(index.parse_project_json, body, PAGE_URL, FOO, match=match)


@pytest.mark.parametrize("serial", [-1, True, "12", 1.5, 2**64])
def test_a_bad_serial_is_no_serial(serial: Any) -> None:
    body = json_page([], meta={"api-version": "1.1", "_last-serial": serial})
    assert index.parse_project_json(body, PAGE_URL, FOO).last_serial is None


def test_root_serial_round_trip_and_old_storage_form() -> None:
    body = json.dumps({"meta": {"api-version": "1.0", "_last-serial": 99}, "projects": [{"name": "A"}]}).encode()
    root = index.parse_root_page(body, "application/vnd.pypi.simple.v1+json")
    assert root == index.RootPage(("a",), 99)
    assert index.root_from_json(index.root_to_json(root)) == root
    assert index.root_from_json('["a", "b"]') == index.RootPage(("a", "b"), None)  # the first storage form
    assert json.loads(index.render_root_json(root.names, 99))["meta"] == {"api-version": "1.1", "_last-serial": 99}
    assert index.parse_root_page(index.render_root_html(root.names, 99), "text/html") == root


def test_old_storage_form_still_reads() -> None:
    text = index.page_to_json(ProjectPage(FOO, (RICH,), ())).replace('"format":2', '"format":1')
    document = json.loads(text)
    for key in ("status", "status_reason", "last_serial"):
        del document[key]
    assert index.page_from_json(json.dumps(document)) == ProjectPage(FOO, (RICH,), ())


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("2024-01-02T03:04:05Z", True),
        ("2024-01-02T03:04:05.123456Z", True),
        ("2024-01-02T03:04:05+01:00", True),
        ("yesterday", False),
        ("2024-01-02", False),
        ("2024-01-02T03:04:05", False),  # no zone: PEP 700 says UTC with Z
    ],
)
def test_upload_time_kept_when_it_is_one(value: str, kept: bool) -> None:
    body = json_page([{"filename": "f.whl", "url": "f.whl", "hashes": {}, "upload-time": value}])
    assert one_file(index.parse_project_json(body, PAGE_URL, FOO)).upload_time == (value if kept else None)


# --- the HTML scanner is linear --------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [b"<a " * 200_000, b"<" * 600_000, b"<!--" * 150_000, b'<a href="' + b"x" * 600_000, b"</" * 300_000],
)
def test_junk_html_costs_one_pass(junk: bytes) -> None:
    # html.parser rescanned the rest of the page for every unclosed "<a ": 200,000 of
    # them took minutes. Counting the scanner's steps keeps this test free of timing.
    scanner = index._HtmlScanner(junk.decode())
    steps = 0
    markup = scanner._markup

    def counted() -> bool:
        nonlocal steps
        steps += 1
        return markup()

    scanner._markup = counted  # type: ignore[method-assign]
    scanner.scan()
    assert steps <= junk.count(b"<") + 1


def test_scanner_follows_browsers_on_odd_markup() -> None:
    body = (
        b'<script>"<a href=no.zip>no.zip</a>"</script>'
        b"<!-- <a href=c.zip>c.zip</a> -->"
        b"<A HREF=up.zip>UP.zip</A>"
        b"<a href='q.zip' data-yanked>q.zip</a>"
        b"a < b <a href=x/y.zip/>y.zip"
        b'<a href="t.zip">t&amp;.zip</a'
    )
    page = index.parse_project_html(body, PAGE_URL, FOO)
    assert [(f.filename, f.yanked) for f in page.files] == [
        ("UP.zip", False), ("q.zip", True), ("y.zip", False), ("t&.zip", False)
    ]
    assert page.file("y.zip").url == "https://example.org/simple/foo/x/y.zip/"
