DROP TABLE IF EXISTS dict_ratelimit.alert_counter;
DROP TABLE IF EXISTS dict_ratelimit.monitor_counter;
