DROP FUNCTION IF EXISTS dict_ratelimit.policy_hourly(timestamptz, timestamptz, timestamptz);
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
    ispb, policy, date_trunc('hour', response_time) AS hour, count(*) AS readings,
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
ALTER TABLE dict_ratelimit.alert DROP COLUMN IF EXISTS last_received_at, DROP COLUMN IF EXISTS last_listing_at;
ALTER TABLE dict_ratelimit.alert_track DROP COLUMN IF EXISTS last_received_at, DROP COLUMN IF EXISTS last_listing_at;
DROP TABLE IF EXISTS dict_ratelimit.alert_backlog;
DROP TABLE IF EXISTS dict_ratelimit.metric_backlog;
ALTER TABLE dict_ratelimit.policy_metric DROP COLUMN IF EXISTS own_calls;
DROP INDEX IF EXISTS dict_ratelimit.policy_snapshot_get_idx;
ALTER TABLE dict_ratelimit.policy_snapshot DROP COLUMN IF EXISTS source;
ALTER TABLE dict_ratelimit.participant DROP COLUMN IF EXISTS last_reading_at, DROP COLUMN IF EXISTS last_received_at, DROP COLUMN IF EXISTS last_listing_at;
