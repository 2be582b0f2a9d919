-- DICT's 429s as the Bridge counted them, between two readings; what the watch lane needs.
-- depends: 0006.running-counters

-- 429s in each window the Bridge reported; NULL never (a window is stored or not at all).
ALTER TABLE dict_ratelimit.policy_request_stats
    ADD COLUMN throttled bigint NOT NULL DEFAULT 0 CHECK (throttled >= 0);
COMMENT ON COLUMN dict_ratelimit.policy_request_stats.throttled IS
    'Responses 429 (DICT throttled the request) in the window';

-- Which windows the Bridge reported for a participant, whatever their traffic: a policy
-- without a row in a reported window had no response at all (0), a policy outside every
-- reported window is unknown (NULL).
CREATE TABLE dict_ratelimit.request_stats_window (
    ispb            char(8)     NOT NULL,
    window_end      timestamptz NOT NULL,
    window_seconds  integer     NOT NULL CHECK (window_seconds > 0),
    PRIMARY KEY (ispb, window_end)
) PARTITION BY RANGE (window_end);
COMMENT ON TABLE dict_ratelimit.request_stats_window IS
    'The windows GetRequestStats reported per participant (coverage: unknown is not zero)';

-- When the Bridge's counts were last fetched for the participant (our clock): the next
-- request asks for the time since, so consecutive windows neither overlap nor leave gaps.
ALTER TABLE dict_ratelimit.participant ADD COLUMN stats_until timestamptz;

ALTER TABLE dict_ratelimit.policy_metric
    ADD COLUMN throttled bigint CHECK (throttled >= 0),
    ADD COLUMN throttled_since timestamptz;
COMMENT ON COLUMN dict_ratelimit.policy_metric.throttled IS
    '429s DICT answered for the policy since the previous reading (Bridge counts); NULL = unknown';

-- Running total of DICT's 429s per policy, for the exporter's counter.
CREATE TABLE dict_ratelimit.throttle_counter (
    ispb     char(8) NOT NULL,
    policy   text    NOT NULL,
    total    bigint  NOT NULL DEFAULT 0 CHECK (total >= 0),
    PRIMARY KEY (ispb, policy)
);
COMMENT ON TABLE dict_ratelimit.throttle_counter IS
    'DICT 429s per (participant, policy) as counted by the Bridge, since the monitor started';
