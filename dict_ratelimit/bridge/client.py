"""A small client of the Bridge's rate-limit service (grpcio).

Per-call deadlines, plaintext or TLS / mutual TLS (certificates given as file paths or PEM
text), optional bearer token and extra metadata headers, and errors classified by what to do
(:mod:`dict_ratelimit.bridge.errors`). Answers are returned as the domain's raw listings,
to be validated by :func:`dict_ratelimit.domain.readings.validate_listing`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from opentelemetry import trace

from dict_ratelimit import tracing
from dict_ratelimit.bridge.errors import BridgeError, classify
from dict_ratelimit.bridge.v1 import rate_limit_pb2 as pb
from dict_ratelimit.bridge.v1 import rate_limit_pb2_grpc as pb_grpc
from dict_ratelimit.domain.readings import InvalidReading, RawListing, RawPolicy
from dict_ratelimit.domain.request_stats import (
    RawRequestStats,
    RequestStats,
    validate_request_stats,
)


def read_pem(value: str | None) -> bytes | None:
    """PEM text as given, or the contents of the file it names."""
    if not value:
        return None
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"certificate or key file not found: {value}")
    return path.read_bytes()


@dataclass(frozen=True)
class TlsConfig:
    """TLS towards the Bridge; client cert + key make it mutual. Paths or PEM text."""

    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        cert, key = read_pem(self.client_cert), read_pem(self.client_key)
        if (cert is None) != (key is None):
            raise ValueError("mutual TLS needs both the client certificate and its key")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca), private_key=key, certificate_chain=cert
        )


def _instant(ispb: str, field: str, message, present: bool) -> dt.datetime | None:  # type: ignore[no-untyped-def]
    """A protobuf Timestamp as an aware datetime; None when absent. Seconds or nanos that no
    datetime can hold (a hostile or broken Bridge) name the participant and the field."""
    if not present:
        return None
    try:
        return message.ToDatetime(tzinfo=dt.timezone.utc)  # type: ignore[no-any-return]
    except (ValueError, OverflowError, OSError) as error:
        raise InvalidReading(
            ispb, field, f"not a valid timestamp (seconds={message.seconds}, nanos={message.nanos})"
        ) from error


def _number(policy, name: str) -> int | None:  # type: ignore[no-untyped-def]
    return getattr(policy, name) if policy.HasField(name) else None


def _listing(ispb: str, response, policies) -> RawListing:  # type: ignore[no-untyped-def]
    return RawListing(
        ispb=ispb,
        response_time=_instant(
            ispb, "ResponseTime", response.response_time, response.HasField("response_time")
        ),
        correlation_id=response.correlation_id,
        category=response.category,
        policies=tuple(
            RawPolicy(
                name=p.name,
                available_tokens=_number(p, "available_tokens"),
                capacity=_number(p, "capacity"),
                refill_tokens=_number(p, "refill_tokens"),
                refill_period_sec=_number(p, "refill_period_sec"),
            )
            for p in policies
        ),
    )


class BridgeClient:
    """One channel to the Bridge; thread-safe (grpc channels are)."""

    def __init__(
        self,
        target: str,
        *,
        tls: TlsConfig | None = None,
        bearer_token: str | None = None,
        allow_plaintext_token: bool = False,
        metadata: Sequence[tuple[str, str]] = (),
        deadline_seconds: float = 10.0,
    ) -> None:
        if deadline_seconds <= 0:
            raise ValueError("deadline_seconds must be > 0")
        if bearer_token and tls is None and not allow_plaintext_token:
            raise ValueError(
                "the Bridge token would be sent in clear over a plaintext channel: configure "
                "TLS (DICT_RATELIMIT_BRIDGE_TLS / _TLS_CA) or set "
                "DICT_RATELIMIT_BRIDGE_ALLOW_PLAINTEXT_TOKEN=true"
            )
        self.target = target
        self.deadline_seconds = deadline_seconds
        options: list[tuple[str, str | int]] = [("grpc.keepalive_time_ms", 60_000)]
        if tls is not None:
            if tls.server_name_override:
                options.append(("grpc.ssl_target_name_override", tls.server_name_override))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = tuple((k.lower(), v) for k, v in metadata)
        if bearer_token:
            self._metadata += (("authorization", f"Bearer {bearer_token}"),)
        self._stub = pb_grpc.RateLimitServiceStub(self._channel)

    def __enter__(self) -> BridgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _invoke(self, ispb: str, operation: str, method, request):  # type: ignore[no-untyped-def]
        """One call, in a client span whose context travels in the metadata (W3C)."""
        with tracing.span(
            f"bridge {operation}",
            trace.SpanKind.CLIENT,
            **{"rpc.system": "grpc", "rpc.service": "RateLimitService", "rpc.method": operation,
               "server.address": self.target, "dict.participant": ispb},
        ) as current:  # fmt: skip
            metadata = list(self._metadata)
            tracing.inject(metadata)
            try:
                return method(request, timeout=self.deadline_seconds, metadata=metadata)
            except grpc.RpcError as error:
                failure = classify(ispb, operation, error)
                current.set_attribute("error.type", failure.error_class)
                current.set_status(trace.StatusCode.ERROR, failure.error_class)
                raise failure from None

    def list_policies(self, ispb: str) -> RawListing:
        """ListPolicies for one participant (costs one of its POLICIES_LIST tokens)."""
        response = self._invoke(
            ispb, "ListPolicies", self._stub.ListPolicies, pb.ListPoliciesRequest(participant=ispb)
        )
        return _listing(ispb, response, response.policies)

    def get_policy(self, ispb: str, policy: str) -> RawListing:
        """GetPolicy for one policy (costs one POLICIES_READ token)."""
        response = self._invoke(
            ispb,
            "GetPolicy",
            self._stub.GetPolicy,
            pb.GetPolicyRequest(participant=ispb, policy=policy),
        )
        return _listing(ispb, response, [response.policy] if response.HasField("policy") else [])

    def request_stats(self, ispb: str, window: dt.timedelta) -> RequestStats | None:
        """Per-policy response counts, or None when the Bridge does not implement the call.

        Raises :class:`InvalidRequestStats` (an :class:`InvalidReading`) for an unusable answer.
        """
        duration = Duration()
        duration.FromTimedelta(window)
        try:
            response = self._invoke(
                ispb,
                "GetRequestStats",
                self._stub.GetRequestStats,
                pb.GetRequestStatsRequest(participant=ispb, window=duration),
            )
        except BridgeError as error:
            if error.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        raw = RawRequestStats(
            window_start=_instant(
                ispb, "window_start", response.window_start, response.HasField("window_start")
            ),
            window_end=_instant(
                ispb, "window_end", response.window_end, response.HasField("window_end")
            ),
            policies=tuple(
                (item.policy, tuple((c.http_status, c.count) for c in item.responses))
                for item in response.policies
            ),
        )
        return validate_request_stats(ispb, raw)
