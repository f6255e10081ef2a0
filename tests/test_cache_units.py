"""Cache pure logic: keys, the byte-bounded LRU, the circuit breaker, the entry format."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from cache.breaker import CircuitBreaker
from cache.entry import CachedAnswer
from cache.keys import cache_key, canonical_request
from cache.lru import ByteLRU

BASE: dict[str, Any] = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}],
    "outputs": [{"name": "y"}],
    "parameters": {"temperature": 1},
}


def _key(model: str = "m", version: str = "1", request: dict[str, Any] = BASE, namespace: str = "") -> str:
    return cache_key(model, version, canonical_request(request), namespace)


def test_id_is_not_part_of_the_key() -> None:
    assert _key(request={**BASE, "id": "a"}) == _key(request={**BASE, "id": "b"}) == _key()


def test_member_order_is_not_part_of_the_key() -> None:
    reordered = {"parameters": BASE["parameters"], "outputs": BASE["outputs"], "inputs": BASE["inputs"]}
    assert _key(request=reordered) == _key()


CHANGES = {
    "data": lambda r: r["inputs"][0].update(data=[1.0, 2.5]),
    "shape": lambda r: r["inputs"][0].update(shape=[2, 1]),
    "datatype": lambda r: r["inputs"][0].update(datatype="FP64"),
    "name": lambda r: r["inputs"][0].update(name="z"),
    "outputs": lambda r: r.update(outputs=[{"name": "w"}]),
    "parameters": lambda r: r.update(parameters={"temperature": 2}),
}


@given(st.sampled_from(sorted(CHANGES)))
def test_any_bound_field_changes_the_key(field: str) -> None:
    import copy

    changed = copy.deepcopy(BASE)
    CHANGES[field](changed)
    assert _key(request=changed) != _key()


@given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_fields_cannot_collide_by_shifting_bytes(a: str, b: str, c: str, d: str) -> None:
    if (a, b) != (c, d):
        assert _key(model=a, version=b) != _key(model=c, version=d)
        assert _key(model=a, namespace=b) != _key(model=c, namespace=d)


def test_key_keeps_the_model_readable() -> None:
    assert _key(model="mlp-00").startswith("affinity:v1:mlp-00:")


class Blob:
    def __init__(self, size: int) -> None:
        self.size = size


@given(st.integers(1, 500), st.lists(st.tuples(st.integers(0, 20), st.integers(0, 200)), max_size=200))
def test_lru_never_exceeds_its_capacity(capacity: int, ops: list[tuple[int, int]]) -> None:
    lru: ByteLRU[Blob] = ByteLRU(capacity)
    for key, size in ops:
        stored = lru.put(str(key), Blob(size))
        assert stored == (size <= capacity)
        assert lru.used <= capacity
        held = [lru.get(str(k)) for k in range(21)]
        assert lru.used == sum(b.size for b in held if b is not None), "the byte count is what it holds"


def test_lru_evicts_least_recently_used() -> None:
    lru: ByteLRU[Blob] = ByteLRU(30)
    lru.put("a", Blob(10))
    lru.put("b", Blob(10))
    lru.put("c", Blob(10))
    assert lru.get("a") is not None  # a is now the most recent
    lru.put("d", Blob(10))
    assert lru.get("b") is None
    assert all(lru.get(k) is not None for k in "acd")


def test_breaker_opens_then_probes_then_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    now[0] = 10.0
    assert breaker.state == "half-open"
    assert breaker.allow()
    assert not breaker.allow(), "only one probe at a time"
    breaker.failure()
    assert breaker.state == "open"
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow()


def test_cached_answer_round_trip() -> None:
    answer = CachedAnswer(b'{"outputs":[]}', "127.0.0.1:8100")
    assert CachedAnswer.from_bytes(answer.to_bytes()) == answer
