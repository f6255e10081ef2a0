"""The repository routes' request rules, shared by the REST and gRPC fronts.

A load takes two parameters, both optional: ``version`` (which version to page
in, the latest by default) and ``pinned`` (keep it resident, or stop keeping
it). Triton's ``config`` and ``file:`` overrides are refused: a model's files
come from the repository or the store, never over the wire.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import BadRequest
from protocol.json_body import loads_object
from protocol.names import check_version


def load_parameters(body: bytes) -> tuple[str | None, bool | None]:
    """The version and pin of a load request: ``{"parameters": {"version": "2", "pinned": true}}``,
    both optional. Triton's ``config`` and ``file:`` overrides are refused: a model's
    files come from the repository or the store, never over the wire."""
    if not body.strip():
        return None, None
    parameters: Any = loads_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    unknown = sorted(set(parameters) - {"version", "pinned"})
    if unknown:
        raise BadRequest(f"unsupported load parameter '{unknown[0]}': this server takes 'version' and 'pinned'")
    version, pinned = parameters.get("version"), parameters.get("pinned")
    if version is not None and not isinstance(version, str | int):
        raise BadRequest("'version' must be a string")
    if pinned is not None and not isinstance(pinned, bool):
        raise BadRequest("'pinned' must be a boolean")
    return (check_version(str(version)) if version is not None else None), pinned
