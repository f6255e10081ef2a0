"""Cache pure logic: keys, the byte-bounded LRU, the circuit breaker, the entry format."""

from __future__ import annotations

import copy
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.breaker import CircuitBreaker
from cache.entry import CachedAnswer, InvalidEntry
from cache.keys import KeyMemo, KeyScope, json_key_request, key_from_json_body, key_request, typed_key
from cache.lru import ByteLRU
from protocol.errors import BadRequest

BASE: dict[str, Any] = {
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.5, -4.0]},
        {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]},
    ],
    "outputs": [{"name": "y"}],
    "parameters": {"temperature": 1},
}


def _key(
    request: dict[str, Any] = BASE,
    model: str = "m",
    version: str = "1",
    weights: str = "w0",
    namespace: str = "",
) -> str:
    return typed_key(KeyScope(model, version, weights, namespace), json_key_request(request))


def test_id_is_not_part_of_the_key() -> None:
    assert _key({**BASE, "id": "a"}) == _key({**BASE, "id": "b"}) == _key()


def test_member_and_input_order_are_not_part_of_the_key() -> None:
    reordered = {"parameters": BASE["parameters"], "outputs": BASE["outputs"], "inputs": BASE["inputs"][::-1]}
    assert _key(reordered) == _key()


def _nested(data: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) <= 1:
        return data
    step = len(data) // shape[0]
    return [_nested(data[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


@settings(max_examples=60)
@given(
    st.sampled_from(["FP16", "FP32", "FP64"]),
    st.lists(st.integers(-1000, 1000), min_size=1, max_size=24),
    st.data(),
)
def test_equal_tensors_in_any_json_form_give_one_key(datatype: str, ints: list[int], data: st.DataObject) -> None:
    """Nested or flat, 1 or 1.0, whatever the whitespace: the same typed tensor, the same key."""
    n = len(ints)
    rows = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    shape = [rows, n // rows]
    flat = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": ints}]}
    as_floats = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": [float(v) for v in ints]}]}
    nested = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": _nested(ints, shape)}]}
    scope = KeyScope("m", "1", "w0")
    keys = {_key(flat), _key(as_floats), _key(nested)}
    pretty = orjson.dumps(nested, option=orjson.OPT_INDENT_2)
    keys.add(key_from_json_body(pretty, scope)[0])
    assert len(keys) == 1


def test_large_bodies_key_by_content_in_any_form() -> None:
    values = [(i % 977) / 8 for i in range(300_000)]  # ~2.5 MB of JSON
    shape = [600, 500]
    flat = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": values}]})
    nested = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": _nested(values, shape)}]}
    )
    scope = KeyScope("m", "1", "w")
    assert key_from_json_body(flat, scope) == key_from_json_body(nested, scope)
    changed = values.copy()
    changed[-1] += 1
    other = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": changed}]})
    assert key_from_json_body(other, scope) != key_from_json_body(flat, scope)


CHANGES = {
    "data": lambda r: r["inputs"][0].update(data=[1.0, 2.0, 3.5, -4.5]),
    "bytes data": lambda r: r["inputs"][1].update(data=["a", "bc"]),
    "shape": lambda r: r["inputs"][0].update(shape=[4, 1]),
    "datatype": lambda r: r["inputs"][0].update(datatype="FP64"),
    "name": lambda r: r["inputs"][0].update(name="z"),
    "input parameters": lambda r: r["inputs"][0].update(parameters={"scale": 2}),
    "outputs": lambda r: r.update(outputs=[{"name": "w"}]),
    "all outputs": lambda r: r.pop("outputs"),
    "output parameters": lambda r: r.update(outputs=[{"name": "y", "parameters": {"classification": 2}}]),
    "parameters": lambda r: r.update(parameters={"temperature": 2}),
}
ENCODING_ONLY = {
    "binary output": lambda r: r.update(parameters={**r["parameters"], "binary_data_output": True}),
    "binary output tensor": lambda r: r.update(outputs=[{"name": "y", "parameters": {"binary_data": True}}]),
}


@given(st.sampled_from(sorted(CHANGES)))
def test_any_answer_changing_field_changes_the_key(field: str) -> None:
    changed = copy.deepcopy(BASE)
    CHANGES[field](changed)
    assert _key(changed) != _key()


@given(st.sampled_from(sorted(ENCODING_ONLY)))
def test_encoding_choices_do_not_change_the_key(field: str) -> None:
    changed = copy.deepcopy(BASE)
    ENCODING_ONLY[field](changed)
    assert _key(changed) == _key()


def test_a_binary_request_keys_like_its_json_twin() -> None:
    """The same tensors as binary data (binary_data_size, raw bytes after the
    header) reach the JSON request's key."""
    binary = copy.deepcopy(BASE)
    raw_x = struct.pack("<4f", 1.0, 2.0, 3.5, -4.0)
    raw_t = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    for tensor, raw in zip(binary["inputs"], (raw_x, raw_t), strict=True):
        del tensor["data"]
        tensor["parameters"] = {"binary_data_size": len(raw)}
    key = typed_key(KeyScope("m", "1", "w0"), key_request(binary, memoryview(raw_x + raw_t)))
    assert key == _key()
    with pytest.raises(BadRequest, match="belong to no tensor"):
        key_request(binary, memoryview(raw_x + raw_t + b"!"))
    with pytest.raises(BadRequest, match="runs past"):
        key_request(binary, memoryview(raw_x + raw_t[:-1]))


@given(st.sampled_from(["model", "version", "weights", "namespace"]), st.text(min_size=1, max_size=8))
def test_scope_changes_the_key(field: str, value: str) -> None:
    scope = {"model": "m", "version": "1", "weights": "w0", "namespace": ""}
    if scope[field] != value:
        assert _key(**{**scope, field: value}) != _key(**scope)


@given(st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_fields_cannot_collide_by_shifting_bytes(a: str, b: str, c: str, d: str) -> None:
    """Same model, so the readable prefix is equal: only the framing keeps these apart."""
    if (a, b) != (c, d):
        assert _key(version=a, weights=b) != _key(version=c, weights=d)
        assert _key(namespace=a, version=b) != _key(namespace=c, version=d)


def test_shifted_fields_are_told_apart_by_the_framing() -> None:
    assert _key(version="1", weights="2ab") != _key(version="12", weights="ab")
    two = {"inputs": [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [1]}]}
    assert _key(two, weights="") != _key(two, version="", weights="1")


def test_the_key_is_blake2b_over_length_framed_fields_whatever_scope_came_before() -> None:
    """The stored keys' format, computed here from its definition (cache/keys.py's
    docstring): a change to it would strand every answer already in Redis. Scopes are
    interleaved because each key continues a copy of its scope's digest."""
    from hashlib import blake2b

    def expected(model: str, weights: str) -> str:
        header = {"inputs": [["a", "UINT8", [1], None]], "outputs": None, "parameters": None}
        fields = [b"", model.encode(), b"1", weights.encode(), orjson.dumps(header, option=orjson.OPT_SORT_KEYS)]
        digest = blake2b(digest_size=16, person=b"affinity-key-v2")
        for part in [*fields, b"\x07"]:
            digest.update(struct.pack("<Q", len(part)) + part)
        return f"affinity:v2:{model}:{{{digest.hexdigest()}}}"

    one = {"inputs": [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [7]}]}
    for model, weights in [("m", "w0"), ("n", "w1"), ("m", "w0"), ("m", "w1"), ("n", "w1")]:
        assert _key(one, model=model, weights=weights) == expected(model, weights)


def test_the_key_keeps_the_model_readable_and_tags_its_digest() -> None:
    key = _key(model="mlp-00")
    assert key.startswith("affinity:v2:mlp-00:{") and key.endswith("}")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}]}, "shape needs 2"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}]}, "does not match"),
        ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}, "out of range"),
        ({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]}, "does not match"),
        ({"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]}, "does not match"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1.0], 2.0]}]}, "ragged"),
        ({"inputs": [{"name": "x", "datatype": "NOPE", "shape": [1], "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}, "shape"),
    ],
)
def test_malformed_requests_are_refused_while_keying(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        json_key_request(bad)


class Blob:
    def __init__(self, size: int) -> None:
        self.size = size


@given(st.integers(1, 500), st.lists(st.tuples(st.integers(0, 20), st.integers(0, 200)), max_size=200))
def test_lru_never_exceeds_its_capacity(capacity: int, ops: list[tuple[int, int]]) -> None:
    lru: ByteLRU[Blob] = ByteLRU(capacity)
    for key, size in ops:
        stored = lru.put(str(key), Blob(size))
        assert stored == (size + len(str(key)) <= capacity)
        assert lru.used <= capacity
        held = {str(k): lru.get(str(k)) for k in range(21)}
        assert lru.used == sum(b.size + len(k) for k, b in held.items() if b is not None), "it counts what it holds"


@given(
    st.integers(1, 500),
    st.integers(0, 40),
    st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 200)), max_size=200),
)
def test_lru_counts_keys_overhead_and_values_that_grow(
    capacity: int, overhead: int, ops: list[tuple[bool, int, int]]
) -> None:
    """Each item costs its value's size, its key's length and the overhead; a value
    that grows in place is counted again (``recount``) and the bound holds."""
    lru: ByteLRU[Blob] = ByteLRU(capacity, overhead)
    for grow, key, size in ops:
        name = str(key)
        held = lru.get(name)
        if grow and held is not None:
            held.size = size
            lru.recount(name)
        else:
            lru.put(name, Blob(size))
        assert lru.used <= capacity
        items = {k: lru.get(str(k)) for k in range(21)}
        assert lru.used == sum(b.size + len(str(k)) + overhead for k, b in items.items() if b is not None)


def test_a_cached_answer_counts_its_memoised_renderings() -> None:
    answer = CachedAnswer(b'{"outputs":[]}' * 10, "w1")
    alone = answer.size
    assert alone >= len(answer.body) + len(answer.hit_headers.raw)
    answer.renderings["same"] = (answer.body, 0)
    assert answer.size == alone, "a rendering that is the body itself costs nothing more"
    answer.renderings["other"] = (b"x" * 1000, 0)
    assert answer.size > alone + 1000


def test_lru_evicts_least_recently_used() -> None:
    lru: ByteLRU[Blob] = ByteLRU(33)  # three items of 10 bytes and a 1-byte key
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


@pytest.mark.parametrize(
    "raw",
    [
        b'{"outputs":[]}',  # not this format at all
        b"AF2\n" + b'["w:1","application/json",0]',  # no body
        b"AF2\n" + b'["w:1\\r\\nSet-Cookie: x=1","application/json",0]\n{"outputs":[]}',  # header injection
        b"AF2\n" + b'["w:1","text/html",0]\n{"outputs":[]}',  # a content type we never store
        b"AF2\n" + b'["w:1","application/json",0]\n<script>',  # a body that is not a JSON object
        b"AF2\n" + b'["w:1","application/json"]\n{"outputs":[]}',  # a header that does not parse
        b"AF2\n" + b"not json\n{}",
    ],
)
def test_a_hostile_or_corrupted_entry_is_refused(raw: bytes) -> None:
    with pytest.raises(InvalidEntry):
        CachedAnswer.from_bytes(raw)


def test_an_entry_keeps_its_expiry_across_processes() -> None:
    import time

    answer = CachedAnswer(b'{"outputs":[]}', "w:1", expires=time.monotonic() + 100)
    back = CachedAnswer.from_bytes(answer.to_bytes())
    assert abs(back.expires - answer.expires) < 1
    expired = CachedAnswer(b'{"outputs":[]}', "w:1", expires=time.monotonic() - 1)
    assert CachedAnswer.from_bytes(expired.to_bytes()).expired(time.monotonic())


def test_key_memo_digests_a_body_once_for_the_lookup_and_the_remembering(monkeypatch: pytest.MonkeyPatch) -> None:
    import cache.keys

    digests: list[int] = []
    real = cache.keys.blake2b

    def counted(data: bytes, **kwargs: Any) -> Any:
        digests.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(cache.keys, "blake2b", counted)
    memo = KeyMemo(inline_body=100)
    body = b"x" * 1000
    first = memo.ref(body)
    assert memo.ref(body) == first and len(digests) == 1, "the same request's body is digested once"
    twin = bytes(bytearray(body))  # equal bytes, another object: digested, and the same ref
    assert twin is not body and memo.ref(twin) == first and len(digests) == 2
    other = b"x" * 999 + b"y"
    assert memo.ref(other) != first and memo.ref(body) == first and len(digests) == 4
    memo.last_limit = 500  # a body past it is not kept alive to spare a second digest
    large = bytes(bytearray(body))
    assert memo.ref(large) == memo.ref(large) == first
    assert len(digests) == 6 and memo._last[0] is not large


def test_key_memo_remembers_bodies_without_ids() -> None:
    memo = KeyMemo(max_entries=3, inline_body=100)
    scope, other_version = KeyScope("m", "1", "w"), KeyScope("m", "2", "w")
    memo.put(scope, memo.ref(b"a"), "k1")
    assert memo.get(scope, memo.ref(b"a")) == "k1"
    assert memo.get(other_version, memo.ref(b"a")) is None, "the scope is part of the memo key"
    big, other = b"x" * 1000, b"x" * 999 + b"y"
    assert len(memo.ref(big)) <= 100, "large bodies are remembered by a digest, not kept whole"
    memo.put(scope, memo.ref(big), "k-big")
    assert memo.get(scope, memo.ref(big)) == "k-big"
    assert memo.get(scope, memo.ref(other)) is None, "large bodies are told apart by their digest"
    for body in (b"b", b"c", b"d"):
        memo.put(scope, memo.ref(body), body.decode())
    remembered = [memo.get(scope, memo.ref(b)) for b in (b"a", big, b"b", b"c", b"d")]
    assert sum(r is not None for r in remembered) <= 3, "a bound, not a policy"


def test_key_memo_is_bounded_in_bytes() -> None:
    memo = KeyMemo(max_entries=10_000, inline_body=4096, max_bytes=20_000)
    scope = KeyScope("m", "1", "w")
    bodies = [b"%d" % i * 500 for i in range(100)]  # 500-1,000 bytes each, kept whole
    for body in bodies:
        memo.put(scope, memo.ref(body), "k" * 64)
        assert memo.used <= 20_000
    assert sum(memo.get(scope, memo.ref(b)) is not None for b in bodies) < 40
    assert memo.get(scope, memo.ref(bodies[-1])) == "k" * 64, "the newest is remembered"


def test_the_key_process_derives_the_same_key_and_survives_its_own_death() -> None:
    import asyncio

    from cache.key_process import KeyProcess

    body = orjson.dumps({"id": "r9", **BASE})
    scope = KeyScope("m", "3", "w0", "tenant")
    expected = key_from_json_body(body, scope)
    assert expected[:2] == (_key(version="3", namespace="tenant"), "r9")

    async def main() -> None:
        keys = KeyProcess()
        await keys.start()
        assert await keys.derive(body, scope) == expected, "the same key as in this process"
        with pytest.raises(BadRequest, match="non-empty"):
            await keys.derive(b'{"inputs": []}', scope)
        assert keys._proc is not None
        keys._proc.kill()
        await keys._proc.wait()
        await asyncio.sleep(0.05)
        assert await keys.derive(body, scope) == expected, "a new process after the old one died"
        await keys.close()

    asyncio.run(main())
