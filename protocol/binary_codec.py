"""The binary tensor data extension over REST, without numpy.

A body in the extension is a JSON header followed by raw tensor bytes, and
``Inference-Header-Content-Length`` says how long the header is. A tensor whose
``parameters`` hold ``binary_data_size`` has no ``data`` in the header: that
many bytes of the binary section are its elements (``protocol.packing``'s
form), tensors back to back in header order. Which outputs an answer carries
in binary is the request's choice: ``binary_data_output`` in the request's
parameters for all of them, ``binary_data`` in a requested output's for that
one (which wins).

Lengths are data, never trusted: the header must lie within the body, each
``binary_data_size`` must be a non-negative integer, the sizes must add up to
exactly the bytes after the header, and each tensor's bytes must be what its
datatype and shape need (BYTES: element lengths that stay inside the tensor,
as many elements as the shape holds); any lie is a ``BadRequest`` (400), a
tensor over the element limit a ``PayloadTooLarge`` (413).

The balancer keys and converts answers with this module (it never imports
numpy); the worker's codec builds its arrays on the same checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from protocol.errors import BadRequest, PayloadTooLarge
from protocol.json_body import loads_object, splice_id, strip_id
from protocol.packing import (
    DEFAULT_MAX_ELEMENTS,
    ELEMENT_SIZE,
    count_bytes_elements,
    flatten,
    pack,
    unpack,
)
from protocol.types import Parameters, RawResponse, RawTensor

HEADER = "Inference-Header-Content-Length"
HEADER_KEY = HEADER.lower()  # as the HTTP server hands request headers over
CONTENT_TYPE = "application/octet-stream"
MAX_TENSORS = 256
MAX_RANK = 16
# Parameters that only choose an encoding: never part of a cache key, never
# carried from one rendering of an answer into another.
ENCODING_ONLY = frozenset(("binary_data_output", "binary_data", "binary_data_size"))


def header_length(value: str | None) -> int | None:
    """The header's length from ``Inference-Header-Content-Length`` (None: absent)."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12:  # "¹" is a digit to str.isdigit
        raise BadRequest(f"{HEADER} must be a non-negative integer")
    return int(value)


def split(body: bytes, length: int, what: str = "request") -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary section of a body in the extension."""
    if length > len(body):
        raise BadRequest(f"{HEADER} is {length} but the body has {len(body)} bytes")
    header = loads_object(body[:length], f"binary {what} header")
    return header, memoryview(body)[length:]


def parameters(raw: Any, where: str) -> Parameters | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(f"'parameters' of {where} must be an object")
    return raw


def answer_parameters(params: Parameters | None) -> Parameters | None:
    """The parameters without the encoding-only ones (None when nothing is left)."""
    if not params:
        return None
    kept = {k: v for k, v in params.items() if k not in ENCODING_ONLY}
    return kept or None


def check_shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RANK or not all(type(d) is int and d >= 0 for d in raw):
        raise BadRequest(f"tensor '{name}': 'shape' must be a list of at most {MAX_RANK} non-negative integers")
    return tuple(raw)


def check_count(name: str, shape: Sequence[int], max_elements: int) -> int:
    count = math.prod(shape)
    if count > max_elements:
        raise PayloadTooLarge(f"tensor '{name}': {count} elements is over the limit of {max_elements}")
    return count


def check_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview, max_elements: int) -> None:
    """Raw bytes that are exactly a tensor of ``datatype`` and ``shape``, or BadRequest."""
    count = check_count(name, shape, max_elements)
    if datatype == "BYTES":
        found = count_bytes_elements(raw, name)
        if found != count:
            raise BadRequest(f"tensor '{name}': {found} BYTES elements given, shape {list(shape)} needs {count}")
        return
    size = ELEMENT_SIZE.get(datatype)
    if size is None:
        raise BadRequest(f"tensor '{name}': unknown datatype {datatype[:32]!r}")
    if len(raw) != count * size:
        raise BadRequest(
            f"tensor '{name}': {len(raw)} bytes of data, shape {list(shape)} of {datatype} needs {count * size}"
        )


def take_binary(tensors: list[Any], binary: memoryview | None) -> list[memoryview | None]:
    """Each tensor's slice of the binary section (None: its data is in the header)."""
    at = 0
    out: list[memoryview | None] = []
    for tensor in tensors:
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            out.append(None)
            continue
        name = str(tensor.get("name"))[:64]
        if type(size) is not int or size < 0:
            raise BadRequest(f"tensor '{name}': binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise BadRequest(f"tensor '{name}': both 'data' and binary_data_size given")
        if binary is None or at + size > len(binary):
            held = 0 if binary is None else len(binary)
            raise BadRequest(f"tensor '{name}': binary_data_size runs past the {held} bytes of binary data")
        out.append(binary[at : at + size])
        at += size
    if binary is not None and at != len(binary):
        raise BadRequest(f"{len(binary) - at} bytes of binary data belong to no tensor")
    return out


def raw_tensors(
    tensors: Any, binary: memoryview | None, max_elements: int = DEFAULT_MAX_ELEMENTS, what: str = "input"
) -> tuple[RawTensor, ...]:
    """Header tensors (JSON ``data`` or a binary slice each) as raw tensors, checked."""
    if not isinstance(tensors, list) or not tensors:
        raise BadRequest(f"'{what}s' must be a non-empty list")
    if len(tensors) > MAX_TENSORS:
        raise BadRequest(f"too many {what}s (at most {MAX_TENSORS})")
    out = []
    for raw, data in zip(tensors, take_binary(tensors, binary), strict=True):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise BadRequest(f"each {what} must be an object with a string 'name', shape, datatype and data")
        name, datatype = raw["name"], raw.get("datatype")
        if not isinstance(datatype, str) or (datatype not in ELEMENT_SIZE and datatype != "BYTES"):
            raise BadRequest(f"{what} '{name}': unknown datatype {str(datatype)[:32]!r}")
        shape = check_shape(raw.get("shape"), name)
        if data is not None:
            check_raw(name, datatype, shape, data, max_elements)
            packed = bytes(data)
        else:
            count = check_count(name, shape, max_elements)
            if "data" not in raw:
                raise BadRequest(f"{what} '{name}': 'data' is missing")
            values = flatten(raw["data"], name)
            if len(values) != count:
                raise BadRequest(f"{what} '{name}': data has {len(values)} elements but shape needs {count}")
            packed = pack(datatype, values, name)
        out.append(RawTensor(name, datatype, shape, packed, parameters(raw.get("parameters"), f"{what} '{name}'")))
    if len({t.name for t in out}) != len(out):
        raise BadRequest(f"an {what} is given twice")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class OutputEncoding:
    """Which outputs an answer carries as binary data: all by default when
    ``binary_data_output`` is set, and each requested output's ``binary_data``
    wins for that output."""

    binary_default: bool = False
    overrides: tuple[tuple[str, bool], ...] = ()

    def binary(self, name: str) -> bool:
        for named, choice in self.overrides:
            if named == name:
                return choice
        return self.binary_default

    @property
    def any_binary(self) -> bool:
        return self.binary_default or any(choice for _, choice in self.overrides)


JSON_OUTPUTS = OutputEncoding()
BINARY_OUTPUTS = OutputEncoding(True)


def output_encoding(request_params: Any, outputs: Any) -> OutputEncoding:
    """The encoding a request asks its answer in (parameters as JSON objects)."""
    default = isinstance(request_params, dict) and request_params.get("binary_data_output") is True
    overrides = []
    for item in outputs if isinstance(outputs, list) else ():
        params = item.get("parameters") if isinstance(item, dict) else None
        choice = params.get("binary_data") if isinstance(params, dict) else None
        if isinstance(choice, bool) and isinstance(item.get("name"), str):
            overrides.append((item["name"], choice))
    return OutputEncoding(default, tuple(sorted(overrides)))


# Answers: parse any rendering into a RawResponse, render one from it.


def response_from_header(header: dict[str, Any], binary: memoryview | None) -> RawResponse:
    outputs = tuple(
        RawTensor(t.name, t.datatype, t.shape, t.data, answer_parameters(t.parameters))
        for t in raw_tensors(header.get("outputs"), binary, what="output")
    )
    version = header.get("model_version")
    return RawResponse(
        model_name=str(header.get("model_name", "")),
        outputs=outputs,
        model_version=None if version is None else str(version),
        parameters=parameters(header.get("parameters"), "the answer"),
    )


def response_from_json(body: bytes) -> RawResponse:
    return response_from_header(loads_object(body, "answer"), None)


def response_from_binary(body: bytes, length: int) -> RawResponse:
    header, binary = split(body, length, "answer")
    return response_from_header(header, binary)


def _json_values(tensor: RawTensor) -> list[Any]:
    values = unpack(tensor.datatype, tensor.data, tensor.name)
    if tensor.datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in values]
    return values


