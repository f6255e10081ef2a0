"""The memory manager over real zoo models: one load per cold model, budgets,
eviction order, demotion, pins, leases, failures, and the GPU tier's code path
on the stand-in device."""

from __future__ import annotations

import asyncio
import gc
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from common.metrics import Registry
from protocol.errors import ModelTooLarge, ModelUnavailable, NotFound, Overloaded
from tests.memory_fixtures import CountingPager, ScriptedClock, repository, run, sizes
from tests.metrics_text import metric_sum
from tests.reference import run_reference, sample_inputs
from worker.device import StandInDevice
from worker.memory import MemoryConfig, MemoryManager
from worker.memory_metrics import MemoryMetrics
from worker.model_config import ModelConfig
from worker.onnx_pager import available as onnx_available
from worker.paging import run_on
from worker.runner import LoadedModel
from worker.warmup import warm_up_process

MLP, CNN, TRANSFORMER, LOGREG = ("mlp-00", "1"), ("cnn-01", "1"), ("transformer-02", "1"), ("logreg-03", "1")


class Events:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.loads: list[str] = []
        self.evictions: list[str] = []

    def loaded(self, key: tuple[str, str], tier: str, seconds: float) -> None:
        self.loads.append(tier)

    def evicted(self, key: tuple[str, str], tier: str) -> None:
        self.evictions.append(tier)


def _manager(
    zoo: Path,
    cpu: int,
    gpu: int = 0,
    eviction: str = "lru",
    pager: CountingPager | None = None,
    device: StandInDevice | None = None,
    observer: Events | MemoryMetrics | None = None,
    clock: ScriptedClock | None = None,
    max_loads: int = 1,
) -> MemoryManager[LoadedModel]:
    config = MemoryConfig(cpu_budget=cpu, gpu_budget=gpu, eviction=eviction, max_loads=max_loads, wait_timeout=5)
    return MemoryManager(
        config, pager or CountingPager(), repository(zoo), device=device, observer=observer,
        **({"clock": clock} if clock else {}),
    )  # fmt: skip


def _resident(manager: MemoryManager[LoadedModel], tier: str) -> list[str]:
    snap = manager.snapshot().tier(tier)
    assert snap is not None
    return sorted(m.name for m in snap.models)


def _check_budgets(manager: MemoryManager[LoadedModel]) -> None:
    for tier in manager.snapshot().tiers:
        assert tier.used + tier.reserved <= tier.budget
        assert tier.used == sum(m.bytes for m in tier.models if not m.loading)


def test_fifty_concurrent_acquires_of_a_cold_model_load_it_once(zoo: Path) -> None:
    pager = CountingPager()

    async def main() -> None:
        manager = _manager(zoo, cpu=8 << 20, pager=pager)
        leases = await asyncio.gather(*(manager.acquire(CNN) for _ in range(50)))
        assert pager.loads == {CNN: 1}
        assert {id(lease.model) for lease in leases} == {id(leases[0].model)}
        assert {lease.source for lease in leases} == {"disk"}
        [cpu] = manager.snapshot().tiers
        assert [(m.name, m.refs) for m in cpu.models] == [("cnn-01", 50)]
        for lease in leases:
            lease.release()
            lease.release()  # a second release is a no-op
        assert manager.snapshot().tiers[0].models[0].refs == 0
        # Resident now: the hot path leases it without an await.
        hot = manager.try_acquire(CNN)
        assert hot is not None and hot.source == "cpu" and hot.tier == "cpu"
        hot.release()
        await manager.close()

    run(main)


def test_concurrent_cold_models_each_load_once_within_the_load_limit(zoo: Path) -> None:
    pager = CountingPager()
    keys = [MLP, CNN, TRANSFORMER, LOGREG]

    async def main() -> None:
        manager = _manager(zoo, cpu=8 << 20, pager=pager, max_loads=2)
        leases = await asyncio.gather(*(manager.acquire(keys[i % 4]) for i in range(40)))
        assert pager.loads == dict.fromkeys(keys, 1)
        for lease in leases:
            lease.release()
        await manager.close()

    run(main)


