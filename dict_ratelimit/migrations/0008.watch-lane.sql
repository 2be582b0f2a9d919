-- The watch lane: alert hysteresis in time, and the monitor's own DICT calls per participant.
-- depends: 0007.throttling-and-watch

-- Hysteresis in time as well as in readings: when the clear (or calmer) readings began, so
-- that readings every 15 s cannot resolve or step down an episode faster than sweeps would.
ALTER TABLE dict_ratelimit.alert
    ADD COLUMN clear_since timestamptz,
    ADD COLUMN calm_since timestamptz;

-- Running total of the monitor's own calls per participant (each costs a token of the
-- participant's POLICIES_LIST or POLICIES_READ), for the exporter's counter.
CREATE TABLE dict_ratelimit.own_call_counter (
    ispb   char(8) NOT NULL,
    call   text    NOT NULL CHECK (call IN ('list_policies', 'get_policy')),
    total  bigint  NOT NULL DEFAULT 0 CHECK (total >= 0),
    PRIMARY KEY (ispb, call)
);
COMMENT ON TABLE dict_ratelimit.own_call_counter IS
    'The monitor''s own answered DICT calls per participant (ListPolicies, GetPolicy) since it started';
