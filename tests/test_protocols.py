"""REST JSON, REST binary and gRPC through the balancer, end to end: the same
outputs for every demo architecture and every datatype, one cached answer for
every encoding, errors and limits as gRPC statuses, health, and failover."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protocol.datatypes import NUMPY_DTYPES
from protocol.grpc_codec import request_message
from protocol.types import InferRequest, Tensor
from tests.conftest import ZOO_MODELS
from tests.harness import Server, private_cluster, request
from tests.reference import sample_inputs
from tests.wire import INFER, NO_CACHE, Answer, grpc_call, grpc_infer, rest_binary, rest_json
from worker.zoo import IDENTITY_DATATYPES

IDENTITIES = tuple(f"identity-{d.lower()}" for d in IDENTITY_DATATYPES)


def identity_request(datatype: str, seed: int, rows: int = 2) -> InferRequest:
    """Values across the datatype's range, its edges included."""
    rng = np.random.default_rng(seed)
    shape = (rows, 4)
    if datatype == "BYTES":
        arr = np.empty(rows * 4, dtype=object)
        arr[:] = [bytes(rng.integers(32, 127, size=int(n), dtype=np.uint8)) for n in rng.integers(0, 6, size=rows * 4)]
        arr[0] = "é".encode()
    elif datatype == "BOOL":
        arr = rng.integers(0, 2, size=rows * 4).astype(bool)
    elif NUMPY_DTYPES[datatype].kind in "iu":
        info = np.iinfo(NUMPY_DTYPES[datatype])
        arr = rng.integers(info.min, info.max, size=rows * 4, dtype=NUMPY_DTYPES[datatype], endpoint=True)
        arr[0], arr[1] = info.min, info.max
    else:
        arr = (rng.standard_normal(rows * 4) * 1e3).astype(NUMPY_DTYPES[datatype])
        arr[0] = np.finfo(NUMPY_DTYPES[datatype]).max
    return InferRequest([Tensor("input", datatype, shape, arr.reshape(shape))])


def model_request(zoo: Path, model: str, seed: int) -> InferRequest:
    if model.startswith("identity-"):
        return identity_request(model.removeprefix("identity-").upper(), seed)
    return InferRequest([Tensor(n, dt, a.shape, a) for n, dt, a in sample_inputs(zoo, model, 2, seed)])


def _outputs(answer: Answer) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in answer.response.outputs}


def _same(a: np.ndarray, b: np.ndarray, exact: bool) -> bool:
    if a.dtype == object or exact:
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("model", ZOO_MODELS + IDENTITIES)
def test_the_same_inference_over_every_protocol_gives_the_same_outputs(
    wire_cluster: tuple[list[Server], Server], wire_zoo: Path, model: str
) -> None:
    _, balancer = wire_cluster
    assert balancer.grpc is not None
    req = model_request(wire_zoo, model, seed=1)
    answers = [
        rest_json(balancer.url, model, req, NO_CACHE),
        rest_binary(balancer.url, model, req, NO_CACHE),
        grpc_infer(balancer.grpc, model, req, NO_CACHE),
    ]
    assert all(a.cache == "bypass" for a in answers), "each one computed by a worker"
    first = _outputs(answers[0])
    exact = model.startswith("identity-")
    for answer in answers[1:]:
        assert first.keys() == _outputs(answer).keys()
        for name, data in _outputs(answer).items():
            assert _same(first[name], data, exact), (model, name)
    if exact:
        assert _same(first["output"], req.inputs[0].data, exact=True)  # the identity answered its input


