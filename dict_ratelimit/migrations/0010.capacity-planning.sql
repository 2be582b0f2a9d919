-- Capacity planning: daily usage per policy, the weekly profile (hour of the week) and the
-- outlook (trend, date of the first throttled weekly peak, recommendation), plus two views
-- for analysts. Days and hours of the week are local to the report time zone
-- (DICT_RATELIMIT_REPORT_TIMEZONE, America/Sao_Paulo by default).
-- depends: 0009.sharded-ticks

CREATE TABLE dict_ratelimit.policy_daily_usage (
    ispb                     char(8)     NOT NULL CHECK (ispb ~ '^[0-9]{8}$'),
    policy                   text        NOT NULL,
    day                      date        NOT NULL,
    time_zone                text        NOT NULL,
    readings                 integer     NOT NULL CHECK (readings >= 0),
    observed_minutes         double precision NOT NULL CHECK (observed_minutes >= 0),
    gaps                     integer     NOT NULL CHECK (gaps >= 0),
    gap_minutes              double precision NOT NULL CHECK (gap_minutes >= 0),
    capacity                 bigint,
    refill_per_min           double precision,
    peak_utilization         double precision,
    p95_utilization          double precision,
    min_remaining_ratio      double precision,
    min_available_tokens     bigint,
    minutes_warning          double precision NOT NULL,
    minutes_critical         double precision NOT NULL,
    minutes_exhausted        double precision NOT NULL,
    requests                 bigint,
    throttled_429            bigint,
    demand_source            text        CHECK (demand_source IN ('bridge_stats', 'tokens')),
    demand_p50_per_min       double precision,
    demand_p95_per_min       double precision,
    demand_max_per_min       double precision,
    peak_demand_share        double precision,
    computed_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, day)
);
CREATE INDEX policy_daily_usage_day_idx ON dict_ratelimit.policy_daily_usage (day);
COMMENT ON TABLE dict_ratelimit.policy_daily_usage IS
    'Per participant, policy and local day: how hot the bucket ran, time at each level, 429s, demand against the refill, and how much of the day was observed';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.readings IS
    'Readings of the day. A day with neither readings nor Bridge counts has no row (missing is not zero); a day with counts only has readings = 0 and NULL reading columns';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.observed_minutes IS
    'Minutes covered by readings: each reading holds until the next, at most 15 minutes, across midnight too';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.gaps IS
    'Stretches of more than 15 minutes without a reading that touch the day (one across midnight counts in both days)';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.throttled_429 IS
    '429 answers the Bridge counted for the policy that day; NULL when the Bridge reported no counts';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.demand_source IS
    'bridge_stats: demand from the requests the Bridge counted (429s included, 404s at their token cost); tokens: from the bucket readings (a full bucket gives no estimate)';
COMMENT ON COLUMN dict_ratelimit.policy_daily_usage.peak_demand_share IS
    'demand_max_per_min / refill_per_min: above 1 the bucket drains';

CREATE TABLE dict_ratelimit.policy_weekly_profile (
    ispb                 char(8)     NOT NULL CHECK (ispb ~ '^[0-9]{8}$'),
    policy               text        NOT NULL,
    window_weeks         smallint    NOT NULL CHECK (window_weeks IN (4, 13)),
    hour_of_week         smallint    NOT NULL CHECK (hour_of_week BETWEEN 0 AND 167),
    weekday              text        NOT NULL,
    hour                 smallint    NOT NULL CHECK (hour BETWEEN 0 AND 23),
    weeks_seen           smallint    NOT NULL CHECK (weeks_seen >= 0),
    typical_share        double precision,
    peak_share           double precision,
    burst_share          double precision,
    refill_per_min       double precision,
    window_start         timestamptz NOT NULL,
    window_end           timestamptz NOT NULL,
    time_zone            text        NOT NULL,
    computed_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, window_weeks, hour_of_week)
);
COMMENT ON TABLE dict_ratelimit.policy_weekly_profile IS
    'Demand per hour of the (local) week as a share of the refill, over the last 4 and 13 complete weeks';
COMMENT ON COLUMN dict_ratelimit.policy_weekly_profile.hour_of_week IS
    '0 = Monday 00:00-01:00 local time, 167 = Sunday 23:00-24:00';
COMMENT ON COLUMN dict_ratelimit.policy_weekly_profile.typical_share IS
    'Median over the weeks of that hour''s mean demand / refill; NULL when no week saw the hour';
