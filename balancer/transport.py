"""The seam where the balancer talks to workers.

``Transport.send`` makes one HTTP exchange with one worker and returns the
status, the headers the balancer passes on, and the body; a failure before the
whole answer (connect error, reset, timeout) raises ``UpstreamError`` so the
router can try the next candidate. ``balancer.http_client.HttpClient`` is the
real one; tests may pass any object with this shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Worker response headers the balancer passes on to the client.
PASSED_HEADERS = ("Content-Type", "X-Model-Source", "Retry-After", "Inference-Header-Content-Length")


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    headers: dict[str, str]


class Transport(Protocol):
    async def send(
        self,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        try_timeout: float | None = None,
    ) -> UpstreamResponse:
        """``headers``: extra request headers; ``try_timeout``: this try's limit (default: the client's)."""
        ...

    async def close(self) -> None: ...
