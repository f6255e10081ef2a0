"""Wire formats as the worker sees them: decode a payload into a typed request,
encode a typed response into the caller's format.

A request's codec travels with it through the batcher, which decodes and
encodes in the inference pool (never on the event loop), so one batch may mix
callers of different formats. The encoder gets the request it answers: over
REST, the request chooses which outputs come back as binary data
(``binary_data_output``, ``binary_data``), whatever form its inputs came in.

    json    REST, a JSON body                     -> JSON, or the binary extension when asked
    binary  REST, (body, header length)           -> the same
    grpc    a serialised ModelInferRequest        -> a serialised ModelInferResponse (raw contents)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocol.grpc_codec import decode_grpc_request, encode_grpc_response
from protocol.json_codec import (
    decode_binary_request,
    decode_infer_request,
    encode_binary_response,
    encode_infer_response,
    output_encoding_of,
)
from protocol.types import InferRequest, InferResponse


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    decode: Callable[[Any, int], InferRequest]  # (payload, max elements) -> request; BadRequest if malformed
    encode: Callable[[InferResponse, InferRequest], Any]  # (response, the request it answers) -> answer


@dataclass(frozen=True, slots=True)
class BinaryAnswer:
    """A REST answer in the binary extension: the body and its JSON header's length."""

    body: bytes
    header_length: int


def encode_rest(response: InferResponse, request: InferRequest) -> bytes | BinaryAnswer:
    encoding = output_encoding_of(request)
    if not encoding.any_binary:
        return encode_infer_response(response)
    return BinaryAnswer(*encode_binary_response(response, encoding))


def _encode_grpc(response: InferResponse, request: InferRequest) -> bytes:
    return encode_grpc_response(response)


JSON_CODEC = Codec("json", decode_infer_request, encode_rest)
BINARY_CODEC = Codec("binary", decode_binary_request, encode_rest)
GRPC_CODEC = Codec("grpc", decode_grpc_request, _encode_grpc)