def test_leased_models_answer_like_the_reference(zoo: Path) -> None:
    async def main() -> None:
        device = StandInDevice()
        manager = _manager(zoo, cpu=8 << 20, gpu=8 << 20, device=device)
        for key in (MLP, CNN, TRANSFORMER, LOGREG):
            inputs = [a for _, _, a in sample_inputs(zoo, key[0], 3, seed=5)]
            with await manager.acquire(key) as lease:
                assert lease.tier == "gpu" and lease.device is device
                got = run_on(lease.model, inputs, lease.device)
            np.testing.assert_allclose(got[0], run_reference(zoo, key[0], inputs)[0], rtol=1e-5, atol=1e-6)
        await manager.close()

    run(main)


def test_lru_and_gds_choose_different_victims_on_one_trace(zoo: Path) -> None:
    size = sizes(zoo)
    budget = size["mlp-00"] + size["cnn-01"] + size["transformer-02"] - 1  # one of them must go
    # Reload costs in (scripted) seconds: the CNN is cheap to bring back for its size.
    costs = {"mlp-00": 1.0, "cnn-01": 0.01, "transformer-02": 1.0}

    def trace(eviction: str) -> list[str]:
        async def main() -> list[str]:
            clock = ScriptedClock()
            manager = _manager(zoo, cpu=budget, eviction=eviction, pager=CountingPager(clock, costs), clock=clock)
            for key in (MLP, CNN):
                (await manager.acquire(key)).release()
            (await manager.acquire(TRANSFORMER)).release()
            _check_budgets(manager)
            left = _resident(manager, "cpu")
            await manager.close()
            return left

        return run(main)

    assert trace("lru") == ["cnn-01", "transformer-02"]  # the least recently used went: mlp
    assert trace("gds") == ["mlp-00", "transformer-02"]  # the lowest cost per byte went: cnn


def test_gpu_eviction_demotes_to_cpu_before_dropping(zoo: Path) -> None:
    size = sizes(zoo)
    events = Events()
    device = StandInDevice()
    pager = CountingPager()

    async def main() -> None:
        # The GPU holds one of mlp/cnn, the CPU both.
        gpu, cpu = size["cnn-01"] + 1, size["cnn-01"] + size["mlp-00"]
        manager = _manager(zoo, cpu=cpu, gpu=gpu, device=device, observer=events, pager=pager)
        (await manager.acquire(MLP)).release()
        assert _resident(manager, "gpu") == ["mlp-00"]
        (await manager.acquire(CNN)).release()
        # mlp was demoted (the CPU had room), not dropped: no reload, its mapping kept
        assert _resident(manager, "gpu") == ["cnn-01"] and _resident(manager, "cpu") == ["mlp-00"]
        assert events.evictions == ["gpu"] and pager.loads[MLP] == 1
        gc.collect()
        assert device.live_bytes() == size["cnn-01"]  # mlp's device copy was freed

        # Asked again, mlp comes back up from the CPU (one copy, no load from disk),
        # and cnn goes down to the CPU in its place.
        lease = await manager.acquire(MLP)
        assert (lease.source, lease.tier) == ("cpu", "gpu") and pager.loads[MLP] == 1 and pager.copies[MLP] == 2
        lease.release()
        assert _resident(manager, "gpu") == ["mlp-00"] and _resident(manager, "cpu") == ["cnn-01"]
        assert events.loads == ["disk", "disk", "cpu"]
        _check_budgets(manager)
        await manager.close()

        # With no room on the CPU, a GPU victim is dropped: the next use reloads it from disk.
        pager.loads.clear()
        manager = _manager(zoo, cpu=size["mlp-00"], gpu=gpu, device=device, observer=events, pager=pager)
        (await manager.acquire(CNN)).release()
        (await manager.acquire(MLP)).release()
        assert _resident(manager, "gpu") == ["mlp-00"] and _resident(manager, "cpu") == []
        lease = await manager.acquire(CNN)
        assert (lease.source, pager.loads[CNN]) == ("disk", 2)
        lease.release()
        _check_budgets(manager)
        await manager.close()

    run(main)


