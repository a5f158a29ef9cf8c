"""The service's errors: each carries an HTTP status and a short machine-readable type.

Every layer raises these (the engine, the batcher, the tokenizer, the stores); none of them knows HTTP.
:mod:`service.http.errors` turns them into the JSON body every error response has,
``{"error": {"message": ..., "type": ..., "code": status}}``. This module imports no web framework.

Example::

    >>> from service.errors import TooLarge
    >>> err = TooLarge("3 inputs, at most 2 allowed")
    >>> err.status, err.body()["error"]["type"]
    (413, 'payload_too_large')
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error with an HTTP status and a short machine-readable type."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.type, self.message)


class BadRequest(ServiceError):
    status, type = 400, "invalid_request"


class Unauthorized(ServiceError):
    status, type = 401, "unauthorized"


class Forbidden(ServiceError):
    status, type = 403, "forbidden"


class NotFound(ServiceError):
    status, type = 404, "not_found"


class ReadOnlyIndex(ServiceError):
    """The replica serves a published, read-only index bundle: documents change by publishing a new one."""

    status, type = 405, "read_only_index"


class Conflict(ServiceError):
    status, type = 409, "conflict"


class TooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class Unprocessable(ServiceError):
    status, type = 422, "validation_error"


class Overloaded(ServiceError):
    status, type = 429, "overloaded"


class NotReady(ServiceError):
    status, type = 503, "not_ready"


class IndexUnavailable(ServiceError):
    """The document store (a Milvus server) cannot be reached or refused the call; retry later."""

    status, type = 503, "index_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class StorageUnavailable(ServiceError):
    """The data directory could not store a write (disk full, I/O error); nothing of it was kept."""

    status, type = 503, "storage_unavailable"


class ClientGone(Exception):
    """The client disconnected before its result was ready; nothing is sent."""


def error_body(status: int, type_: str, message: str) -> dict:
    """The JSON body of every error response."""
    return {"error": {"message": message, "type": type_, "code": status}}
