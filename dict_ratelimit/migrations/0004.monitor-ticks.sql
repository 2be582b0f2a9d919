-- One row per monitor sweep: how long it took and what failed, for the exporter's
-- monitoring-duration and Bridge-error series (history, not Dagster's event log).
-- depends: 0003.alerts-and-outbox

CREATE TABLE dict_ratelimit.monitor_tick (
    polled_at              timestamptz NOT NULL,
    participants           integer     NOT NULL CHECK (participants >= 0),
    answered               integer     NOT NULL CHECK (answered >= 0),
    failed                 integer     NOT NULL CHECK (failed >= 0),
    readings               integer     NOT NULL CHECK (readings >= 0),
    bridge_errors          jsonb       NOT NULL,  -- {"unavailable": n, "permission_denied": n}
    bridge_seconds         double precision NOT NULL,
    duration_seconds       double precision NOT NULL,  -- sweep + store
    PRIMARY KEY (polled_at)
) PARTITION BY RANGE (polled_at);

COMMENT ON TABLE dict_ratelimit.monitor_tick IS
    'One row per monitor sweep: participants answered/failed, Bridge errors by class, durations';
