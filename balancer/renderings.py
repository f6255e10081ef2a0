"""One cached answer, any encoding: how a request wants its answer, and the
answer rendered that way from the cache's canonical form.

A cache key ignores the encoding (``cache.keys``), so a request over REST JSON,
REST binary or gRPC finds the same entry; the entry holds one canonical form
(the worker's JSON or binary-extension answer, ``cache.entry``), and each other
rendering is made once from its raw tensors (``protocol.binary_codec``,
``protocol.grpc_messages``: no numpy) and memoised id-free in the in-process
entry; the request's id is spliced in per hit. The hottest path, a JSON hit on
a JSON entry, never comes here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache.entry import BINARY, JSON, CachedAnswer
from protocol import binary_codec
from protocol.binary_codec import JSON_OUTPUTS, OutputEncoding
from protocol.grpc_messages import render_proto, splice_proto_id
from protocol.json_body import splice_id
from protocol.types import RawResponse

GRPC_CONTENT_TYPE = "application/grpc"


@dataclass(frozen=True, slots=True)
class Rendering:
    """How one request wants its answer: ``rest`` (JSON, with the outputs that
    ``outputs`` names in binary) or ``grpc`` (a ModelInferResponse)."""

    kind: str = "rest"
    outputs: OutputEncoding = JSON_OUTPUTS

    @property
    def tag(self) -> str:
        """A short name for this rendering, to keep flights of different renderings apart."""
        if self.kind == "grpc":
            return "grpc"
        choices = ",".join(f"{name}={int(choice)}" for name, choice in self.outputs.overrides)
        return f"rest:{int(self.outputs.binary_default)}:{choices}"


JSON_RENDERING = Rendering()
GRPC_RENDERING = Rendering("grpc")


@dataclass(frozen=True, slots=True)
class Rendered:
    """An answer's body with the request's id, and what its REST headers need."""

    body: bytes
    content_type: str
    header_length: int | None = None  # the binary extension's Inference-Header-Content-Length


def canonical(entry: CachedAnswer) -> RawResponse:
    if entry.content_type == BINARY:
        return binary_codec.response_from_binary(entry.body, entry.header_length)
    return binary_codec.response_from_json(entry.body)


def _native(entry: CachedAnswer, rendering: Rendering, raw: RawResponse) -> bool:
    """Whether the entry's own form is already this REST rendering."""
    if entry.content_type == JSON:
        return not rendering.outputs.any_binary
    header = binary_codec.split(entry.body, entry.header_length, "answer")[0]
    stored = {o.get("name"): "binary_data_size" in (o.get("parameters") or {}) for o in header.get("outputs", [])}
    return all(stored.get(t.name) == rendering.outputs.binary(t.name) for t in raw.outputs)


def _id_free(entry: CachedAnswer, rendering: Rendering) -> tuple[bytes, int]:
    """The rendering without an id, made once per entry (a stable body: repeated hits
    in one encoding are byte-identical)."""
    made = entry.renderings.get(rendering)
    if made is not None:
        return made
    raw = canonical(entry)
    if rendering.kind == "grpc":
        made = (render_proto(raw), 0)
    elif _native(entry, rendering, raw):
        made = (entry.body, entry.header_length)
    else:
        made = binary_codec.render_binary(raw, rendering.outputs)
        if not rendering.outputs.any_binary:
            made = (made[0], 0)
    entry.renderings[rendering] = made
    return made


def render(entry: CachedAnswer, rendering: Rendering, request_id: str | None) -> Rendered:
    body, length = _id_free(entry, rendering)
    return with_id(body, length, rendering, request_id)


def with_id(body: bytes, length: int, rendering: Rendering, request_id: str | None) -> Rendered:
    """An id-free body in ``rendering`` (``length``: its binary header's) with the request's id."""
    if rendering.kind == "grpc":
        return Rendered(splice_proto_id(body, request_id), GRPC_CONTENT_TYPE)
    if length:
        spliced, spliced_length = binary_codec.splice_binary_id(body, length, request_id)
        return Rendered(spliced, BINARY, spliced_length)
    return Rendered(splice_id(body, request_id), JSON)
