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

from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from typing import Any, NamedTuple

import orjson

from protocol.binary_codec import ENCODING_ONLY, OutputEncoding, output_encoding, parameters, raw_tensors
from protocol.errors import BadRequest
from protocol.json_body import loads_object
from protocol.types import RawTensor

KEY_PREFIX = "affinity:v2:"
_PERSON = b"affinity-key-v2"
MAX_TENSORS = 256


class KeyScope(NamedTuple):
    """Whose answer this is: the same request to another model version, other
    weights or another tenant is another question. (A named tuple, so the memo's
    lookups hash and compare it at C speed on the hit path.)"""

    model: str
    version: str
    weights: str = ""  # sha256 of the version's weights, as the workers report it
    namespace: str = ""


# One input: name, datatype, shape, raw little-endian elements (BYTES:
# length-prefixed) and parameters: the wire's own raw form.
KeyTensor = RawTensor


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


def _framed(digest: Any, part: bytes) -> None:
    digest.update(len(part).to_bytes(8, "little"))
    digest.update(part)


@lru_cache(maxsize=4096)
def _scoped(scope: KeyScope) -> tuple[Any, str]:
    """The digest fed with the scope's fields, and the key's readable prefix: the
    same for every request to one model version, so computed once (each key
    continues a copy; measured: 3.3 -> 1.9 us a key for one 64-element input)."""
    digest = blake2b(digest_size=16, person=_PERSON)
    for part in (scope.namespace, scope.model, scope.version, scope.weights):
        _framed(digest, part.encode())
    return digest, f"{KEY_PREFIX}{scope.model}:{{"


def typed_key(scope: KeyScope, request: KeyRequest) -> str:
    inputs = request.inputs
    if len(inputs) > 1:
        inputs = tuple(sorted(inputs, key=lambda t: t.name))
    outputs = None
    if request.outputs is not None:
        outputs = sorted([name, _answer_params(params)] for name, params in request.outputs)
    header = {
        "inputs": [[t.name, t.datatype, list(t.shape), _answer_params(t.parameters)] for t in inputs],
        "outputs": outputs,
        "parameters": _answer_params(request.parameters),
    }
    base, prefix = _scoped(scope)
    digest = base.copy()
    _framed(digest, orjson.dumps(header, option=orjson.OPT_SORT_KEYS))
    for tensor in inputs:  # fed piece by piece: a megabyte tensor is hashed where it lies, never copied
        _framed(digest, tensor.data)
    return f"{prefix}{digest.hexdigest()}}}"  # the digest is the Redis Cluster hash tag


def key_request(obj: dict[str, Any], binary: memoryview | None = None) -> KeyRequest:
    """The typed content of a V2 request's JSON object (with ``binary``, the binary
    section of a request in the binary extension); BadRequest where it is
    malformed (the same rules the worker applies, so a request the balancer keys
    is one a worker can read)."""
    inputs = raw_tensors(obj.get("inputs"), binary)
    outputs = None
    raw_outputs = obj.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or len(raw_outputs) > MAX_TENSORS:
            raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
        pairs = []
        for item in raw_outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequest("each requested output needs a string 'name'")
            pairs.append((item["name"], parameters(item.get("parameters"), "output")))
        outputs = tuple(pairs)
    return KeyRequest(inputs, outputs, parameters(obj.get("parameters"), "request"))


def json_key_request(obj: dict[str, Any]) -> KeyRequest:
    return key_request(obj)


def request_id_of(obj: dict[str, Any]) -> str | None:
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return request_id


def key_from_json_body(body: bytes, scope: KeyScope) -> tuple[str, str | None, OutputEncoding]:
    """(key, request id, the answer's encoding) of a raw V2 JSON body: the whole
    derivation as one pure function, so a large body's can run in another process."""
    obj = loads_object(body)
    encoding = output_encoding(obj.get("parameters"), obj.get("outputs"))
    return typed_key(scope, json_key_request(obj)), request_id_of(obj), encoding


# A memo item besides its body (or digest) and key text: the tuple, the bytes and str
# objects and the map's slot (CPython 3.11, 64-bit).
MEMO_ITEM_OVERHEAD = 240


class KeyMemo:
    """Remembers the key of a request body seen before, so a repeated payload
    skips JSON parsing and packing on the hit path.

    Sound because the key is a pure function of (scope, raw body). Small bodies
    are remembered by their bytes; larger ones by a 128-bit blake2b digest of
    their bytes (``ref``, which callers may compute off the event loop: hashlib
    releases the GIL on large buffers). Only bodies that carried no ``id`` and
    asked for a plain JSON answer (no binary output choice) are remembered (an
    id must be read to be echoed, an encoding choice to be honoured), so a
    lookup needs no check: such a body can never equal a remembered one. The memo forgets
    everything when it reaches ``max_entries`` or ``max_bytes`` of memory (a bound,
    not a policy).
    """

    def __init__(self, max_entries: int = 8192, inline_body: int = 4096, max_bytes: int = 8 << 20) -> None:
        self.max_entries = max_entries
        self.inline_body = inline_body
        self.max_bytes = max_bytes
        self.used = 0
        self._keys: dict[tuple[KeyScope, bytes], str] = {}
        self._last: tuple[bytes, bytes] = (b"", b"")  # (body, ref): one tuple, so a reader never pairs
        # one body with another's ref (``ref`` may run in a thread)
        self.last_limit = 128 << 10  # a larger body is digested once anyway (off the loop): not kept alive here

    def ref(self, body: bytes) -> bytes:
        """The memo's handle of ``body``. A miss asks twice for the same body object (the
        lookup, then the remembering); the digest of the last one is kept, as a 10 KB
        digest costs ~12 us (measured)."""
        if len(body) <= self.inline_body:
            return body
        last_body, last_ref = self._last
        if last_body is body:
            return last_ref
        ref = blake2b(body, digest_size=16, person=b"affinity-memo").digest()
        if len(body) <= self.last_limit:
            self._last = (body, ref)
        return ref

    def get(self, scope: KeyScope, ref: bytes) -> str | None:
        return self._keys.get((scope, ref))

    def put(self, scope: KeyScope, ref: bytes, key: str) -> None:
        size = len(ref) + len(key) + MEMO_ITEM_OVERHEAD
        if len(self._keys) >= self.max_entries or self.used + size > self.max_bytes:
            self._keys.clear()
            self.used = 0
        if (scope, ref) not in self._keys:
            self.used += size
        self._keys[(scope, ref)] = key
