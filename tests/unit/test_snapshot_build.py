"""The snapshot builder's choices, without a homeserver: which files go in, and the tree's
multipart form for Kubo's add."""

from __future__ import annotations

import pytest

from synapse_pypi import index
from synapse_pypi._errors import HttpError
from synapse_pypi._maintainer import LockedFile, parse_requirements
from synapse_pypi._names import NormalizedName
from synapse_pypi._snapshot_build import (
    Selection,
    SnapshotError,
    _latest,
    _parts,
    _unmatched,
    _wanted_files,
    project_names,
)
from synapse_pypi._snapshot_names import check_name, is_cid

SHA = {n: f"{n:x}" * 64 for n in range(1, 10)}


def dist(filename: str, sha: str, yanked: bool = False) -> index.DistFile:
    return index.DistFile(filename=filename, url=f"https://x/{filename}", hashes={"sha256": sha[:64]}, yanked=yanked)


PAGE = index.ProjectPage(
    name=NormalizedName("lib"),
    files=(
        dist("lib-1.0.tar.gz", SHA[1]),
        dist("lib-1.0-py3-none-any.whl", SHA[2]),
        dist("lib-2.0.tar.gz", SHA[3]),
        dist("lib-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", SHA[4]),
        dist("lib-2.0-py3-none-any.whl", SHA[5]),
        dist("lib-3.0-py3-none-any.whl", SHA[6], yanked=True),
        dist("lib-1.5-cp311-cp311-win_amd64.whl", SHA[7]),
    ),
    versions=("1.0", "1.5", "2.0", "3.0"),
)


def names(files) -> list[str]:
    return sorted(f.filename for f in files)


def test_latest_only_keeps_the_newest_unyanked_version_per_platform():
    assert names(_latest(PAGE.files)) == [
        "lib-1.5-cp311-cp311-win_amd64.whl",  # the only Windows build
        "lib-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
        "lib-2.0-py3-none-any.whl",  # 3.0 is yanked
        "lib-2.0.tar.gz",
    ]


def test_pins_choose_their_version_and_hashes_narrow_it():
    pins = parse_requirements(f"lib==1.0 --hash=sha256:{SHA[2][:64]}\n")
    chosen = _wanted_files(PAGE, Selection(pins=tuple(pins)), None)
    assert names(chosen) == ["lib-1.0-py3-none-any.whl"]
    assert _unmatched(PAGE, Selection(pins=tuple(pins)), chosen) == []
    pins = parse_requirements("lib==1.0\n")
    assert names(_wanted_files(PAGE, Selection(pins=tuple(pins)), None)) == ["lib-1.0-py3-none-any.whl", "lib-1.0.tar.gz"]
    missing = parse_requirements("lib==9.0\n")
    chosen = _wanted_files(PAGE, Selection(pins=tuple(missing)), None)
    assert chosen == [] and _unmatched(PAGE, Selection(pins=tuple(missing)), chosen) == [
        "lib==9.0: no file of that version on the mirror's page"]


def test_a_lock_file_chooses_exact_files_and_reports_other_bytes():
    locked = (LockedFile(NormalizedName("lib"), "lib-2.0.tar.gz", SHA[3][:64]),
              LockedFile(NormalizedName("lib"), "lib-2.0-py3-none-any.whl", "0" * 64))
    selection = Selection(locked=locked)
    chosen = _wanted_files(PAGE, selection, None)
    assert names(chosen) == ["lib-2.0-py3-none-any.whl", "lib-2.0.tar.gz"]
    assert _unmatched(PAGE, selection, chosen) == [
        f"lib-2.0-py3-none-any.whl: pinned by the lock file but not offered by the mirror with sha256 {'0' * 64}"]


def test_everything_means_what_the_mirror_holds():
    held = {"lib-1.0.tar.gz", "lib-2.0-py3-none-any.whl", "not-on-the-page.whl"}
    assert names(_wanted_files(PAGE, Selection(everything=True), held)) == ["lib-1.0.tar.gz", "lib-2.0-py3-none-any.whl"]


def test_the_multipart_parts_come_depth_first_and_sorted(tmp_path):
    top = tmp_path / "snapshot"
    (top / "simple" / "b").mkdir(parents=True)
    (top / "simple" / "a").mkdir()
    (top / "simple" / "index.html").write_text("root")
    (top / "simple" / "b" / "z.whl").write_bytes(b"z")
    (top / "simple" / "b" / "index.html").write_text("b")
    # Kubo's multipart reader wants each directory's entries right after it, together.
    assert [(name, path is None) for name, path in _parts(top)] == [
        ("snapshot", True),
        ("snapshot/simple", True),
        ("snapshot/simple/a", True),
        ("snapshot/simple/b", True),
        ("snapshot/simple/b/index.html", False),
        ("snapshot/simple/b/z.whl", False),
        ("snapshot/simple/index.html", False),
    ]


def test_names_and_cids_are_checked():
    assert project_names(["Foo_Bar"]) == ("foo-bar",)
    with pytest.raises(SnapshotError):
        project_names(["not a name!"])
    assert is_cid("QmWLY4pwEdE1UMHM7VHeN3asisVzwxt2whYTNa6E75WcjM")
    assert is_cid("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")
    assert not is_cid("Qm") and not is_cid("../etc") and not is_cid("nightly")
    assert check_name("nightly") == "nightly" and check_name("team-index:example.org") == "team-index:example.org"
    for bad in ("Nightly", "-x", "a/b", "x:", "x:bad host", ""):
        with pytest.raises(HttpError):
            check_name(bad)
