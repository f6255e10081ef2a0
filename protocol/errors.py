"""Every error a request can carry back to a client: one hierarchy, one table.

    ProtocolError                    (base: status, grpc_code, retry_after)
    ├── BadRequest              400  INVALID_ARGUMENT   malformed body, wrong shape, datatype or name
    ├── Unauthorized            401  UNAUTHENTICATED    missing or wrong token
    ├── NotFound                404  NOT_FOUND          unknown route
    │   ├── ModelNotFound                               unknown model
    │   └── VersionNotFound                             unknown version of a known model
    ├── PayloadTooLarge         413  RESOURCE_EXHAUSTED body, message or tensor over a limit
    ├── ModelUnavailable        500  INTERNAL           the model's own failure: load, config or execution
    ├── UpstreamUnavailable     502  UNAVAILABLE        every worker tried failed before answering (Retry-After)
    ├── AnswerTooLarge          502  RESOURCE_EXHAUSTED a worker's answer is over the balancer's limit
    ├── Unavailable             503  UNAVAILABLE        not ready, draining, no healthy worker (Retry-After)
    │   └── Overloaded                                  a bounded queue or cap is full (Retry-After)
    ├── DeadlineExceeded        504  DEADLINE_EXCEEDED  the request's deadline passed
    └── ModelTooLarge           507  RESOURCE_EXHAUSTED the model fits no memory budget

Each message is formatted once, here or where the error is raised; REST renders
``{"error": message}`` with ``status`` (and ``Retry-After`` when ``retry_after``
is set), gRPC maps ``grpc_code`` (a ``grpc.StatusCode`` name, so this module
needs no grpc). Messages never carry paths, handles or stack traces.
"""

from __future__ import annotations


class ProtocolError(Exception):
    status: int = 500
    grpc_code: str = "INTERNAL"
    retry_after: int | None = None  # seconds, for the Retry-After header

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ProtocolError):
    status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthorized(ProtocolError):
    status = 401
    grpc_code = "UNAUTHENTICATED"


class NotFound(ProtocolError):
    status = 404
    grpc_code = "NOT_FOUND"


class ModelNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model '{name}'")


class VersionNotFound(NotFound):
    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"unknown version '{version}' of model '{name}'")


class PayloadTooLarge(ProtocolError):
    status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class ModelUnavailable(ProtocolError):
    """The model's own failure (weights that fail to load, a config that cannot be
    served, a forward that raises): passed to the client, never retried elsewhere,
    never counted against a worker."""

    status = 500
    grpc_code = "INTERNAL"


class UpstreamUnavailable(ProtocolError):
    status = 502
    grpc_code = "UNAVAILABLE"
    retry_after = 1


class AnswerTooLarge(ProtocolError):
    """A worker's answer is over the balancer's limit: the model's own doing, so
    neither retried nor counted against the worker."""

    status = 502
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(ProtocolError):
    status = 503
    grpc_code = "UNAVAILABLE"
    retry_after = 1


class Overloaded(Unavailable):
    """Load shed: a bounded queue or an in-flight cap is full. Retryable elsewhere,
    and never a reason to eject the worker that said it."""


class DeadlineExceeded(ProtocolError):
    status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class ModelTooLarge(ProtocolError):
    status = 507
    grpc_code = "RESOURCE_EXHAUSTED"


_BY_STATUS: dict[int, type[ProtocolError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    500: ModelUnavailable,
    502: UpstreamUnavailable,
    503: Unavailable,
    504: DeadlineExceeded,
    507: ModelTooLarge,
}


def error_for_status(status: int, message: str) -> ProtocolError:
    """The error of this table that answers with ``status`` (an unknown status is a
    plain ``ProtocolError`` carrying it), for passing on an upstream's error."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(message)
    error = ProtocolError(message)
    error.status = status if 400 <= status < 600 else 502
    return error
