"""The alert state machine (pure): opening, severity changes, hysteresis, NODATA, categories."""

import datetime as dt

import jsonschema
import pytest

from dict_ratelimit.domain.alert_model import stamp
from dict_ratelimit.domain.alerts import (
    PARTICIPANT,
    AlertRules,
    AlertRulesError,
    Observation,
    Status,
    Track,
    apply,
    apply_all,
    check_participant,
    check_stale,
)
from dict_ratelimit.domain.thresholds import Level, Thresholds
from dict_ratelimit.events.cloudevents import load_schema, to_cloudevent
from dict_ratelimit_tests.outbox_fixtures import T0, observation

pytestmark = pytest.mark.timebased

RULES = AlertRules()


def reading(
    minute: int, ratio: float, ttl: float | None = None, category: str = "A"
) -> Observation:
    return observation("12345678", "ENTRIES_READ_USER_ANON", minute, ratio, ttl, category)


def run(ratios: list[float], rules: AlertRules = RULES) -> tuple[Track, list]:
    track = Track("12345678", "ENTRIES_READ_USER_ANON")
    observations = [reading(5 * i, ratio) for i, ratio in enumerate(ratios)]
    return apply_all(track, observations, rules)


def kinds(transitions: list) -> list[str]:
    return [t.kind.value for t in transitions]


def test_an_episode_opens_escalates_deescalates_and_resolves_past_the_clear_threshold() -> None:
    track, transitions = run([0.5, 0.18, 0.05, 0.0, 0.15, 0.25, 0.35, 0.40])
    assert kinds(transitions) == [
        "alert.opened",  # 18 %: WARNING
        "alert.escalated",  # 5 %: CRITICAL
        "alert.escalated",  # 0: EXHAUSTED
        "alert.deescalated",  # 15 %: WARNING
        # 25 %: OK but below the 30 % clear threshold: still open at WARNING, nothing emitted
        # 35 %: first clear reading; 40 %: second -> resolved
        "alert.resolved",
    ]
    severities = [(t.severity, t.previous_severity) for t in transitions]
    assert severities[:4] == [
        (Level.WARNING, None),
        (Level.CRITICAL, Level.WARNING),
        (Level.EXHAUSTED, Level.CRITICAL),
        (Level.WARNING, Level.EXHAUSTED),
    ]
    episode = transitions[-1].episode
    assert episode.status == Status.RESOLVED
    assert episode.peak_severity == Level.EXHAUSTED
    assert episode.lowest_available_tokens == 0
    assert episode.opened_at == T0 + dt.timedelta(minutes=5)
    assert episode.resolved_at == T0 + dt.timedelta(minutes=35)
    assert [label for _, label in episode.severity_history] == [
        "WARNING", "CRITICAL", "EXHAUSTED", "WARNING", "RESOLVED",
    ]  # fmt: skip
    # one episode: every event carries its key, numbered 1..5
    assert {t.episode.key for t in transitions} == {episode.key}
    assert [t.event_id for t in transitions] == [f"{episode.key}:{n}" for n in range(1, 6)]
    assert track.episode is None
    assert "RESOLVED" in episode.message and "peak EXHAUSTED" in episode.message


def test_a_signal_oscillating_between_18_and_22_percent_does_not_flap() -> None:
    _, transitions = run([0.5] + [0.18, 0.22] * 20)
    assert kinds(transitions) == ["alert.opened"]  # one episode, never resolved


def test_the_replaced_rule_would_have_flapped_on_the_same_signal() -> None:
    """With the clear threshold equal to the warning threshold and one reading to clear (the
    old system), the same signal opens and resolves an alert on every swing."""
    track = Track("12345678", "ENTRIES_READ_USER_ANON")
    observations = []
    for i, ratio in enumerate([0.18, 0.22] * 5):
        obs = reading(5 * i, ratio)
        observations.append(
            Observation(**{**obs.__dict__, "clear_ratio": Thresholds().warning_ratio})
        )
    old_rule = AlertRules(clear_after=1, settle_after=dt.timedelta(0))
    _, transitions = apply_all(track, observations, old_rule)
    assert kinds(transitions).count("alert.opened") == 5


def test_one_clear_reading_is_not_enough_by_default() -> None:
    _, transitions = run([0.15, 0.50, 0.15, 0.50, 0.50])
    assert kinds(transitions) == ["alert.opened", "alert.resolved"]
    assert transitions[-1].at == T0 + dt.timedelta(minutes=20)


def test_a_forecast_reason_keeps_the_episode_open_even_above_the_clear_threshold() -> None:
    track = Track("12345678", "ENTRIES_READ_USER_ANON")
    observations = [
        reading(0, 0.15),
        reading(5, 0.60, ttl=200.0),  # plenty left, but the first 429 is 200 s away: CRITICAL
        reading(10, 0.60, ttl=600.0),  # WARNING by forecast
        reading(15, 0.60),
        reading(20, 0.60),
    ]
    _, transitions = apply_all(track, observations, RULES)
    assert kinds(transitions) == [
        "alert.opened", "alert.escalated", "alert.deescalated", "alert.resolved",
    ]  # fmt: skip
    assert transitions[-1].at == T0 + dt.timedelta(minutes=20)
    assert transitions[1].observation.has_forecast_reason


