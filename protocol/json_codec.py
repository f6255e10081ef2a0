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

from protocol.datatypes import ACCEPTED_KINDS, NUMPY_DTYPES
from protocol.errors import BadRequest, PayloadTooLarge
from protocol.json_body import loads_object
from protocol.packing import DEFAULT_MAX_ELEMENTS
from protocol.types import InferRequest, InferResponse, Parameters, RequestedOutput, Tensor

MAX_RANK = 16
MAX_TENSORS = 256


def decode_infer_request(body: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    return infer_request_from_json(loads_object(body), max_elements)


def infer_request_from_json(obj: dict[str, Any], max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    if len(raw_inputs) > MAX_TENSORS:
        raise BadRequest(f"too many inputs (at most {MAX_TENSORS})")
    inputs = [_decode_tensor(raw, max_elements) for raw in raw_inputs]
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


def _decode_tensor(raw: Any, max_elements: int) -> Tensor:
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
    if "data" not in raw:
        raise BadRequest(f"input '{name}': 'data' is missing")
    data = _decode_data(name, datatype, raw["data"], count)
    return Tensor(name, datatype, shape, data.reshape(shape), _decode_parameters(raw.get("parameters"), name))


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
