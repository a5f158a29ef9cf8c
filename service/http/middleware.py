"""The ASGI middleware in front of every route: API keys, the request body limit, request metrics.

It is pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, so ``receive`` stays intact and a route can
notice that its client went away. Per request, in this order:

1. the key check for the access level the matched route declares (401/403, before any body is read);
2. the bound on requests in flight (``max_in_flight``, TEI's ``--max-concurrent-requests``): a data or admin
   request beyond it is answered 429 ``overloaded`` with ``Retry-After`` at once, before its body is read, so
   an overload is shed by the service's own JSON answer long before uvicorn's connection limit (a plain-text
   503) is reached. Open routes (probes, ``/metrics``, the API document) are not counted and never refused:
   a liveness probe that fails under load would restart a replica that is merely busy;
3. for POST/PUT/PATCH, the body limit: a declared ``content-length`` over it is refused at once (413), a
   streamed body as soon as it grows past it; the body read is then replayed to the app. A client that
   leaves mid-upload is counted as 499 (its failure, not ours) and nothing is answered. A body that has not
   arrived in full within ``body_timeout`` seconds is answered 408 and its connection closed: uvicorn has no
   read timeout of its own, and a client that stalls mid-body would hold its connection for ever;
4. ``qaembed_requests_total`` and ``qaembed_request_duration_seconds`` by route template (never the raw
   path: ids would blow up the label set), and ``qaembed_request_errors_total`` for what it refuses itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..auth import Access, KeyChecker
from ..metrics import ServiceMetrics
from .errors import error_response

# scope -> (the matched route's template, or "unmatched"; the access level that route declares)
Classify = Callable[[dict], tuple[str, Access]]


class ServiceMiddleware:
    """Auth, body limit and request metrics around the app (see the module docstring)."""

    def __init__(self, app, *, checker: KeyChecker, metrics: ServiceMetrics, max_body: int, body_timeout: float,
                 max_in_flight: int, classify: Classify) -> None:
        self.app, self.checker, self.metrics, self.classify = app, checker, metrics, classify
        self.max_body, self.body_timeout, self.max_in_flight = max_body, body_timeout, max_in_flight
        self.in_flight = 0  # counted data and admin requests; one event loop, so a plain int is enough
        # the labelled series, looked up once each (prometheus' labels() costs more than the update itself)
        self._counts: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        route, access = self.classify(scope)
        status = [500]
        counted = False

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        async def reject(code: int, type_: str, message: str, headers: dict | None = None) -> None:
            self.metrics.request_errors.labels(route, type_).inc()
            await error_response(code, type_, message, headers)(scope, receive, send_wrapper)

        try:
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization")
            error = self.checker.check(access, auth.decode("latin-1") if auth else None)
            if error is not None:
                await reject(error.status, error.type, error.message, error.headers)
                return
            if access is not Access.OPEN:
                if self.in_flight >= self.max_in_flight:
                    await reject(429, "overloaded", f"{self.in_flight} requests in flight, at most "
                                 f"{self.max_in_flight} (--max_concurrent_requests); retry later", {"Retry-After": "1"})
                    return
                self.in_flight += 1
                counted = True
            if scope["method"] in ("POST", "PUT", "PATCH"):
                declared = headers.get(b"content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                    await reject(413, "payload_too_large",
                                 f"request body of {int(declared)} bytes exceeds the limit of {self.max_body}")
                    return
                chunks, size = [], 0
                deadline = asyncio.get_running_loop().time() + self.body_timeout
                while True:
                    try:
                        message = await _receive_by(receive, deadline)
                    except asyncio.TimeoutError:
                        await reject(408, "request_timeout",
                                     f"the request body did not arrive within {self.body_timeout:g} s",
                                     {"Connection": "close"})
                        return
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
            if counted:
                self.in_flight -= 1
            self._series(route, scope["method"], status[0]).inc()
            duration = self._durations.get(route)
            if duration is None:
                duration = self._durations[route] = self.metrics.request_duration.labels(route)
            duration.observe(time.perf_counter() - start)

    def _series(self, route: str, method: str, status: int):
        """``qaembed_requests_total{route, method, status}``, cached (bounded: a client may send any method)."""
        key = (route, method, status)
        series = self._counts.get(key)
        if series is None:
            series = self.metrics.requests.labels(route, method, str(status))
            if len(self._counts) < 4096:
                self._counts[key] = series
        return series


async def _receive_by(receive, deadline: float):
    """``receive()``, or :class:`asyncio.TimeoutError` at ``deadline`` (the loop's clock). ``asyncio.timeout_at``
    (3.11+) only arms a timer; ``wait_for`` runs the receive in a task of its own."""
    if _TIMEOUT_AT is None:
        return await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
    async with _TIMEOUT_AT(deadline):
        return await receive()


_TIMEOUT_AT = getattr(asyncio, "timeout_at", None)
