"""V2 gRPC messages as raw tensors, without numpy.

The balancer keys a ``ModelInferRequest`` and converts answers between
protobuf and the REST renderings with these; the worker's gRPC codec builds
its arrays on the same checks. Tensors travel either typed (``contents``, one
repeated field per element kind) or raw (``raw_*_contents``, one entry per
tensor in the binary extension's byte form); both become ``RawTensor``.

Ids: an answer is stored without its ``id``. Protobuf parses a message's
fields in any order and merges repeated occurrences, so a request's id is put
back by appending field 3 to the id-free bytes: a hit costs a concatenation,
not a serialisation.
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf.message import DecodeError

from protocol.binary_codec import (
    ENCODING_ONLY,
    MAX_RANK,
    MAX_TENSORS,
    answer_parameters,
    check_count,
    check_raw,
)
from protocol.errors import BadRequest
from protocol.grpc_service import inference_pb2 as pb
from protocol.packing import DEFAULT_MAX_ELEMENTS, ELEMENT_SIZE, pack, pack_bytes_elements, unpack
from protocol.types import Parameters, RawResponse, RawTensor

# V2 datatype -> the InferTensorContents field that carries it typed (FP16 has none).
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_INT64_MAX = (1 << 63) - 1


def parameters_from_proto(params: Any) -> Parameters | None:
    """A protobuf ``map<string, InferParameter>`` as a plain dict (None when empty)."""
    if not params:
        return None
    out: Parameters = {}
    for name, value in params.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[name] = getattr(value, choice)
    return out or None


def parameters_to_proto(target: Any, params: Parameters | None) -> None:
    """Fill a protobuf parameter map; values protobuf cannot hold go as JSON text."""
    for name, value in (params or {}).items():
        slot = target[name]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value > _INT64_MAX:
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            slot.string_param = orjson.dumps(value).decode()


def _shape(dims: Any, name: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise BadRequest(f"tensor '{name}': shape must be at most {MAX_RANK} non-negative dimensions")
    return shape


def pack_contents(datatype: str, contents: Any, count: int, name: str) -> bytes:
    """Typed ``InferTensorContents`` as raw bytes, checked against the shape's count."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        if datatype in ELEMENT_SIZE:  # FP16
            raise BadRequest(f"tensor '{name}': {datatype} data must travel as raw contents")
        raise BadRequest(f"tensor '{name}': unknown datatype {datatype[:32]!r}")
    values = getattr(contents, field)
    if len(values) != count:
        raise BadRequest(f"tensor '{name}': {len(values)} {field} given, shape needs {count}")
    if datatype == "BYTES":
        return pack_bytes_elements(list(values))
    return pack(datatype, list(values), name)