@pytest.mark.parametrize("model", ["mlp-00", "identity-bytes", "identity-fp16", "identity-uint64"])
def test_one_cached_answer_serves_every_encoding(
    wire_cluster: tuple[list[Server], Server], wire_zoo: Path, model: str
) -> None:
    _, balancer = wire_cluster
    assert balancer.grpc is not None
    target = balancer.grpc
    # gRPC first: a miss; then REST binary and REST JSON are hits on the same entry.
    req = model_request(wire_zoo, model, seed=11)
    first = grpc_infer(target, model, req)
    assert first.cache == "miss"
    for again in (rest_binary(balancer.url, model, req), rest_json(balancer.url, model, req)):
        assert (again.cache, again.served_by) == ("hit", first.served_by)
        for name, data in _outputs(first).items():
            assert _same(_outputs(again)[name], data, exact=data.dtype.kind not in "f")
    # The other way round, fresh data: JSON computes it, binary and gRPC are hits.
    req = model_request(wire_zoo, model, seed=12)
    first = rest_json(balancer.url, model, req)
    assert first.cache == "miss"
    hits = [rest_binary(balancer.url, model, req), grpc_infer(target, model, req)]
    assert [h.cache for h in hits] == ["hit", "hit"]
    # Within one encoding, hits are byte-identical.
    assert rest_json(balancer.url, model, req).raw == rest_json(balancer.url, model, req).raw
    assert rest_binary(balancer.url, model, req).raw == hits[0].raw
    assert grpc_infer(target, model, req).raw == hits[1].raw


def test_large_tensors_are_keyed_off_the_loop_and_shared_across_encodings(
    wire_cluster: tuple[list[Server], Server],
) -> None:
    """Past the large-body bound, each encoding's key is derived off the event loop
    (a process for JSON, a thread for binary and gRPC): still one key."""
    _, balancer = wire_cluster
    assert balancer.grpc is not None
    data = np.random.default_rng(5).standard_normal((1, 100_000)).astype(np.float32)
    req = InferRequest([Tensor("input", "FP32", data.shape, data)], id="big")
    first = grpc_infer(balancer.grpc, "identity-wide", req)
    assert first.cache == "miss" and np.array_equal(_outputs(first)["output"], data)
    assert first.response.id == "big"
    for again in (rest_binary(balancer.url, "identity-wide", req), rest_json(balancer.url, "identity-wide", req)):
        assert again.cache == "hit" and np.array_equal(_outputs(again)["output"], data)


def test_the_request_id_is_echoed_in_every_encoding(wire_cluster: tuple[list[Server], Server]) -> None:
    _, balancer = wire_cluster
    assert balancer.grpc is not None
    req = identity_request("INT32", seed=21)
    for request_id in ("a", "b-é"):
        req.id = request_id
        answers = [
            rest_json(balancer.url, "identity-int32", req),
            rest_binary(balancer.url, "identity-int32", req),
            grpc_infer(balancer.grpc, "identity-int32", req),
        ]
        assert [a.response.id for a in answers] == [request_id] * 3


