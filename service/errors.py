"""Every error the service returns is JSON ``{"error": {"message": ..., "type": ..., "code": status}}``.

Bad input is always a 4xx with a readable message; unexpected failures are a 500 with a generic
message (the traceback goes to the log, never to the client).

Example::

    >>> from service.errors import TooLarge
    >>> err = TooLarge("3 inputs, at most 2 allowed")
    >>> err.status, err.body()["error"]["type"]
    (413, 'payload_too_large')
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("service.errors")


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


_STATUS_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 429: "overloaded",
                 503: "not_ready"}


def error_body(status: int, type_: str, message: str) -> dict:
    return {"error": {"message": message, "type": type_, "code": status}}


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, type_, message), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "")
        return 400, "invalid_json", f"request body is not valid JSON{': ' + str(detail) if detail else ''}"
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "validation_error", "; ".join(parts) + more


def install_error_handlers(app: FastAPI, on_error=None) -> None:
    """Register handlers so no error leaves the app as HTML or a traceback.

    ``on_error(request, status, type)`` is called for each error response (metrics).
    """

    def note(request: Request, status: int, type_: str) -> None:
        if on_error is not None:
            on_error(request, status, type_)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        note(request, exc.status, exc.type)
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, type_, message = _describe_validation(exc)
        note(request, status, type_)
        return error_response(status, type_, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "http_error")
        note(request, exc.status_code, type_)
        message = exc.detail if isinstance(exc.detail, str) else type_
        return error_response(exc.status_code, type_, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        note(request, 500, "internal_error")
        return error_response(500, "internal_error", "internal server error")
