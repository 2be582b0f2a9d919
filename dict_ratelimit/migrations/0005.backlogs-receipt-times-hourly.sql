-- Exact increments, two clocks, the monitor's own calls, and an hourly rollup that prunes.
-- depends: 0004.monitor-ticks

-- Which call produced a reading: 'list' (ListPolicies, one POLICIES_LIST token) or 'get'
-- (GetPolicy, one POLICIES_READ token). The monitor's own calls are part of what those two
-- buckets lose; the metrics subtract them so that the monitor never alarms about itself.
ALTER TABLE dict_ratelimit.policy_snapshot
    ADD COLUMN source text NOT NULL DEFAULT 'list' CHECK (source IN ('list', 'get'));
COMMENT ON COLUMN dict_ratelimit.policy_snapshot.source IS
    'list: read by ListPolicies (costs a POLICIES_LIST token); get: by GetPolicy (a POLICIES_READ token)';
CREATE INDEX policy_snapshot_get_idx
    ON dict_ratelimit.policy_snapshot (ispb, response_time) WHERE source = 'get';

ALTER TABLE dict_ratelimit.policy_metric ADD COLUMN own_calls integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN dict_ratelimit.policy_metric.own_calls IS
    'POLICIES_LIST / POLICIES_READ calls the monitor itself made since the previous reading; subtracted from the demand estimates';

-- Work queues of the pipeline. A stored snapshot (and the next reading of its policy, when it
-- arrived late) waits in metric_backlog until its metrics and evaluation are written; each
-- written evaluation waits in alert_backlog until the alert machine has seen it. Each queue is
-- emptied in the same transaction that writes the results, so a failed step leaves its work
-- for the next run, and no step ever searches history by time.
CREATE TABLE dict_ratelimit.metric_backlog (
    ispb           char(8)     NOT NULL,
    policy         text        NOT NULL,
    response_time  timestamptz NOT NULL,
    enqueued_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, response_time)
);
COMMENT ON TABLE dict_ratelimit.metric_backlog IS
    'Snapshots whose metrics and evaluation are still to be computed (emptied by each tick)';

CREATE TABLE dict_ratelimit.alert_backlog (
    ispb           char(8)     NOT NULL,
    policy         text        NOT NULL,
    response_time  timestamptz NOT NULL,
    enqueued_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, response_time)
);
COMMENT ON TABLE dict_ratelimit.alert_backlog IS
    'Threshold evaluations the alert machine has not seen yet (emptied by each tick)';

-- What the time-window queries of the previous version would still have picked up.
INSERT INTO dict_ratelimit.metric_backlog (ispb, policy, response_time)
SELECT s.ispb, s.policy, s.response_time
FROM dict_ratelimit.policy_snapshot AS s
WHERE s.response_time > now() - interval '1 day'
  AND NOT EXISTS (
      SELECT 1 FROM dict_ratelimit.policy_metric AS m
      WHERE m.ispb = s.ispb AND m.policy = s.policy AND m.response_time = s.response_time);

INSERT INTO dict_ratelimit.alert_backlog (ispb, policy, response_time)
SELECT e.ispb, e.policy, e.response_time
FROM dict_ratelimit.threshold_evaluation AS e
LEFT JOIN dict_ratelimit.alert_track AS t ON t.ispb = e.ispb AND t.policy = e.policy
WHERE e.response_time > now() - interval '15 minutes'
  AND e.response_time > coalesce(t.last_observed_at, '-infinity');

-- Per participant, its newest reading on both clocks: what the exporter's snapshot age and an
-- operator's "when did we last hear from them" read, without searching the snapshots.
ALTER TABLE dict_ratelimit.participant
    ADD COLUMN last_reading_at timestamptz,
    ADD COLUMN last_received_at timestamptz,
    ADD COLUMN last_listing_at timestamptz;
COMMENT ON COLUMN dict_ratelimit.participant.last_reading_at IS
    'DICT ResponseTime of the newest stored reading';
COMMENT ON COLUMN dict_ratelimit.participant.last_listing_at IS
    'DICT ResponseTime of the newest stored full listing (ListPolicies)';
COMMENT ON COLUMN dict_ratelimit.participant.last_received_at IS
    'Our clock when the newest stored reading was received (polled_at)';
UPDATE dict_ratelimit.participant AS p
SET last_reading_at = l.response_time, last_received_at = l.polled_at,
    last_listing_at = l.response_time
FROM (
    SELECT DISTINCT ON (ispb) ispb, response_time, polled_at
    FROM dict_ratelimit.latest_policy_state ORDER BY ispb, response_time DESC
) AS l
WHERE l.ispb = p.ispb;

