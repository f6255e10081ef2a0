"""Regenerate the gRPC stubs of ``inference.proto`` (``make stubs``).

    python -m protocol.grpc_service.generate [OUT_DIR]

runs grpcio-tools' protoc from the repository root, so the generated modules
import each other as ``protocol.grpc_service``. The stubs are committed; a test
regenerates them into a temporary directory and fails on any difference, so
the proto and its stubs never drift apart. The generator's version is pinned
in pyproject.toml (``grpcio-tools``): another version writes other bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "protocol/grpc_service/inference.proto"
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # a development dependency, imported only here

    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    args += [f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
