"""What a gRPC target serves, asked over gRPC: ``RepositoryIndex`` for the
models (every name not UNAVAILABLE, in name order) and ``ModelMetadata`` for
each model's inputs. The V2 gRPC service carries no ``max_batch_size``, so a
model is taken as unbatched (``--payload-size`` cannot grow its batches)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from loadgen.target import TIMEOUT, ModelSpec, Target, TargetError, parse_inputs
from protocol.grpc_service import inference_pb2 as pb
from protocol.grpc_service.inference_pb2_grpc import GRPCInferenceServiceStub


async def _model(stub: GRPCInferenceServiceStub, name: str) -> ModelSpec:
    try:
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        raise TargetError(f"model {name!r}: metadata answered {exc.code().name}") from None
    raw = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]}
    return ModelSpec(name, parse_inputs(raw, name), 0)


async def discover_grpc(url: str, models: Sequence[str] = ()) -> Target:
    target = url.removeprefix("grpc://").rstrip("/")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        names = list(models)
        try:
            if not names:
                index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=TIMEOUT)
                listed = {m.name for m in index.models}
                unavailable = {m.name for m in index.models if m.state == "UNAVAILABLE"}
                names = sorted(listed - unavailable)
        except grpc.aio.AioRpcError as exc:
            raise TargetError(f"cannot reach {url}: {exc.code().name}") from None
        results = await asyncio.gather(*(_model(stub, n) for n in names), return_exceptions=True)
    found: list[ModelSpec] = []
    skipped: list[str] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ModelSpec):
            found.append(result)
        elif isinstance(result, TargetError) and not models:
            skipped.append(name)
        elif isinstance(result, BaseException):
            raise result
    if not found:
        raise TargetError(f"{url} lists no model the generator can use")
    return Target(url, tuple(found), tuple(skipped))