-- Freshness is judged on our clock (when a reading reached us), never on DICT's: a DICT clock
-- running behind ours must not make every reading look stale.
ALTER TABLE dict_ratelimit.alert_track ADD COLUMN last_received_at timestamptz;
ALTER TABLE dict_ratelimit.alert ADD COLUMN last_received_at timestamptz;
COMMENT ON COLUMN dict_ratelimit.alert_track.last_received_at IS
    'Our clock when the newest applied reading was received (polled_at); staleness is measured from it';

-- The hourly rollup as a function of its range: the range reaches the scans of policy_metric
-- and threshold_evaluation (partition pruning), each reading holds its level until the next
-- reading, at most 15 minutes and never beyond as_of, and time is split at hour boundaries.
DROP VIEW dict_ratelimit.policy_hourly;

CREATE FUNCTION dict_ratelimit.policy_hourly(
    range_start timestamptz,
    range_end   timestamptz,
    as_of       timestamptz DEFAULT now()
) RETURNS TABLE (
    ispb                char(8),
    policy              text,
    hour                timestamptz,
    readings            bigint,
    min_available       bigint,
    avg_available       numeric,
    max_available       bigint,
    minutes_ok          numeric,
    minutes_warning     numeric,
    minutes_critical    numeric,
    minutes_exhausted   numeric,
    minutes_unevaluated numeric,
    demand_p50_per_min  numeric,
    demand_p95_per_min  numeric
) LANGUAGE sql STABLE AS $$
WITH timeline AS (
    SELECT
        m.ispb, m.policy, m.response_time, m.available_tokens, m.demand_per_min, e.level,
        date_trunc('hour', m.response_time) AS reading_hour,
        LEAST(
            coalesce(LEAD(m.response_time) OVER w, as_of),
            m.response_time + interval '15 minutes',
            as_of
        ) AS held_until
    FROM dict_ratelimit.policy_metric AS m
    LEFT JOIN dict_ratelimit.threshold_evaluation AS e
           ON e.ispb = m.ispb AND e.policy = m.policy AND e.response_time = m.response_time
          AND e.response_time >= date_trunc('hour', range_start) - interval '15 minutes'
          AND e.response_time < range_end + interval '15 minutes'
    WHERE m.response_time >= date_trunc('hour', range_start) - interval '15 minutes'
      AND m.response_time < range_end + interval '15 minutes'
      AND m.response_time <= as_of
    WINDOW w AS (PARTITION BY m.ispb, m.policy ORDER BY m.response_time)
), spans AS (
    -- the part of each reading's time inside its own hour ...
    SELECT ispb, policy, reading_hour AS hour, level, available_tokens, demand_per_min,
           true AS is_reading,
           greatest(0, extract(epoch FROM least(held_until, reading_hour + interval '1 hour')
                                          - response_time)) AS seconds
    FROM timeline
    UNION ALL
    -- ... and what spills into the next hour (a reading holds at most 15 minutes)
    SELECT ispb, policy, reading_hour + interval '1 hour', level, NULL, NULL, false,
           extract(epoch FROM held_until - (reading_hour + interval '1 hour'))
    FROM timeline
    WHERE held_until > reading_hour + interval '1 hour'
)
SELECT
    ispb,
    policy,
    hour,
    count(*) FILTER (WHERE is_reading),
    min(available_tokens),
    round(avg(available_tokens), 1),
    max(available_tokens),
    round(coalesce(sum(seconds) FILTER (WHERE level = 'OK'), 0) / 60.0, 2),
    round(coalesce(sum(seconds) FILTER (WHERE level = 'WARNING'), 0) / 60.0, 2),
    round(coalesce(sum(seconds) FILTER (WHERE level = 'CRITICAL'), 0) / 60.0, 2),
    round(coalesce(sum(seconds) FILTER (WHERE level = 'EXHAUSTED'), 0) / 60.0, 2),
    round(coalesce(sum(seconds) FILTER (WHERE level IS NULL), 0) / 60.0, 2),
    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY demand_per_min))::numeric, 2),
    round((percentile_cont(0.95) WITHIN GROUP (ORDER BY demand_per_min))::numeric, 2)
FROM spans
WHERE hour >= date_trunc('hour', range_start) AND hour < range_end
GROUP BY ispb, policy, hour
$$;

COMMENT ON FUNCTION dict_ratelimit.policy_hourly(timestamptz, timestamptz, timestamptz) IS
    'Per policy and hour of [range_start, range_end): readings, min/avg/max available, minutes in each level (elapsed time only, up to as_of), demand p50/p95 per minute';
