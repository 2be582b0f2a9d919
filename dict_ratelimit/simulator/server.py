"""gRPC front of the simulator: the Bridge contract, the control service and health."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from concurrent import futures

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dict_ratelimit.bridge.v1 import rate_limit_pb2 as pb
from dict_ratelimit.bridge.v1 import rate_limit_pb2_grpc as pb_grpc
from dict_ratelimit.domain.readings import ISPB_PATTERN, RawPolicy
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import (
    Listing,
    MonitorBudgetExhausted,
    Simulator,
    UnknownParticipant,
    UnknownPolicy,
)
from dict_ratelimit.simulator.faults import Fault, FaultBook, FaultKind
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit.simulator.v1 import control_pb2_grpc as ctl_grpc

log = logging.getLogger(__name__)

_FAULT_KINDS = {
    ctl.DELAY: FaultKind.DELAY,
    ctl.UNAVAILABLE: FaultKind.UNAVAILABLE,
    ctl.RESOURCE_EXHAUSTED: FaultKind.RESOURCE_EXHAUSTED,
    ctl.PERMISSION_DENIED: FaultKind.PERMISSION_DENIED,
    ctl.MALFORMED: FaultKind.MALFORMED,
}


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(dt.timezone.utc))
    return stamp


def _policy_message(state: RawPolicy) -> pb.Policy:
    return pb.Policy(
        name=state.name,
        available_tokens=state.available_tokens,
        capacity=state.capacity,
        refill_tokens=state.refill_tokens,
        refill_period_sec=state.refill_period_sec,
    )


def _malform(listing: Listing, field: str) -> Listing:
    """A copy of ``listing`` broken in ``field`` (fault injection)."""
    policies = list(listing.policies)
    first = policies[0]
    if field == "category":
        return dataclasses.replace(listing, category="a1")
    if field == "response_time":
        return dataclasses.replace(listing, response_time=None)  # type: ignore[arg-type]
    if field == "capacity":
        policies[0] = dataclasses.replace(first, capacity=0)
    elif field == "refill_tokens":
        policies[0] = dataclasses.replace(first, refill_tokens=0)
    elif field == "refill_period_sec":
        policies[0] = dataclasses.replace(first, refill_period_sec=0)
    elif field == "available_above_capacity":
        policies[0] = dataclasses.replace(first, available_tokens=(first.capacity or 0) + 1)
    elif field == "duplicate_policy":
        policies.append(first)
    elif field == "unknown_policy":
        policies.append(dataclasses.replace(first, name="NOT_A_DICT_POLICY"))
    return dataclasses.replace(listing, policies=tuple(policies))


class RateLimitServicer(pb_grpc.RateLimitServiceServicer):
    """The Bridge contract, answered by the simulator (with injected faults first)."""

    def __init__(self, simulator: Simulator, faults: FaultBook) -> None:
        self.simulator = simulator
        self.faults = faults

    def _apply_faults(self, participant: str, context: grpc.ServicerContext) -> str | None:
        """Abort for error faults, sleep for delays; returns a field to malform, if any."""
        malformed = None
        for fault in self.faults.take(participant):
            if fault.kind is FaultKind.DELAY:
                # ends early when the call ends (the caller's deadline, or the server stopping):
                # a sleeping worker thread would hold the process for the whole delay
                ended = threading.Event()
                context.add_callback(ended.set)
                ended.wait(fault.delay_ms / 1000)
            elif fault.kind is FaultKind.UNAVAILABLE:
                context.abort(grpc.StatusCode.UNAVAILABLE, "DICT answered 503 (injected)")
            elif fault.kind is FaultKind.RESOURCE_EXHAUSTED:
                context.set_trailing_metadata((("retry-after", str(fault.retry_after_seconds)),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "DICT answered 429 (injected)")
            elif fault.kind is FaultKind.PERMISSION_DENIED:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "DICT answered 403 (injected)")
            elif fault.kind is FaultKind.MALFORMED:
                malformed = fault.malformed_field
        return malformed

    def _call(self, participant: str, context: grpc.ServicerContext, fetch) -> Listing:  # type: ignore[no-untyped-def]
        if not ISPB_PATTERN.fullmatch(participant):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid ISPB {participant!r}")
        malformed = self._apply_faults(participant, context)
        try:
            listing = fetch()
        except UnknownParticipant as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except UnknownPolicy as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except MonitorBudgetExhausted as exc:
            context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return _malform(listing, malformed) if malformed else listing

    def ListPolicies(self, request, context):
        listing = self._call(
            request.participant, context, lambda: self.simulator.list_policies(request.participant)
        )
        response = pb.ListPoliciesResponse(
            correlation_id=listing.correlation_id,
            category=listing.category,
            policies=[_policy_message(p) for p in listing.policies],
        )
        if listing.response_time is not None:
            response.response_time.CopyFrom(_timestamp(listing.response_time))
        return response

    def GetPolicy(self, request, context):
        listing = self._call(
            request.participant,
            context,
            lambda: self.simulator.get_policy(request.participant, request.policy),
        )
        response = pb.GetPolicyResponse(
            correlation_id=listing.correlation_id,
            category=listing.category,
            policy=_policy_message(listing.policies[0]),
        )
        if listing.response_time is not None:
            response.response_time.CopyFrom(_timestamp(listing.response_time))
        return response

    def GetRequestStats(self, request, context):
        window = (
            request.window.ToTimedelta() if request.HasField("window") else dt.timedelta(minutes=5)
        )
        try:
            start, end, totals = self.simulator.request_stats(request.participant, window)
        except UnknownParticipant as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.GetRequestStatsResponse(
            window_start=_timestamp(start),
            window_end=_timestamp(end),
            policies=[
                pb.PolicyRequestStats(
                    policy=policy,
                    responses=[
                        pb.StatusCount(http_status=status, count=count)
                        for status, count in sorted(counts.items())
                    ],
                )
                for policy, counts in sorted(totals.items())
            ],
        )


class ControlServicer(ctl_grpc.SimulatorControlServicer):
    """Clock, ground truth, faults and category changes."""

    def __init__(self, simulator: Simulator, faults: FaultBook) -> None:
        self.simulator = simulator
        self.faults = faults

    def GetTime(self, request, context):
        return ctl.TimeResponse(now=_timestamp(self.simulator.now()))

    def AdvanceClock(self, request, context):
        clock = self.simulator.clock
        if not isinstance(clock, ManualClock):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the clock is not manual")
            raise AssertionError("unreachable: abort raises")
        if request.seconds < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "seconds must be >= 0")
        clock.advance(request.seconds)
        return ctl.TimeResponse(now=_timestamp(self.simulator.now()))

    def GetGroundTruth(self, request, context):
        response = ctl.GroundTruthResponse(now=_timestamp(self.simulator.now()))
        for ispb in sorted(self.simulator.participants):
            if request.participant and request.participant != ispb:
                continue
            for name, bucket in sorted(self.simulator.buckets(ispb).items()):
                if request.policy and request.policy != name:
                    continue
                truth = response.policies.add(
                    participant=ispb,
                    policy=name,
                    rejected_total=bucket.rejected_total,
                    accepted_total=bucket.accepted_total,
                )
                for interval in bucket.intervals:
                    item = truth.empty_intervals.add(rejected=interval.rejected)
                    item.start.CopyFrom(
                        _timestamp(self.simulator.seconds_to_datetime(interval.start))
                    )
                    if interval.end is not None:
                        item.end.CopyFrom(
                            _timestamp(self.simulator.seconds_to_datetime(interval.end))
                        )
        return response

    def InjectFault(self, request, context):
        kind = _FAULT_KINDS.get(request.kind)
        if kind is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fault kind is required")
            raise AssertionError("unreachable: abort raises")
        try:
            fault = Fault(
                kind=kind,
                participant=request.participant or None,
                remaining=request.times or None,
                delay_ms=request.delay_ms,
                retry_after_seconds=request.retry_after_seconds,
                malformed_field=request.malformed_field,
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return ctl.InjectFaultResponse(active_faults=self.faults.add(fault))

    def ClearFaults(self, request, context):
        self.faults.clear()
        return ctl.ClearFaultsResponse()

    def SetCategory(self, request, context):
        if len(request.category) != 1 or not "A" <= request.category <= "H":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "category must be one of A-H")
        try:
            self.simulator.set_category(request.participant, request.category)
        except UnknownParticipant as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return ctl.SetCategoryResponse()


def start_server(
    simulator: Simulator,
    port: int = 0,
    host: str = "127.0.0.1",
    *,
    server_credentials: grpc.ServerCredentials | None = None,
    max_workers: int = 16,
) -> tuple[grpc.Server, int, FaultBook]:
    """Serve the simulator; returns (server, bound port, its fault book). Stop with server.stop."""
    faults = FaultBook()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    pb_grpc.add_RateLimitServiceServicer_to_server(RateLimitServicer(simulator, faults), server)
    ctl_grpc.add_SimulatorControlServicer_to_server(ControlServicer(simulator, faults), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if server_credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, server_credentials)
    if bound == 0:
        raise OSError(f"could not bind the simulator to {address}")
    server.start()
    for service in ("", "dict_ratelimit.bridge.v1.RateLimitService"):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("simulator serving on %s:%s", host, bound)
    return server, bound, faults
