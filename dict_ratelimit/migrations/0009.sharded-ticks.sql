-- Sharded ticks: several runs per tick, each sweeping its share of the participants, each
-- with its own monitor_tick row (two shards may poll within the same microsecond).
-- depends: 0008.watch-lane

ALTER TABLE dict_ratelimit.monitor_tick
    ADD COLUMN shard text NOT NULL DEFAULT 'all'
        CHECK (shard = 'all' OR shard ~ '^[0-9]+/[0-9]+$');
ALTER TABLE dict_ratelimit.monitor_tick DROP CONSTRAINT monitor_tick_pkey;
ALTER TABLE dict_ratelimit.monitor_tick ADD PRIMARY KEY (polled_at, shard);
COMMENT ON COLUMN dict_ratelimit.monitor_tick.shard IS
    'Which participants the sweep covered: all, or INDEX/COUNT of a sharded tick';
