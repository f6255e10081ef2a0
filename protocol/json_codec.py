"""JSON codec for V2 inference requests and responses (the REST schema).

Decoding checks what the schema requires and what numpy alone would let slip:
element kinds (no strings in an FP32 tensor, no fractions in an INT one),
integer ranges, ragged nesting, and that the data holds exactly as many
elements as the shape declares. Every failure is a ``BadRequest``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from protocol.arrays import array_from_raw, raw_from_array
from protocol.binary_codec import OutputEncoding, check_raw, output_encoding, response_from_binary, split, take_binary
from protocol.datatypes import ACCEPTED_KINDS, NUMPY_DTYPES
from protocol.errors import BadRequest, PayloadTooLarge
from protocol.json_body import loads_object
from protocol.packing import DEFAULT_MAX_ELEMENTS
from protocol.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

MAX_RANK = 16
MAX_TENSORS = 256


def decode_infer_request(body: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    return infer_request_from_json(loads_object(body), max_elements)


def decode_binary_request(payload: tuple[bytes, int], max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    """A request in the binary tensor data extension: (body, header length)."""
    header, binary = split(*payload)
    return infer_request_from_json(header, max_elements, binary)


def infer_request_from_json(
    obj: dict[str, Any], max_elements: int = DEFAULT_MAX_ELEMENTS, binary: memoryview | None = None
) -> InferRequest:
    """A request from its JSON object; ``binary``: the binary section that inputs
    with ``binary_data_size`` take their data from, in order."""
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    if len(raw_inputs) > MAX_TENSORS:
        raise BadRequest(f"too many inputs (at most {MAX_TENSORS})")
    slices = take_binary(raw_inputs, binary)
    inputs = [_decode_tensor(raw, max_elements, data) for raw, data in zip(raw_inputs, slices, strict=True)]
    seen: set[str] = set()
    for tensor in inputs:
        if tensor.name in seen:
            raise BadRequest(f"input '{tensor.name}' given twice")
        seen.add(tensor.name)
    return InferRequest(
        inputs=inputs,
        id=request_id,
        outputs=_decode_requested_outputs(obj.get("outputs")),
        parameters=_decode_parameters(obj.get("parameters"), "request"),
    )


def _decode_parameters(raw: Any, where: str) -> Parameters | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(f"'parameters' of {where} must be an object")
    return raw


def _decode_requested_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
    result = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output needs a string 'name'")
        result.append(RequestedOutput(item["name"], _decode_parameters(item.get("parameters"), "output")))
    return result


def _decode_shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RANK:
        raise BadRequest(f"input '{name}': 'shape' must be a list of at most {MAX_RANK} integers")
    for dim in raw:
        if type(dim) is not int or dim < 0:
            raise BadRequest(f"input '{name}': shape dimensions must be non-negative integers")
    return tuple(raw)


def _decode_tensor(raw: Any, max_elements: int, binary: memoryview | None = None) -> Tensor:
    if not isinstance(raw, dict):
        raise BadRequest("each input must be an object with name, shape, datatype and data")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("each input needs a string 'name'")
    datatype = raw.get("datatype")
    if datatype not in NUMPY_DTYPES:
        raise BadRequest(f"input '{name}': unknown datatype {str(datatype)[:32]!r}")
    shape = _decode_shape(raw.get("shape"), name)
    count = math.prod(shape)
    if count > max_elements:
        raise PayloadTooLarge(f"input '{name}': {count} elements is over the limit of {max_elements}")
    params = _decode_parameters(raw.get("parameters"), name)
    if binary is not None:
        check_raw(name, datatype, shape, binary, max_elements)
        return Tensor(name, datatype, shape, array_from_raw(datatype, shape, binary, name), params)
    if "data" not in raw:
        raise BadRequest(f"input '{name}': 'data' is missing")
    data = _decode_data(name, datatype, raw["data"], count)
    return Tensor(name, datatype, shape, data.reshape(shape), params)


def _decode_data(name: str, datatype: str, data: Any, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise BadRequest(f"input '{name}': 'data' must be a list")
    if datatype == "BYTES":
        flat = _flatten_strings(name, data)
        arr = np.empty(len(flat), dtype=object)
        arr[:] = [s.encode() for s in flat]
    else:
        target = NUMPY_DTYPES[datatype]
        try:
            arr = np.asarray(data)
            if target.kind in "iu" and arr.dtype.kind in "fO" and arr.size:
                # numpy inferred floats or objects (e.g. UINT64 values past INT64's range):
                # check each value is a whole integer, then convert exactly.
                arr = _exact_integers(name, datatype, np.asarray(data, dtype=object), target)
        except ValueError:
            raise BadRequest(f"input '{name}': 'data' is ragged or mixes types") from None
        if arr.size:
            if arr.dtype.kind not in ACCEPTED_KINDS[datatype]:
                raise BadRequest(f"input '{name}': data does not match datatype {datatype}")
            if target.kind in "iu":
                info = np.iinfo(target)
                if arr.min() < info.min or arr.max() > info.max:
                    raise BadRequest(f"input '{name}': values out of range for {datatype}")
            with np.errstate(over="ignore"):  # a float past the datatype's range becomes inf, as the key's packing
                arr = arr.astype(target, copy=False)
        else:
            arr = np.empty(0, dtype=target)
    if arr.size != count:
        raise BadRequest(f"input '{name}': data has {arr.size} elements but shape needs {count}")
    return arr


def _exact_integers(name: str, datatype: str, values: np.ndarray, target: np.dtype) -> np.ndarray:
    info = np.iinfo(target)
    flat = values.ravel().tolist()
    for v in flat:
        if type(v) is not int:
            raise BadRequest(f"input '{name}': data does not match datatype {datatype}")
        if not info.min <= v <= info.max:
            raise BadRequest(f"input '{name}': values out of range for {datatype}")
    return np.array(flat, dtype=target).reshape(values.shape)


def _flatten_strings(name: str, data: list[Any]) -> list[str]:
    out: list[str] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list):
                if len(stack) > MAX_RANK:
                    raise BadRequest(f"input '{name}': 'data' is nested too deeply")
                stack.append(iter(item))
                break
            else:
                raise BadRequest(f"input '{name}': BYTES data must be strings")
        else:
            stack.pop()
    return out


def _output_json(tensor: Tensor) -> dict[str, Any]:
    data = tensor.data
    if tensor.datatype == "BYTES":
        values: Any = [b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b) for b in data.ravel()]
    else:
        values = np.ascontiguousarray(data).ravel()
    out: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
        "data": values,
    }
    if tensor.parameters:
        out["parameters"] = tensor.parameters
    return out


def encode_infer_response(response: InferResponse) -> bytes:
    """Serialise a response; ``id`` comes first so a cached body splices a new one cheaply."""
    body: dict[str, Any] = {}
    if response.id is not None:
        body["id"] = response.id
    body["model_name"] = response.model_name
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.parameters:
        body["parameters"] = response.parameters
    body["outputs"] = [_output_json(t) for t in response.outputs]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_infer_request(request: InferRequest) -> bytes:
    """Serialise a request (for clients, tests and the load generator)."""
    body: dict[str, Any] = {}
    if request.id is not None:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = request.parameters
    body["inputs"] = [_output_json(t) for t in request.inputs]
    if request.outputs is not None:
        body["outputs"] = [
            {"name": o.name, **({"parameters": o.parameters} if o.parameters else {})} for o in request.outputs
        ]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_infer_response(body: bytes) -> InferResponse:
    """Parse a response into typed tensors (for clients, tests and the load generator)."""
    obj = loads_object(body, "response body")
    outputs = []
    for raw in obj.get("outputs", []):
        datatype = raw["datatype"]
        shape = tuple(raw["shape"])
        if datatype == "BYTES":
            arr = np.array([s.encode() for s in raw["data"]], dtype=object)
        else:
            arr = np.asarray(raw["data"], dtype=NUMPY_DTYPES[datatype])
        outputs.append(Tensor(raw["name"], datatype, shape, arr.reshape(shape), raw.get("parameters")))
    return InferResponse(
        model_name=obj.get("model_name", ""),
        model_version=obj.get("model_version"),
        id=obj.get("id"),
        outputs=outputs,
        parameters=obj.get("parameters"),
    )


def output_encoding_of(request: InferRequest) -> OutputEncoding:
    """The answer encoding a decoded request asks for (binary_data_output, binary_data)."""
    outputs = (
        None if request.outputs is None else [{"name": o.name, "parameters": o.parameters} for o in request.outputs]
    )
    return output_encoding(request.parameters, outputs)


def encode_binary_response(response: InferResponse, encoding: OutputEncoding) -> tuple[bytes, int]:
    """A response in the binary extension: (body, header length); outputs that
    ``encoding`` keeps in JSON stay in the header, ``id`` first as in JSON."""
    body: dict[str, Any] = {}
    if response.id is not None:
        body["id"] = response.id
    body["model_name"] = response.model_name
    if response.model_version is not None:
        body["model_version"] = response.model_version
    if response.parameters:
        body["parameters"] = response.parameters
    outputs = []
    binary = []
    for tensor in response.outputs:
        if encoding.binary(tensor.name):
            raw = raw_from_array(tensor.datatype, tensor.data)
            params = {**(tensor.parameters or {}), "binary_data_size": len(raw)}
            outputs.append(
                {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": params}
            )
            binary.append(raw)
        else:
            outputs.append(_output_json(tensor))
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return header + b"".join(binary), len(header)


def encode_binary_request(request: InferRequest, binary_output: bool = True) -> tuple[bytes, int]:
    """A request with every input as binary data: (body, header length) (for
    clients, tests and the load generator)."""
    body: dict[str, Any] = {}
    if request.id is not None:
        body["id"] = request.id
    params = dict(request.parameters or {})
    if binary_output:
        params["binary_data_output"] = True
    if params:
        body["parameters"] = params
    inputs = []
    binary = []
    for tensor in request.inputs:
        raw = raw_from_array(tensor.datatype, tensor.data)
        params_in = {**(tensor.parameters or {}), "binary_data_size": len(raw)}
        inputs.append(
            {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "parameters": params_in}
        )
        binary.append(raw)
    body["inputs"] = inputs
    if request.outputs is not None:
        body["outputs"] = [
            {"name": o.name, **({"parameters": o.parameters} if o.parameters else {})} for o in request.outputs
        ]
    header = orjson.dumps(body)
    return header + b"".join(binary), len(header)


def decode_binary_response(body: bytes, length: int | None) -> InferResponse:
    """Parse an answer in the binary extension (or plain JSON when ``length`` is None)."""
    if length is None:
        return decode_infer_response(body)
    raw = response_from_binary(body, length)
    header = loads_object(body[:length], "answer header")
    outputs = [
        Tensor(t.name, t.datatype, t.shape, array_from_raw(t.datatype, t.shape, t.data, t.name), t.parameters)
        for t in raw.outputs
    ]
    return InferResponse(raw.model_name, outputs, raw.model_version, header.get("id"), raw.parameters)
