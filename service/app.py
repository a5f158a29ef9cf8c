"""The HTTP API: ``create_app(settings)`` builds a FastAPI app around one :class:`Engine`.

Routes (OpenAPI at ``/docs``): ``POST /embed`` (Hugging Face TEI shape), ``POST /v1/embeddings``
(OpenAI shape), ``POST /search``, ``POST /documents``, ``GET|DELETE /documents/{id}``, ``GET /health``,
``GET /ready``, ``GET /info``, ``GET /metrics``, ``POST|GET /admin/reload``, ``POST /feedback``,
``GET /feedback/export`` (admin).

The model loads in the background after the server starts: ``/health`` answers at once, ``/ready``
and the data routes answer 503 until the model is warmed up and the index loaded.

Example (a real server; see tests/test_service_api.py)::

    >>> import uvicorn
    >>> from service.app import create_app
    >>> from service.settings import Settings
    >>> app = create_app(Settings.build(registry="registry", name="qa"))   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match

from . import feedback as feedback_records
from .auth import KeyChecker, is_loopback
from .engine import DocIn, Engine, ModelLoader
from .errors import ClientGone, IndexUnavailable, TooLarge, Unprocessable, error_body, install_error_handlers
from .metrics import ServiceMetrics
from .settings import Settings

log = logging.getLogger("service.app")

Scalar = str | int | float | bool | None


# ---------------------------------------------------------------------------------------------- schemas
class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbedRequest(_Model):
    """Hugging Face text-embeddings-inference ``/embed``."""

    inputs: str | list[str]
    # accepted for TEI clients; the exported graph pools and L2-normalises, so vectors are always unit length
    normalize: bool = Field(True, description="accepted for compatibility: embeddings are always unit length")
    truncate: bool = True
    truncation_direction: Literal["right", "Right", "left", "Left"] = Field(
        "right", description="which end of a text over max_seq_length tokens is cut (left keeps its end)")
    prompt_name: str | None = None


class OpenAIEmbeddingRequest(_Model):
    """OpenAI ``/v1/embeddings`` (text inputs; token-id inputs are refused)."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class SearchRequest(_Model):
    query: str | None = None
    queries: list[str] | None = None
    top_k: int = Field(5, ge=1)
    filter: dict[str, Scalar | list[Scalar]] | None = None


class DocumentIn(_Model):
    id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^/\x00-\x1f]+$")
    text: str
    metadata: dict[str, Any] | None = None


class DocumentsRequest(_Model):
    documents: list[DocumentIn]


class FeedbackRequest(_Model):
    """The answer a user chose (or rejected, ``label: negative``) for a query, and what was shown."""

    query: str
    document_id: str = Field(min_length=1, max_length=256)
    shown_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    label: Literal["positive", "negative"] = "positive"


class ReloadRequest(_Model):
    # checked here, so a typo is a 422 now rather than a failed background reload later
    version: str | None = Field(None, pattern=r"^v\d{4,}$", description="a bundle version such as v0003")


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


