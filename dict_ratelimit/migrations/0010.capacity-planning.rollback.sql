DROP VIEW dict_ratelimit.policy_monthly_usage;
DROP VIEW dict_ratelimit.latest_capacity_outlook;
DROP TABLE dict_ratelimit.capacity_outlook;
DROP TABLE dict_ratelimit.policy_weekly_profile;
DROP TABLE dict_ratelimit.policy_daily_usage;
