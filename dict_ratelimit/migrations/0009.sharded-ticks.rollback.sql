-- Back to one row per polled_at: of several shards polled at the same instant one row stays.
DELETE FROM dict_ratelimit.monitor_tick AS t
USING dict_ratelimit.monitor_tick AS o
WHERE t.polled_at = o.polled_at AND t.shard > o.shard;
ALTER TABLE dict_ratelimit.monitor_tick DROP CONSTRAINT monitor_tick_pkey;
ALTER TABLE dict_ratelimit.monitor_tick ADD PRIMARY KEY (polled_at);
ALTER TABLE dict_ratelimit.monitor_tick DROP COLUMN shard;
