"""A request's deadline on the wire: ``X-Request-Timeout: <seconds>``.

A client may send it to the balancer (else the balancer's ``--request-timeout``
applies); the balancer sends each worker what is left of it, so a worker can
give up on a request nobody waits for any more (504).
"""

from __future__ import annotations

from protocol.errors import BadRequest

REQUEST_TIMEOUT_HEADER = "X-Request-Timeout"


def parse_request_timeout(text: str) -> float:
    """Seconds, a finite number at least 0; BadRequest otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        raise BadRequest("X-Request-Timeout must be a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest("X-Request-Timeout must be a number of seconds")
    return seconds
