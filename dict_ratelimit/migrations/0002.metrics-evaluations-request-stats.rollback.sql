DROP VIEW IF EXISTS dict_ratelimit.policy_hourly;
DROP VIEW IF EXISTS dict_ratelimit.latest_policy_health;
DROP TABLE IF EXISTS dict_ratelimit.threshold_evaluation;
DROP TABLE IF EXISTS dict_ratelimit.policy_metric;
DROP TABLE IF EXISTS dict_ratelimit.policy_request_stats;
