"""A running simulator on loopback (real gRPC server), for integration tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.simulator.bucket import RefillMode
from dict_ratelimit.simulator.clock import ManualClock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.faults import FaultBook
from dict_ratelimit.simulator.scenarios import load_scenario
from dict_ratelimit.simulator.server import start_server
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit.simulator.v1 import control_pb2_grpc as ctl_grpc
from dict_ratelimit_tests.timebase import base_time

#: Where every simulator of the suite starts: today, or DICT_RATELIMIT_TEST_BASE_TIME.
START = base_time()


@dataclass
class RunningSimulator:
    simulator: Simulator
    clock: ManualClock
    port: int
    faults: FaultBook
    control: ctl_grpc.SimulatorControlStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> BridgeClient:
        return BridgeClient(self.target, **kwargs)  # type: ignore[arg-type]

    def advance(self, seconds: float) -> dt.datetime:
        """Move the manual clock through the control service, as an external tester would."""
        response = self.control.AdvanceClock(ctl.AdvanceClockRequest(seconds=seconds))
        return response.now.ToDatetime(tzinfo=dt.timezone.utc)

    def inject(self, kind: int, **fields: object) -> None:
        self.control.InjectFault(ctl.InjectFaultRequest(kind=kind, **fields))


@contextmanager
def running_simulator(
    participants: dict[str, str],
    scenario: str = "steady",
    *,
    start: dt.datetime = START,
    refill_mode: RefillMode = RefillMode.STEPPED,
    server_credentials: grpc.ServerCredentials | None = None,
) -> Iterator[RunningSimulator]:
    clock = ManualClock(start)
    simulator = Simulator(participants, load_scenario(scenario), clock, refill_mode=refill_mode)
    server, port, faults = start_server(simulator, server_credentials=server_credentials)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield RunningSimulator(
            simulator, clock, port, faults, ctl_grpc.SimulatorControlStub(channel)
        )
    finally:
        channel.close()
        server.stop(grace=None)