def _check_json_safe(value: Any, what: str) -> None:
    """Refuse what cannot be stored or sent back as JSON: NaN/Infinity, lone surrogates, and what orjson (the
    response encoder) refuses, integers beyond 64 bits and nesting over 254 levels: stored, such a document
    would turn every later search that returns it into a 500."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        orjson.dumps(value)
    except (ValueError, UnicodeEncodeError, orjson.JSONEncodeError) as exc:
        # orjson says what it refused ("Integer exceeds 64-bit range"); the others would quote the input
        reason = str(exc) if isinstance(exc, orjson.JSONEncodeError) else type(exc).__name__
        raise Unprocessable(f"{what} is not valid JSON text: {reason}") from None


def _check_texts(texts: list[str], settings: Settings, what: str = "inputs") -> None:
    _check_json_safe(texts, what)
    if not texts:
        raise Unprocessable(f"{what} must not be empty")
    if len(texts) > settings.max_inputs:
        raise TooLarge(f"{len(texts)} {what}, at most {settings.max_inputs} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise Unprocessable(f"{what}[{i}] is empty")
        if len(text) > settings.max_input_chars:
            raise TooLarge(f"{what}[{i}] has {len(text)} characters, at most {settings.max_input_chars}")


# ---------------------------------------------------------------------------------------------- middleware
class ServiceMiddleware:
    """Pure ASGI (keeps ``receive`` intact for disconnect detection): auth, body limit, request metrics."""

    def __init__(self, app, *, checker: KeyChecker, metrics: ServiceMetrics, max_body: int,
                 route_of: Callable[[dict], str]) -> None:
        self.app, self.checker, self.metrics, self.max_body, self.route_of = app, checker, metrics, max_body, route_of

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route = self.route_of(scope)
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def reject(code: int, type_: str, message: str, headers: dict | None = None) -> None:
            self.metrics.request_errors.labels(route, type_).inc()
            response = JSONResponse(error_body(code, type_, message), status_code=code, headers=headers)
            await response(scope, receive, send_wrapper)

        try:
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization")
            error = self.checker.check(scope["path"], auth.decode("latin-1") if auth else None)
            if error is not None:
                await reject(error.status, error.type, error.message, error.headers)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                declared = headers.get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                    await reject(413, "payload_too_large",
                                 f"request body of {int(declared)} bytes exceeds the limit of {self.max_body}")
                    return
                chunks, size = [], 0
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":  # the client left mid-upload: not our failure
                        status[0] = 499
                        self.metrics.request_errors.labels(route, "client_closed_request").inc()
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        await reject(413, "payload_too_large",
                                     f"request body exceeds the limit of {self.max_body} bytes")
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
                body = b"".join(chunks)
                replayed = False

                async def replay():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------- the app
def create_app(settings: Settings, model_loader: ModelLoader | None = None,
               metrics: ServiceMetrics | None = None) -> FastAPI:
    """Build the app; the model loads in the background when the server starts (lifespan)."""
    metrics = metrics or ServiceMetrics()
    metrics.ready.set(0)
    metrics.queue_capacity.set(settings.max_queue_size)
    engine = Engine(settings, metrics, model_loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def start() -> None:
            try:
                await engine.start()
            except Exception:
                callback = getattr(app.state, "on_start_failure", None)
                if callback is not None:
                    callback()

        app.state.start_task = asyncio.get_running_loop().create_task(start())
        try:
            yield
        finally:
            if not app.state.start_task.done():
                app.state.start_task.cancel()
                with contextlib.suppress(BaseException):
                    await app.state.start_task
            await engine.stop()
            log.info("stopped")

    app = FastAPI(title="qaembed", version="1", lifespan=lifespan,
                  description="Embedding (TEI and OpenAI shapes) and semantic search over FAISS.")
    app.state.engine = engine
    app.state.settings = settings
    app.state.metrics = metrics

    def route_of(scope: dict) -> str:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "unmatched")
        return "unmatched"

    def on_error(request: Request, status: int, type_: str) -> None:
        metrics.request_errors.labels(route_of(request.scope), type_).inc()

    install_error_handlers(app, on_error)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        # Nobody reads this: the client closed the connection (499 as nginx logs it).
        on_error(request, 499, "client_closed_request")
        return Response(status_code=499)
    checker = KeyChecker(settings.api_key, settings.admin_api_key, loopback_only=is_loopback(settings.host))
    app.add_middleware(ServiceMiddleware, checker=checker,
                       metrics=metrics, max_body=settings.max_body_bytes, route_of=route_of)

    # ------------------------------------------------------------------ embeddings
    @app.post("/embed", summary="Embed texts (Hugging Face TEI compatible)")
    @app.post("/", summary="Same as /embed: TEI's root route, where huggingface_hub's InferenceClient posts")
    async def embed(req: EmbedRequest, request: Request) -> Response:
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        _check_texts(texts, settings)
        if req.prompt_name not in (None, "query", "document", "passage"):
            raise Unprocessable(f"unknown prompt_name {req.prompt_name!r}: use 'query' or 'document'")
        async with engine.use() as gen:
            result, tok_s = await gen.model.embed(texts, is_query=req.prompt_name == "query", truncate=req.truncate,
                                                  truncation_direction=req.truncation_direction.lower(),
                                                  disconnected=_disconnect_watcher(request))
        return _json(result.vectors, headers=_timing_headers(
            {"tokenize_s": tok_s, "queue_s": result.queue_s, "inference_s": result.inference_s,
             "tokens": result.tokens}))

    @app.post("/v1/embeddings", summary="Embed texts (OpenAI compatible)")
    async def openai_embeddings(req: OpenAIEmbeddingRequest, request: Request) -> Response:
        texts = [req.input] if isinstance(req.input, str) else req.input
        _check_texts(texts, settings, "input")
        async with engine.use() as gen:
            if req.dimensions is not None and req.dimensions != gen.model.dimension:
                raise Unprocessable(f"dimensions must be {gen.model.dimension} (this model cannot shorten)")
            result, tok_s = await gen.model.embed(texts, disconnected=_disconnect_watcher(request))
            name = gen.model.spec.name
        if req.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in result.vectors]
        else:
            data = result.vectors
        body = {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
                "model": name, "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}}
        return _json(body, headers=_timing_headers({"tokenize_s": tok_s, "queue_s": result.queue_s,
                                                    "inference_s": result.inference_s}))

    # ------------------------------------------------------------------ search
    @app.post("/search", summary="Semantic search: the query instruction is applied to queries only")
    async def search(req: SearchRequest, request: Request) -> Response:
        if (req.query is None) == (req.queries is None):
            raise Unprocessable("give exactly one of 'query' (a string) or 'queries' (a list of strings)")
        if req.top_k > settings.max_top_k:
            raise Unprocessable(f"top_k is {req.top_k}, at most {settings.max_top_k}")
        texts = [req.query] if req.query is not None else req.queries
        _check_texts(texts, settings, "query" if req.query is not None else "queries")
        _check_json_safe(req.filter, "filter")
        hits, timings = await engine.search(texts, req.top_k, req.filter, _disconnect_watcher(request))
        results = [[h.to_json() for h in row] for row in hits]
        return _json({"results": results[0] if req.query is not None else results},
                     headers=_timing_headers(timings))

    # ------------------------------------------------------------------ documents
    @app.post("/documents", summary="Upsert documents (durable when acknowledged)")
    async def upsert_documents(req: DocumentsRequest, request: Request) -> Response:
        _check_texts([d.text for d in req.documents], settings, "documents")
        # each metadata as deep as a response nests it ({"results": [[hit]]} for "queries"), so any stored
        # document can be sent back
        _check_json_safe([{"results": [[{"id": d.id, "metadata": d.metadata}]]} for d in req.documents], "documents")
        ids = await engine.upsert([DocIn(d.id, d.text, d.metadata or {}) for d in req.documents],
                                  disconnected=_disconnect_watcher(request))
        return _json({"ids": ids})

    @app.get("/documents/{doc_id}", summary="Get one document")
    async def get_document(doc_id: str) -> Response:
        doc = await engine.get(doc_id)
        return _json({"id": doc.id, "text": doc.text, "metadata": dict(doc.metadata)})

    @app.delete("/documents/{doc_id}", summary="Delete one document (durable when acknowledged)")
    async def delete_document(doc_id: str) -> Response:
        await engine.delete(doc_id)
        return _json({"id": doc_id, "deleted": True})

    # ------------------------------------------------------------------ feedback
    @app.post("/feedback", summary="Record which document answered a query (durable when acknowledged)")
    async def post_feedback(req: FeedbackRequest) -> Response:
        _check_texts([req.query], settings, "query")
        _check_json_safe([req.document_id, req.shown_ids], "ids")
        if len(req.shown_ids) > settings.max_inputs:
            raise TooLarge(f"{len(req.shown_ids)} shown_ids, at most {settings.max_inputs} per request")
        shown = await engine.add_feedback(req.query, req.document_id, req.shown_ids, req.label)
        return _json({"stored": True, "label": req.label, "document_id": req.document_id, "shown": shown})

    @app.get("/feedback/export", summary="Collected feedback as training data (JSONL; admin key)")
    async def export_feedback() -> Response:
        rows, stats = feedback_records.to_training(await engine.feedback())
        return Response(feedback_records.to_jsonl(rows), media_type="application/x-ndjson",
                        headers={f"x-feedback-{k.replace('_', '-')}": str(v) for k, v in stats.items()})

    # ------------------------------------------------------------------ operations
    @app.get("/health", summary="Liveness")
    async def health() -> Response:
        if engine.state == "failed":
            return _json(error_body(503, "failed", engine.error or "start failed"), status=503)
        if engine.store is not None and engine.store.broken:  # a restart recovers from what is on disk
            return _json(error_body(503, "storage_failed", engine.store.broken), status=503)
        return _json({"status": "ok", "state": engine.state})

    @app.get("/ready", summary="Readiness: model loaded and warmed up, index loaded")
    async def ready() -> Response:
        if not engine.ready:
            message = engine.error if engine.state == "failed" else f"the service is {engine.state}"
            if engine.waiting_for and engine.state == "starting":
                message += f", waiting for {engine.waiting_for}"
            return _json(error_body(503, "not_ready", message), status=503)
        try:
            async with engine.use() as gen:  # a Milvus that went away makes the replica unready
                await gen.run(gen.collection.check)
                documents = await gen.run(len, gen.collection)
        except IndexUnavailable as exc:
            log.warning("not ready: %s", exc.message)
            return _json(error_body(503, "not_ready", exc.message), status=503)
        return _json({"status": "ready", "model": gen.model.spec.name, "version": gen.version,
                      "documents": documents})

    @app.get("/info", summary="Model, index and limits")
    async def info() -> Response:
        body = await asyncio.to_thread(engine.info)  # a Milvus collection counts its documents remotely
        body["settings"] = settings.public()
        return _json(body)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @app.post("/admin/reload", status_code=202, summary="Load the latest (or a given) bundle version")
    async def admin_reload(req: Annotated[ReloadRequest | None, Body()] = None) -> Response:
        status = engine.start_reload(req.version if req else None)
        return _json(status, status=202)

    @app.get("/admin/reload", summary="Progress of the last reload")
    async def admin_reload_status() -> Response:
        return _json(engine.reload_status)

    return app
