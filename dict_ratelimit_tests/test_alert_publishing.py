"""publish_alert_events against a real Pulsar wire protocol broker, with a real consumer."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator

import dagster as dg
import pulsar
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from dict_ratelimit.defs.events import PublishFailed, publish_alert_events
from dict_ratelimit.defs.resources import ClockResource, PostgresResource, PulsarResource
from dict_ratelimit.events.publisher import DEFAULT_TOPIC, PulsarConfigError
from dict_ratelimit_tests.certs import issue, make_ca
from dict_ratelimit_tests.outbox_fixtures import write_episodes
from dict_ratelimit_tests.pulsar_broker.broker import PulsarTestBroker

pytestmark = [pytest.mark.e2e]


IDENTITIES = [("12345678", "ENTRIES_READ_USER_ANON"), ("23456789", "KEYS_CHECK")]


def evaluate(db_url: URL, url: str, cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(
        cursor=cursor,
        resources={
            "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
            "pulsar": PulsarResource(service_url=url, timeout_seconds=3),
            "clock": ClockResource(),
        },
    ) as context:
        return publish_alert_events(context)


def outbox(engine: Engine) -> list[sa.Row]:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT id, event_id, published_at, attempts, last_error, payload "
                "FROM dict_ratelimit.alert_event ORDER BY id"
            )
        ).fetchall()


@pytest.fixture
def consumer(pulsar_broker: PulsarTestBroker) -> Iterator[pulsar.Consumer]:
    client = pulsar.Client(pulsar_broker.url, operation_timeout_seconds=5)
    consumer = client.subscribe(
        DEFAULT_TOPIC,
        "notification-service",
        consumer_type=pulsar.ConsumerType.KeyShared,
        initial_position=pulsar.InitialPosition.Earliest,
    )
    yield consumer
    client.close()


def drain(consumer: pulsar.Consumer, expected: int) -> list[pulsar.Message]:
    """Every message until ``expected`` arrived and then a quiet second (no extra copies)."""
    received = []
    while True:
        try:
            message = consumer.receive(timeout_millis=3000 if len(received) < expected else 1000)
        except pulsar.Timeout:
            return received
        consumer.acknowledge(message)
        received.append(message)


def test_events_arrive_once_in_order_with_key_properties_and_sequence(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker, consumer: pulsar.Consumer
) -> None:
    written = write_episodes(engine, IDENTITIES)
    result = evaluate(db_url, pulsar_broker.url)
    # Dagster files a tick without runs as SKIPPED: its reason says what was published
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message.startswith(f"published (no run): published {written} ")
    [event] = result.asset_events
    assert event.asset_key == dg.AssetKey("pulsar_alert_events")
    assert event.metadata["published"].value == written
    assert f"published {written} event(s)" in (event.description or "")
    rows = outbox(engine)
    assert all(row.published_at is not None and row.attempts == 1 for row in rows)
    assert result.cursor == str(rows[-1].id)

    messages = drain(consumer, written)
    assert [json.loads(m.data())["id"] for m in messages] == [row.event_id for row in rows]
    first = messages[0]
    event = json.loads(first.data())
    assert first.partition_key() == f"{event['data']['participant']}/{event['data']['policy']}"
    assert first.properties()["ce_type"] == event["type"]
    assert first.properties()["severity"] == event["data"]["severity"]
    stored = pulsar_broker.messages(DEFAULT_TOPIC)
    assert [m.sequence_id for m in stored] == [row.id for row in rows]  # sequence_id = outbox id
    assert {m.producer_name for m in stored} == {"dict-ratelimit-alert-publisher"}
    # per alert: opened first, resolved last, sequence numbers 1..n in order
    for ispb, policy in IDENTITIES:
        mine = [json.loads(m.data()) for m in messages if m.partition_key() == f"{ispb}/{policy}"]
        assert mine[0]["type"].endswith("alert.opened")
        assert mine[-1]["type"].endswith("alert.resolved")
        assert [e["data"]["sequence"] for e in mine] == list(range(1, len(mine) + 1))


def test_an_old_cursor_resends_nothing(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker
) -> None:
    write_episodes(engine, IDENTITIES)
    evaluate(db_url, pulsar_broker.url)
    count = len(pulsar_broker.messages(DEFAULT_TOPIC))
    again = evaluate(db_url, pulsar_broker.url, cursor="0")  # a reset or stale cursor
    assert again.skip_reason.skip_message == "outbox empty: nothing to publish"
    assert len(pulsar_broker.messages(DEFAULT_TOPIC)) == count


def test_pulsar_not_configured_keeps_events_in_the_outbox(db_url: URL, engine: Engine) -> None:
    written = write_episodes(engine, IDENTITIES)
    result = evaluate(db_url, "")
    assert result.skip_reason.skip_message == (
        "Pulsar not configured (DICT_RATELIMIT_PULSAR_URL unset): "
        f"{written} event(s) wait in the outbox"
    )
    assert all(row.published_at is None for row in outbox(engine))


def test_a_broker_that_is_down_fails_the_tick_keeps_the_rows_and_later_sends_them_in_order(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker, consumer: pulsar.Consumer
) -> None:
    written = write_episodes(engine, IDENTITIES)
    pulsar_broker.refuse_connections()
    with pytest.raises(
        PublishFailed, match=rf"published 0 of {written} .* {written} event\(s\) stay"
    ):
        evaluate(db_url, pulsar_broker.url)
    rows = outbox(engine)
    assert all(row.published_at is None for row in rows)
    assert rows[0].attempts == 1 and rows[0].last_error  # the reason is kept on the row

    pulsar_broker.accept_connections()
    evaluate(db_url, pulsar_broker.url)
    rows = outbox(engine)
    assert all(row.published_at is not None and row.last_error is None for row in rows)
    messages = drain(consumer, written)
    assert [json.loads(m.data())["id"] for m in messages] == [row.event_id for row in rows]


def test_a_lost_receipt_with_deduplication_delivers_each_event_once(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker, consumer: pulsar.Consumer
) -> None:
    written = write_episodes(engine, IDENTITIES)
    pulsar_broker.drop_before_receipt(2)  # stored, connection dropped, client sends again
    evaluate(db_url, pulsar_broker.url)
    assert pulsar_broker.duplicates_dropped >= 1
    messages = drain(consumer, written)
    ids = [json.loads(m.data())["id"] for m in messages]
    assert len(ids) == written and len(set(ids)) == written
    assert all(row.published_at is not None for row in outbox(engine))


def test_a_lost_receipt_without_deduplication_repeats_the_same_cloudevents_id(
    db_url: URL, engine: Engine
) -> None:
    with PulsarTestBroker(deduplication=False) as broker:
        client = pulsar.Client(broker.url, operation_timeout_seconds=5)
        consumer = client.subscribe(
            DEFAULT_TOPIC, "s", initial_position=pulsar.InitialPosition.Earliest
        )
        written = write_episodes(engine, IDENTITIES)
        broker.drop_before_receipt(1)
        evaluate(db_url, broker.url)
        messages = drain(consumer, written + 1)
        client.close()
    ids = [json.loads(m.data())["id"] for m in messages]
    assert len(ids) == written + 1  # one duplicate on the wire ...
    assert len(set(ids)) == written  # ... carrying the same id: consumers dedupe on it
    [duplicate] = [i for i in set(ids) if ids.count(i) == 2]
    assert duplicate == ids[0]


def test_a_receipt_slower_than_the_timeout_keeps_the_row_and_it_goes_out_once_later(
    db_url: URL, engine: Engine, pulsar_broker: PulsarTestBroker, consumer: pulsar.Consumer
) -> None:
    written = write_episodes(engine, IDENTITIES)
    pulsar_broker.receipt_delay = 4.0  # the publisher's send timeout is 3 s
    with pytest.raises(PublishFailed, match="published 0 of"):
        evaluate(db_url, pulsar_broker.url)
    rows = outbox(engine)
    assert all(row.published_at is None for row in rows)
    assert "Timeout" in rows[0].last_error

    pulsar_broker.receipt_delay = 0.0
    evaluate(db_url, pulsar_broker.url)
    assert all(row.published_at is not None for row in outbox(engine))
    messages = drain(consumer, written)
    ids = [json.loads(m.data())["id"] for m in messages]
    # the first event reached the broker in the slow attempt too; deduplication kept one copy
    assert ids == [row.event_id for row in rows]


@pytest.fixture(scope="module")
def pki() -> dict[str, object]:
    ca, ca_cert, ca_key = make_ca("test pulsar CA")
    other, _, _ = make_ca("another CA")
    return {
        "ca": ca,
        "other": other,
        "broker": issue(ca_cert, ca_key, "localhost", server=True),
        "client": issue(ca_cert, ca_key, "dict-ratelimit", server=False),
    }


@pytest.fixture
def tls_broker(pki: dict, tmp_path) -> Iterator[PulsarTestBroker]:  # type: ignore[no-untyped-def]
    """A broker that only speaks TLS and asks for the client's certificate (mutual TLS)."""
    (tmp_path / "broker.pem").write_bytes(pki["broker"].cert)
    (tmp_path / "broker.key").write_bytes(pki["broker"].key)
    (tmp_path / "ca.pem").write_bytes(pki["ca"].cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.pem")
    context.load_cert_chain(tmp_path / "broker.pem", tmp_path / "broker.key")
    context.verify_mode = ssl.CERT_REQUIRED
    with PulsarTestBroker(deduplication=True, tls=context) as broker:
        yield broker


def _tls_evaluate(db_url: URL, broker: PulsarTestBroker, **tls: object) -> dg.SensorResult:
    with dg.build_sensor_context(
        resources={
            "postgres": PostgresResource(database_url=db_url.render_as_string(hide_password=False)),
            "pulsar": PulsarResource(service_url=broker.url, timeout_seconds=3, **tls),
            "clock": ClockResource(),
        },
    ) as context:
        return publish_alert_events(context)


def test_events_go_out_over_mutual_tls_with_the_right_ca_and_certificate(
    db_url: URL, engine: Engine, tls_broker: PulsarTestBroker, pki: dict
) -> None:
    written = write_episodes(engine, IDENTITIES)
    assert tls_broker.url.startswith("pulsar+ssl://")
    result = _tls_evaluate(
        db_url,
        tls_broker,
        tls_ca=pki["ca"].cert.decode(),  # PEM text: written to a private temporary file
        tls_client_cert=pki["client"].cert.decode(),
        tls_client_key=pki["client"].key.decode(),
    )
    assert result.asset_events[0].metadata["published"].value == written
    assert len(tls_broker.messages(DEFAULT_TOPIC)) == written


@pytest.mark.parametrize("mistake", ["unknown CA", "no client certificate"])
def test_a_broker_we_cannot_trust_or_that_refuses_us_gets_nothing(
    db_url: URL, engine: Engine, tls_broker: PulsarTestBroker, pki: dict, mistake: str
) -> None:
    written = write_episodes(engine, IDENTITIES)
    tls: dict[str, object] = {"tls_ca": pki["ca"].cert.decode()}
    if mistake == "unknown CA":
        tls = {
            "tls_ca": pki["other"].cert.decode(),
            "tls_client_cert": pki["client"].cert.decode(),
            "tls_client_key": pki["client"].key.decode(),
        }
    with pytest.raises(PublishFailed, match=rf"published 0 of {written}"):
        _tls_evaluate(db_url, tls_broker, **tls)
    assert tls_broker.messages(DEFAULT_TOPIC) == []
    assert all(row.published_at is None for row in outbox(engine))


def test_a_token_is_not_sent_over_plain_pulsar() -> None:
    target = PulsarResource(service_url="pulsar://127.0.0.1:6650", auth_token="t0k3n")
    with pytest.raises(PulsarConfigError, match="PULSAR_TOKEN would travel in clear"):
        target.target()
    allowed = PulsarResource(
        service_url="pulsar://127.0.0.1:6650", auth_token="t0k3n", allow_plaintext_token=True
    )
    assert allowed.target() is not None
