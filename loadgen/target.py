"""What the target serves: its models and each model's inputs and batch limit.

Models come from ``POST /v2/repository/index`` (every name not UNAVAILABLE,
in name order: the Zipf ranks) unless given explicitly; each model's inputs
from ``GET /v2/models/{name}`` and its ``max_batch_size`` from
``GET /v2/models/{name}/config`` (Triton's shape; a server without that route
is taken as unbatched).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from protocol.datatypes import DATATYPES
from protocol.types import TensorSpec

TIMEOUT = 30.0


class TargetError(RuntimeError):
    """The target could not be asked, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    models: tuple[ModelSpec, ...]
    skipped: tuple[str, ...] = ()  # listed, but unavailable or without usable metadata


async def _get_json(session: aiohttp.ClientSession, method: str, url: str) -> tuple[int, Any]:
    try:
        data = b"{}" if method == "POST" else None
        async with session.request(method, url, data=data, headers={"Content-Type": "application/json"}) as resp:
            body = await resp.read()
            if resp.status != 200:
                return resp.status, None
            return 200, _loads(body, url)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise TargetError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc


def _loads(body: bytes, url: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise TargetError(f"{url} did not answer JSON") from None


def index_names(rows: Any) -> list[str]:
    """Model names in an index answer, without unavailable ones, sorted."""
    if not isinstance(rows, list):
        raise TargetError("the repository index is not a list")
    names = {str(r["name"]) for r in rows if isinstance(r, dict) and "name" in r}
    unavailable = {str(r["name"]) for r in rows if isinstance(r, dict) and r.get("state") == "UNAVAILABLE"}
    return sorted(names - unavailable)


def parse_inputs(meta: Any, name: str) -> tuple[TensorSpec, ...]:
    try:
        inputs = tuple(
            TensorSpec(str(i["name"]), str(i["datatype"]), tuple(int(d) for d in i["shape"])) for i in meta["inputs"]
        )
    except (KeyError, TypeError, ValueError):
        raise TargetError(f"model {name!r}: metadata without usable inputs") from None
    if not inputs:
        raise TargetError(f"model {name!r} declares no inputs")
    for spec in inputs:
        if spec.datatype not in DATATYPES:
            raise TargetError(f"model {name!r}: input {spec.name!r} has unknown datatype {spec.datatype!r}")
    return inputs


async def _model(session: aiohttp.ClientSession, base: str, name: str) -> ModelSpec:
    path = f"{base}/v2/models/{quote(name, safe='')}"
    (status, meta), (config_status, config) = await asyncio.gather(
        _get_json(session, "GET", path), _get_json(session, "GET", path + "/config")
    )
    if status != 200:
        raise TargetError(f"model {name!r}: metadata answered {status}")
    batch = 0
    if config_status == 200 and isinstance(config, dict):
        batch = int(config.get("max_batch_size", 0) or 0)
    return ModelSpec(name, parse_inputs(meta, name), batch)


async def discover(url: str, models: Sequence[str] = ()) -> Target:
    """Ask the target what it serves. Explicit ``models`` must all answer;
    listed ones that do not are skipped (and reported). A ``grpc://`` target
    is asked over gRPC."""
    if url.startswith("grpc://"):
        from loadgen.grpc_target import discover_grpc

        return await discover_grpc(url, models)
    base = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=8)) as session:
        names = list(models)
        if not names:
            status, rows = await _get_json(session, "POST", f"{base}/v2/repository/index")
            if status != 200:
                raise TargetError(f"{base}/v2/repository/index answered {status}")
            names = index_names(rows)
        results = await asyncio.gather(*(_model(session, base, n) for n in names), return_exceptions=True)
    found: list[ModelSpec] = []
    skipped: list[str] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, ModelSpec):
            found.append(result)
        elif isinstance(result, TargetError) and not models:
            skipped.append(name)
        elif isinstance(result, BaseException):
            raise result
    if not found:
        raise TargetError(f"{base} lists no model the generator can use")
    return Target(base, tuple(found), tuple(skipped))
