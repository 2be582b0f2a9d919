DROP VIEW IF EXISTS dict_ratelimit.active_alerts;
DROP TABLE IF EXISTS dict_ratelimit.alert_event;
DROP TABLE IF EXISTS dict_ratelimit.alert_track;
DROP TABLE IF EXISTS dict_ratelimit.alert;
