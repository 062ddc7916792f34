"""The pages for people render what they are given, escaped: attestations are anyone's words."""

from synapse_pypi._browse import project_from_path, render_index, render_project


def test_everything_from_an_attestation_is_escaped() -> None:
    evil = '<script>alert(1)</script><img src=x onerror="y">'
    body = render_project(
        "example.org", "demo", "#pypi-demo:example.org", "!r",
        [{"filename": evil, "decision": {"outcome": "conflict", "sha256": None, "reason": evil},
          "attestations": [{"publisher": evil, "verdict": "impersonation", "sha256": evil, "reason": evil,
                            "slot_of": evil}]}],
        [{"kind": evil, "filename": evil, "publisher": evil, "claimed": evil, "truth": evil, "flagged_at": 1}],
        [{"kind": "file", "entity": evil, "reason": evil, "source": "moderator", "publisher": evil, "timestamp": 1}],
    ).decode()
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "not served" in body
    assert "<h2>Bans</h2>" in body


def test_the_index_links_each_project() -> None:
    body = render_index("example.org", [("a-b", "#pypi-a-b:example.org"), ("c", None)], {"alarm_count": 2}).decode()
    assert 'href="a-b/"' in body and "no room yet" in body and "2 alarms" in body


def test_paths() -> None:
    assert project_from_path([]) == "" and project_from_path([b""]) == ""
    assert project_from_path([b"Foo_Bar", b""]) == "foo-bar" and project_from_path([b"six"]) == "six"
    assert project_from_path([b"a", b"b"]) is None and project_from_path([b"no such", b""]) is None
