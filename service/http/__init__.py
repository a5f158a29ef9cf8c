"""The HTTP layer: the only part of the service that knows FastAPI and Starlette.

``schemas`` (request bodies and their checks) → ``routes`` (each declares its access level and calls one
:class:`~service.engine.Engine` method) → ``app`` (``create_app``: the engine's lifespan, the routes, the
``middleware``: keys, body limit, metrics; ``errors``: every exception as a JSON error response).
"""

from .app import create_app

__all__ = ["create_app"]
