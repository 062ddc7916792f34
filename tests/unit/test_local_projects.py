"""Local projects in memory over a real SQLite file: pages made from uploads, merged with an
upstream page, the root list; and the upload API's Authorization header."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from harness.syncdb import run, sqlite_run_db

from synapse_pypi import index
from synapse_pypi._errors import HttpError
from synapse_pypi._local import LocalProjects, Upload
from synapse_pypi._names import NormalizedName
from synapse_pypi._publish import token_from_header


def _local(path: Path, modes: dict) -> LocalProjects:
    local = LocalProjects(sqlite_run_db(path), modes)
    run(local.start())
    return local


def _upload(project: str, filename: str, sha: str = "a" * 64) -> Upload:
    return Upload(project, filename, sha, 10, ">=3.8", "@u:hs", 1_700_000_000_000, None)


def test_pages_from_uploads_merge_and_root(tmp_path: Path) -> None:
    local = _local(tmp_path / "db", {"alpha": "merge", "beta": "replace"})
    assert local.serve_mode("corp") is None and local.serve_mode("alpha") == "merge"
    run(local.add(_upload("corp", "corp-1.0-py3-none-any.whl")))
    run(local.add(_upload("alpha", "alpha-9.0-py3-none-any.whl", "b" * 64)))
    assert local.serve_mode("corp") == "replace" and local.keeps("b" * 64) and not local.keeps("c" * 64)
    page = local.page("corp")
    assert page is not None and page is local.page("corp")  # the same object until the next upload
    (f,) = page.files
    assert (f.filename, f.hashes, f.size, f.requires_python) == ("corp-1.0-py3-none-any.whl", {"sha256": "a" * 64},
                                                                  10, ">=3.8")
    assert f.upload_time == "2023-11-14T22:13:20.000000Z" and page.versions == ("1.0",)
    upstream = index.ProjectPage(
        name=NormalizedName("alpha"),
        files=(index.DistFile("alpha-1.0-py3-none-any.whl", "http://u/alpha-1.0-py3-none-any.whl", {"sha256": "c" * 64}),),
        versions=("1.0",),
    )
    merged = local.merged("alpha", upstream)
    assert [f.filename for f in merged.files] == ["alpha-1.0-py3-none-any.whl", "alpha-9.0-py3-none-any.whl"]
    assert merged.versions == ("1.0", "9.0") and local.merged("alpha", upstream) is merged
    root = local.root(index.RootPage([NormalizedName("alpha"), NormalizedName("zeta")]))
    assert root.names == ("alpha", "corp", "zeta")
    # A restart reads the uploads back.
    again = _local(tmp_path / "db", {})
    assert again.file("corp", "corp-1.0-py3-none-any.whl") == _upload("corp", "corp-1.0-py3-none-any.whl")


def test_the_authorization_header() -> None:
    basic = b"Basic " + base64.b64encode(b"__token__:syt_secret")
    assert token_from_header(basic) == "syt_secret"
    assert token_from_header(b"Bearer syt_secret") == "syt_secret"
    for bad in (None, b"", b"Basic " + base64.b64encode(b"alice:pw"), b"Basic !!!", b"Digest x"):
        with pytest.raises(HttpError) as e:
            token_from_header(bad)
        assert e.value.code == 401
