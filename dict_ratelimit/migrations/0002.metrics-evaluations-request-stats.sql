-- Refill-aware metrics and threshold evaluations per snapshot, the Bridge's request counts,
-- and the analyst views over them.
-- depends: 0001.schema-participants-policies-snapshots

-- DICT responses per policy and HTTP status as the Bridge counted them over the window that
-- ends at a sweep's ResponseTime (GetRequestStats). Absent = the Bridge does not report them.
CREATE TABLE dict_ratelimit.policy_request_stats (
    ispb            char(8)     NOT NULL,
    policy          text        NOT NULL,
    window_end      timestamptz NOT NULL,
    window_seconds  integer     NOT NULL CHECK (window_seconds > 0),
    responses       jsonb       NOT NULL,  -- {"200": n, "404": n, "429": n, ...}
    total           bigint      NOT NULL CHECK (total >= 0),
    not_found       bigint      NOT NULL CHECK (not_found >= 0),
    PRIMARY KEY (ispb, policy, window_end)
) PARTITION BY RANGE (window_end);

COMMENT ON TABLE dict_ratelimit.policy_request_stats IS
    'DICT responses per policy and HTTP status seen by the Bridge (GetRequestStats)';

-- One row per snapshot. Rates are tokens per minute, times are seconds. NULL never means 0:
-- the *_state columns and estimate_note say why a value is absent.
CREATE TABLE dict_ratelimit.policy_metric (
    ispb                                 char(8)     NOT NULL,
    policy                               text        NOT NULL,
    response_time                        timestamptz NOT NULL,
    prev_response_time                   timestamptz,
    elapsed_seconds                      double precision,
    available_tokens                     bigint      NOT NULL,
    capacity                             bigint      NOT NULL,
    refill_tokens                        bigint      NOT NULL,
    refill_period_sec                    integer     NOT NULL,
    remaining_ratio                      double precision NOT NULL,
    utilization_ratio                    double precision NOT NULL,
    refill_per_min                       double precision NOT NULL,
    naive_drop_per_min                   double precision,
    consumed_lower_stepped               double precision,
    consumed_upper_stepped               double precision,
    consumed_lower_continuous            double precision,
    consumed_upper_continuous            double precision,
    drain_rate_lower_continuous_per_min  double precision,
    demand_continuous_per_min            double precision,
    demand_stepped_min_per_min           double precision,
    demand_stepped_max_per_min           double precision,
    demand_lower_per_min                 double precision,
    demand_upper_per_min                 double precision,
    demand_per_min                       double precision,
    censored                             text CHECK (censored IN ('empty', 'full')),
    estimate_note                        text,
    forecast_demand_per_min              double precision,
    exhaustion_state                     text NOT NULL
        CHECK (exhaustion_state IN ('finite', 'never', 'exhausted', 'unknown')),
    time_to_429_stepped_s                double precision,
    time_to_429_continuous_s             double precision,
    time_to_429_s                        double precision,
    recovery_state                       text NOT NULL
        CHECK (recovery_state IN ('recovered', 'finite', 'never', 'unknown')),
    recovery_to_clear_s                  double precision,
    recovery_to_full_s                   double precision,
    headroom_per_min                     double precision,
    burst_absorbable_tokens              double precision NOT NULL,
    demand_seconds_left                  double precision,
    not_found_share                      double precision CHECK (not_found_share BETWEEN 0 AND 1),
    computed_at                          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, response_time)
) PARTITION BY RANGE (response_time);

COMMENT ON TABLE dict_ratelimit.policy_metric IS
    'Refill-aware metrics per snapshot: consumption bounds, demand estimate, forecasts, headroom';
COMMENT ON COLUMN dict_ratelimit.policy_metric.naive_drop_per_min IS
    'NAIVE (A0 - A1) / elapsed, ignoring refill: what the replaced system reported; for comparison';
COMMENT ON COLUMN dict_ratelimit.policy_metric.demand_per_min IS
    'Point estimate: median of the constant demands that turn the previous reading into this one (continuous refill and stepped refill at four phases)';
COMMENT ON COLUMN dict_ratelimit.policy_metric.demand_lower_per_min IS
    'Lowest constant demand consistent with the two readings over both refill models and four refill phases';
COMMENT ON COLUMN dict_ratelimit.policy_metric.censored IS
    'empty: reading <= 0, demand beyond it was rejected (estimates are lower bounds); full: reading at capacity (estimates are upper bounds)';
