"""Every limit of the HTTP/1.1 server, in one frozen, self-validating object.

The defaults follow what mature servers ship (nginx, HAProxy, Envoy): short
header timeouts against slowloris, bounded URL, header and body sizes enforced
while bytes arrive, a bounded queue of pipelined requests and of answer bytes
per connection, a cap on connections and on request bodies buffered across the
whole process. Past a limit the client gets one clear answer (400, 408, 413,
414, 431, 503 with Retry-After) and the connection is closed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_url: int = 8 << 10  # request target, 414 past it
    max_header_line: int = 8 << 10  # one header field line (name + value), 431 past it
    max_header_bytes: int = 64 << 10  # all header fields together, trailers and chunk extensions included, 431
    max_header_fields: int = 100  # header field lines (trailers included), 431 past it
    max_body: int = 64 << 20  # one request's body, 413 past it (from Content-Length before any body byte)
    # Request-body bytes held by the whole process, 503 + Retry-After past it; 0: the larger of
    # 256 MiB and four bodies at max_body, so raising max_body alone keeps large requests possible.
    max_buffered_body: int = 0
    max_connections: int = 4096  # open client connections; one more gets 503 + Retry-After and a close
    max_pipelined: int = 32  # requests read ahead of their answers before the server stops reading
    write_buffer_high: int = 64 << 10  # answer bytes queued per connection before reading and handling pause
    header_timeout: float = 10.0  # from a request's first byte (or a new connection) to its last header
    request_timeout: float = 30.0  # from a request's first byte to its last body byte, 408 past it
    keepalive_timeout: float = 75.0  # idle time between requests on a kept-alive connection
    write_timeout: float = 30.0  # how long queued answer bytes may go without the client reading any
    linger_timeout: float = 2.0  # after refusing a request, how long unread input is discarded before closing

    def __post_init__(self) -> None:
        if self.max_buffered_body == 0 and isinstance(self.max_body, int):
            object.__setattr__(self, "max_buffered_body", max(256 << 20, 4 * self.max_body))
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HTTP limit {f.name} must be a positive number, not {value!r}")
        if self.max_header_line > self.max_header_bytes:
            raise ValueError("max_header_line cannot exceed max_header_bytes")
        if self.max_buffered_body < self.max_body:
            raise ValueError("max_buffered_body (the whole process) cannot be below max_body (one request)")
        if self.header_timeout > self.request_timeout:
            raise ValueError("header_timeout cannot exceed request_timeout")

    @property
    def head_budget(self) -> int:
        """Non-body bytes a request may have: request line, header lines with their
        framing, chunk extensions and trailers (with slack for CRLFs and colons)."""
        return self.max_url + self.max_header_bytes + 4 * self.max_header_fields + 64
