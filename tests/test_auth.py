"""API keys: which access level needs which key, where the routes declare theirs, loopback-only admin without
keys."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from service.auth import Access, KeyChecker, is_loopback
from service.http import app as http_app
from service.http.routes import ROUTE_ACCESS, unrouted_access
from service.settings import Settings, SettingsError

DATA, ADMIN, OPEN = Access.DATA, Access.ADMIN, Access.OPEN


def test_key_rules():
    # no keys: data routes open; admin routes only when the server listens on loopback alone
    local = KeyChecker((), (), loopback_only=True)
    assert local.check(DATA, None) is None and local.check(ADMIN, None) is None
    exposed = KeyChecker((), (), loopback_only=False)
    assert exposed.check(DATA, None) is None and exposed.check(ADMIN, None).status == 403
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.0.0.7", "qaembed")] == \
        [True, True, True, False, False, False, False]
    c = KeyChecker(("data",), ("admin",))
    assert c.check(OPEN, None) is None and c.check(OPEN, "Bearer wrong") is None
    assert c.check(DATA, None).status == 401
    assert c.check(DATA, "Bearer wrong").status == 401
    assert c.check(DATA, "Basic data").status == 401
    assert c.check(DATA, "Bearer data") is None
    assert c.check(DATA, "bearer admin") is None  # admin key is a superset
    assert c.check(ADMIN, "Bearer data").status == 401
    assert c.check(ADMIN, "Bearer admin") is None
    assert KeyChecker(("data",), ()).check(ADMIN, "Bearer data").status == 403
    # a second data key works as well as the first, an admin-only configuration leaves data routes open
    assert KeyChecker(("one", "two"), ()).check(DATA, "Bearer two") is None
    assert KeyChecker((), ("admin",)).check(DATA, None) is None


def test_routes_declare_their_access():
    assert {p for p, a in ROUTE_ACCESS.items() if a is OPEN} == {"/health", "/ready", "/metrics"}
    # /feedback/export hands out users' queries: admin, though it is not under /admin
    assert {p for p, a in ROUTE_ACCESS.items() if a is ADMIN} == {"/admin/reload", "/feedback/export"}
    assert ROUTE_ACCESS["/feedback"] is DATA and ROUTE_ACCESS["/documents/{doc_id}"] is DATA
    # a path no route matches: under /admin it asks for the admin key before it is a 404
    assert [unrouted_access(p) for p in ("/admin", "/admin/", "/admin/nope", "/administrator", "/nope")] == \
        [ADMIN, ADMIN, ADMIN, DATA, DATA]


def test_the_middleware_checks_the_level_of_the_matched_route():
    """Refusals come before the route runs: no model is loaded here (the lifespan never starts)."""
    app = http_app.create_app(Settings.build(registry="r", name="m", api_key="data", admin_api_key="admin"))

    async def status(method: str, path: str, key: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            return (await c.request(method, path, headers=headers)).status_code

    async def run() -> list[int]:
        return [await status("GET", "/feedback/export", "data"), await status("GET", "/admin/reload", "data"),
                await status("POST", "/embed"), await status("GET", "/documents/x"),
                await status("GET", "/admin/nope", "data"), await status("GET", "/admin/nope", "admin"),
                await status("GET", "/nope"), await status("GET", "/nope", "data"),
                await status("GET", "/openapi.json"), await status("GET", "/metrics")]

    assert asyncio.run(run()) == [401, 401, 401, 401, 401, 404, 401, 404, 200, 200]


def test_a_route_without_a_declared_access_is_not_served(monkeypatch):
    monkeypatch.setattr(http_app, "add_routes", lambda app: app.add_api_route("/secret", lambda: {}))
    with pytest.raises(RuntimeError, match="/secret"):
        http_app.create_app(Settings.build(registry="r", name="m"))


def test_a_key_other_than_printable_ascii_is_refused_at_start(tmp_path):
    """Starlette reads the header as latin-1, clients send such characters as UTF-8, latin-1 or not at all: a
    key like 'şifre' could never match, so the service refuses it before it serves a single route."""
    for keys in ({"api_key": "ok-key,şifre"}, {"admin_api_key": "pass word"}, {"api_key": "tab\tkey"}):
        with pytest.raises(SettingsError, match="printable ASCII"):
            Settings.build(registry="r", name="m", **keys)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QAEMBED_")}, "QAEMBED_API_KEY": "şifre-123"}
    start = subprocess.run([sys.executable, "-m", "service", "--registry", str(tmp_path), "--name", "m", "--port", "0"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 2, start.stderr
    assert start.stderr.startswith("error: --api_key (QAEMBED_API_KEY): key 1 has a character other than printable")
    assert "şifre" not in start.stderr  # the secret is not echoed


def test_a_header_with_non_ascii_bytes_is_a_401_and_ascii_keys_match_byte_for_byte():
    app = http_app.create_app(Settings.build(registry="r", name="m", api_key="k3y-ab!~", admin_api_key="adm"))

    async def run() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            answers = []
            for value in (b"Bearer k3y-ab!~", "Bearer şifre".encode(), "Bearer k3y-ab!~é".encode("latin-1"),
                          b"Bearer k3y-ab!~\xff", "Bearer k3y-ab!~".encode("utf-16-le")):
                r = await c.get("/documents/x", headers={"Authorization": value})
                answers.append((r.status_code, r.json()["error"]["message"] if r.status_code == 401 else ""))
            return answers

    # the right key passes authentication (then 503 or 404: no model is loaded here), the others are a 401
    first, *others = asyncio.run(run())
    assert first[0] not in (401, 403, 500)
    assert others == [(401, "invalid API key")] * 3 + [(401, "missing API key: send 'Authorization: Bearer <key>'")]
