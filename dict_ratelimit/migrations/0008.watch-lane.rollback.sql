DROP TABLE IF EXISTS dict_ratelimit.own_call_counter;
ALTER TABLE dict_ratelimit.alert DROP COLUMN IF EXISTS clear_since, DROP COLUMN IF EXISTS calm_since;
