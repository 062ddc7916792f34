"""Errors that become an HTTP status with a one-line reason for the client.

Lower layers (the file chain, the serve policy) raise these; the web layer's one error path
sends them. Pure: no Twisted, no Synapse.
"""


class HttpError(Exception):
    """An error for the client: a status and a one-line reason."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason

    @property
    def http_status(self) -> int:
        return self.code


class InsufficientStorage(HttpError):
    """The file cannot be stored here now and cannot be streamed through either (RFC 4918:
    507 Insufficient Storage)."""

    def __init__(self, reason: str):
        super().__init__(507, reason)
