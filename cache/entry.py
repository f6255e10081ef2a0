"""A cached answer: the response body without its request id, who computed it,
its content type and when it expires.

In Redis an entry is ``AF2\\n`` + JSON ``[served_by, content_type, expires_unix]``
+ ``\\n`` + body. An entry read back is data, never trusted: one that does not
parse, names a content type we never store, carries a worker id that is not a
plain header value, or a JSON body that is not a JSON object, is refused
(``InvalidEntry``: the caller counts it as a miss), so a hostile or corrupted
Redis can never inject headers or hand a client garbage.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import orjson

from common.http_message import HeaderBlock

MAGIC = b"AF2\n"
JSON = "application/json"
ALLOWED_CONTENT_TYPES = frozenset((JSON,))
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
    # The hit's response headers, encoded and checked once when the entry is made.
    hit_headers: HeaderBlock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not safe_header_value(self.served_by) or self.content_type not in ALLOWED_CONTENT_TYPES:
            raise InvalidEntry("an answer's headers must be plain header values")
        block = HeaderBlock({"Content-Type": self.content_type, "X-Cache": "hit", "X-Served-By": self.served_by})
        object.__setattr__(self, "hit_headers", block)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.served_by) + 64

    def to_bytes(self) -> bytes:
        remaining = self.expires - time.monotonic()
        expires_unix = time.time() + remaining if remaining != float("inf") else 0
        return MAGIC + orjson.dumps([self.served_by, self.content_type, expires_unix]) + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer:
        if not raw.startswith(MAGIC):
            raise InvalidEntry("not an entry of this format")
        head, sep, body = raw[len(MAGIC) :].partition(b"\n")
        try:
            served_by, content_type, expires_unix = orjson.loads(head)
            if not isinstance(served_by, str) or not isinstance(content_type, str):
                raise TypeError
            expires = float("inf")
            if expires_unix:
                expires = time.monotonic() + (float(expires_unix) - time.time())
            if not sep or not isinstance(orjson.loads(body), dict):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, ValueError):
            raise InvalidEntry("an entry that does not parse") from None
        return cls(body=body, served_by=served_by, content_type=content_type, expires=expires)

    def expired(self, now: float) -> bool:
        return now >= self.expires
