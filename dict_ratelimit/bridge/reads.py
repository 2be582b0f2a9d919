"""The watch lane's Bridge calls: the counts of every participant, then the planned reads.

Counts (``GetRequestStats``) are the Bridge's own bookkeeping and cost no DICT token; reads
(``GetPolicy``, or one ``ListPolicies`` for several hot buckets) cost the participant's
``POLICIES_READ`` / ``POLICIES_LIST`` tokens, as planned by ``domain.watch``. As in a sweep,
whatever goes wrong with one participant stays with it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from dict_ratelimit import tracing
from dict_ratelimit.bridge.client import BridgeClient
from dict_ratelimit.bridge.errors import BridgeError
from dict_ratelimit.bridge.poller import ParticipantFailure, PollResult, stats_windows
from dict_ratelimit.domain.readings import InvalidReading, validate_listing
from dict_ratelimit.domain.request_stats import RequestStats
from dict_ratelimit.domain.watch import ParticipantPlan

log = logging.getLogger(__name__)


def fetch_counts(
    client: BridgeClient,
    ispbs: Sequence[str],
    since: Mapping[str, dt.datetime | None],
    now: dt.datetime,
    default_window: dt.timedelta,
    *,
    max_concurrency: int = 16,
) -> tuple[dict[str, RequestStats], dict[str, str]]:
    """The Bridge's counts since each participant's last stored ones: (counts, why unknown)."""
    windows = stats_windows(list(ispbs), since, now, default_window)
    counts: dict[str, RequestStats] = {}
    unknown: dict[str, str] = {}

    def fetch(ispb: str) -> None:
        try:
            stats = client.request_stats(ispb, windows[ispb])
        except BridgeError as error:
            unknown[ispb] = error.error_class
            return
        except InvalidReading as error:
            unknown[ispb] = f"invalid_stats: {error.field}: {error.problem}"
            return
        except Exception as error:  # optional, and one participant's problem
            unknown[ispb] = f"unexpected_error: {type(error).__name__}"
            log.exception("request counts of %s failed unexpectedly", ispb, extra={"ispb": ispb})
            return
        if stats is None:
            unknown[ispb] = "unimplemented"
        else:
            counts[ispb] = stats

    _each(fetch, ispbs, max_concurrency)
    return counts, unknown


def read_buckets(
    client: BridgeClient,
    plans: Sequence[ParticipantPlan],
    known_policies: frozenset[str],
    polled_at: dt.datetime,
    counts: Mapping[str, RequestStats],
    *,
    max_skew: dt.timedelta | None = dt.timedelta(minutes=10),
    max_concurrency: int = 16,
) -> PollResult:
    """Make the planned calls. Each GetPolicy answer is a reading of its own (``source`` get),
    a listing one of every policy (``source`` list). A participant that read something keeps
    its counts with the readings (they end at its first reading of the round)."""
    result = PollResult(polled_at=polled_at)

    def read(plan: ParticipantPlan) -> None:
        ispb = plan.ispb
        try:
            if plan.listing:
                listing = client.list_policies(ispb)
                result.readings[ispb] = validate_listing(
                    listing, polled_at, known_policies, max_skew=max_skew, source="list"
                )
            else:
                for policy in plan.reads:
                    answer = client.get_policy(ispb, policy)
                    result.readings.setdefault(ispb, []).extend(
                        validate_listing(
                            answer, polled_at, known_policies, max_skew=max_skew, source="get"
                        )
                    )
        except InvalidReading as error:
            result.failures[ispb] = ParticipantFailure(
                ispb, "invalid_reading", False, str(error), 1, error.field
            )
        except BridgeError as error:  # e.g. RESOURCE_EXHAUSTED: our own budget is empty
            result.failures[ispb] = ParticipantFailure(
                ispb, error.error_class, error.retryable, str(error), 1
            )
        except Exception as error:
            log.exception("watch read of %s failed unexpectedly", ispb, extra={"ispb": ispb})
            result.failures[ispb] = ParticipantFailure(
                ispb, "unexpected_error", False, f"participant {ispb}: {error!r}", 1
            )
        if result.readings.get(ispb) and ispb in counts:
            result.request_stats[ispb] = counts[ispb]

    _each(read, plans, max_concurrency)
    return result


def _each(function, items, max_concurrency: int) -> None:  # type: ignore[no-untyped-def]
    items = list(items)
    if not items:
        return
    workers = max(1, min(max_concurrency, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bridge-watch") as pool:
        list(pool.map(tracing.carry_context(function), items))  # the round's trace
