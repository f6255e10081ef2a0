"""Inference API keys: ``--api-keys FILE``, a JSON object of key -> tenant.

A request presents its key as ``Authorization: Bearer <key>`` (REST) or as
``authorization`` metadata (gRPC); without a known key the answer is 401
(UNAUTHENTICATED). Each key belongs to a tenant, and the tenant becomes the
namespace of the request's cache keys (``cache.keys.KeyScope.namespace``), so
one tenant never receives an answer cached for another.

The check is one dict lookup of the header's value (``Bearer <key>``; other
spellings of the scheme take a slower path), and it leaks nothing through its
timing: a dict compares the keys' hashes first, and str hashes are SipHash
under a secret drawn at each process's start, so a guess reaches a byte-wise
comparison with a real key only when its 64-bit hash collides with one (odds of
2^-64 a guess), and then the comparison is ``hmac.compare_digest``. No prefix of
a real key shortens or lengthens the lookup. Keys are never logged or shown
(``repr`` counts them; errors number them).
"""

from __future__ import annotations

import hmac
from pathlib import Path

import orjson

from protocol.errors import Unauthorized
from protocol.names import is_valid_name

MIN_KEY_LENGTH = 16
_MISSING = "this route needs an API key: Authorization: Bearer <key>"
_UNKNOWN = "unknown API key"


class _Presented(str):
    """A dict key whose equality is constant-time (reached only on a full hash match)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and hmac.compare_digest(self.encode(), other.encode())

    __hash__ = str.__hash__


class ApiKeys:
    __slots__ = ("_tenants",)

    def __init__(self, tenants_by_key: dict[str, str]) -> None:
        # keyed by the header's usual value, so a request costs one lookup of what it sent
        self._tenants: dict[str, str] = {_Presented(f"Bearer {key}"): tenant for key, tenant in tenants_by_key.items()}

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

    def tenant(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header's bearer key, or Unauthorized."""
        tenant = self._tenants.get(authorization)  # type: ignore[arg-type]  # None is simply not found
        if tenant is not None:
            return tenant
        if not authorization or authorization[:7].lower() != "bearer " or not authorization[7:].strip():
            raise Unauthorized(_MISSING)
        tenant = self._tenants.get(f"Bearer {authorization[7:].strip()}")  # another spelling of the scheme
        if tenant is None:
            raise Unauthorized(_UNKNOWN)
        return tenant

    def __len__(self) -> int:
        return len(self._tenants)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._tenants)} keys)"
