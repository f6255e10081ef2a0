"""V2 REST with the binary tensor data extension: every input as raw bytes
after a JSON header, outputs asked back as binary (``binary_data_output``).

A template is the request encoded once; a request is the template with the
first ``varied`` elements of the first input's bytes replaced (the header,
and so ``Inference-Header-Content-Length``, never changes: the bytes of the
varied elements have a fixed size, BYTES included, since the generator's
strings do). Where a value's bytes would change size the body is encoded
whole again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from loadgen.clients.base import EncodedRequest
from loadgen.clients.rest_json import RestJsonClient
from protocol.arrays import raw_from_array
from protocol.binary_codec import CONTENT_TYPE, HEADER
from protocol.json_codec import encode_binary_request
from protocol.types import InferRequest


@dataclass(frozen=True, slots=True)
class BinaryTemplate:
    model: str
    path: str
    request: InferRequest
    head: bytes  # header and the binary section up to the first input's data
    tail: bytes  # the first input's data after the varied elements, then the rest
    cut: int  # bytes the varied elements take
    varied: int
    headers: dict[str, str]

    def render(self, values: np.ndarray) -> EncodedRequest:
        first = self.request.inputs[0]
        middle = raw_from_array(first.datatype, values)
        if len(middle) == self.cut:
            return EncodedRequest(self.model, self.path, b"".join((self.head, middle, self.tail)), self.headers)
        flat = first.data.reshape(-1).copy()
        flat[: self.varied] = values
        changed = replace(
            self.request, inputs=[replace(first, data=flat.reshape(first.shape)), *self.request.inputs[1:]]
        )
        body, length = encode_binary_request(changed)
        return EncodedRequest(self.model, self.path, body, {**self.headers, HEADER: str(length)})


def binary_template(model: str, request: InferRequest, varied: int) -> BinaryTemplate:
    first = request.inputs[0]
    flat = first.data.reshape(-1)
    if not 0 < varied <= flat.size:
        raise ValueError(f"cannot vary {varied} of the {flat.size} values of input {first.name!r}")
    body, length = encode_binary_request(request)
    cut = len(raw_from_array(first.datatype, flat[:varied]))
    headers = {"Content-Type": CONTENT_TYPE, HEADER: str(length)}
    path = f"/v2/models/{model}/infer"
    return BinaryTemplate(model, path, request, body[:length], body[length + cut :], cut, varied, headers)


class RestBinaryClient(RestJsonClient):
    """``POST {url}/v2/models/{name}/infer`` in the binary tensor data extension."""

    protocol = "rest-binary"

    def template(self, model: str, request: InferRequest, varied: int) -> BinaryTemplate:  # type: ignore[override]
        return binary_template(model, request, varied)