def parse_request(payload: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(payload)
    except DecodeError:
        raise BadRequest("malformed ModelInferRequest") from None


def raw_tensors(tensors: Any, raws: Any, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[RawTensor, ...]:
    """A message's tensors (inputs or outputs) with their raw or typed data, checked."""
    if len(tensors) > MAX_TENSORS:
        raise BadRequest(f"too many tensors (at most {MAX_TENSORS})")
    if raws and len(raws) != len(tensors):
        raise BadRequest(f"{len(raws)} raw contents for {len(tensors)} tensors")
    out = []
    for i, tensor in enumerate(tensors):
        name, datatype = tensor.name, tensor.datatype
        if not name:
            raise BadRequest("each tensor needs a name")
        if datatype not in ELEMENT_SIZE and datatype != "BYTES":
            raise BadRequest(f"tensor '{name}': unknown datatype {datatype[:32]!r}")
        shape = _shape(tensor.shape, name)
        if raws:
            if tensor.HasField("contents"):
                raise BadRequest(f"tensor '{name}': both contents and raw contents given")
            data = raws[i]
            check_raw(name, datatype, shape, data, max_elements)
        else:
            data = pack_contents(datatype, tensor.contents, check_count(name, shape, max_elements), name)
        out.append(RawTensor(name, datatype, shape, data, parameters_from_proto(tensor.parameters)))
    if len({t.name for t in out}) != len(out):
        raise BadRequest("a tensor is given twice")
    return tuple(out)


def request_inputs(msg: pb.ModelInferRequest, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[RawTensor, ...]:
    if not msg.inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    return raw_tensors(msg.inputs, msg.raw_input_contents, max_elements)


def requested_outputs(msg: pb.ModelInferRequest) -> tuple[tuple[str, Parameters | None], ...] | None:
    if not msg.outputs:
        return None
    return tuple((o.name, parameters_from_proto(o.parameters)) for o in msg.outputs)


def response_from_proto(msg: pb.ModelInferResponse) -> RawResponse:
    outputs = tuple(
        RawTensor(t.name, t.datatype, t.shape, t.data, answer_parameters(t.parameters))
        for t in raw_tensors(msg.outputs, msg.raw_output_contents)
    )
    return RawResponse(
        model_name=msg.model_name,
        outputs=outputs,
        model_version=msg.model_version or None,
        parameters=parameters_from_proto(msg.parameters),
    )


def response_to_proto(resp: RawResponse) -> pb.ModelInferResponse:
    """The answer with raw output contents (as Triton answers), without an id."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version or "")
    parameters_to_proto(msg.parameters, resp.parameters)
    for t in resp.outputs:
        out = msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        parameters_to_proto(out.parameters, {k: v for k, v in (t.parameters or {}).items() if k not in ENCODING_ONLY})
    msg.raw_output_contents.extend(t.data for t in resp.outputs)
    return msg


def render_proto(resp: RawResponse) -> bytes:
    """The serialised answer: its metadata, then each output's raw contents as
    field 6, joined once (protobuf would copy each tensor twice more)."""
    msg = response_to_proto(resp)
    del msg.raw_output_contents[:]
    return with_raw_contents(
        msg.SerializeToString(deterministic=True), RAW_OUTPUT_CONTENTS, [t.data for t in resp.outputs]
    )


def typed_values(tensor: RawTensor) -> list[Any]:
    """A raw tensor's elements as Python values (for typed contents)."""
    return unpack(tensor.datatype, tensor.data, tensor.name)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(field: int, data: bytes) -> bytes:
    """One length-delimited field (string, bytes or message) in protobuf's wire form."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


RAW_INPUT_CONTENTS = 7
RAW_OUTPUT_CONTENTS = 6


def with_raw_contents(head: bytes, field: int, contents: list[bytes]) -> bytes:
    """A serialised message followed by raw contents fields, in one join: appending
    fields to serialised bytes is what protobuf's own merge semantics allow."""
    tag = _varint(field << 3 | 2)
    parts = [head]
    for data in contents:
        parts += (tag, _varint(len(data)), data)
    return b"".join(parts)


def splice_proto_id(body: bytes, request_id: str | None) -> bytes:
    """An id-free serialised ``ModelInferResponse`` with the request's id (field 3)."""
    if not request_id:
        return body
    return body + length_delimited(3, request_id.encode())


def strip_proto_id(body: bytes, parsed: pb.ModelInferResponse | None = None) -> tuple[bytes, str | None]:
    """A serialised answer without its id, and the id it had (``parsed``: the body, parsed)."""
    msg = parsed if parsed is not None else pb.ModelInferResponse.FromString(body)
    request_id = msg.id or None
    if request_id is None:
        return body, None
    copy = pb.ModelInferResponse()
    copy.CopyFrom(msg)
    copy.ClearField("id")
    return copy.SerializeToString(deterministic=True), request_id


def _read_varint(body: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(body) or shift > 63:
            raise BadRequest("malformed ModelInferRequest")
        byte = body[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def infer_target(body: bytes) -> tuple[str, str]:
    """(model_name, model_version) of a serialised ``ModelInferRequest``, read
    from the top-level field headers alone: the tensors are skipped, not parsed,
    so a front can route a request without decoding it on the event loop."""
    fields = {1: "", 2: ""}
    at = 0
    while at < len(body):
        key, at = _read_varint(body, at)
        field, wire = key >> 3, key & 7
        if wire == 2:
            size, at = _read_varint(body, at)
            if at + size > len(body):
                raise BadRequest("malformed ModelInferRequest")
            if field in fields:
                try:
                    fields[field] = body[at : at + size].decode()
                except UnicodeDecodeError:
                    raise BadRequest("malformed ModelInferRequest") from None
            at += size
        elif wire == 0:
            _, at = _read_varint(body, at)
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise BadRequest("malformed ModelInferRequest")
    if at != len(body):
        raise BadRequest("malformed ModelInferRequest")
    return fields[1], fields[2]


def repository_body(parameters: Any) -> bytes:
    """A repository load or unload message's ``parameters`` as the REST body
    (``{"parameters": {...}}``), so both fronts share one set of rules for them.
    A ``bytes_param`` has no JSON form: a BadRequest."""
    values: dict[str, Any] = {}
    for name, param in parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is None:
            continue
        if kind == "bytes_param":
            raise BadRequest(f"repository parameter '{name}' is bytes: this server takes none")
        values[name] = getattr(param, kind)
    return orjson.dumps({"parameters": values}) if values else b""
