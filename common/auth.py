"""The admin token: one shared secret for the balancer's admin routes and the
workers' repository routes (``Authorization: Bearer <token>``).

Set with ``--admin-token`` or ``AFFINITY_ADMIN_TOKEN``, the one variable every
command reads. When a token is set, a request without it (or with another)
gets 401; the comparison takes the same time whatever the guess. Without a
token the admin routes are open, so a process without one listens on loopback
only: ``check_exposure`` refuses any other address at start, with the reason.
"""

from __future__ import annotations

import hmac
import ipaddress

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


def is_loopback(host: str) -> bool:
    """An address only this machine can reach: ``localhost`` or a loopback literal."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "": reachable from elsewhere as far as we can tell


def check_exposure(host: str, token: str | None) -> None:
    """ValueError unless the admin routes are guarded (a token) or unreachable from
    elsewhere (a loopback address): an unauthenticated management API on the network
    is how model servers get owned."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host or 'every address'} without an admin token: the admin and repository "
            f"routes would be open to the network; set --admin-token (or {ADMIN_TOKEN_ENV}), "
            "or listen on loopback (--host 127.0.0.1)"
        )
