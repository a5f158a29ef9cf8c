"""HTTP error mapping: no error leaves the app as HTML or a traceback.

Each error response is ``{"error": {"message": ..., "type": ..., "code": status}}``
(:func:`service.errors.error_body`). A :class:`~service.errors.ServiceError` answers with its own status,
type and headers; a request that fails validation with 400 ``invalid_json`` (unparseable body) or 422
``validation_error`` (readable message naming the fields); Starlette's own errors (404, 405) with the type of
their status; anything unexpected with a generic 500 (the traceback goes to the log only). A client that
left (:class:`~service.errors.ClientGone`) gets nothing: 499, as nginx logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..errors import ClientGone, ServiceError, error_body

log = logging.getLogger("service.errors")

_STATUS_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 429: "overloaded",
                 503: "not_ready"}

# on_error(request, status, type): called for each error response (the request_errors metric)
OnError = Callable[[Request, int, str], None]


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


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI, on_error: OnError) -> None:
    """Register the handlers that turn every exception a route raises into an error response."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        on_error(request, exc.status, exc.type)
        return error_response(exc.status, exc.type, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, type_, message = _describe_validation(exc)
        on_error(request, status, type_)
        return error_response(status, type_, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _STATUS_TYPES.get(exc.status_code, "http_error")
        on_error(request, exc.status_code, type_)
        message = exc.detail if isinstance(exc.detail, str) else type_
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return error_response(exc.status_code, type_, message, headers)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        # Nobody reads this: the client closed the connection.
        on_error(request, 499, "client_closed_request")
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        on_error(request, 500, "internal_error")
        return error_response(500, "internal_error", "internal server error")