def _grpc_code(target: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        grpc_call(target, body)
    return info.value.code(), info.value.details()


def test_errors_are_grpc_statuses_from_the_one_table(wire_cluster: tuple[list[Server], Server]) -> None:
    workers, balancer = wire_cluster
    good = identity_request("FP32", seed=3)
    wrong_type = InferRequest([Tensor("input", "INT32", (1, 4), np.zeros((1, 4), np.int32))])
    for target in (balancer.grpc, workers[0].grpc):
        assert target is not None
        code, details = _grpc_code(target, request_message(good, "no-such-model").SerializeToString())
        assert code == grpc.StatusCode.NOT_FOUND and "no-such-model" in details
        code, details = _grpc_code(target, request_message(wrong_type, "identity-fp32").SerializeToString())
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "datatype" in details
        huge = request_message(good, "identity-fp32")
        del huge.inputs[0].shape[:]
        huge.inputs[0].shape.extend([1 << 20, 1 << 20])
        code, details = _grpc_code(target, huge.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "elements" in details


def test_messages_over_the_grpc_limit_are_refused_clearly(wire_cluster: tuple[list[Server], Server]) -> None:
    workers, balancer = wire_cluster
    big = InferRequest([Tensor("input", "UINT8", (1, 5 << 20), np.zeros((1, 5 << 20), np.uint8))])
    body = request_message(big, "identity-uint8").SerializeToString()
    for target in (balancer.grpc, workers[0].grpc):
        assert target is not None
        code, details = _grpc_code(target, body)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details


def test_grpc_health_reports_serving(wire_cluster: tuple[list[Server], Server]) -> None:
    workers, balancer = wire_cluster
    for target in (balancer.grpc, workers[0].grpc):
        assert target is not None
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "inference.GRPCInferenceService"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_workers_report_their_grpc_port(wire_cluster: tuple[list[Server], Server]) -> None:
    workers, _ = wire_cluster
    for worker in workers:
        assert worker.grpc is not None
        meta = request(worker.url, "GET", "/v2").json()
        assert meta["grpc_port"] == int(worker.grpc.rpartition(":")[2])
        assert "binary_tensor_data" in meta["extensions"]


def test_a_worker_killed_during_a_grpc_burst_loses_no_call(wire_zoo: Path, logdir: Path) -> None:
    with private_cluster(wire_zoo, logdir, 3, "--policy", "consistent") as (workers, balancer):
        assert balancer.grpc is not None
        target = balancer.grpc
        owner = grpc_infer(target, "identity-fp32", identity_request("FP32", seed=0)).served_by
        victim = next(w for w in workers if w.id == owner)
        bodies = [
            request_message(identity_request("FP32", seed=s), "identity-fp32").SerializeToString() for s in range(80)
        ]
        served: list[str] = []

        async def burst() -> list[object]:
            async with grpc.aio.insecure_channel(target) as channel:
                infer = channel.unary_unary(INFER)
                gate = asyncio.Semaphore(8)

                async def one(body: bytes) -> object:
                    async with gate:
                        call = infer(body, timeout=60, metadata=(("cache-control", "no-cache"),))
                        await call
                        trailing = dict(await call.trailing_metadata() or ())
                        served.append(trailing["x-served-by"])
                        if len(served) == 20:
                            victim.proc.kill(signal.SIGKILL)
                        return trailing

                return await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True)

        results = asyncio.run(burst())
        failures = [r for r in results if isinstance(r, BaseException)]
        assert not failures, failures[:3]
        assert not victim.proc.alive()
        assert served[:20].count(owner) == 20, "the burst went to the model's owner until it died"
        assert owner not in served[28:], "after the kill, the survivors answered"


def test_the_balancers_grpc_tries_map_to_the_routers_outcomes(wire_cluster: tuple[list[Server], Server]) -> None:
    """An answer, a worker's own error (its REST status, from the trailing metadata),
    a try that reaches its deadline (a peer that never answers) and a worker that is
    not there, as the router sees them."""
    from balancer.errors import UpstreamError
    from balancer.grpc_client import GrpcUpstream
    from tests.harness import free_port

    workers, _ = wire_cluster
    target = workers[0].grpc
    good = request_message(identity_request("INT16", seed=8), "identity-int16").SerializeToString()
    missing = request_message(identity_request("INT16", seed=8), "no-such-model").SerializeToString()

    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)

    async def main() -> list[object]:
        client = GrpcUpstream(4 << 20)
        outcomes: list[object] = []
        try:
            for body, where, timeout in (
                (good, target, 30.0),
                (missing, target, 30.0),
                (good, f"127.0.0.1:{silent.getsockname()[1]}", 0.5),
                (good, f"127.0.0.1:{free_port()}", 30.0),
            ):
                try:
                    outcomes.append(await client.infer(where, body, timeout))
                except UpstreamError as exc:
                    outcomes.append(exc.kind)
        finally:
            await client.close()
        return outcomes

    try:
        answer, not_found, late, absent = asyncio.run(main())
    finally:
        silent.close()
    assert answer.status == 200 and answer.headers["X-Model-Source"] in ("cpu", "disk")  # type: ignore[attr-defined]
    assert not_found.status == 404 and b"no-such-model" in not_found.body  # type: ignore[attr-defined]
    assert late == "timeout"
    assert absent in ("connect", "reset")
