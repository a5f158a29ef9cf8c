"""The OpenAPI document as the service behaves (``GET /openapi.json``), checked by tests/test_contract.py.

FastAPI's own document would promise ``{"detail": [...]}`` validation errors and nothing else; this one states,
per operation, every error status it can answer with the real body (:class:`~.responses.ErrorBody`), the limits
that are settings at their configured values (declared on the fields with :func:`~.schemas.limit`), the
model's dimension once it is loaded, and the bearer keys when keys are configured.

Which errors an operation can answer: the ones its route declares (``@route(..., errors=...)``), plus 401 on
data routes (when keys are set), 401/403 on admin routes, 429 on both (beyond --max_concurrent_requests), and
400 (not JSON), 408 (body too slow), 413 (body too large), 422 (invalid) on every POST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..auth import Access
from ..settings import Settings
from .responses import ErrorBody

ERROR_MEANINGS = {
    400: "the body is not valid JSON",
    401: "missing or invalid API key (when keys are configured)",
    403: "admin routes are disabled (no admin key configured)",
    404: "no such document or version",
    405: "this replica serves a read-only index bundle",
    408: "the request body did not arrive within --body_timeout_s; the connection is closed",
    409: "a reload is already running",
    413: "over a limit (body size, inputs, characters, tokens, metadata size, answer size): the message names it",
    422: "invalid request: the message names the fields",
    429: "overloaded: too many requests in flight, or the inference queue is full or too slow; retry after "
         "Retry-After seconds",
    503: "not ready (starting, stopping, failed) or the storage cannot take writes",
}
_REF = "#/components/schemas/{model}"


def error_statuses(method: str, access: Access, declared: Sequence[int]) -> list[int]:
    """Every error status an operation can answer with (see the module docstring)."""
    statuses = set(declared)
    if access is not Access.OPEN:
        statuses |= ({401, 403} if access is Access.ADMIN else {401}) | {429}
    if method == "POST":
        statuses |= {400, 408, 413, 422}
    return sorted(statuses)


def install_openapi(app: FastAPI, settings: Settings, errors: Mapping[tuple[str, str], Sequence[int]],
                    access: Mapping[str, Access], dimension: Callable[[], int | None]) -> None:
    """Serve the document built by :func:`build_openapi` as ``app.openapi()``, rebuilt when the model's
    dimension changes (it is unknown until the model is loaded)."""
    built: dict[int | None, dict] = {}

    def openapi() -> dict:
        dim = dimension()
        if dim not in built:
            built.clear()
            built[dim] = build_openapi(app, settings, errors, access, dim)
        return built[dim]

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI, settings: Settings, errors: Mapping[tuple[str, str], Sequence[int]],
                  access: Mapping[str, Access], dimension: int | None) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's error shape, which we never send
        schemas.pop(name, None)
    error_schema = ErrorBody.model_json_schema(ref_template=_REF)
    schemas.update(error_schema.pop("$defs", {}), ErrorBody=error_schema)
    keys = bool(settings.api_key or settings.admin_api_key)
    if keys:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)
            for status in errors[(method.upper(), path)]:
                responses[str(status)] = {"description": ERROR_MEANINGS[status], "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}}
            if keys and access[path] is not Access.OPEN:
                operation["security"] = [{"bearer": []}]
    _resolve_settings(doc, settings)
    if dimension is not None:
        request = schemas["OpenAIEmbeddingRequest"]["properties"]["dimensions"]
        request["anyOf"] = [{"type": "integer", "const": dimension}, {"type": "null"}]
    return doc


def _resolve_settings(node: Any, settings: Settings) -> None:
    """Replace each ``{"x-settings": {keyword: setting}}`` by ``keyword: <the setting's value>``."""
    if isinstance(node, dict):
        for keyword, setting in node.pop("x-settings", {}).items():
            node[keyword] = getattr(settings, setting)
        for value in node.values():
            _resolve_settings(value, settings)
    elif isinstance(node, list):
        for value in node:
            _resolve_settings(value, settings)
