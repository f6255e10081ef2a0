"""Protocol clients for the load generator, chosen by name (``--protocol``).

Adding a protocol is adding a class (``InferClient``) and a row here."""

from __future__ import annotations

from loadgen.clients.base import InferClient, ProtocolNotAvailable

KNOWN = ("rest-json", "rest-binary", "grpc")

__all__ = ["KNOWN", "InferClient", "ProtocolNotAvailable", "check_protocol", "make_client"]


def check_protocol(name: str) -> None:
    """Raise a clear error, at start-up, for a protocol that cannot be used."""
    if name not in KNOWN:
        raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(KNOWN)})")


def make_client(name: str, url: str, connections: int, timeout: float) -> InferClient:
    check_protocol(name)
    if name == "grpc":
        from loadgen.clients.grpc_client import GrpcClient

        return GrpcClient(url, connections, timeout)
    if name == "rest-binary":
        from loadgen.clients.rest_binary import RestBinaryClient

        return RestBinaryClient(url, connections, timeout)
    from loadgen.clients.rest_json import RestJsonClient

    return RestJsonClient(url, connections, timeout)
