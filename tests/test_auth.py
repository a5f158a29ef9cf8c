"""API keys: which routes need which key, loopback-only admin without keys."""

from __future__ import annotations

from service.auth import KeyChecker, is_loopback


def test_auth_rules():
    # no keys: data routes open; admin routes only when the server listens on loopback alone
    local = KeyChecker((), (), loopback_only=True)
    assert local.check("/embed", None) is None and local.check("/admin/reload", None) is None
    exposed = KeyChecker((), (), loopback_only=False)
    assert exposed.check("/embed", None) is None
    assert exposed.check("/admin/reload", None).status == 403 and exposed.check("/feedback/export", None).status == 403
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "10.0.0.7", "qaembed")] == \
        [True, True, True, False, False, False, False]
    c = KeyChecker(("data",), ("admin",))
    assert c.check("/health", None) is None and c.check("/metrics", None) is None
    assert c.check("/embed", None).status == 401
    assert c.check("/embed", "Bearer wrong").status == 401
    assert c.check("/embed", "Basic data").status == 401
    assert c.check("/embed", "Bearer data") is None
    assert c.check("/embed", "bearer admin") is None  # admin key is a superset
    assert c.check("/admin/reload", "Bearer data").status == 401
    assert c.check("/admin/reload", "Bearer admin") is None
    assert KeyChecker(("data",), ()).check("/admin/reload", "Bearer data").status == 403


