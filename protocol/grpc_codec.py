"""V2 gRPC messages <-> typed requests and responses with numpy arrays (the
worker's gRPC codec, and clients in tests and the load generator).

Inputs may come typed or raw (``protocol.grpc_messages`` checks both); answers
always go out as ``raw_output_contents``, as Triton answers.
"""

from __future__ import annotations

from protocol.arrays import array_from_raw, raw_from_array
from protocol.grpc_messages import (
    RAW_OUTPUT_CONTENTS,
    parameters_from_proto,
    parameters_to_proto,
    parse_request,
    request_inputs,
    requested_outputs,
    response_from_proto,
    with_raw_contents,
)
from protocol.grpc_service import inference_pb2 as pb
from protocol.packing import DEFAULT_MAX_ELEMENTS
from protocol.types import InferRequest, InferResponse, RawTensor, RequestedOutput, Tensor


def _tensor(raw: RawTensor) -> Tensor:
    return Tensor(
        raw.name, raw.datatype, raw.shape, array_from_raw(raw.datatype, raw.shape, raw.data, raw.name), raw.parameters
    )


def decode_grpc_request(
    payload: bytes | pb.ModelInferRequest, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> InferRequest:
    msg = parse_request(payload) if isinstance(payload, bytes) else payload
    inputs = [_tensor(raw) for raw in request_inputs(msg, max_elements)]
    wanted = requested_outputs(msg)
    return InferRequest(
        inputs=inputs,
        id=msg.id or None,
        outputs=None if wanted is None else [RequestedOutput(name, params) for name, params in wanted],
        parameters=parameters_from_proto(msg.parameters),
    )


def response_message(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
    )
    parameters_to_proto(msg.parameters, response.parameters)
    for tensor in response.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(out.parameters, tensor.parameters)
        msg.raw_output_contents.append(raw_from_array(tensor.datatype, tensor.data))
    return msg


def encode_grpc_response(response: InferResponse) -> bytes:
    """The serialised answer, raw contents appended in one join (no protobuf copies)."""
    msg = response_message(response)
    contents = list(msg.raw_output_contents)
    del msg.raw_output_contents[:]
    return with_raw_contents(msg.SerializeToString(deterministic=True), RAW_OUTPUT_CONTENTS, contents)


def request_message(request: InferRequest, model: str, version: str = "") -> pb.ModelInferRequest:
    """A request with raw input contents (for clients, tests and the load generator)."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=request.id or "")
    parameters_to_proto(msg.parameters, request.parameters)
    for tensor in request.inputs:
        item = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        parameters_to_proto(item.parameters, tensor.parameters)
        msg.raw_input_contents.append(raw_from_array(tensor.datatype, tensor.data))
    for wanted in request.outputs or ():
        out = msg.outputs.add(name=wanted.name)
        parameters_to_proto(out.parameters, wanted.parameters)
    return msg


def decode_grpc_response(msg: pb.ModelInferResponse) -> InferResponse:
    raw = response_from_proto(msg)
    return InferResponse(
        raw.model_name, [_tensor(t) for t in raw.outputs], raw.model_version, msg.id or None, raw.parameters
    )
