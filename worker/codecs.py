"""Wire formats as the worker sees them: decode a payload into a typed request,
encode a typed response into the caller's format.

A request's codec travels with it through the batcher, which decodes and
encodes in the inference pool (never on the event loop), so one batch may mix
callers of different formats. REST JSON is here; the binary tensor extension
and gRPC add one ``Codec`` each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.json_codec import decode_infer_request, encode_infer_response
from protocol.types import InferRequest, InferResponse


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    decode: Callable[[Any, int], InferRequest]  # (payload, max elements) -> request; BadRequest if malformed
    encode: Callable[[InferResponse], Any]


JSON_CODEC = Codec("json", decode_infer_request, encode_infer_response)
