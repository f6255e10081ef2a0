"""The gRPC proto and its committed stubs: regenerating gives no diff, and the
messages are wire-compatible with the official clients' own definitions.

Each client's generated ``inference.*`` messages and ours cannot share one
protobuf registry, so every descriptor is read in a subprocess of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocol.grpc_service.generate import GENERATED, ROOT, generate

DUMP = """
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
out = {}
def walk(msg):
    out[msg.full_name] = [
        [f.name, f.number, f.message_type.full_name if f.message_type else f.type, f.is_repeated,
         f.containing_oneof.name if f.containing_oneof else None]
        for f in msg.fields
    ]
    for nested in msg.nested_types:
        walk(nested)
for msg in module.DESCRIPTOR.message_types_by_name.values():
    walk(msg)
for service in module.DESCRIPTOR.services_by_name.values():
    out["service " + service.full_name] = {
        m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods
    }
print(json.dumps(out))
"""


def _descriptors(module: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", DUMP, module], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def test_regenerating_the_stubs_gives_no_diff(tmp_path: Path) -> None:
    generate(tmp_path)
    here = ROOT / "protocol" / "grpc_service"
    for name in GENERATED:
        fresh = tmp_path / "protocol" / "grpc_service" / name
        assert fresh.read_bytes() == (here / name).read_bytes(), f"{name} is stale: run `make stubs`"


def test_messages_match_tritonclients_definition_field_for_field() -> None:
    ours = _descriptors("protocol.grpc_service.inference_pb2")
    triton = _descriptors("tritonclient.grpc.service_pb2")
    messages = [name for name in ours if not name.startswith("service ")]
    assert "inference.ModelInferRequest" in messages and "inference.InferTensorContents" in messages
    for name in messages:
        assert ours[name] == triton[name], name
    service = "service inference.GRPCInferenceService"
    ours_methods = ours[service]
    assert isinstance(ours_methods, dict)
    theirs = triton[service]
    assert isinstance(theirs, dict)
    for method, types in ours_methods.items():
        assert theirs[method] == types, method


def test_inference_messages_match_kserves_definition() -> None:
    """KServe's proto has the same core messages (its InferParameter lacks
    Triton's double and uint64 choices; its repository calls differ)."""
    ours = _descriptors("protocol.grpc_service.inference_pb2")
    kserve = _descriptors("kserve.protocol.grpc.grpc_predict_v2_pb2")
    core = [n for n in kserve if n.startswith(("inference.Server", "inference.Model", "inference.InferTensor"))]
    assert "inference.ModelInferResponse.InferOutputTensor" in core
    for name in core:
        assert ours[name] == kserve[name], name
    assert ours["inference.InferParameter"][:3] == kserve["inference.InferParameter"]
