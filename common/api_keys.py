"""Inference API keys: ``--api-keys FILE``, a JSON object of key -> tenant.

A request presents its key as ``Authorization: Bearer <key>`` (REST) or as
``authorization`` metadata (gRPC); without a known key the answer is 401
(UNAUTHENTICATED). Each key belongs to a tenant, and the tenant becomes the
namespace of the request's cache keys (``cache.keys.KeyScope.namespace``), so
one tenant never receives an answer cached for another.

Constant time at the cost of a dict lookup: what is looked up is not the key
but its blake2b digest under a secret drawn at start, so the lookup's timing
depends on a value the caller cannot relate to any guess (no prefix of a real
key ever shortens or lengthens it). Keys themselves are never kept, logged or
shown: only their digests stay in memory.
"""

from __future__ import annotations

import os
from hashlib import blake2b
from pathlib import Path

import orjson

from protocol.errors import Unauthorized
from protocol.names import is_valid_name

MIN_KEY_LENGTH = 16
_MISSING = "this route needs an API key: Authorization: Bearer <key>"
_UNKNOWN = "unknown API key"


class ApiKeys:
    __slots__ = ("_secret", "_tenants")

    def __init__(self, tenants_by_key: dict[str, str]) -> None:
        self._secret = os.urandom(32)
        self._tenants = {self._digest(key): tenant for key, tenant in tenants_by_key.items()}

    @classmethod
    def load(cls, path: Path) -> ApiKeys:
        """The keys of a JSON file ``{"<key>": "<tenant>", ...}``; ValueError, naming the
        file but never a key, when it cannot be used."""
        try:
            raw = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise ValueError(f"the API keys file {path} is not JSON") from None
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"the API keys file {path} must be a non-empty JSON object of key -> tenant")
        for number, (key, tenant) in enumerate(raw.items(), 1):
            if len(key) < MIN_KEY_LENGTH or not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError(
                    f"API key #{number} in {path} must be at least {MIN_KEY_LENGTH} printable ASCII characters, "
                    "no spaces"
                )
            if not isinstance(tenant, str) or not is_valid_name(tenant):
                raise ValueError(f"the tenant of API key #{number} in {path} must be a name (letters, digits, _-.)")
        return cls(raw)

    def _digest(self, key: str) -> bytes:
        return blake2b(key.encode(), key=self._secret, digest_size=16).digest()

    def tenant(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header's bearer key, or Unauthorized."""
        if not authorization or authorization[:7].lower() != "bearer ":
            raise Unauthorized(_MISSING)
        tenant = self._tenants.get(self._digest(authorization[7:].strip()))
        if tenant is None:
            raise Unauthorized(_UNKNOWN)
        return tenant

    def __len__(self) -> int:
        return len(self._tenants)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._tenants)} keys)"