def test_fire_after_needs_consecutive_alarming_evaluations() -> None:
    rules = AlertRules(fire_after=2)
    _, transitions = run([0.15, 0.50, 0.15, 0.50], rules)
    assert transitions == []
    _, transitions = run([0.15, 0.15], rules)
    assert kinds(transitions) == ["alert.opened"]
    assert transitions[0].at == T0 + dt.timedelta(minutes=5)


def test_reapplying_the_same_evaluations_emits_nothing() -> None:
    track, first = run([0.15, 0.05])
    again, second = apply(track, reading(5, 0.05), RULES)
    assert first and second == [] and again == track


def test_event_ids_are_deterministic() -> None:
    _, first = run([0.5, 0.15, 0.05, 0.5, 0.5])
    _, second = run([0.5, 0.15, 0.05, 0.5, 0.5])
    assert [t.event_id for t in first] == [t.event_id for t in second]
    opened_at = stamp(T0 + dt.timedelta(minutes=5))
    assert first[0].event_id == f"12345678/ENTRIES_READ_USER_ANON/{opened_at}:1"


def test_a_stale_open_episode_goes_nodata_once_and_comes_back_with_the_next_reading() -> None:
    track, _ = run([0.15])  # opened at T0
    fresh, none = check_stale(track, T0 + dt.timedelta(minutes=15), RULES)
    assert none == [] and fresh == track  # exactly the staleness limit: not yet
    stale, transitions = check_stale(track, T0 + dt.timedelta(minutes=16), RULES)
    assert kinds(transitions) == ["alert.nodata"]
    assert stale.episode.status == Status.NODATA and stale.episode.is_open
    assert transitions[0].severity == Level.WARNING  # the last known severity
    _, twice = check_stale(stale, T0 + dt.timedelta(minutes=30), RULES)
    assert twice == []
    back, transitions = apply(stale, reading(35, 0.16), RULES)
    assert kinds(transitions) == ["alert.data_restored"]
    assert back.episode.status == Status.OPEN
    back, transitions = apply(stale, reading(35, 0.05), RULES)
    assert kinds(transitions) == ["alert.escalated"]  # the change says it all


def test_a_participant_without_readings_raises_one_nodata_alert_until_readings_return() -> None:
    track = Track("12345678", PARTICIPANT)
    newest = (T0, T0)  # (DICT time, received on our clock)
    track, transitions = check_participant(track, newest, "A", T0 + dt.timedelta(minutes=5), RULES)
    assert transitions == []
    later = T0 + dt.timedelta(minutes=20)
    track, transitions = check_participant(track, newest, "A", later, RULES)
    assert kinds(transitions) == ["alert.nodata"]
    assert transitions[0].severity == Level.CRITICAL
    assert "12345678" in transitions[0].message
    track, again = check_participant(track, newest, "A", later + dt.timedelta(minutes=5), RULES)
    assert again == []  # one alert, not one per check
    back_at = later + dt.timedelta(minutes=7)
    track, transitions = check_participant(track, (back_at, back_at), "A", back_at, RULES)
    assert kinds(transitions) == ["alert.resolved"]
    assert transitions[0].event_id.endswith(":2") and track.episode is None
    assert transitions[0].severity == Level.CRITICAL  # what it was when it resolved


def test_a_participant_never_read_gets_the_staleness_grace_period() -> None:
    track, transitions = check_participant(Track("12345678", PARTICIPANT), None, None, T0, RULES)
    assert transitions == []
    _, transitions = check_participant(track, None, None, T0 + dt.timedelta(minutes=16), RULES)
    assert kinds(transitions) == ["alert.nodata"]


def test_a_dict_clock_behind_ours_is_not_stale_data() -> None:
    """DICT 2 h behind: the reading arrived a minute ago on our clock, so it is fresh."""
    dict_time = T0 - dt.timedelta(hours=2)
    track, transitions = check_participant(
        Track("12345678", PARTICIPANT), (dict_time, T0), "A", T0 + dt.timedelta(minutes=1), RULES
    )
    assert transitions == []
    behind = observation("12345678", "KEYS_CHECK", 0, 0.05, received_late_by=2 * 3600)
    track, opened = apply(Track("12345678", "KEYS_CHECK"), behind, RULES)
    assert kinds(opened) == ["alert.opened"]
    # 5 minutes after it arrived on our clock (2 h 5 min after its DICT time): still fresh
    _, none = check_stale(track, behind.received + dt.timedelta(minutes=5), RULES)
    assert none == []
    _, stale = check_stale(track, behind.received + dt.timedelta(minutes=16), RULES)
    assert kinds(stale) == ["alert.nodata"]


