"""The uvicorn configuration of a service process: where it listens and what a client may hold.

uvicorn's own limits, from the settings: ``keep_alive_s`` (an idle keep-alive connection is closed after it)
and ``max_connections`` (connections and requests at once; beyond it uvicorn answers a plain-text 503 and
closes). The body read deadline (``body_timeout_s``) is the middleware's (:mod:`service.http.middleware`):
uvicorn has none.
"""

from __future__ import annotations

from typing import Any

import uvicorn

from ..settings import Settings


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The ``uvicorn.Config`` for ``app`` under ``settings`` (``overrides``: any other uvicorn option)."""
    options: dict[str, Any] = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                                   timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
                                   timeout_graceful_shutdown=30, access_log=False, lifespan="on")
    return uvicorn.Config(app, **{**options, **overrides})
