"""Cache keys: what makes two inference requests the same question.

A key is computed from *typed tensors*, never from JSON text, so one tensor has
one key whatever form it arrived in (nested or flat JSON, ``1`` or ``1.0`` for
an FP32 input, the binary extension, gRPC typed or raw contents):

    key = "affinity:v2:<model>:" + blake2b-128 over framed fields
      scope:   namespace (tenant), model, resolved version, weights identity (sha256)
      header:  canonical JSON of the inputs' names, datatypes, shapes and parameters
               (sorted by name), the requested outputs and the request parameters,
               without encoding-only choices (``binary_data_output``,
               ``binary_data``, ``binary_data_size``) and without the ``id``
      data:    each input's elements as raw little-endian bytes (protocol.packing)

Every field is preceded by its 8-byte length, so no two different field lists
hash the same bytes (``("ab", "c")`` and ``("a", "bc")`` cannot collide). The
model stays readable in the prefix for humans reading Redis; nothing scans it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import orjson

from protocol.errors import BadRequest, PayloadTooLarge
from protocol.json_body import loads_object
from protocol.packing import DEFAULT_MAX_ELEMENTS, element_count, flatten, pack

KEY_PREFIX = "affinity:v2:"
_PERSON = b"affinity-key-v2"
ENCODING_ONLY = frozenset(("binary_data_output", "binary_data", "binary_data_size"))
MAX_TENSORS = 256
MAX_RANK = 16


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Whose answer this is: the same request to another model version, other
    weights or another tenant is another question."""

    model: str
    version: str
    weights: str = ""  # sha256 of the version's weights, as the workers report it
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class KeyTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes  # raw little-endian elements (BYTES: length-prefixed)
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """The answer-determining content of an inference request, typed."""

    inputs: tuple[KeyTensor, ...]
    outputs: tuple[tuple[str, dict[str, Any] | None], ...] | None = None
    parameters: dict[str, Any] | None = None


def _answer_params(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    kept = {k: v for k, v in params.items() if k not in ENCODING_ONLY}
    return kept or None


def _frame(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def typed_key(scope: KeyScope, request: KeyRequest) -> str:
    inputs = sorted(request.inputs, key=lambda t: t.name)
    outputs = None
    if request.outputs is not None:
        outputs = sorted([name, _answer_params(params)] for name, params in request.outputs)
    header = {
        "inputs": [[t.name, t.datatype, list(t.shape), _answer_params(t.parameters)] for t in inputs],
        "outputs": outputs,
        "parameters": _answer_params(request.parameters),
    }
    fields = [scope.namespace.encode(), scope.model.encode(), scope.version.encode(), scope.weights.encode()]
    fields.append(orjson.dumps(header, option=orjson.OPT_SORT_KEYS))
    fields.extend(t.data for t in inputs)
    digest = blake2b(_frame(fields), digest_size=16, person=_PERSON).hexdigest()
    return f"{KEY_PREFIX}{scope.model}:{{{digest}}}"  # the digest is the Redis Cluster hash tag


def _params(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest(f"'parameters' of {where} must be an object")
    return raw


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_RANK or not all(type(d) is int and d >= 0 for d in raw):
        raise BadRequest(f"input '{name}': 'shape' must be a list of at most {MAX_RANK} non-negative integers")
    return tuple(raw)


def json_key_request(obj: dict[str, Any]) -> KeyRequest:
    """The typed content of a V2 JSON request; BadRequest where it is malformed
    (the same rules the worker applies, so a request the balancer keys is one a
    worker can read)."""
    raw_inputs = obj.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    if len(raw_inputs) > MAX_TENSORS:
        raise BadRequest(f"too many inputs (at most {MAX_TENSORS})")
    inputs = []
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
            raise BadRequest("each input must be an object with a string 'name', shape, datatype and data")
        name, datatype = raw["name"], raw.get("datatype")
        if not isinstance(datatype, str):
            raise BadRequest(f"input '{name}': unknown datatype {str(datatype)[:32]!r}")
        shape = _shape(raw.get("shape"), name)
        count = element_count(shape)
        if count > DEFAULT_MAX_ELEMENTS:
            raise PayloadTooLarge(f"input '{name}': {count} elements is over the limit of {DEFAULT_MAX_ELEMENTS}")
        if "data" not in raw:
            raise BadRequest(f"input '{name}': 'data' is missing")
        values = flatten(raw["data"], name)
        if len(values) != count:
            raise BadRequest(f"input '{name}': data has {len(values)} elements but shape needs {count}")
        parameters = _params(raw.get("parameters"), f"input '{name}'")
        inputs.append(KeyTensor(name, datatype, shape, pack(datatype, values, name), parameters))
    if len({t.name for t in inputs}) != len(inputs):
        raise BadRequest("an input is given twice")
    outputs = None
    raw_outputs = obj.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or len(raw_outputs) > MAX_TENSORS:
            raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
        pairs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequest("each requested output needs a string 'name'")
            pairs.append((item["name"], _params(item.get("parameters"), "output")))
        outputs = tuple(pairs)
    return KeyRequest(tuple(inputs), outputs, _params(obj.get("parameters"), "request"))


def request_id_of(obj: dict[str, Any]) -> str | None:
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return request_id


def key_from_json_body(body: bytes, scope: KeyScope) -> tuple[str, str | None]:
    """(key, request id) of a raw V2 JSON body: the whole derivation as one pure
    function, so a large body's can run in another process."""
    obj = loads_object(body)
    return typed_key(scope, json_key_request(obj)), request_id_of(obj)


class KeyMemo:
    """Remembers the key of a request body seen before, so a repeated payload
    skips JSON parsing and packing on the hit path.

    Sound because the key is a pure function of (scope, raw body). Small bodies
    are remembered by their bytes; larger ones by a 128-bit blake2b digest of
    their bytes (``ref``, which callers may compute off the event loop: hashlib
    releases the GIL on large buffers). Only bodies that carried no ``id`` are
    remembered (an id must be read to be echoed), so a lookup needs no check: a
    body with an id can never equal a remembered one. The memo forgets
    everything when it reaches ``max_entries`` (a bound, not a policy).
    """

    def __init__(self, max_entries: int = 8192, inline_body: int = 4096) -> None:
        self.max_entries = max_entries
        self.inline_body = inline_body
        self._keys: dict[tuple[KeyScope, bytes], str] = {}

    def ref(self, body: bytes) -> bytes:
        if len(body) <= self.inline_body:
            return body
        return blake2b(body, digest_size=16, person=b"affinity-memo").digest()

    def get(self, scope: KeyScope, ref: bytes) -> str | None:
        return self._keys.get((scope, ref))

    def put(self, scope: KeyScope, ref: bytes, key: str) -> None:
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
        self._keys[(scope, ref)] = key
