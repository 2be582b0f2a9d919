-- Alert episodes, the state the alert machine keeps between ticks, and the outbox of events
-- for Pulsar. Alert transitions and their event rows are written in one transaction.
-- depends: 0002.metrics-evaluations-request-stats

-- One row per episode. policy '*' = the participant as a whole (monitor-level NODATA).
CREATE TABLE dict_ratelimit.alert (
    id                       bigserial   PRIMARY KEY,
    alert_key                text        NOT NULL UNIQUE,  -- <ispb>/<policy>/<opened, UTC>
    ispb                     char(8)     NOT NULL CHECK (ispb ~ '^[0-9]{8}$'),
    policy                   text        NOT NULL,
    category                 char(1),
    status                   text        NOT NULL CHECK (status IN ('open', 'nodata', 'resolved')),
    severity                 text        NOT NULL CHECK (severity IN ('WARNING', 'CRITICAL', 'EXHAUSTED')),
    peak_severity            text        NOT NULL CHECK (peak_severity IN ('WARNING', 'CRITICAL', 'EXHAUSTED')),
    opened_at                timestamptz NOT NULL,
    resolved_at              timestamptz,
    last_observed_at         timestamptz NOT NULL,
    lowest_remaining_ratio   double precision,
    lowest_available_tokens  bigint,
    severity_history         jsonb       NOT NULL,  -- [[time, severity | NODATA | RESOLVED], ...]
    reasons                  jsonb       NOT NULL,  -- the latest alarming reasons
    message                  text        NOT NULL,
    sequence                 integer     NOT NULL CHECK (sequence >= 1),  -- events so far
    clear_streak             integer     NOT NULL DEFAULT 0,  -- consecutive clear readings
    calm_streak              integer     NOT NULL DEFAULT 0,  -- consecutive readings below severity
    calm_level               text,                            -- the worst of those
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resolved_iff_resolved_at CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);

-- At most one open episode per identity, whatever the code does.
CREATE UNIQUE INDEX alert_one_open_per_identity
    ON dict_ratelimit.alert (ispb, policy) WHERE status <> 'resolved';
CREATE INDEX alert_opened_at_idx ON dict_ratelimit.alert (opened_at);

COMMENT ON TABLE dict_ratelimit.alert IS
    'Alert episodes per (participant, policy): opened/resolved, severity history, peak, lowest remaining';

-- Per identity: the newest evaluation applied, the streak towards opening, the category.
CREATE TABLE dict_ratelimit.alert_track (
    ispb              char(8)     NOT NULL,
    policy            text        NOT NULL,
    last_observed_at  timestamptz,
    category          char(1),
    fire_streak       integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (ispb, policy)
);

COMMENT ON TABLE dict_ratelimit.alert_track IS
    'Alert machine memory per (participant, policy): newest evaluation applied (a re-run applies nothing twice)';

-- The outbox: one row per transition, its CloudEvents document, and when Pulsar took it.
CREATE TABLE dict_ratelimit.alert_event (
    id            bigserial   PRIMARY KEY,  -- also the Pulsar sequence_id (broker deduplication)
    event_id      text        NOT NULL UNIQUE,  -- CloudEvents id
    alert_id      bigint      REFERENCES dict_ratelimit.alert (id) ON DELETE SET NULL,
    type          text        NOT NULL,
    ispb          char(8)     NOT NULL,
    policy        text        NOT NULL,
    severity      text,
    occurred_at   timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload       jsonb       NOT NULL,
    published_at  timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);

CREATE INDEX alert_event_unpublished_idx
    ON dict_ratelimit.alert_event (id) WHERE published_at IS NULL;
CREATE INDEX alert_event_published_at_idx ON dict_ratelimit.alert_event (published_at);

COMMENT ON TABLE dict_ratelimit.alert_event IS
    'Outbox of alert events (CloudEvents JSON) for Pulsar; published_at set after the broker receipt';

CREATE VIEW dict_ratelimit.active_alerts AS
SELECT
    a.id, a.alert_key, a.ispb, a.policy, a.category, a.status, a.severity, a.peak_severity,
    a.opened_at, now() - a.opened_at AS open_for, a.last_observed_at,
    a.lowest_remaining_ratio, a.lowest_available_tokens, a.reasons, a.message
FROM dict_ratelimit.alert AS a
WHERE a.status <> 'resolved';

COMMENT ON VIEW dict_ratelimit.active_alerts IS 'Open alert episodes (open or NODATA)';
