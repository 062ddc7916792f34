"""Big index pages for the tests and benchmarks: written by hand, no tree of files behind
them (the upstream stand-in serves them from `.page.json` / `.page.html`)."""

from __future__ import annotations

__all__ = ["project_html", "project_json"]


def project_json(project: str, files: int, base: str = "http://127.0.0.1:9/files") -> bytes:
    """A PEP 691 page of `files` wheels, each with a sha256 of its number, a size and an
    upload time; api-version 1.1."""
    stem = project.replace("-", "_")
    entries = ",".join(
        '{"filename":"%s-%d.0-py3-none-any.whl","url":"%s/%s/%s-%d.0-py3-none-any.whl",'
        '"hashes":{"sha256":"%064x"},"size":%d,"upload-time":"2024-01-01T00:00:00Z","yanked":false}'
        % (stem, i, base, project, stem, i, i, 1000 + i)
        for i in range(files)
    )
    return ('{"meta":{"api-version":"1.1"},"name":"%s","files":[%s]}' % (project, entries)).encode()


def project_html(project: str, files: int, base: str = "http://127.0.0.1:9/files") -> bytes:
    """A PEP 503 page of `files` wheel links with sha256 fragments and requires-python."""
    stem = project.replace("-", "_").encode()
    prefix = f"{base}/{project}".encode()
    return b"".join(
        b'<a href="%s/%s-%d.0-py3-none-any.whl#sha256=%064x" data-requires-python="&gt;=3.8">'
        b"%s-%d.0-py3-none-any.whl</a><br>\n" % (prefix, stem, i, i, stem, i)
        for i in range(files)
    )
