"""Bearer-key authentication: what a request may use, given the access level its route declares.

Each route declares its :class:`Access` next to its definition (:mod:`service.http.routes`); the HTTP
middleware looks the level up for the matched route and asks :meth:`KeyChecker.check`.

* ``OPEN`` (``/health``, ``/ready``, ``/metrics``, the OpenAPI docs): no key ever (probes and scrapers
  carry no secrets).
* ``DATA``: with ``api_key`` set, ``Authorization: Bearer <key>`` (an admin key works too); without it, open
  (local development).
* ``ADMIN`` (``/admin/*``, ``GET /feedback/export``, which hands out users' queries): the admin key. If only
  ``api_key`` is set they are refused (403) rather than silently guarded by the weaker data key. With no
  keys at all they are open only when the server listens on loopback alone (``--host 127.0.0.1``, the
  default), else refused (403): a container listening on 0.0.0.0 whose key Secret went missing must not hand
  out reloads and users' queries.

Keys are compared with :func:`hmac.compare_digest` against every configured key (no early exit)
and never logged. They are printable ASCII (:class:`~service.settings.Settings` refuses others at start), the
one alphabet every HTTP client sends byte for byte: a header with other bytes matches no key.

Example::

    >>> from service.auth import Access, KeyChecker
    >>> checker = KeyChecker(api_keys=("s3cret",), admin_keys=())
    >>> checker.check(Access.DATA, "Bearer s3cret") is None
    True
    >>> checker.check(Access.DATA, "Bearer nope").status
    401
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Sequence

from .errors import Forbidden, ServiceError, Unauthorized

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Access(enum.Enum):
    """Who may call a route."""

    OPEN = "open"
    DATA = "data"
    ADMIN = "admin"


def _matches(presented: bytes, keys: Sequence[bytes]) -> bool:
    ok = False
    for key in keys:  # compare against all keys: timing does not reveal which one matched
        ok |= hmac.compare_digest(presented, key)
    return ok


class KeyChecker:
    """Decides whether a request with a given ``Authorization`` header may use a route of an access level."""

    def __init__(self, api_keys: Sequence[str], admin_keys: Sequence[str], loopback_only: bool = False) -> None:
        self._api = [k.encode() for k in api_keys]
        self._admin = [k.encode() for k in admin_keys]
        self._loopback_only = loopback_only  # the server listens on loopback alone

    @property
    def enabled(self) -> bool:
        return bool(self._api or self._admin)

    def check(self, access: Access, authorization: str | None) -> ServiceError | None:
        """``None`` when allowed, else the error to answer with (401 or 403)."""
        if access is Access.OPEN:
            return None
        token = _bearer(authorization)
        if access is Access.ADMIN:
            if not self._admin:
                if not self.enabled and self._loopback_only:
                    return None
                return Forbidden("admin routes are disabled: set QAEMBED_ADMIN_API_KEY"
                                 + ("" if self.enabled else " (without keys they are open on a loopback --host only)"))
            if token is None:
                return Unauthorized("missing admin key: send 'Authorization: Bearer <admin key>'",
                                    headers=_CHALLENGE)
            if not _matches(token, self._admin):
                return Unauthorized("invalid admin key", headers=_CHALLENGE)
            return None
        if not self._api:  # no data key: data routes stay open
            return None
        if token is None:
            return Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers=_CHALLENGE)
        if not _matches(token, self._api + self._admin):
            return Unauthorized("invalid API key", headers=_CHALLENGE)
        return None


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _bearer(authorization: str | None) -> bytes | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip().encode()
