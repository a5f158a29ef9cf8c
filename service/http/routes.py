"""The routes, each declaring who may call it, each a thin call of one :class:`~service.engine.Engine` method.

A route parses its request (:mod:`service.http.schemas`), checks what the settings limit, calls the engine
and shapes the answer (TEI, OpenAI or our own JSON; timing headers). Nothing here knows models, indexes or
storage. The engine, the settings and the metrics are the app's (``request.app.state``).

Access (:class:`~service.auth.Access`) is declared with each route in :func:`route` and collected in
:data:`ROUTE_ACCESS`, which the key check reads; a path no route matches is answered as
:func:`unrouted_access` says, so ``/admin/<anything>`` asks for the admin key before it is a 404.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from export.bundle import list_versions  # torch-free

from .. import feedback as feedback_records
from ..auth import Access
from ..documents import Document, new_document_id
from ..errors import NotFound, ServiceError, TooLarge, Unprocessable
from ..search import SearchOptions
from . import responses as out
from .openapi import error_statuses
from .schemas import (
    DocumentsRequest,
    EmbedRequest,
    FeedbackRequest,
    OpenAIEmbeddingRequest,
    ReloadRequest,
    SearchRequest,
    check_json_safe,
    check_metadata,
    check_texts,
)

ROUTE_ACCESS: dict[str, Access] = {}  # route template -> who may call it; filled by @route below
ROUTE_ERRORS: dict[tuple[str, str], list[int]] = {}  # (method, template) -> the error statuses it can answer
_ROUTES: list[tuple[str, str, Callable, dict[str, Any]]] = []  # (method, path, endpoint, options), in order


def route(method: str, path: str, access: Access, errors: tuple[int, ...] = (), **options: Any) -> Callable:
    """Declare an endpoint for ``method path`` (``options`` as FastAPI's ``add_api_route`` takes them), who
    may call it, and the error statuses it answers beyond those of its access and method
    (:func:`~.openapi.error_statuses`)."""

    def declare(endpoint: Callable) -> Callable:
        if ROUTE_ACCESS.setdefault(path, access) is not access:
            raise ValueError(f"{path} is declared both {ROUTE_ACCESS[path].name} and {access.name}")
        ROUTE_ERRORS[(method, path)] = error_statuses(method, access, errors)
        _ROUTES.append((method, path, endpoint, options))
        return endpoint

    return declare


def add_routes(app: FastAPI) -> None:
    """Serve every declared route on ``app``, in declaration order (the OpenAPI document's order)."""
    for method, path, endpoint, options in _ROUTES:
        app.add_api_route(path, endpoint, methods=[method], **options)


def unrouted_access(path: str) -> Access:
    """The access a path no route matches asks for: a probe of ``/admin/...`` learns nothing without the admin
    key, any other path is answered as a data route would be."""
    return Access.ADMIN if path == "/admin" or path.startswith("/admin/") else Access.DATA


# ---------------------------------------------------------------------------------------------- helpers
def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson writes numpy arrays directly, float32 at its shortest exact form: the stdlib encoder took
    # 5 % of the service's CPU under /embed load (235 µs against 9 µs per 384-d vector).
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _timing_headers(t: dict) -> dict[str, str]:
    headers = {"x-tokenization-time": f"{t.get('tokenize_s', 0) * 1000:.2f}",
               "x-queue-time": f"{t.get('queue_s', 0) * 1000:.2f}",
               "x-inference-time": f"{t.get('inference_s', 0) * 1000:.2f}"}
    if "search_s" in t:
        headers["x-search-time"] = f"{t['search_s'] * 1000:.2f}"
    if "lexical_s" in t:
        headers["x-lexical-time"] = f"{t['lexical_s'] * 1000:.2f}"
    if "tokens" in t:
        headers["x-total-tokens"] = str(t["tokens"])
    return headers


def _disconnect_watcher(request: Request) -> Callable:
    """A coroutine factory that finishes when the client goes away."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return wait


# ---------------------------------------------------------------------------------------------- embeddings
_EMBEDDING_ERRORS = (429, 503)  # the inference queue is full; not ready


@route("POST", "/embed", Access.DATA, _EMBEDDING_ERRORS, response_model=out.Embeddings,
       summary="Embed texts (Hugging Face TEI compatible)")
@route("POST", "/", Access.DATA, _EMBEDDING_ERRORS, response_model=out.Embeddings,
       summary="Same as /embed: TEI's root route, where huggingface_hub's InferenceClient posts")
async def embed(req: EmbedRequest, request: Request) -> Response:
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    check_texts(texts, request.app.state.settings)
    result = await request.app.state.engine.embed(
        texts, is_query=req.prompt_name == "query", truncate=req.truncate,
        truncation_direction=req.truncation_direction.lower(), disconnected=_disconnect_watcher(request))
    return _json(result.vectors, headers=_timing_headers({**result.timings, "tokens": result.tokens}))


@route("POST", "/v1/embeddings", Access.DATA, _EMBEDDING_ERRORS, response_model=out.OpenAIEmbeddings,
       summary="Embed texts (OpenAI compatible; token-id inputs are refused)")
async def openai_embeddings(req: OpenAIEmbeddingRequest, request: Request) -> Response:
    texts = [req.input] if isinstance(req.input, str) else req.input
    check_texts(texts, request.app.state.settings, "input")
    result = await request.app.state.engine.embed(texts, dimensions=req.dimensions,
                                                  disconnected=_disconnect_watcher(request))
    if req.encoding_format == "base64":
        data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
    else:
        data = result.vectors
    body = {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": result.model_name, "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}}
    return _json(body, headers=_timing_headers(result.timings))


# ---------------------------------------------------------------------------------------------- search
@route("POST", "/search", Access.DATA, _EMBEDDING_ERRORS, response_model=out.SearchResults,
       summary="Search: hybrid (dense + BM25, fused), dense or lexical; the query instruction is applied to queries")
async def search(req: SearchRequest, request: Request) -> Response:
    settings = request.app.state.settings
    if (req.query is None) == (req.queries is None):
        raise Unprocessable("give exactly one of 'query' (a string) or 'queries' (a list of strings)")
    if req.top_k > settings.max_top_k:
        raise Unprocessable(f"top_k is {req.top_k}, at most {settings.max_top_k}")
    texts = [req.query] if req.query is not None else req.queries
    check_texts(texts, settings, "query" if req.query is not None else "queries")
    check_json_safe(req.filter, "filter")
    found = await request.app.state.engine.search(texts, req.top_k, req.filter, _disconnect_watcher(request),
                                                  SearchOptions(req.mode, req.alpha, req.fusion))
    results = out.search_results(found.hits, text=req.return_text, metadata=req.return_metadata,
                                 budget=settings.max_response_bytes)
    searched = [run.to_json() for run in found.runs]
    one = req.query is not None
    return _json({"results": results[0] if one else results, "mode": req.mode, "fusion": found.fusion,
                  "searched": searched[0] if one else searched}, headers=_timing_headers(found.timings))


# ---------------------------------------------------------------------------------------------- documents
@route("POST", "/documents", Access.DATA, (405, 429, 503), response_model=out.StoredIds,
       summary="Upsert documents (durable when acknowledged)")
async def upsert_documents(req: DocumentsRequest, request: Request) -> Response:
    settings = request.app.state.settings
    check_texts([d.text for d in req.documents], settings, "documents")
    for i, d in enumerate(req.documents):
        check_metadata(d.metadata, settings, f"documents[{i}].metadata")
    docs = [Document(d.id or new_document_id(), d.text, d.metadata or {}) for d in req.documents]
    ids = await request.app.state.engine.upsert(docs, disconnected=_disconnect_watcher(request))
    return _json({"ids": ids})


@route("GET", "/documents/{doc_id}", Access.DATA, (404, 503), response_model=out.DocumentOut,
       summary="Get one document")
async def get_document(doc_id: str, request: Request) -> Response:
    return _json((await request.app.state.engine.get(doc_id)).to_json())


@route("DELETE", "/documents/{doc_id}", Access.DATA, (404, 405, 503), response_model=out.Deleted,
       summary="Delete one document (durable when acknowledged)")
async def delete_document(doc_id: str, request: Request) -> Response:
    await request.app.state.engine.delete(doc_id)
    return _json({"id": doc_id, "deleted": True})


# ---------------------------------------------------------------------------------------------- feedback
@route("POST", "/feedback", Access.DATA, (404, 503), response_model=out.FeedbackStored,
       summary="Record which document answered a query (durable when acknowledged; every id must be stored)")
async def post_feedback(req: FeedbackRequest, request: Request) -> Response:
    settings = request.app.state.settings
    check_texts([req.query], settings, "query")
    check_json_safe([req.document_id, req.shown_ids], "ids")
    if len(req.shown_ids) > settings.max_inputs:
        raise TooLarge(f"{len(req.shown_ids)} shown_ids, at most {settings.max_inputs} per request")
    shown = await request.app.state.engine.add_feedback(req.query, req.document_id, req.shown_ids, req.label)
    return _json({"stored": True, "label": req.label, "document_id": req.document_id, "shown": shown})


class NDJSONResponse(Response):
    media_type = "application/x-ndjson"


# users' queries: admin only
@route("GET", "/feedback/export", Access.ADMIN, (503,), response_class=NDJSONResponse,
       summary="Collected feedback as training data (JSON lines; admin key)")
async def export_feedback(request: Request) -> Response:
    rows, stats = feedback_records.to_training(await request.app.state.engine.feedback())
    return NDJSONResponse(feedback_records.to_jsonl(rows),
                          headers={f"x-feedback-{k.replace('_', '-')}": str(v) for k, v in stats.items()})


# ---------------------------------------------------------------------------------------------- operations
# Probes answer their 503 themselves: a replica that is not ready is not a failed request (request_errors).
@route("GET", "/health", Access.OPEN, (503,), response_model=out.Health, summary="Liveness")
async def health(request: Request) -> Response:
    try:
        return _json(request.app.state.engine.health())
    except ServiceError as exc:
        return _json(exc.body(), status=exc.status)


@route("GET", "/ready", Access.OPEN, (503,), response_model=out.Ready,
       summary="Readiness: model loaded and warmed up, index loaded")
async def ready(request: Request) -> Response:
    try:
        return _json(await request.app.state.engine.readiness())
    except ServiceError as exc:
        return _json(exc.body(), status=exc.status)


@route("GET", "/info", Access.DATA, response_model=out.Info, summary="Model, index and limits")
async def info(request: Request) -> Response:
    body = await request.app.state.engine.info()
    body["settings"] = request.app.state.settings.public()
    return _json(body)


@route("GET", "/metrics", Access.OPEN, response_class=PlainTextResponse,
       summary="Prometheus metrics (text exposition format)")
async def prometheus(request: Request) -> Response:
    data, content_type = request.app.state.metrics.render()
    return Response(data, media_type=content_type)


@route("POST", "/admin/reload", Access.ADMIN, (404, 409, 503), status_code=202, response_model=out.ReloadStatus,
       summary="Load the latest (or a given) bundle version")
async def admin_reload(request: Request, req: Annotated[ReloadRequest | None, Body()] = None) -> Response:
    version = req.version if req else None
    settings = request.app.state.settings
    # a version that does not exist is the caller's mistake, answered now rather than by a failed reload later
    if version is not None and settings.registry is not None and version not in list_versions(settings.registry,
                                                                                               settings.name):
        raise NotFound(f"no version {version!r} of {settings.name!r} in the registry")
    return _json(request.app.state.engine.start_reload(version), status=202)


@route("GET", "/admin/reload", Access.ADMIN, response_model=out.ReloadStatus, summary="Progress of the last reload")
async def admin_reload_status(request: Request) -> Response:
    return _json(request.app.state.engine.reload_status)
