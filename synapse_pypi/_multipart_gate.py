"""Let multipart uploads through to `/legacy` (and nowhere else).

Synapse refuses every `POST` with `Content-Type: multipart/form-data` before any resource
sees it (`415`, `SynapseRequest.requestReceived`; GHSA-rfq8-j7rh-8hf2), because Twisted would
parse such a body whole into memory before the resource runs, however large. The legacy upload
API is multipart/form-data and nothing else, so for `POST`s to the upload path only, the
Content-Type header is taken off the request before Synapse and Twisted look at it, and kept
on the request as `synapse_pypi_form_type`: Twisted then parses nothing, and the body is left
to the upload resource, which reads it only after checking the token and `max_upload_size`
(`_publish.py`). The body itself was already capped while it arrived, by Synapse's own limit
on request bodies. If Synapse's code has moved on (no such method), nothing is patched.
"""

import logging
from typing import Any

logger = logging.getLogger(__name__)

FORM_TYPE_ATTRIBUTE = "synapse_pypi_form_type"


def form_type(request: Any) -> bytes:
    """The Content-Type of an upload request (the header, or what the gate kept of it)."""
    kept = getattr(request, FORM_TYPE_ATTRIBUTE, None)
    return kept if kept is not None else (request.getHeader(b"content-type") or b"")


def _is_upload(path: bytes, prefix: bytes) -> bool:
    path = path.split(b"?", 1)[0]
    return path == prefix or path.startswith(prefix + b"/")


def let_multipart_uploads_through(prefix: bytes) -> bool:
    """Apply the gate once, for POSTs to `prefix` (e.g. b"/legacy"); whether it is in place."""
    try:
        from synapse.http.site import SynapseRequest
    except ImportError:  # pragma: no cover - only outside Synapse
        return False
    current = getattr(SynapseRequest, "requestReceived", None)
    if current is None:
        logger.info("SynapseRequest has no requestReceived: uploads are not let through")
        return False
    if getattr(current, "_synapse_pypi_prefixes", None) is not None:
        current._synapse_pypi_prefixes.add(prefix)
        return True
    prefixes = {prefix}

    def requestReceived(self: Any, command: bytes, path: bytes, version: bytes) -> Any:
        if command == b"POST" and any(_is_upload(path, p) for p in prefixes):
            types = self.requestHeaders.getRawHeaders(b"content-type")
            if types:
                setattr(self, FORM_TYPE_ATTRIBUTE, types[0])
                self.requestHeaders.removeHeader(b"content-type")
        return current(self, command, path, version)

    requestReceived._synapse_pypi_prefixes = prefixes  # type: ignore[attr-defined]  # a marker on the function
    SynapseRequest.requestReceived = requestReceived  # type: ignore[method-assign]  # the one method patched
    return True
