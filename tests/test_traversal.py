"""A model name is an identifier, never a path: traversal names, over REST and gRPC,
against a worker and the balancer in front of it, open nothing outside the model
repository and the disk cache. Watched from inside the worker by an audit hook
(PEP 578) that records every file the process opens or lists under the test's
directory; a real model's load is the control that proves the hook sees opens."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protocol.grpc_service import inference_pb2 as pb
from tests.harness import Proc, Server, free_port, request, start_balancer
from tests.reference import infer_body, sample_inputs
from worker.zoo import make_zoo

# Records every opened or listed path under ROOT, normalised (so "repo/../outside" shows as "outside").
AUDITED = """
import os, sys
log_path, root = sys.argv[1], sys.argv[2]
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        full = os.path.normpath(os.path.abspath(path))
        if full.startswith(root) and full != log_path:
            with open(log_path, "a") as log:
                log.write(full + "\\n")
sys.addaudithook(hook)
from cli.main import main
sys.exit(main(sys.argv[3:]))
"""

NAMES = [
    "..",
    "%2e%2e",
    "..%2Foutside",
    "%2e%2e%2Foutside",
    "..%5Coutside",
    "outside",
    "repo%2F..%2Foutside",
    "%2Fetc%2Fpasswd",
    "outside%00",
    "." * 3,
]
ROUTES = ["", "/ready", "/config", "/stats", "/versions/1", "/versions/1/config"]
GRPC_NAMES = ["..", "../outside", "outside", "/etc/passwd", "repo/../../outside", "..\\outside", "outside\x00"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory, logdir: Path) -> Iterator[tuple[Server, Server, Path, Path]]:
    root = tmp_path_factory.mktemp("traversal").resolve()
    make_zoo(root / "repo", count=1, min_size=64 << 10, max_size=64 << 10)
    shutil.copytree(root / "repo" / "mlp-00", root / "outside")  # a valid model, one level up: the bait
    (root / "store").mkdir()
    audit = root / "opened.log"
    port, grpc_port = free_port(), free_port()
    args = ["--models", str(root / "repo"), "--remote-store", f"file://{root / 'store'}"]
    args += ["--disk-cache-dir", str(root / "cache"), "--port", str(port), "--grpc-port", str(grpc_port)]
    command = [sys.executable, "-c", AUDITED, str(audit), str(root), "worker", *args]
    proc = Proc(f"audited-{port}", command, logdir / f"audited-{port}.log").start()
    worker = Server(proc, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    balancer = None
    try:
        worker.wait_ready()
        balancer = start_balancer([worker], logdir).wait_ready()
        yield worker, balancer, root, audit
    finally:
        if balancer is not None:
            balancer.proc.stop()
        proc.stop()


def opened_outside(root: Path, audit: Path) -> list[str]:
    allowed = (str(root / "repo"), str(root / "cache"), str(root / "store"))
    lines = audit.read_text().splitlines() if audit.exists() else []
    return [p for p in lines if p != str(root) and not p.startswith(allowed)]


def test_traversal_names_open_nothing_outside_the_repository(watched: tuple[Server, Server, Path, Path]) -> None:
    worker, balancer, root, audit = watched
    body = infer_body(sample_inputs(root / "repo", "mlp-00", 1, 5))
    answers: dict[str, int] = {}
    for target in (worker, balancer):
        for name in NAMES:
            for route in ROUTES:
                answers[f"{target.url} GET {name}{route}"] = request(
                    target.url, "GET", f"/v2/models/{name}{route}"
                ).status
            answers[f"{target.url} infer {name}"] = request(target.url, "POST", f"/v2/models/{name}/infer", body).status
            for action in ("load", "unload"):
                answers[f"{target.url} {action} {name}"] = request(
                    target.url, "POST", f"/v2/repository/models/{name}/{action}", b"{}"
                ).status
        answers[f"{target.url} load version"] = request(
            target.url, "POST", "/v2/repository/models/mlp-00/load", {"parameters": {"version": "../../outside"}}
        ).status
        assert target.grpc is not None
        with grpc.insecure_channel(target.grpc) as channel:
            service = "/inference.GRPCInferenceService/"
            for name in GRPC_NAMES:
                calls = [
                    ("ModelMetadata", pb.ModelMetadataRequest(name=name)),
                    ("ModelReady", pb.ModelReadyRequest(name=name)),
                    ("ModelInfer", pb.ModelInferRequest(model_name=name, inputs=[pb.ModelInferRequest.InferInputTensor(
                        name="input", datatype="FP32", shape=[1, 64], contents=pb.InferTensorContents(
                            fp32_contents=[0.5] * 64))])),
                    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name)),
                    ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name)),
                ]  # fmt: skip
                for method, message in calls:
                    try:
                        channel.unary_unary(service + method)(message.SerializeToString(), timeout=10)
                        answers[f"{target.grpc} {method} {name!r}"] = 200
                    except grpc.RpcError as exc:
                        answers[f"{target.grpc} {method} {name!r}"] = {
                            grpc.StatusCode.INVALID_ARGUMENT: 400,
                            grpc.StatusCode.NOT_FOUND: 404,
                        }.get(exc.code(), 500)
    assert {k: v for k, v in answers.items() if v not in (400, 404)} == {}, "every traversal name refused"
    assert opened_outside(root, audit) == []

    # The control: a real model's load shows in the audit log, so the hook sees opens.
    assert request(balancer.url, "POST", "/v2/models/mlp-00/infer", body).status == 200
    opened = audit.read_text().splitlines()
    assert str(root / "repo" / "mlp-00" / "1" / "model.safetensors") in opened
    assert opened_outside(root, audit) == []
