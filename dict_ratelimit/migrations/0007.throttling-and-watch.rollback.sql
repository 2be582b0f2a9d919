DROP TABLE IF EXISTS dict_ratelimit.throttle_counter;
ALTER TABLE dict_ratelimit.policy_metric DROP COLUMN IF EXISTS throttled,
    DROP COLUMN IF EXISTS throttled_since;
ALTER TABLE dict_ratelimit.participant DROP COLUMN IF EXISTS stats_until;
DROP TABLE IF EXISTS dict_ratelimit.request_stats_window;
ALTER TABLE dict_ratelimit.policy_request_stats DROP COLUMN IF EXISTS throttled;