def _head(resp: RawResponse) -> dict[str, Any]:
    head: dict[str, Any] = {"model_name": resp.model_name}
    if resp.model_version is not None:
        head["model_version"] = resp.model_version
    if resp.parameters:
        head["parameters"] = resp.parameters
    return head


def render_json(resp: RawResponse) -> bytes:
    """The answer as V2 JSON, without an ``id`` (the worker's member order)."""
    return render_binary(resp, JSON_OUTPUTS)[0]


def render_binary(resp: RawResponse, encoding: OutputEncoding) -> tuple[bytes, int]:
    """The answer in the extension, without an ``id``: (body, header length).
    With no output in binary it is plain JSON, the header the whole body."""
    head = _head(resp)
    outputs = []
    binary: list[bytes] = []
    for t in resp.outputs:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if encoding.binary(t.name):
            out["parameters"] = {**(t.parameters or {}), "binary_data_size": len(t.data)}
            binary.append(t.data)
        else:
            out["data"] = _json_values(t)
            if t.parameters:
                out["parameters"] = t.parameters
        outputs.append(out)
    head["outputs"] = outputs
    header = orjson.dumps(head)
    return header + b"".join(binary), len(header)


def strip_binary_id(body: bytes, length: int, request_id: str | None) -> tuple[bytes, int]:
    """A body in the extension without the ``id`` member of its header."""
    header = strip_id(body[:length], request_id)
    return header + body[length:], len(header)


def splice_binary_id(body: bytes, length: int, request_id: str | None) -> tuple[bytes, int]:
    """Put a request's ``id`` first into an id-free header."""
    header = splice_id(body[:length], request_id)
    return header + body[length:], len(header)


def request_from_raw(obj: dict[str, Any], inputs: Sequence[RawTensor]) -> tuple[bytes, int]:
    """The request ``obj`` (a V2 JSON request, checked) with its inputs' data carried
    as binary: each input's packed bytes (``raw_tensors``) after a JSON header that
    keeps the request's other members (``id``, ``parameters``, ``outputs``) as they
    were. (body, header length), for ``Inference-Header-Content-Length``."""
    head: dict[str, Any] = {k: obj[k] for k in ("id", "parameters", "outputs") if k in obj}
    head["inputs"] = [
        {
            "name": t.name,
            "datatype": t.datatype,
            "shape": t.shape,
            "parameters": {**(t.parameters or {}), "binary_data_size": len(t.data)},
        }
        for t in inputs
    ]
    header = orjson.dumps(head)
    return b"".join((header, *(t.data for t in inputs))), len(header)
