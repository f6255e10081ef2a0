"""The official V2 clients, unmodified, against one endpoint (run in a process
of its own: their generated ``inference.*`` messages and ours cannot share one
protobuf registry). Prints one JSON object of what each client saw.

    python tests/clients/official.py HTTP_URL GRPC_TARGET MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np


def _data() -> np.ndarray:
    return np.array([[0.5, -1.25, 3.0, 1e6], [2.0, 0.0, -0.5, 7.5]], dtype=np.float32)


def triton(http_url: str, grpc_target: str, model: str) -> dict[str, object]:
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    out: dict[str, object] = {}
    data = _data()
    hc = thttp.InferenceServerClient(http_url.removeprefix("http://"))
    given = thttp.InferInput("input", list(data.shape), "FP32")
    given.set_data_from_numpy(data, binary_data=True)
    result = hc.infer(model, [given], outputs=[thttp.InferRequestedOutput("output", binary_data=True)], request_id="t1")
    out["triton_http"] = {
        "live": hc.is_server_live(),
        "ready": hc.is_server_ready(),
        "model_ready": hc.is_model_ready(model),
        "server": hc.get_server_metadata()["name"],
        "inputs": [i["name"] for i in hc.get_model_metadata(model)["inputs"]],
        "output": result.as_numpy("output").tolist(),
        "id": result.get_response()["id"],
        "binary": "binary_data_size" in json.dumps(result.get_response()),
    }
    gc = tgrpc.InferenceServerClient(grpc_target)
    given_g = tgrpc.InferInput("input", list(data.shape), "FP32")
    given_g.set_data_from_numpy(data)  # tritonclient's gRPC client sends raw_input_contents
    result_g = gc.infer(model, [given_g], request_id="t2")
    out["triton_grpc"] = {
        "live": gc.is_server_live(),
        "ready": gc.is_server_ready(),
        "model_ready": gc.is_model_ready(model),
        "server": gc.get_server_metadata().name,
        "inputs": [i.name for i in gc.get_model_metadata(model).inputs],
        "output": result_g.as_numpy("output").tolist(),
        "id": result_g.get_response().id,
        "index": sorted({m.name for m in gc.get_model_repository_index().models}),
    }
    gc.close()
    hc.close()
    return out


async def kserve(http_url: str, grpc_target: str, model: str) -> dict[str, object]:
    import grpc
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest
    from kserve.inference_client import RESTConfig
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as kpb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as kstub

    out: dict[str, object] = {}
    data = _data()
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    given = InferInput("input", list(data.shape), "FP32")
    given.set_data_from_numpy(data, binary_data=True)  # the binary tensor data extension
    answer = await rest.infer(http_url, InferRequest(model, [given], request_id="k1"), model_name=model)
    out["kserve_rest"] = {
        "live": await rest.is_server_live(http_url),
        "ready": await rest.is_server_ready(http_url),
        "model_ready": await rest.is_model_ready(http_url, model),
        "output": answer.outputs[0].as_numpy().tolist(),
        "id": answer.id,
    }
    await rest.close()
    client = InferenceGRPCClient(grpc_target)
    given_g = InferInput("input", list(data.shape), "FP32")
    given_g.set_data_from_numpy(data, binary_data=True)  # raw contents
    answer_g = await client.infer(InferRequest(model, [given_g], request_id="k2"))
    async with grpc.aio.insecure_channel(grpc_target) as channel:  # KServe's own generated stub, for metadata
        stub = kstub.GRPCInferenceServiceStub(channel)
        server = await stub.ServerMetadata(kpb.ServerMetadataRequest())
        meta = await stub.ModelMetadata(kpb.ModelMetadataRequest(name=model))
    out["kserve_grpc"] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model),
        "server": server.name,
        "inputs": [i.name for i in meta.inputs],
        "output": answer_g.outputs[0].as_numpy().tolist(),
        "id": answer_g.id,
    }
    await client.close()
    return out


def main() -> None:
    http_url, grpc_target, model, which = sys.argv[1:5]
    result = (
        triton(http_url, grpc_target, model) if which == "triton" else asyncio.run(kserve(http_url, grpc_target, model))
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
