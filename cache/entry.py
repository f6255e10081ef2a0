"""A cached answer: the response body without its request id, who computed it,
its content type and when it expires.

The body is one canonical form of the answer: V2 JSON, or the binary tensor
extension (``application/octet-stream`` with its JSON header's length), as the
worker gave it (a gRPC answer is kept in the binary form). Other encodings are
rendered from it on the way out and memoised in ``renderings`` (in-process
only), so repeated hits in one encoding are byte-identical.

In Redis an entry is ``AF2\\n`` + JSON ``[served_by, content_type, expires_unix]``
(plus the header length for a binary body) + ``\\n`` + body. An entry read back
is data, never trusted: one that does not parse, names a content type we never
store, carries a worker id that is not a plain header value, a JSON body that
is not a JSON object, or a binary body whose lengths do not add up, is refused
(``InvalidEntry``: the caller counts it as a miss), so a hostile or corrupted
Redis can never inject headers or hand a client garbage.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.http_message import HeaderBlock
from protocol.binary_codec import CONTENT_TYPE as BINARY
from protocol.binary_codec import response_from_binary
from protocol.errors import ProtocolError

MAGIC = b"AF2\n"
JSON = "application/json"
ALLOWED_CONTENT_TYPES = frozenset((JSON, BINARY))
# The entry object, its bytes headers, header block and renderings map: what an
# entry costs besides its bodies' bytes (CPython 3.11, 64-bit).
ENTRY_OVERHEAD = 250
RENDERING_OVERHEAD = 120  # a memoised rendering's bytes object, tuple and map slot
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?")


class InvalidEntry(ValueError):
    """A stored entry that must not be served."""


def safe_header_value(value: str) -> bool:
    return _HEADER_VALUE.fullmatch(value) is not None


@dataclass(slots=True, frozen=True)
class CachedAnswer:
    body: bytes  # response body with no "id" member
    served_by: str
    content_type: str = JSON
    expires: float = float("inf")  # time.monotonic() deadline in this process
    header_length: int = 0  # a binary body's JSON header length (0: a JSON body)
    # The hit's response headers, encoded and checked once when the entry is made.
    hit_headers: HeaderBlock = field(init=False, repr=False, compare=False)
    # Renderings in other encodings, id-free, made on first use (in-process only).
    renderings: dict[Any, tuple[bytes, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not safe_header_value(self.served_by) or self.content_type not in ALLOWED_CONTENT_TYPES:
            raise InvalidEntry("an answer's headers must be plain header values")
        if (self.content_type == BINARY) != (0 < self.header_length <= len(self.body)):
            raise InvalidEntry("a binary answer needs its header length, a JSON one none")
        block = HeaderBlock({"Content-Type": self.content_type, "X-Cache": "hit", "X-Served-By": self.served_by})
        object.__setattr__(self, "hit_headers", block)
        object.__setattr__(self, "renderings", {})

    @property
    def size(self) -> int:
        """Bytes this entry holds in memory: its body, its header block, its memoised
        renderings and the objects around them (measured with tracemalloc on CPython
        3.11: ``ENTRY_OVERHEAD``), so a cache's byte budget bounds its memory."""
        total = len(self.body) + len(self.hit_headers.raw) + ENTRY_OVERHEAD
        for body, _ in self.renderings.values():
            if body is not self.body:
                total += len(body) + RENDERING_OVERHEAD
        return total

    def to_bytes(self) -> bytes:
        remaining = self.expires - time.monotonic()
        expires_unix = time.time() + remaining if remaining != float("inf") else 0
        head: list[Any] = [self.served_by, self.content_type, expires_unix]
        if self.header_length:
            head.append(self.header_length)
        return MAGIC + orjson.dumps(head) + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer:
        if not raw.startswith(MAGIC):
            raise InvalidEntry("not an entry of this format")
        head, sep, body = raw[len(MAGIC) :].partition(b"\n")
        try:
            served_by, content_type, expires_unix, *rest = orjson.loads(head)
            if not isinstance(served_by, str) or not isinstance(content_type, str) or len(rest) > 1:
                raise TypeError
            header_length = rest[0] if rest else 0
            if type(header_length) is not int:
                raise TypeError
            expires = float("inf")
            if expires_unix:
                expires = time.monotonic() + (float(expires_unix) - time.time())
            if not sep:
                raise TypeError
            if content_type == BINARY and 0 < header_length <= len(body):
                response_from_binary(body, header_length)  # every length checked against the bytes
            elif not isinstance(orjson.loads(body), dict):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, ValueError, ProtocolError):
            raise InvalidEntry("an entry that does not parse") from None
        return cls(body, served_by, content_type, expires, header_length)

    def expired(self, now: float) -> bool:
        return now >= self.expires
