DROP TABLE IF EXISTS dict_ratelimit.monitor_tick;
