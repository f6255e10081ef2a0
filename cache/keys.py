"""Cache keys: what makes two inference requests the same question.

key = blake2b-128 over length-prefixed fields:
    namespace (tenant), model name, resolved model version,
    canonical JSON of the request without its ``id``
    (inputs with names, datatypes, shapes and data; requested outputs; parameters).

Length prefixes (``<len>:<bytes>``) make collisions across models, versions or namespaces impossible
by construction (``("ab", "c")`` and ``("a", "bc")`` hash different bytes).
Canonical JSON sorts object keys, so key order and whitespace in the request do
not matter; the request ``id`` never enters the key and is echoed on hits.
The model name is kept readable in the key's prefix so a model's entries can be
found (and later invalidated) without decoding hashes.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Any

import orjson

KEY_PREFIX = "affinity:v1:"
_PERSON = b"affinity-key-v1"


def canonical_request(request: dict[str, Any]) -> bytes:
    """The request's answer-determining fields as canonical JSON (``id`` dropped)."""
    if "id" in request:
        request = {k: v for k, v in request.items() if k != "id"}
    return orjson.dumps(request, option=orjson.OPT_SORT_KEYS)


def cache_key(model: str, version: str, canonical: bytes, namespace: str = "") -> str:
    ns, name, ver = namespace.encode(), model.encode(), version.encode()
    framed = b"%d:%s%d:%s%d:%s" % (len(ns), ns, len(name), name, len(ver), ver)
    digest = blake2b(framed + canonical, digest_size=16, person=_PERSON).hexdigest()
    return f"{KEY_PREFIX}{model}:{digest}"


class KeyMemo:
    """Remembers the key of a request body seen before, so a repeated payload
    skips JSON parsing and canonicalisation on the hit path.

    Sound because the key is a pure function of (model, version, raw body).
    Small bodies are remembered by their bytes; larger ones by a 128-bit
    blake2b digest of their bytes (hashing 2 MB costs ~2 ms, parsing and
    canonicalising it ~15 ms). Only bodies without an ``"id"`` member text are
    remembered (an id must be read to be echoed). The memo forgets everything
    when it reaches ``max_entries`` (a bound, not a policy).
    """

    def __init__(self, max_entries: int = 8192, inline_body: int = 4096) -> None:
        self.max_entries = max_entries
        self.inline_body = inline_body
        self._keys: dict[tuple[str, str, bytes], str] = {}

    @staticmethod
    def eligible(body: bytes) -> bool:
        return b'"id"' not in body

    def _ref(self, body: bytes) -> bytes:
        if len(body) <= self.inline_body:
            return body
        return blake2b(body, digest_size=16, person=b"affinity-memo").digest()

    def get(self, model: str, version: str, body: bytes) -> str | None:
        return self._keys.get((model, version, self._ref(body)))

    def put(self, model: str, version: str, body: bytes, key: str) -> None:
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
        self._keys[(model, version, self._ref(body))] = key
