"""The simulator over real gRPC: contract, monitor budget, scenarios, ground truth, faults."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import grpc
import pytest

from dict_ratelimit.bridge.errors import PermanentBridgeError, RetryableBridgeError
from dict_ratelimit.domain.catalog import LISTED_POLICY_NAMES
from dict_ratelimit.simulator.clock import ManualClock, RealClock, parse_clock
from dict_ratelimit.simulator.engine import Simulator
from dict_ratelimit.simulator.scenarios import ScenarioError, load_scenario
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit_tests.simulation import START, running_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


ANTISCAN = "ENTRIES_READ_PARTICIPANT_ANTISCAN"


def _policy(listing, name: str):  # type: ignore[no-untyped-def]
    return next(p for p in listing.policies if p.name == name)


def test_list_policies_answers_every_listed_policy_with_dicts_fields() -> None:
    with running_simulator({"12345678": "A", "87654321": "H"}) as sim, sim.client() as client:
        listing = client.list_policies("12345678")
        assert listing.response_time == START
        assert len(listing.correlation_id) == 32
        assert listing.category == "A"
        assert [p.name for p in listing.policies] == list(LISTED_POLICY_NAMES)
        assert len(listing.policies) == 28  # the two per-user policies are not listed
        write = _policy(listing, "ENTRIES_WRITE")
        assert (write.capacity, write.refill_tokens, write.refill_period_sec) == (36_000, 1_200, 60)
        small = _policy(client.list_policies("87654321"), ANTISCAN)
        assert (small.capacity, small.refill_tokens) == (50, 2)  # category H
        single = client.get_policy("12345678", "KEYS_CHECK")
        assert [p.name for p in single.policies] == ["KEYS_CHECK"]


def test_the_monitors_own_calls_cost_policies_list_tokens() -> None:
    with running_simulator({"12345678": "A"}) as sim, sim.client() as client:
        for _ in range(19):
            client.list_policies("12345678")
        last = client.list_policies("12345678")  # the 20th: the bucket shows what is left
        assert _policy(last, "POLICIES_LIST").available_tokens == 0
        with pytest.raises(RetryableBridgeError) as exhausted:
            client.list_policies("12345678")
        assert exhausted.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert exhausted.value.retry_after == 60  # next refill step (period 60 s, phase 0)
        sim.advance(60)
        assert _policy(client.list_policies("12345678"), "POLICIES_LIST").available_tokens == 5
        assert _policy(client.get_policy("12345678", "KEYS_CHECK"), "KEYS_CHECK")
        assert (
            _policy(
                client.get_policy("12345678", "POLICIES_READ"), "POLICIES_READ"
            ).available_tokens
            == 198
        )


def test_scan_attack_replays_an_hour_with_its_ground_truth() -> None:
    with running_simulator({"12345678": "A"}, "scan-attack") as sim, sim.client() as client:
        sim.advance(3600)
        truth = sim.control.GetGroundTruth(ctl.GetGroundTruthRequest(participant="12345678"))
        exhausted = {p.policy: p for p in truth.policies if p.empty_intervals}
        assert set(exhausted) == {ANTISCAN}
        antiscan = exhausted[ANTISCAN]
        starts = [i.start.ToDatetime(tzinfo=dt.timezone.utc) for i in antiscan.empty_intervals]
        ends = [i.end.ToDatetime(tzinfo=dt.timezone.utc) for i in antiscan.empty_intervals]
        assert START + dt.timedelta(minutes=10) <= min(starts)  # not before the scan starts
        assert max(ends) <= START + dt.timedelta(minutes=27)  # recovered after it stops
        assert antiscan.rejected_total == sum(i.rejected for i in antiscan.empty_intervals) > 0
        stats = client.request_stats("12345678", dt.timedelta(minutes=5))
        share = stats.not_found_share(ANTISCAN)
        assert share == pytest.approx(0.02, abs=0.005)  # back to normal traffic at the end


def test_replay_is_deterministic() -> None:
    def run() -> list[tuple[float, float | None, int]]:
        clock = ManualClock(START)
        simulator = Simulator({"12345678": "A"}, load_scenario("demo"), clock)
        clock.advance(1800)
        simulator.now()
        return [
            (i.start, i.end, i.rejected)
            for b in simulator.buckets("12345678").values()
            for i in b.intervals
        ]

    first = run()
    assert first and first == run()


def test_consecutive_count_windows_count_every_slot_once() -> None:
    """Windows of the Bridge's counts, asked every five minutes for two and a half hours (past
    the counts' two-hour retention), add up to what DICT answered, slot by slot."""
    clock = ManualClock(START)
    simulator = Simulator({"12345678": "A"}, load_scenario("scan-attack"), clock)
    window = dt.timedelta(minutes=5)
    summed: dict[str, dict[int, int]] = {}
    for _ in range(30):
        clock.advance(window.total_seconds())
        _, _, totals = simulator.request_stats("12345678", window)
        for policy, counts in totals.items():
            for status, n in counts.items():
                summed.setdefault(policy, {}).setdefault(status, 0)
                summed[policy][status] += n
    truth: dict[str, dict[int, int]] = {}
    newest = simulator.participants["12345678"].stats
    for policy, series in newest.items():
        for slot, by_status in series:
            if (slot + 1) * 10 <= 30 * window.total_seconds():  # slots that ended
                for status, n in by_status.items():
                    truth.setdefault(policy, {}).setdefault(status, 0)
                    truth[policy][status] += n
    retained_from = min(slot for series in newest.values() for slot, _ in series)
    assert retained_from > 0  # the oldest slots were dropped: the windows still counted them
    assert summed[ANTISCAN][429] > 0
    for policy, counts in truth.items():  # the retained slots: never counted twice or missed
        for status, n in counts.items():
            assert summed[policy][status] >= n
    total_429 = sum(i.rejected for i in simulator.buckets("12345678")[ANTISCAN].intervals)
    assert summed[ANTISCAN][429] == total_429  # every 429 of the run, each once