def test_a_category_change_is_its_own_event() -> None:
    track = Track("12345678", PARTICIPANT, category="A")
    track, transitions = check_participant(track, (T0, T0), "A", T0, RULES)
    assert transitions == []
    track, transitions = check_participant(track, (T0, T0), "D", T0, RULES)
    assert kinds(transitions) == ["participant.category_changed"]
    change = transitions[0]
    assert (change.previous_category, change.category) == ("A", "D")
    assert change.event_id == f"12345678/category/{stamp(T0)}"
    assert track.category == "D"


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        (AlertRules(fire_after=0), "fire_after"),
        (AlertRules(clear_after=0), "clear_after"),
        (AlertRules(stale_after=dt.timedelta(0)), "stale_after"),
    ],
)
def test_invalid_rules_name_the_field(rules: AlertRules, field: str) -> None:
    with pytest.raises(AlertRulesError, match=field):
        rules.validate()


def test_severity_swinging_between_critical_and_warning_does_not_page_each_swing() -> None:
    """A stepped bucket read at alternating refill phases: 8 % then 15 % then 8 % ..."""
    _, transitions = run([0.08, 0.15] * 6)
    assert kinds(transitions) == ["alert.opened"]
    assert transitions[0].severity == Level.CRITICAL


def test_deescalation_needs_clear_after_readings_below_and_goes_to_the_worst_of_them() -> None:
    _, transitions = run([0.0, 0.15, 0.08, 0.08, 0.15, 0.15])
    assert kinds(transitions) == ["alert.opened", "alert.deescalated", "alert.deescalated"]
    assert [t.severity for t in transitions] == [Level.EXHAUSTED, Level.CRITICAL, Level.WARNING]
    assert [(t.at - T0) / dt.timedelta(minutes=1) for t in transitions] == [0, 10, 25]


def test_a_resolved_event_says_the_severity_it_resolved_at_and_no_old_forecast() -> None:
    """CRITICAL from a forecast, then two clear readings: the same two readings de-escalate
    and resolve. The event must not tell the pager WARNING, nor repeat the old forecast."""
    track = Track("12345678", "ENTRIES_READ_USER_ANON")
    critical = reading(0, 0.5, ttl=120)  # half full, but empty in 2 minutes: CRITICAL
    assert critical.level == Level.CRITICAL and critical.has_forecast_reason
    _, transitions = apply_all(track, [critical, reading(5, 0.6), reading(10, 0.7)], RULES)
    assert kinds(transitions) == ["alert.opened", "alert.resolved"]
    resolved = transitions[-1]
    assert resolved.severity == Level.CRITICAL == resolved.episode.peak_severity
    assert resolved.episode.severity == Level.CRITICAL
    assert resolved.episode.reasons == ()
    data = to_cloudevent(resolved)["data"]
    assert (data["severity"], data["peak_severity"], data["reasons"]) == (
        "CRITICAL",
        "CRITICAL",
        [],
    )


def test_readings_every_15_seconds_do_not_resolve_or_deescalate_before_the_settle_time() -> None:
    """The watch lane reads a hot bucket every 15 s: two clear readings 15 s apart are no
    evidence of calm; the episode resolves once the clear state has held for four minutes."""
    track = Track("12345678", "ENTRIES_READ_USER_ANON")
    critical = reading(0, 0.05)
    calm = [reading(0.25 * (i + 1), 0.15) for i in range(20)]  # WARNING-level, for 5 min
    clear = [reading(5.25 + 0.25 * i, 0.6) for i in range(24)]  # clear, for 6 min
    _, transitions = apply_all(track, [critical, *calm, *clear], RULES)
    assert kinds(transitions) == ["alert.opened", "alert.deescalated", "alert.resolved"]
    deescalated, resolved = transitions[1], transitions[2]
    assert (deescalated.at - calm[0].at) >= RULES.settle_after  # not at the second reading
    assert deescalated.at - calm[0].at < RULES.settle_after + dt.timedelta(seconds=16)
    assert resolved.at - clear[0].at == RULES.settle_after  # the first reading that qualifies


def test_events_link_their_runbook_section_when_a_base_url_is_set() -> None:
    _, transitions = run([0.5, 0.18, 0.05, 0.0, 0.15, 0.25, 0.35, 0.40])
    base = "https://wiki.example.internal/dict-ratelimit/runbook"
    links = [to_cloudevent(t, runbook_base_url=base)["data"]["runbook_url"] for t in transitions]
    assert links == [
        f"{base}#bucket-warning",  # opened at WARNING
        f"{base}#bucket-critical",
        f"{base}#bucket-exhausted",
        f"{base}#bucket-warning",  # de-escalated
        f"{base}#bucket-warning",  # resolved at WARNING
    ]
    _, [nodata] = check_stale(run([0.15])[0], T0 + dt.timedelta(minutes=16), RULES)
    assert to_cloudevent(nodata, runbook_base_url=base)["data"]["runbook_url"] == (
        f"{base}#snapshot-stale"
    )
    schema = load_schema()
    for transition in (*transitions, nodata):
        event = to_cloudevent(transition, runbook_base_url=base)
        jsonschema.validate(event, schema, format_checker=jsonschema.FormatChecker())
        assert "runbook_url" not in to_cloudevent(transition)["data"]  # unset: as before
