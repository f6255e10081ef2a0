"""Raw tensor bytes without numpy: the balancer's packing agrees with numpy's, for
every V2 datatype, so JSON, binary and gRPC requests meet on the same bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.datatypes import NUMPY_DTYPES
from protocol.errors import BadRequest
from protocol.packing import flatten, pack, unpack, unpack_bytes_elements

INTEGERS = {t: np.iinfo(NUMPY_DTYPES[t]) for t in NUMPY_DTYPES if NUMPY_DTYPES[t].kind in "iu"}


def _values(datatype: str) -> st.SearchStrategy[list[Any]]:
    if datatype in INTEGERS:
        info = INTEGERS[datatype]
        return st.lists(st.integers(int(info.min), int(info.max)), max_size=32)
    if datatype == "BOOL":
        return st.lists(st.booleans(), max_size=32)
    if datatype == "BYTES":
        return st.lists(st.text(max_size=12), max_size=16)
    width = {"FP16": 16, "FP32": 32, "FP64": 64}[datatype]
    return st.lists(st.floats(allow_nan=False, width=width), max_size=32)


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
@given(data=st.data())
def test_packing_matches_numpy_little_endian_bytes(datatype: str, data: st.DataObject) -> None:
    values = data.draw(_values(datatype))
    packed = pack(datatype, values, "x")
    if datatype == "BYTES":
        assert unpack_bytes_elements(packed, "x") == [v.encode() for v in values]
        return
    expected = np.asarray(values, dtype=NUMPY_DTYPES[datatype]).astype(NUMPY_DTYPES[datatype].newbyteorder("<"))
    assert packed == expected.tobytes()
    back = unpack(datatype, packed, "x")
    np.testing.assert_array_equal(np.asarray(back, dtype=NUMPY_DTYPES[datatype]), expected)


def test_fp16_past_its_range_is_infinity_as_numpy_casts_it() -> None:
    assert pack("FP16", [70000.0, -1e6], "x") == np.asarray([np.inf, -np.inf], np.float16).tobytes()
    assert pack("FP16", [65520, -70000, 1], "x") == np.asarray([np.inf, -np.inf, 1], np.float16).tobytes()
    near = [
        65510.0,
        65519.9,
        -65519.0,
        70000.0,
    ]  # below 65520 rounds to the largest finite value, whatever its neighbours
    with np.errstate(over="ignore"):  # numpy's cast of 70000 warns as it gives infinity
        assert pack("FP16", near, "x") == np.asarray(near, np.float16).tobytes()


@pytest.mark.parametrize(
    ("datatype", "value"), [("FP16", 65520), ("FP16", 70000.0), ("FP32", 1e39), ("FP16", True), ("FP32", False)]
)
def test_the_worker_reads_what_the_balancer_keys_and_refuses_what_it_refuses(datatype: str, value: Any) -> None:
    """One rule on both sides (hypothesis found the worker warning on FP16 65520 where
    the balancer refused it, and the balancer keying FP16 true where the worker refused it):
    a number past a float type's range is infinity, a boolean is not a number."""
    import orjson

    from cache.keys import key_request
    from protocol.json_codec import decode_infer_request

    body = {"inputs": [{"name": "x", "datatype": datatype, "shape": [1], "data": [value]}]}
    if isinstance(value, bool):
        for read in (lambda: key_request(body), lambda: decode_infer_request(orjson.dumps(body))):
            with pytest.raises(BadRequest, match="does not match"):
                read()
        return
    keyed = key_request(body).inputs[0].data
    decoded = decode_infer_request(orjson.dumps(body)).inputs[0].data
    assert np.isinf(decoded).all()
    assert keyed == decoded.astype(decoded.dtype.newbyteorder("<")).tobytes()


def test_flatten_is_row_major_and_refuses_ragged_data() -> None:
    assert flatten([[1, 2], [3, 4]], "x") == [1, 2, 3, 4]
    assert flatten([], "x") == []
    with pytest.raises(BadRequest, match="ragged"):
        flatten([[1], 2], "x")
    with pytest.raises(BadRequest, match="ragged"):
        flatten([[1, 2], [3]], "x")
    with pytest.raises(BadRequest, match="does not match"):
        pack("FP32", flatten([1, [2]], "x"), "x")
    deep: list[Any] = [1]
    for _ in range(20):
        deep = [deep]
    with pytest.raises(BadRequest, match="deeply"):
        flatten(deep, "x")


def test_lying_bytes_lengths_are_refused() -> None:
    with pytest.raises(BadRequest, match="runs past"):
        unpack_bytes_elements(b"\x05\x00\x00\x00ab", "x")
    with pytest.raises(BadRequest, match="inside"):
        unpack_bytes_elements(b"\x01\x00", "x")
    with pytest.raises(BadRequest, match="whole number"):
        unpack("FP32", b"\x00" * 6, "x")


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@given(data=st.data())
def test_floats_and_integers_pack_alike_and_a_boolean_anywhere_is_refused(datatype: str, data: st.DataObject) -> None:
    """FP32 and FP64 take a fast path (struct, no look at each element's type unless the
    bytes hold a 1.0 or 0.0, which True and False would pack as): it must give numpy's
    bytes for any mix of numbers, and still refuse a boolean wherever it hides."""
    width = 32 if datatype == "FP32" else 64
    numbers = st.one_of(st.integers(-(2**24), 2**24), st.floats(allow_nan=False, allow_infinity=False, width=width))
    values = data.draw(st.lists(numbers, min_size=1, max_size=64))
    expected = np.asarray(values, dtype=NUMPY_DTYPES[datatype]).astype(NUMPY_DTYPES[datatype].newbyteorder("<"))
    assert pack(datatype, values, "x") == expected.tobytes()
    spoiled = list(values)
    spoiled.insert(data.draw(st.integers(0, len(values))), data.draw(st.booleans()))
    with pytest.raises(BadRequest, match="does not match"):
        pack(datatype, spoiled, "x")


def test_fp32_refusals_say_what_they_said_before_the_fast_path() -> None:
    assert pack("FP32", [1e39, 0.5], "x") == np.asarray([np.inf, 0.5], np.float32).tobytes()
    with pytest.raises(BadRequest, match="out of range"):
        pack("FP32", [0.5, 10**400], "x")
    for bad in ("1.5", None, [1.0]):
        with pytest.raises(BadRequest, match="does not match"):
            pack("FP32", [0.5, bad], "x")
