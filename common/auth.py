"""The admin token: one shared secret for the balancer's admin routes and the
workers' repository routes (``Authorization: Bearer <token>``).

Set with ``--admin-token`` or ``AFFINITY_ADMIN_TOKEN``, the one variable every
command reads. When a token is set, a request without it (or with another)
gets 401; the comparison takes the same time whatever the guess.
"""

from __future__ import annotations

import hmac

from protocol.errors import Unauthorized

ADMIN_TOKEN_ENV = "AFFINITY_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check_admin(headers: dict[str, str], token: str | None) -> None:
    """Raise Unauthorized unless the request carries the admin token (when one is set)."""
    if token is None:
        return
    given = bearer(headers)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")


def admin_headers(token: str | None) -> dict[str, str]:
    """The header a process sends when it calls another's admin routes."""
    return {"Authorization": f"Bearer {token}"} if token else {}
