"""Uploads to the mirror's `/legacy/`: with real twine, or as a hand-made multipart form
(for the bad cases no client would send)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
from pathlib import Path
from typing import Any

from harness.clients import TWINE, run_client, tool_bin
from harness.upstream import http_request

__all__ = ["form_fields", "multipart_body", "post_upload", "twine_upload"]


def twine_upload(url: str, token: str, *paths: Path, extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`twine upload` of `paths` to `<url>/legacy/` as `__token__` (not checked: the caller
    judges the exit code)."""
    cmd = [
        tool_bin(TWINE, "twine"), "upload", "--repository-url", f"{url}/legacy/", "--username", "__token__",
        "--password", token, "--non-interactive", "--disable-progress-bar", *extra_args, *paths,
    ]
    # No keyring: nothing of this machine's may be asked for credentials.
    return run_client(cmd, env={"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"})


def form_fields(name: str, version: str, content: bytes, filetype: str = "bdist_wheel") -> dict[str, str]:
    """The fields twine sends for a file (those the mirror reads)."""
    return {
        ":action": "file_upload",
        "protocol_version": "1",
        "name": name,
        "version": version,
        "filetype": filetype,
        "pyversion": "py3" if filetype == "bdist_wheel" else "source",
        "metadata_version": "2.1",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
    }


def multipart_body(fields: dict[str, str], filename: str | None, content: bytes | None) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data upload."""
    boundary = secrets.token_hex(16)
    out = []
    for key, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    if content is not None:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post_upload(
    url: str, token: str | None, fields: dict[str, str], filename: str | None, content: bytes | None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST a hand-made upload to `<url>/legacy/`; (status, headers, body)."""
    body, content_type = multipart_body(fields, filename, content)
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"__token__:{token}".encode()).decode()
    return http_request(f"{url}/legacy/", method="POST", headers=headers, body=body, timeout=60, **kw)
