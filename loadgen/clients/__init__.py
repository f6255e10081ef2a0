"""Protocol clients for the load generator, chosen by name (``--protocol``).

Adding a protocol is adding a class (``InferClient``) and a row here."""

from __future__ import annotations

from loadgen.clients.base import InferClient, ProtocolNotAvailable

KNOWN = ("rest-json", "rest-binary", "grpc")
# Named in the CLI, coming with the binary tensor and gRPC codecs in protocol/.
PLANNED = {
    "rest-binary": "the binary tensor data extension codec",
    "grpc": "the gRPC stubs and codec",
}


def check_protocol(name: str) -> None:
    """Raise a clear error, at start-up, for a protocol that cannot be used."""
    if name in PLANNED:
        raise ProtocolNotAvailable(
            f"--protocol {name} is not available yet: it comes with {PLANNED[name]} in protocol/ (use rest-json)"
        )
    if name not in KNOWN:
        raise ValueError(f"unknown protocol {name!r} (choose from {', '.join(KNOWN)})")


def make_client(name: str, url: str, connections: int, timeout: float) -> InferClient:
    check_protocol(name)
    from loadgen.clients.rest_json import RestJsonClient

    return RestJsonClient(url, connections, timeout)
