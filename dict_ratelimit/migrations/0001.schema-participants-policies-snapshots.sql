-- The schema, the participants and policies DICT reports, and every reading (snapshot).
-- depends:

CREATE SCHEMA IF NOT EXISTS dict_ratelimit;

COMMENT ON SCHEMA dict_ratelimit IS
    'dict-ratelimit: DICT token-bucket readings, derived metrics and alerts';

-- One row per monitored participant (ISPB): its DICT category and when it last changed.
CREATE TABLE dict_ratelimit.participant (
    ispb                 char(8)     PRIMARY KEY CHECK (ispb ~ '^[0-9]{8}$'),
    category             char(1)     CHECK (category ~ '^[A-Z]$'),
    category_changed_at  timestamptz,
    first_seen_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at         timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE dict_ratelimit.participant IS
    'A participant whose DICT buckets are monitored; category as DICT last reported it';
COMMENT ON COLUMN dict_ratelimit.participant.category_changed_at IS
    'DICT ResponseTime of the first reading with the current category (first reading ever for a participant whose category never changed)';

-- Latest known bucket size and refill of each (participant, policy). Never hard-coded: DICT
-- reports them in every reading, and they can change (a category change, a BACEN decision).
CREATE TABLE dict_ratelimit.policy (
    ispb               char(8)     NOT NULL REFERENCES dict_ratelimit.participant (ispb),
    policy             text        NOT NULL CHECK (policy ~ '^[A-Z][A-Z0-9_]*$'),
    capacity           bigint      NOT NULL CHECK (capacity > 0),
    refill_tokens      bigint      NOT NULL CHECK (refill_tokens > 0),
    refill_period_sec  integer     NOT NULL CHECK (refill_period_sec > 0),
    first_seen_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy)
);

COMMENT ON TABLE dict_ratelimit.policy IS
    'Latest capacity and refill DICT reported per (participant, policy)';

-- Every reading. response_time is DICT's ResponseTime, the authoritative time of the reading
-- and the partition key; polled_at is when our poll started. The primary key makes
-- re-inserting the same reading a no-op (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE dict_ratelimit.policy_snapshot (
    ispb               char(8)     NOT NULL CHECK (ispb ~ '^[0-9]{8}$'),
    policy             text        NOT NULL,
    response_time      timestamptz NOT NULL,
    polled_at          timestamptz NOT NULL,
    category           char(1)     NOT NULL CHECK (category ~ '^[A-Z]$'),
    available_tokens   bigint      NOT NULL,
    capacity           bigint      NOT NULL CHECK (capacity > 0),
    refill_tokens      bigint      NOT NULL CHECK (refill_tokens > 0),
    refill_period_sec  integer     NOT NULL CHECK (refill_period_sec > 0),
    correlation_id     text,
    inserted_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ispb, policy, response_time),
    CONSTRAINT available_at_most_capacity CHECK (available_tokens <= capacity)
) PARTITION BY RANGE (response_time);

COMMENT ON TABLE dict_ratelimit.policy_snapshot IS
    'Every DICT bucket reading; monthly partitions on response_time (UTC), kept 13 months';
COMMENT ON COLUMN dict_ratelimit.policy_snapshot.available_tokens IS
    'AvailableTokens as DICT reported it; negative when a costly request overdrew the bucket';
COMMENT ON COLUMN dict_ratelimit.policy_snapshot.response_time IS
    'DICT ResponseTime: the time of the reading, used for every time difference';
COMMENT ON COLUMN dict_ratelimit.policy_snapshot.polled_at IS
    'When the monitor started the poll that produced the reading (its own clock)';

-- Time-range scans across all policies (rollups, backfills of a day).
CREATE INDEX policy_snapshot_response_time_idx
    ON dict_ratelimit.policy_snapshot (response_time);

-- Latest reading per (participant, policy): one index probe per policy through the primary key
-- (ispb, policy, response_time), newest partition first, instead of a DISTINCT ON over all of
-- history. Stays fast however many months are kept.
CREATE VIEW dict_ratelimit.latest_policy_state AS
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
CROSS JOIN LATERAL (
    SELECT *
    FROM dict_ratelimit.policy_snapshot AS snap
    WHERE snap.ispb = p.ispb AND snap.policy = p.policy
    ORDER BY snap.response_time DESC
    LIMIT 1
) AS s;

COMMENT ON VIEW dict_ratelimit.latest_policy_state IS
    'Newest reading per (participant, policy), with remaining ratio and refill per minute';