COMMENT ON COLUMN dict_ratelimit.policy_weekly_profile.peak_share IS
    'Highest hourly mean demand / refill any week saw in that hour';
COMMENT ON COLUMN dict_ratelimit.policy_weekly_profile.burst_share IS
    'Highest five-minute demand / refill any week saw in that hour (from the bucket readings)';

CREATE TABLE dict_ratelimit.capacity_outlook (
    ispb                      char(8)     NOT NULL CHECK (ispb ~ '^[0-9]{8}$'),
    policy                    text        NOT NULL,
    as_of                     timestamptz NOT NULL,
    status                    text        NOT NULL CHECK (status IN (
                                  'throttling', 'at_risk', 'growing', 'stable', 'insufficient_history')),
    category                  char(1),
    capacity                  bigint,
    refill_per_min            double precision,
    weeks_used                smallint    NOT NULL,
    weekly_peak_share         double precision,
    peak_hour_of_week         smallint,
    peak_weekday              text,
    peak_hour                 smallint,
    growth_per_week           double precision,
    growth_low_per_week       double precision,
    growth_high_per_week      double precision,
    fit_mad                   double precision,
    peak_exceeds_refill_at    timestamptz,
    first_429_at              timestamptz,
    first_429_earliest_at     timestamptz,
    first_429_latest_at       timestamptz,
    weeks_to_first_429        double precision,
    throttled_429_30d         bigint,
    minutes_exhausted_30d     double precision,
    categories                jsonb       NOT NULL DEFAULT '[]',
    weekly_peaks              jsonb       NOT NULL DEFAULT '[]',
    recommendation            text        NOT NULL,
    time_zone                 text        NOT NULL,
    computed_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, as_of)
);
CREATE INDEX capacity_outlook_as_of_idx ON dict_ratelimit.capacity_outlook (as_of);
COMMENT ON TABLE dict_ratelimit.capacity_outlook IS
    'Per participant and policy, one row per daily computation (kept 92 days): weekly-peak trend with its band, when the bucket would start throttling at its weekly peak, and a recommendation';
COMMENT ON COLUMN dict_ratelimit.capacity_outlook.growth_per_week IS
    'Theil-Sen trend of the weekly peaks (log scale): 0.04 = +4 % a week; low/high: its 95 % band';
COMMENT ON COLUMN dict_ratelimit.capacity_outlook.peak_exceeds_refill_at IS
    'First occurrence of the peak hour at which the trend puts the weekly peak above the refill';
COMMENT ON COLUMN dict_ratelimit.capacity_outlook.first_429_at IS
    'When a bucket of this capacity, run through the weekly profile grown by the trend, first empties (earliest/latest: at the ends of the band)';
COMMENT ON COLUMN dict_ratelimit.capacity_outlook.categories IS
    'What-if per DICT category (reference tables, not what DICT returns): refill, capacity, weekly peak share, first 429';

-- the newest computation and the day before it only: the table keeps a quarter of daily rows
CREATE VIEW dict_ratelimit.latest_capacity_outlook AS
SELECT DISTINCT ON (ispb, policy) *
FROM dict_ratelimit.capacity_outlook
WHERE as_of >= (SELECT max(as_of) FROM dict_ratelimit.capacity_outlook) - interval '2 days'
ORDER BY ispb, policy, as_of DESC;
COMMENT ON VIEW dict_ratelimit.latest_capacity_outlook IS
    'The newest outlook per (participant, policy) still computed (within two days of the newest run)';

CREATE VIEW dict_ratelimit.policy_monthly_usage AS
SELECT
    ispb,
    policy,
    date_trunc('month', day)::date                AS month,
    count(*)                                      AS days_observed,
    sum(readings)                                 AS readings,
    sum(gap_minutes)                              AS gap_minutes,
    max(peak_utilization)                         AS peak_utilization,
    min(min_remaining_ratio)                      AS min_remaining_ratio,
    sum(minutes_warning)                          AS minutes_warning,
    sum(minutes_critical)                         AS minutes_critical,
    sum(minutes_exhausted)                        AS minutes_exhausted,
    sum(throttled_429)                            AS throttled_429,
    max(demand_max_per_min)                       AS demand_max_per_min,
    max(peak_demand_share)                        AS peak_demand_share
FROM dict_ratelimit.policy_daily_usage
GROUP BY ispb, policy, date_trunc('month', day);
COMMENT ON VIEW dict_ratelimit.policy_monthly_usage IS
    'policy_daily_usage summed per local month: how close each bucket came to a 429, month by month';