def test_category_downgrade_changes_the_buckets_mid_run() -> None:
    with running_simulator({"12345678": "A"}, "category-downgrade") as sim, sim.client() as c:
        sim.advance(899)
        before = c.list_policies("12345678")
        assert before.category == "A" and _policy(before, ANTISCAN).capacity == 50_000
        sim.advance(2)
        after = c.list_policies("12345678")
        assert after.category == "D"
        assert _policy(after, ANTISCAN).capacity == 16_000
        assert _policy(after, "ENTRIES_STATISTICS_READ").refill_tokens == 8_000
        sim.advance(600)
        truth = sim.control.GetGroundTruth(
            ctl.GetGroundTruthRequest(participant="12345678", policy=ANTISCAN)
        )
        assert truth.policies[0].rejected_total > 0  # 15,000/min no longer fits in D


def test_control_service_faults_and_category() -> None:
    with running_simulator({"12345678": "A"}) as sim, sim.client(deadline_seconds=0.3) as c:
        sim.inject(ctl.UNAVAILABLE, times=1)
        with pytest.raises(RetryableBridgeError, match="UNAVAILABLE"):
            c.list_policies("12345678")
        c.list_policies("12345678")  # only once
        sim.inject(ctl.RESOURCE_EXHAUSTED, times=1, retry_after_seconds=7)
        with pytest.raises(RetryableBridgeError) as error:
            c.list_policies("12345678")
        assert error.value.retry_after == 7
        sim.inject(ctl.DELAY, times=1, delay_ms=600)
        with pytest.raises(RetryableBridgeError) as slow:
            c.list_policies("12345678")
        assert slow.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        sim.inject(ctl.PERMISSION_DENIED, participant="12345678", times=1)
        with pytest.raises(PermanentBridgeError):
            c.list_policies("12345678")
        sim.control.SetCategory(ctl.SetCategoryRequest(participant="12345678", category="G"))
        assert c.list_policies("12345678").category == "G"
        with pytest.raises(grpc.RpcError) as bad:
            sim.control.InjectFault(
                ctl.InjectFaultRequest(kind=ctl.MALFORMED, malformed_field="nonsense")
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_participant_and_policy_map_to_dicts_errors() -> None:
    with running_simulator({"12345678": "A"}) as sim, sim.client() as client:
        with pytest.raises(PermanentBridgeError) as denied:
            client.list_policies("99999999")
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(PermanentBridgeError) as missing:
            client.get_policy("12345678", "NO_SUCH_POLICY")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(PermanentBridgeError) as invalid:
            client.list_policies("123")
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_health_service_reports_serving() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with running_simulator({"12345678": "A"}) as sim:
        with grpc.insecure_channel(sim.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_manual_clock_only_advances_when_told() -> None:
    with running_simulator({"12345678": "A"}) as sim:
        assert sim.advance(0) == START
        assert sim.advance(90.5) == START + dt.timedelta(seconds=90.5)


def test_clock_specs() -> None:
    assert isinstance(parse_clock("manual"), ManualClock)
    fast = parse_clock("x60")
    assert isinstance(fast, RealClock) and fast.speed == 60
    with pytest.raises(ValueError, match="real, manual or xN"):
        parse_clock("fast")


def test_scenario_files_are_validated_with_clear_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "traffic:\n  - {policy: KEYS_CHECK, from_s: 0, to_s: 60, rpm: 100}\n"
        "events:\n  - {at_s: 30, category: C}\n"
    )
    scenario = load_scenario(str(good))
    assert scenario.name == "good" and scenario.events[0].category == "C"
    cases = {
        "policy: NOPE, from_s: 0, to_s: 1, rpm: 1": "unknown policy 'NOPE'",
        "policy: KEYS_CHECK, from_s: 5, to_s: 5, rpm: 1": "to_s (5.0) must be after from_s",
        "policy: KEYS_CHECK, from_s: 0, to_s: 5, rpm: 1, refill_factor: 1": "exactly one of",
        "policy: KEYS_CHECK, from_s: 0, to_s: 5, rpm: 1, not_found_share: 1.5": "not_found_share",
    }
    for entry, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(f"traffic:\n  - {{{entry}}}\n")
        with pytest.raises(ScenarioError, match=re.escape(message)):
            load_scenario(str(bad))
    with pytest.raises(ScenarioError, match="neither a built-in"):
        load_scenario("no-such-scenario")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid YAML/JSON"):
        load_scenario(str(broken))


def test_every_builtin_scenario_loads() -> None:
    for name in (
        "steady",
        "business-day",
        "scan-attack",
        "burst-recovery",
        "category-downgrade",
        "demo",
    ):
        assert load_scenario(name).name == name
