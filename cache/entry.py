"""A cached answer: the response body without its request id, and who computed it."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from common.http_message import HeaderBlock


@dataclass(slots=True, frozen=True)
class CachedAnswer:
    body: bytes  # JSON response body with no "id" member
    served_by: str
    content_type: str = "application/json"
    # The hit's response headers, encoded and checked once when the entry is made: an entry
    # read from a shared Redis whose fields would inject header lines raises ValueError here.
    hit_headers: HeaderBlock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        block = HeaderBlock({"Content-Type": self.content_type, "X-Cache": "hit", "X-Served-By": self.served_by})
        object.__setattr__(self, "hit_headers", block)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.served_by) + 64

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.served_by, self.content_type]) + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer:
        head, _, body = raw.partition(b"\n")
        served_by, content_type = orjson.loads(head)
        return cls(body=body, served_by=served_by, content_type=content_type)