def test_gpu_tier_counts_transfers_on_the_stand_in_device(zoo: Path) -> None:
    size = sizes(zoo)
    device = StandInDevice()

    async def main() -> None:
        manager = _manager(zoo, cpu=8 << 20, gpu=8 << 20, device=device)
        lease = await manager.acquire(TRANSFORMER)
        assert lease.tier == "gpu"
        model = lease.model
        tensors = len(model.module.state_dict())
        counts = device.counts
        # one host-to-device copy per weight tensor, plus the warm-up's one input; one output back
        assert counts.allocations == tensors + 1
        assert counts.host_to_device == tensors + 1
        assert counts.allocated_bytes >= size["transformer-02"]
        assert counts.host_to_device_bytes == counts.allocated_bytes
        assert counts.device_to_host == 1
        # every weight the model serves with lives in device memory (the warm-up's tensors are gone)
        gc.collect()
        assert device.live_bytes() == size["transformer-02"]
        lease.release()
        assert await manager.unload(TRANSFORMER)
        del lease, model
        gc.collect()
        assert device.live_bytes() == 0
        await manager.close()

    run(main)


def test_a_model_in_use_is_never_evicted_and_room_waits_for_a_release(zoo: Path) -> None:
    size = sizes(zoo)

    async def main() -> None:
        manager = _manager(zoo, cpu=size["transformer-02"] + size["mlp-00"])
        held = await manager.acquire(TRANSFORMER)
        # cnn needs transformer's room, but it is in use: the acquire gives up at its deadline
        with pytest.raises(Overloaded):
            await manager.acquire(CNN, max_wait=0.05)
        assert _resident(manager, "cpu") == ["transformer-02"]
        _check_budgets(manager)
        # a waiting acquire proceeds as soon as the model is released
        waiting = asyncio.ensure_future(manager.acquire(CNN, max_wait=10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        held.release()
        lease = await waiting
        assert _resident(manager, "cpu") == ["cnn-01"]
        lease.release()
        await manager.close()

    run(main)


def test_pinned_models_stay(zoo: Path) -> None:
    size = sizes(zoo)

    async def main() -> None:
        manager = _manager(zoo, cpu=size["mlp-00"] + size["cnn-01"] + size["transformer-02"] - 1)
        manager.pin(MLP)
        for key in (MLP, CNN, TRANSFORMER, CNN, TRANSFORMER):
            (await manager.acquire(key)).release()
        assert "mlp-00" in _resident(manager, "cpu")
        assert [m.pinned for m in manager.snapshot().tiers[0].models if m.name == "mlp-00"] == [True]
        manager.unpin(MLP)
        (await manager.acquire(CNN)).release()
        (await manager.acquire(TRANSFORMER)).release()
        assert "mlp-00" not in _resident(manager, "cpu")
        await manager.close()

    run(main)


def test_a_model_whose_config_says_pinned_stays(zoo: Path, tmp_path: Path) -> None:
    size = sizes(zoo)
    for name in ("mlp-00", "cnn-01"):
        shutil.copytree(zoo / name, tmp_path / name)
    config = orjson.loads((tmp_path / "mlp-00/1/config.json").read_bytes())
    assert ModelConfig.from_json(config).pinned is False
    (tmp_path / "mlp-00/1/config.json").write_bytes(orjson.dumps({**config, "pinned": True}))

    async def main() -> None:
        manager = _manager(tmp_path, cpu=max(size["mlp-00"], size["cnn-01"]))  # room for one
        (await manager.acquire(MLP)).release()
        with pytest.raises(Overloaded):
            await manager.acquire(CNN, max_wait=0.05)
        manager.unpin(MLP)  # the API overrides the config until the next load
        (await manager.acquire(CNN)).release()
        assert _resident(manager, "cpu") == ["cnn-01"]
        await manager.close()

    run(main)


def test_a_model_larger_than_every_memory_budget_is_507(zoo: Path) -> None:
    size = sizes(zoo)

    async def main() -> None:
        manager = _manager(zoo, cpu=size["logreg-03"] - 1, gpu=size["logreg-03"] - 1, device=StandInDevice())
        with pytest.raises(ModelTooLarge, match="disk is where it waits") as caught:
            await manager.acquire(LOGREG)
        assert caught.value.status == 507
        # a model too big for the GPU tier alone runs from the CPU
        manager2 = _manager(zoo, cpu=size["logreg-03"], gpu=size["logreg-03"] - 1, device=StandInDevice())
        lease = await manager2.acquire(LOGREG)
        assert lease.tier == "cpu"
        assert manager2.try_acquire(LOGREG) is not None  # no promotion to wait for: it never fits the GPU
        lease.release()
        for m in (manager, manager2):
            _check_budgets(m)
            await m.close()

    run(main)


def test_a_failed_load_is_500_with_the_reason_and_leaves_no_trace(zoo: Path) -> None:
    events = Events()

    async def main() -> None:
        manager = _manager(zoo, cpu=8 << 20, observer=events)
        for _ in range(2):  # a later request tries again, and fails the same way
            with pytest.raises(ModelUnavailable) as caught:
                await manager.acquire(("broken", "1"))
            assert caught.value.status == 500 and "safetensors" in caught.value.message
        assert "safetensors" in (manager.failure(("broken", "1")) or "")
        with pytest.raises(NotFound):
            await manager.acquire(("no-such-model", "1"))
        assert manager.snapshot().tiers[0].used == 0 and manager.snapshot().tiers[0].reserved == 0
        (await manager.acquire(MLP)).release()  # the manager keeps serving other models
        assert events.loads == ["disk"]
        await manager.close()

    run(main)


def test_unload_drops_now_or_at_the_last_release(zoo: Path) -> None:
    pager = CountingPager()

    async def main() -> None:
        manager = _manager(zoo, cpu=8 << 20, pager=pager)
        (await manager.acquire(MLP)).release()
        assert await manager.unload(MLP)
        assert manager.residency(MLP) is None
        assert not await manager.unload(MLP)

        held = await manager.acquire(MLP)
        assert await manager.unload(MLP)
        assert manager.residency(MLP) == "cpu"  # still serving its lease
        assert manager.try_acquire(MLP) is None  # but takes no new ones
        again = asyncio.ensure_future(manager.acquire(MLP))
        await asyncio.sleep(0.02)
        assert not again.done()
        held.release()  # dropped now; the waiting acquire loads it afresh
        lease = await again
        assert pager.loads[MLP] == 3 and lease.model is not held.model
        lease.release()
        await manager.close()

    run(main)


def test_metrics_observer_counts_loads_evictions_and_bytes(zoo: Path) -> None:
    size = sizes(zoo)
    registry = Registry()
    metrics = MemoryMetrics(registry)

    async def main() -> None:
        manager = _manager(zoo, cpu=size["cnn-01"], gpu=size["cnn-01"], device=StandInDevice(), observer=metrics)
        metrics.read_bytes_from(manager.tier_bytes)
        (await manager.acquire(MLP)).release()
        (await manager.acquire(CNN)).release()  # mlp demoted to the CPU
        text = registry.render().decode()
        assert metric_sum(text, "affinity_model_loads_total", tier="disk") == 2
        assert metric_sum(text, "affinity_model_evictions_total", tier="gpu") == 1
        assert metric_sum(text, "affinity_model_load_seconds_count") == 2
        assert metric_sum(text, "affinity_memory_bytes", tier="cpu", kind="used") == size["mlp-00"]
        assert metric_sum(text, "affinity_memory_bytes", tier="gpu", kind="budget") == size["cnn-01"]
        await manager.close()

    run(main)


def test_process_warm_up_loads_every_architecture_through_the_pager() -> None:
    device = StandInDevice()
    spent = warm_up_process(device)
    runtimes = {"onnxruntime"} if onnx_available() else set()  # its import, paid at start too
    assert set(spent) == {"mlp", "cnn", "transformer", "logreg", "identity"} | runtimes
    assert device.counts.host_to_device > 0
