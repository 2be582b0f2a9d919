"""A Bridge on loopback that answers like the simulator, except for the participants told to
misbehave: their answers are the simulator's own, rewritten by a function of the test's."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from dict_ratelimit.bridge.v1 import rate_limit_pb2 as pb
from dict_ratelimit.bridge.v1 import rate_limit_pb2_grpc as pb_grpc
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.faults import FaultBook
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import RateLimitServicer

ListingRewrite = Callable[[pb.ListPoliciesResponse], pb.ListPoliciesResponse]
StatsRewrite = Callable[[pb.GetRequestStatsResponse], pb.GetRequestStatsResponse]


@dataclass
class HostileBridge(pb_grpc.RateLimitServiceServicer):
    """The simulator's answers, rewritten for the participants named in the two maps."""

    inner: RateLimitServicer
    listings: dict[str, ListingRewrite] = field(default_factory=dict)
    stats: dict[str, StatsRewrite] = field(default_factory=dict)

    def ListPolicies(self, request, context):  # type: ignore[no-untyped-def]
        response = self.inner.ListPolicies(request, context)
        rewrite = self.listings.get(request.participant)
        return rewrite(response) if rewrite else response

    def GetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        return self.inner.GetPolicy(request, context)

    def GetRequestStats(self, request, context):  # type: ignore[no-untyped-def]
        response = self.inner.GetRequestStats(request, context)
        rewrite = self.stats.get(request.participant)
        return rewrite(response) if rewrite else response


@dataclass
class RunningHostileBridge:
    bridge: HostileBridge
    clock: ManualClock
    target: str

    def advance(self, seconds: float) -> dt.datetime:
        return self.clock.advance(seconds)


@contextmanager
def hostile_bridge(
    participants: dict[str, str], start: dt.datetime, scenario: str = "steady"
) -> Iterator[RunningHostileBridge]:
    clock = ManualClock(start)
    simulator = Simulator(participants, load_scenario(scenario), clock)
    bridge = HostileBridge(RateLimitServicer(simulator, FaultBook()))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_RateLimitServiceServicer_to_server(bridge, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield RunningHostileBridge(bridge, clock, f"127.0.0.1:{port}")
    finally:
        server.stop(None)