COMMENT ON COLUMN dict_ratelimit.policy_metric.time_to_429_s IS
    'Seconds to the first 429 under the estimated demand (worst refill phase); NULL with exhaustion_state never/unknown';
COMMENT ON COLUMN dict_ratelimit.policy_metric.not_found_share IS
    'Share of 404 among the DICT responses the Bridge saw for this policy; NULL = unknown (never 0 for unknown)';

CREATE INDEX policy_metric_response_time_idx ON dict_ratelimit.policy_metric (response_time);

CREATE TABLE dict_ratelimit.threshold_evaluation (
    ispb             char(8)     NOT NULL,
    policy           text        NOT NULL,
    response_time    timestamptz NOT NULL,
    level            text        NOT NULL CHECK (level IN ('OK', 'WARNING', 'CRITICAL', 'EXHAUSTED')),
    level_rank       smallint    NOT NULL CHECK (level_rank BETWEEN 0 AND 3),
    remaining_ratio  double precision NOT NULL,
    time_to_429_s    double precision,
    reasons          jsonb       NOT NULL,  -- [{"code", "level", "detail"}], worst first
    thresholds       jsonb       NOT NULL,  -- the thresholds this evaluation used
    computed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, response_time)
) PARTITION BY RANGE (response_time);

COMMENT ON TABLE dict_ratelimit.threshold_evaluation IS
    'Level of every snapshot (OK/WARNING/CRITICAL/EXHAUSTED), the reasons, and the thresholds used';

CREATE INDEX threshold_evaluation_response_time_idx
    ON dict_ratelimit.threshold_evaluation (response_time);

-- Latest metrics and level per policy (index probes, like latest_policy_state).
CREATE VIEW dict_ratelimit.latest_policy_health AS
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
CROSS JOIN LATERAL (
    SELECT * FROM dict_ratelimit.policy_metric AS pm
    WHERE pm.ispb = p.ispb AND pm.policy = p.policy
    ORDER BY pm.response_time DESC LIMIT 1
) AS m
LEFT JOIN LATERAL (
    SELECT te.level, te.reasons FROM dict_ratelimit.threshold_evaluation AS te
    WHERE te.ispb = p.ispb AND te.policy = p.policy AND te.response_time = m.response_time
) AS e ON true;

COMMENT ON VIEW dict_ratelimit.latest_policy_health IS
    'Latest metrics and threshold level per (participant, policy)';

-- Hourly rollup per policy. Each reading's level is counted from its time until the next
-- reading (at most 15 minutes, so a gap is not counted as time in a level). Filter on hour.
CREATE VIEW dict_ratelimit.policy_hourly AS
WITH timeline AS (
    SELECT
        m.ispb, m.policy, m.response_time, m.available_tokens, m.demand_per_min, e.level,
        LEAST(
            EXTRACT(EPOCH FROM (LEAD(m.response_time) OVER w - m.response_time)),
            900
        ) AS held_seconds
    FROM dict_ratelimit.policy_metric AS m
    LEFT JOIN dict_ratelimit.threshold_evaluation AS e USING (ispb, policy, response_time)
    WINDOW w AS (PARTITION BY m.ispb, m.policy ORDER BY m.response_time)
)
SELECT
    ispb,
    policy,
    date_trunc('hour', response_time) AS hour,
    count(*) AS readings,
    min(available_tokens) AS min_available,
    avg(available_tokens)::double precision AS avg_available,
    max(available_tokens) AS max_available,
    coalesce(sum(held_seconds) FILTER (WHERE level = 'OK'), 0) / 60.0 AS minutes_ok,
    coalesce(sum(held_seconds) FILTER (WHERE level = 'WARNING'), 0) / 60.0 AS minutes_warning,
    coalesce(sum(held_seconds) FILTER (WHERE level = 'CRITICAL'), 0) / 60.0 AS minutes_critical,
    coalesce(sum(held_seconds) FILTER (WHERE level = 'EXHAUSTED'), 0) / 60.0 AS minutes_exhausted,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY demand_per_min) AS demand_p50_per_min,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY demand_per_min) AS demand_p95_per_min
FROM timeline
GROUP BY ispb, policy, date_trunc('hour', response_time);

COMMENT ON VIEW dict_ratelimit.policy_hourly IS
    'Per policy and hour: min/avg/max available, minutes in each level, demand p50/p95';
