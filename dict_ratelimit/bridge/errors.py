"""Bridge failures, classified by what the caller should do about them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import grpc

RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # DICT 503 or the Bridge is down
        grpc.StatusCode.DEADLINE_EXCEEDED,  # slow Bridge/DICT
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # our POLICIES_* bucket is empty (DICT 429)
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,  # our credentials are wrong
        grpc.StatusCode.PERMISSION_DENIED,  # DICT 403: participant not allowed
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class BridgeError(RuntimeError):
    """A Bridge call failed. ``retryable`` says whether trying again can help, and
    ``retry_after`` (seconds) when the server said how long to wait."""

    retryable: bool = False

    def __init__(
        self,
        participant: str,
        operation: str,
        code: grpc.StatusCode | None,
        details: str,
        retry_after: float | None = None,
    ) -> None:
        self.participant = participant
        self.operation = operation
        self.code = code
        self.details = details
        self.retry_after = retry_after
        code_name = code.name if code is not None else "ERROR"
        wait = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
        super().__init__(f"{operation} for participant {participant}: {code_name}: {details}{wait}")

    @property
    def error_class(self) -> str:
        """Bounded label for metrics: the gRPC code name, lower case."""
        return self.code.name.lower() if self.code is not None else "error"


class RetryableBridgeError(BridgeError):
    """Transient: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (honour retry_after)."""

    retryable = True


class PermanentBridgeError(BridgeError):
    """Will fail again until someone fixes something (credentials, permissions, input)."""

    retryable = False


def classify(
    participant: str, operation: str, error: grpc.RpcError
) -> RetryableBridgeError | PermanentBridgeError:
    """Map a grpc error to our classes, reading ``retry-after`` from the trailing metadata."""
    code = error.code() if hasattr(error, "code") else None
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    retry_after = None
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    # synchronous grpc gives plain (key, value) tuples (the stubs say otherwise)
    pairs = cast("Sequence[tuple[str, str | bytes]]", trailing or ())
    for key, value in pairs:
        if key.lower() == "retry-after":
            try:
                retry_after = max(0.0, float(value))
            except (TypeError, ValueError):
                retry_after = None
    if code in PERMANENT_CODES:
        return PermanentBridgeError(participant, operation, code, details, retry_after)
    return RetryableBridgeError(participant, operation, code, details, retry_after)
