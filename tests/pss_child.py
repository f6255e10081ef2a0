"""A child process for the page-sharing test: load one model, touch every
weight, and report at each step (driven over stdin/stdout).

    python -m tests.pss_child <model dir> mapped|copied
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from worker.architectures import ARCHITECTURES
from worker.loader import read_config
from worker.paging import TorchPager


def main() -> None:
    directory, how = Path(sys.argv[1]), sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()
    if how == "mapped":  # the worker's path: mapped weights attached with assign=True
        module = TorchPager().load(("shared", "1"), directory).module
    else:  # the naive path: weights copied into the module's own memory
        config = read_config("shared", directory)
        module = ARCHITECTURES[config.architecture].build(config.args)
        module.load_state_dict(load_file(directory / "model.safetensors"))
    with torch.no_grad():
        total = sum(float(t.float().sum()) for t in module.state_dict().values())  # every page read
    print(f"loaded {total:.3f}", flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
