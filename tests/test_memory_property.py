"""Property: under any interleaving of acquire, release, try_acquire, unload and
pin with random model sizes and budgets, no tier ever holds more than its budget
(loads in flight included) and no model under lease is evicted.

The models are real safetensors files of random sizes, loaded (memory-mapped)
through a pager for plain tensor files and copied to the stand-in device for
the GPU tier, so accounting is checked against real loads running in threads.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from protocol.errors import ModelTooLarge, Overloaded
from tests.memory_fixtures import run
from worker.device import Device, StandInDevice
from worker.memory import Lease, MemoryConfig, MemoryManager
from worker.paging import Key
from worker.weights import read_weights_info

Tensors = dict[str, torch.Tensor]
KIB = 1024


class TensorFilePager:
    """A pager for a bare safetensors file: its mapped tensors are the model."""

    def weights_bytes(self, key: Key, directory: Path) -> int:
        return read_weights_info(directory / "model.safetensors").tensor_bytes

    def load(self, key: Key, directory: Path) -> Tensors:
        return load_file(directory / "model.safetensors")

    def to_device(self, key: Key, model: Tensors, device: Device) -> Tensors:
        return {name: device.copy_in(t) for name, t in model.items()}

    def warm_up(self, key: Key, model: Tensors, device: Device | None) -> None:
        for tensor in model.values():
            tensor.sum()  # touch every page where the model will serve

    def pinned(self, model: Tensors) -> bool:
        return False

    def device_capable(self, key: Key, directory: Path) -> bool:
        return True


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Model directories by size in KiB (1..48), each a real safetensors file."""
    root = tmp_path_factory.mktemp("sized")
    made = {}
    for kib in range(1, 49):
        path = root / f"m{kib}" / "1"
        path.mkdir(parents=True)
        save_file({"w": torch.zeros(kib * KIB // 4), "b": torch.ones(3)}, str(path / "model.safetensors"))
        made[kib] = path
    return made


# Acquires and releases dominate, as in service; steps let loads in threads interleave.
OPS = ["acquire"] * 5 + ["release"] * 3 + ["step"] * 2 + ["try", "unload", "pin", "unpin"]
ops = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 59)), min_size=10, max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model_kib=st.lists(st.integers(1, 48), min_size=6, max_size=6),
    cpu_kib=st.integers(16, 200),
    gpu_kib=st.sampled_from([0, 24, 48, 100]),
    eviction=st.sampled_from(["lru", "gds"]),
    max_loads=st.integers(1, 3),
    script=ops,
)
def test_no_tier_exceeds_its_budget_and_no_leased_model_is_evicted(
    files: dict[int, Path],
    model_kib: list[int],
    cpu_kib: int,
    gpu_kib: int,
    eviction: str,
    max_loads: int,
    script: list[tuple[str, int]],
) -> None:
    keys: list[Key] = [(f"m{kib}", "1") for kib in model_kib]
    directories = {(f"m{kib}", "1"): files[kib] for kib in model_kib}

    async def main() -> None:
        config = MemoryConfig(
            cpu_budget=cpu_kib * KIB,
            gpu_budget=gpu_kib * KIB,
            eviction=eviction,
            max_loads=max_loads,
            wait_timeout=0.02,
        )
        device = StandInDevice() if gpu_kib else None
        manager: MemoryManager[Tensors] = MemoryManager(config, TensorFilePager(), directories.get, device=device)
        held: list[Lease[Tensors]] = []
        tasks: set[asyncio.Task[None]] = set()

        def check() -> None:
            snapshot = manager.snapshot()
            refs: Counter[Key] = Counter()
            for tier in snapshot.tiers:
                assert tier.used + tier.reserved <= tier.budget, tier
                assert tier.used == sum(m.bytes for m in tier.models if not m.loading)
                for m in tier.models:
                    if not m.loading:
                        refs[(m.name, m.version)] += m.refs
            # Every lease still held is on a resident model, and no eviction-and-reload
            # happened behind its back (the resident's count would not match).
            leased = Counter(lease.key for lease in held)
            assert refs == leased
            for lease in held:
                assert manager.residency(lease.key) is not None

        async def acquire(key: Key) -> None:
            try:
                held.append(await manager.acquire(key))
            except (Overloaded, ModelTooLarge):
                pass

        for op, arg in script:
            if op == "acquire":
                task = asyncio.ensure_future(acquire(keys[arg % len(keys)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif op == "try":
                lease = manager.try_acquire(keys[arg % len(keys)])
                if lease is not None:
                    held.append(lease)
            elif op == "release" and held:
                held.pop(arg % len(held)).release()
            elif op == "unload":
                task = asyncio.ensure_future(_unload(manager, keys[arg % len(keys)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif op == "pin":
                manager.pin(keys[arg % len(keys)])
            elif op == "unpin":
                manager.unpin(keys[arg % len(keys)])
            elif op == "step":
                for _ in range(arg % 5 + 1):
                    await asyncio.sleep(0.001)
                    check()
            check()
        for lease in held:
            lease.release()
        held.clear()
        while tasks:
            await asyncio.gather(*tasks)
            check()
        for lease in held:
            lease.release()
        held.clear()
        check()
        await manager.close()

    run(main, timeout=30)


async def _unload(manager: MemoryManager[Tensors], key: Key) -> None:
    await manager.unload(key)
