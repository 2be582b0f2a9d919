-- Running totals for the exporter's counters, kept by the writers in the same transaction as
-- the rows they count, instead of counts over all of history at every scrape.
-- depends: 0005.backlogs-receipt-times-hourly

-- sweeps, participants_failed, bridge_error:<class>
CREATE TABLE dict_ratelimit.monitor_counter (
    counter  text   PRIMARY KEY,
    value    bigint NOT NULL DEFAULT 0 CHECK (value >= 0)
);
COMMENT ON TABLE dict_ratelimit.monitor_counter IS
    'Running totals of the monitor''s sweeps (sweeps, participants_failed, bridge_error:<class>); never reset by retention';

INSERT INTO dict_ratelimit.monitor_counter (counter, value)
SELECT 'sweeps', count(*) FROM dict_ratelimit.monitor_tick
UNION ALL
SELECT 'participants_failed', coalesce(sum(failed), 0) FROM dict_ratelimit.monitor_tick
UNION ALL
SELECT 'bridge_error:' || e.key, sum(e.value::bigint)
FROM dict_ratelimit.monitor_tick AS t, jsonb_each_text(t.bridge_errors) AS e
GROUP BY e.key;

-- alert episodes opened and resolved, per participant
CREATE TABLE dict_ratelimit.alert_counter (
    ispb      char(8) PRIMARY KEY,
    opened    bigint  NOT NULL DEFAULT 0 CHECK (opened >= 0),
    resolved  bigint  NOT NULL DEFAULT 0 CHECK (resolved >= 0)
);
COMMENT ON TABLE dict_ratelimit.alert_counter IS
    'Alert episodes opened and resolved per participant, kept by the alert writer';

INSERT INTO dict_ratelimit.alert_counter (ispb, opened, resolved)
SELECT ispb, count(*), count(resolved_at) FROM dict_ratelimit.alert GROUP BY ispb;

-- The latest-state views, bounded: a policy's newest reading lies within the day before its
-- participant's newest reading, so each probe reads one or two monthly partitions (pruned
-- while the query runs) instead of walking every month kept, empty future ones included.
-- A policy DICT stopped reporting more than a day ago leaves these views.
CREATE OR REPLACE VIEW dict_ratelimit.latest_policy_state AS
SELECT
    p.ispb,
    p.policy,
    s.category,
    s.response_time,
    s.polled_at,
    s.available_tokens,
    s.capacity,
    s.refill_tokens,
    s.refill_period_sec,
    s.available_tokens::double precision / s.capacity                 AS remaining_ratio,
    1 - s.available_tokens::double precision / s.capacity             AS utilization_ratio,
    s.refill_tokens * 60.0 / s.refill_period_sec                      AS refill_per_minute,
    now() - s.response_time                                           AS age
FROM dict_ratelimit.policy AS p
JOIN dict_ratelimit.participant AS pa ON pa.ispb = p.ispb
CROSS JOIN LATERAL (
    SELECT *
    FROM dict_ratelimit.policy_snapshot AS snap
    WHERE snap.ispb = p.ispb AND snap.policy = p.policy
      AND snap.response_time <= pa.last_reading_at
      AND snap.response_time >= pa.last_reading_at - interval '1 day'
    ORDER BY snap.response_time DESC
    LIMIT 1
) AS s;

CREATE OR REPLACE VIEW dict_ratelimit.latest_policy_health AS
SELECT
    p.ispb,
    p.policy,
    m.response_time,
    m.available_tokens,
    m.capacity,
    m.remaining_ratio,
    m.refill_per_min,
    m.demand_per_min,
    m.demand_lower_per_min,
    m.demand_upper_per_min,
    m.naive_drop_per_min,
    m.censored,
    m.exhaustion_state,
    m.time_to_429_s,
    m.recovery_state,
    m.recovery_to_clear_s,
    m.recovery_to_full_s,
    m.headroom_per_min,
    m.not_found_share,
    e.level,
    e.reasons,
    now() - m.response_time AS age
FROM dict_ratelimit.policy AS p
JOIN dict_ratelimit.participant AS pa ON pa.ispb = p.ispb
CROSS JOIN LATERAL (
    SELECT * FROM dict_ratelimit.policy_metric AS pm
    WHERE pm.ispb = p.ispb AND pm.policy = p.policy
      AND pm.response_time <= pa.last_reading_at
      AND pm.response_time >= pa.last_reading_at - interval '1 day'
    ORDER BY pm.response_time DESC LIMIT 1
) AS m
LEFT JOIN LATERAL (
    -- LIMIT keeps this a probe per row (pruned to one partition), never a join over all months
    SELECT te.level, te.reasons FROM dict_ratelimit.threshold_evaluation AS te
    WHERE te.ispb = p.ispb AND te.policy = p.policy AND te.response_time = m.response_time
    LIMIT 1
) AS e ON true;
