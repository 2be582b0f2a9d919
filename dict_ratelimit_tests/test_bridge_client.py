"""The Bridge client on a real gRPC server: error classes, metadata, mutual TLS, validation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from dict_ratelimit.bridge.client import BridgeClient, TlsConfig
from dict_ratelimit.bridge.errors import BridgeError, PermanentBridgeError, RetryableBridgeError
from dict_ratelimit.bridge.poller import poll_participants
from dict_ratelimit.bridge.v1 import rate_limit_pb2_grpc as pb_grpc
from dict_ratelimit.clock import FixedClock
from dict_ratelimit.domain.catalog import KNOWN_POLICY_NAMES
from dict_ratelimit.simulator.v1 import control_pb2 as ctl
from dict_ratelimit_tests.certs import issue, make_ca
from dict_ratelimit_tests.simulation import START, running_simulator

pytestmark = [pytest.mark.e2e, pytest.mark.timebased]


CODES = {
    "00000001": (grpc.StatusCode.UNAVAILABLE, True),
    "00000002": (grpc.StatusCode.DEADLINE_EXCEEDED, True),
    "00000003": (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    "00000004": (grpc.StatusCode.UNAUTHENTICATED, False),
    "00000005": (grpc.StatusCode.PERMISSION_DENIED, False),
    "00000006": (grpc.StatusCode.INVALID_ARGUMENT, False),
    "00000007": (grpc.StatusCode.NOT_FOUND, False),
}


class ScriptedBridge(pb_grpc.RateLimitServiceServicer):
    """Aborts ListPolicies with the code mapped to the participant; records metadata.

    GetRequestStats is deliberately not implemented (gRPC answers UNIMPLEMENTED).
    """

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def ListPolicies(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        code, _ = CODES.get(request.participant, (grpc.StatusCode.UNAVAILABLE, True))
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            context.set_trailing_metadata((("retry-after", "12"),))
        context.abort(code, f"scripted {code.name}")


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedBridge, str]]:
    servicer = ScriptedBridge()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RateLimitServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.mark.parametrize("ispb", sorted(CODES))
def test_each_status_code_gets_its_class_and_retry_decision(
    scripted: tuple[ScriptedBridge, str], ispb: str
) -> None:
    code, retryable = CODES[ispb]
    with BridgeClient(scripted[1]) as client:
        with pytest.raises(BridgeError) as raised:
            client.list_policies(ispb)
    error = raised.value
    assert error.code == code
    assert error.retryable is retryable
    assert isinstance(error, RetryableBridgeError if retryable else PermanentBridgeError)
    assert ispb in str(error) and code.name in str(error)
    assert error.error_class == code.name.lower()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert error.retry_after == 12
    else:
        assert error.retry_after is None


def test_unimplemented_request_stats_means_unknown_not_zero(
    scripted: tuple[ScriptedBridge, str],
) -> None:
    with BridgeClient(scripted[1]) as client:
        assert client.request_stats("00000001", dt.timedelta(minutes=5)) is None


def test_bearer_token_and_metadata_reach_the_bridge(scripted: tuple[ScriptedBridge, str]) -> None:
    servicer, target = scripted
    with (
        BridgeClient(
            target,
            bearer_token="t0k3n",
            allow_plaintext_token=True,
            metadata=[("X-Institution", "lb")],
        ) as client,
        pytest.raises(BridgeError),
    ):
        client.list_policies("00000001")
    assert servicer.metadata[-1]["authorization"] == "Bearer t0k3n"
    assert servicer.metadata[-1]["x-institution"] == "lb"


def test_a_bearer_token_over_plaintext_is_refused_unless_allowed() -> None:
    with pytest.raises(ValueError, match="ALLOW_PLAINTEXT_TOKEN"):
        BridgeClient("127.0.0.1:1", bearer_token="t0k3n")
    BridgeClient("127.0.0.1:1", bearer_token="t0k3n", allow_plaintext_token=True).close()
    BridgeClient("127.0.0.1:1", tls=TlsConfig(), bearer_token="t0k3n").close()


def test_a_bridge_that_is_down_is_retryable_unavailable() -> None:
    from dict_ratelimit.storage.embedded import free_port

    with BridgeClient(f"127.0.0.1:{free_port()}", deadline_seconds=2) as client:
        with pytest.raises(RetryableBridgeError) as raised:
            client.list_policies("12345678")
    assert raised.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# -- mutual TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca, ca_cert, ca_key = make_ca("test bridge CA")
    other_ca, _, _ = make_ca("someone else's CA")
    return {
        "ca": ca,
        "other_ca": other_ca,
        "server": issue(ca_cert, ca_key, "bridge.test", server=True),
        "client": issue(ca_cert, ca_key, "dict-ratelimit", server=False),
    }


@pytest.fixture
def mtls_simulator(pki: dict) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [(pki["server"].key, pki["server"].cert)],
        root_certificates=pki["ca"].cert,
        require_client_auth=True,
    )
    with running_simulator({"12345678": "A"}, server_credentials=credentials) as sim:
        yield sim.target


def test_mutual_tls_with_pem_contents(mtls_simulator: str, pki: dict) -> None:
    tls = TlsConfig(
        ca=pki["ca"].cert.decode(),
        client_cert=pki["client"].cert.decode(),
        client_key=pki["client"].key.decode(),
        server_name_override="bridge.test",
    )
    with BridgeClient(mtls_simulator, tls=tls, deadline_seconds=5) as client:
        assert client.list_policies("12345678").category == "A"


def test_mutual_tls_with_file_paths(mtls_simulator: str, pki: dict, tmp_path: Path) -> None:
    paths = {}
    for name, content in (
        ("ca.pem", pki["ca"].cert),
        ("client.pem", pki["client"].cert),
        ("client.key", pki["client"].key),
    ):
        (tmp_path / name).write_bytes(content)
        paths[name] = str(tmp_path / name)
    tls = TlsConfig(paths["ca.pem"], paths["client.pem"], paths["client.key"], "bridge.test")
    with BridgeClient(mtls_simulator, tls=tls, deadline_seconds=5) as client:
        assert len(client.list_policies("12345678").policies) == 28


def test_mutual_tls_refuses_a_server_signed_by_another_ca(mtls_simulator: str, pki: dict) -> None:
    tls = TlsConfig(
        ca=pki["other_ca"].cert.decode(),
        client_cert=pki["client"].cert.decode(),
        client_key=pki["client"].key.decode(),
        server_name_override="bridge.test",
    )
    with BridgeClient(mtls_simulator, tls=tls, deadline_seconds=3) as client:
        with pytest.raises(RetryableBridgeError) as raised:
            client.list_policies("12345678")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_without_client_certificate_is_refused(mtls_simulator: str, pki: dict) -> None:
    tls = TlsConfig(ca=pki["ca"].cert.decode(), server_name_override="bridge.test")
    with BridgeClient(mtls_simulator, tls=tls, deadline_seconds=3) as client:
        with pytest.raises(BridgeError) as raised:
            client.list_policies("12345678")
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_tls_config_errors_are_clear(tmp_path: Path, pki: dict) -> None:
    with pytest.raises(ValueError, match="both the client certificate and its key"):
        TlsConfig(client_cert=pki["client"].cert.decode()).credentials()
    with pytest.raises(FileNotFoundError, match=r"missing\.pem"):
        TlsConfig(ca=str(tmp_path / "missing.pem")).credentials()


# -- polling: retries and malformed readings ------------------------------------------------


def test_poller_retries_honouring_retry_after_then_succeeds() -> None:
    waits: list[float] = []
    with running_simulator({"12345678": "A", "87654321": "B"}) as sim, sim.client() as client:
        sim.inject(ctl.RESOURCE_EXHAUSTED, participant="12345678", times=1, retry_after_seconds=3)
        result = poll_participants(
            client,
            ["12345678", "87654321"],
            KNOWN_POLICY_NAMES,
            clock=FixedClock(START),
            sleep=waits.append,
        )
    assert waits == [3]
    assert set(result.readings) == {"12345678", "87654321"} and not result.failures


def test_poller_gives_up_on_permanent_errors_at_once() -> None:
    waits: list[float] = []
    with running_simulator({"12345678": "A"}) as sim, sim.client() as client:
        sim.inject(ctl.PERMISSION_DENIED, times=0)
        result = poll_participants(
            client, ["12345678"], KNOWN_POLICY_NAMES, clock=FixedClock(START), sleep=waits.append
        )
    assert waits == []
    failure = result.failures["12345678"]
    assert (failure.error_class, failure.retryable, failure.attempts) == (
        "permission_denied",
        False,
        1,
    )


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("category", "invalid Category: 'a1' is not one capital letter"),
        ("response_time", "invalid ResponseTime: missing"),
        ("capacity", "Capacity: 0 is outside 1.."),
        ("refill_tokens", "RefillTokens: 0 is outside 1.."),
        ("refill_period_sec", "RefillPeriodSec: 0 is outside 1..2147483647"),
        ("available_above_capacity", "is above the capacity"),
        ("duplicate_policy", "appears twice"),
        ("unknown_policy", "unknown policy NOT_A_DICT_POLICY"),
    ],
)
def test_malformed_readings_reject_the_whole_participant(field: str, message: str) -> None:
    with running_simulator({"12345678": "A", "87654321": "A"}) as sim, sim.client() as client:
        sim.inject(ctl.MALFORMED, participant="12345678", malformed_field=field, times=1)
        result = poll_participants(
            client, ["12345678", "87654321"], KNOWN_POLICY_NAMES, clock=FixedClock(START)
        )
    failure = result.failures["12345678"]
    assert failure.error_class == "invalid_reading" and not failure.retryable
    assert "participant 12345678" in failure.message and message in failure.message
    assert "12345678" not in result.readings  # nothing of it, not even the valid policies
    assert len(result.readings["87654321"]) == 28


def test_response_time_far_from_our_clock_is_rejected() -> None:
    with running_simulator({"12345678": "A"}) as sim, sim.client() as client:
        late = poll_participants(
            client,
            ["12345678"],
            KNOWN_POLICY_NAMES,
            clock=FixedClock(START + dt.timedelta(hours=3)),  # e.g. local time sent as UTC
        )
        unchecked = poll_participants(
            client,
            ["12345678"],
            KNOWN_POLICY_NAMES,
            max_skew=None,
            clock=FixedClock(START + dt.timedelta(hours=3)),
        )
    assert "is 3:00:00 away from the poll time" in late.failures["12345678"].message
    assert len(unchecked.readings["12345678"]) == 28


def test_negative_available_tokens_are_valid() -> None:
    from dict_ratelimit.domain.readings import RawListing, RawPolicy, validate_listing

    listing = RawListing(
        "12345678", START, "ab" * 16, "A", (RawPolicy("KEYS_CHECK", -19, 70, 70, 60),)
    )
    [reading] = validate_listing(listing, START, KNOWN_POLICY_NAMES)
    assert reading.available_tokens == -19
    assert reading.remaining_ratio == pytest.approx(-19 / 70)
