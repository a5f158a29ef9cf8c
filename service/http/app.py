"""``create_app(settings)`` builds the FastAPI app around one :class:`~service.engine.Engine`.

Routes (OpenAPI at ``/docs``; :mod:`service.http.routes`): ``POST /embed`` (Hugging Face TEI shape, also at
``POST /``), ``POST /v1/embeddings`` (OpenAI shape), ``POST /search``, ``POST /documents``,
``GET|DELETE /documents/{id}``, ``POST /feedback``, ``GET /feedback/export`` (admin), ``GET /health``,
``GET /ready``, ``GET /info``, ``GET /metrics``, ``POST|GET /admin/reload`` (admin).

The engine starts in the background once the server runs (lifespan): ``/health`` answers at once, ``/ready``
and the data routes answer 503 until the model is warmed up and the index loaded. If the start fails,
``app.state.on_start_failure()`` is called when set (``python -m service`` stops the server and exits 1).

Example (a real server; see tests/test_service_api.py)::

    >>> import uvicorn
    >>> from service.http import create_app
    >>> from service.settings import Settings
    >>> app = create_app(Settings.build(registry="registry", name="qa"))   # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from starlette.routing import Match

from ..auth import Access, KeyChecker, is_loopback
from ..engine import Engine, ModelLoader
from ..metrics import ServiceMetrics
from ..settings import Settings
from .errors import install_error_handlers
from .middleware import ServiceMiddleware
from .openapi import install_openapi
from .routes import ROUTE_ACCESS, ROUTE_ERRORS, add_routes, unrouted_access

log = logging.getLogger("service.app")


def create_app(settings: Settings, model_loader: ModelLoader | None = None,
               metrics: ServiceMetrics | None = None) -> FastAPI:
    """Build the app; the engine starts in the background when the server starts (lifespan)."""
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
    add_routes(app)

    # FastAPI's own routes (the OpenAPI document and its two viewers) are open like the probes
    docs = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
    access = {**dict.fromkeys(docs, Access.OPEN), **ROUTE_ACCESS}
    undeclared = {r.path for r in app.router.routes} - access.keys()
    if undeclared:  # a route nobody decided the access of must not be served
        raise RuntimeError(f"routes without a declared access level: {sorted(undeclared)}")

    # path (and root path) -> template, for the paths that are a route's template themselves (no parameters): a
    # handful, so the cache stays small, and every request on them skips matching the route list (per request a
    # regex per route before the one that matches)
    static_routes: dict[tuple[str, str], str] = {}

    def route_of(scope: dict) -> str:
        """The matched route's template (the metrics' route label), or "unmatched"."""
        key = (scope["path"], scope.get("root_path", ""))
        template = static_routes.get(key)
        if template is not None:
            return template
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                if "{" not in route.path and len(static_routes) < 64:
                    static_routes[key] = route.path
                return route.path
        return "unmatched"

    def classify(scope: dict) -> tuple[str, Access]:
        route = route_of(scope)
        return route, access[route] if route in access else unrouted_access(scope["path"])

    def on_error(request: Request, status: int, type_: str) -> None:
        metrics.request_errors.labels(route_of(request.scope), type_).inc()

    install_error_handlers(app, on_error)
    install_openapi(app, settings, ROUTE_ERRORS, access,
                    dimension=lambda: engine.gen.model.dimension if engine.ready else None)
    checker = KeyChecker(settings.api_key, settings.admin_api_key, loopback_only=is_loopback(settings.host))
    app.add_middleware(ServiceMiddleware, checker=checker, metrics=metrics, max_body=settings.max_body_bytes,
                       body_timeout=settings.body_timeout_s, max_in_flight=settings.max_concurrent_requests,
                       classify=classify)
    return app
