-- Guardrails and rollout: billing modes on usage records, spend caps, the calls in flight
-- the caps count, pauses, review flags of the anomaly breaker and the shadow billing log.

-- The computed price of every call, whatever its mode: an unbilled or shadow call is
-- stored with 0 charged and its price kept here for reporting. Rows from before this
-- migration were all charged, their price being what was charged plus what was not.
ALTER TABLE usage_records ADD COLUMN priced_millicredits bigint CHECK (priced_millicredits >= 0);
UPDATE usage_records SET priced_millicredits = charged_millicredits + uncollected_millicredits;
ALTER TABLE usage_records ALTER COLUMN priced_millicredits SET NOT NULL;

-- The caps and the anomaly breaker read a user's charged records by time.
CREATE INDEX usage_records_user_charged ON usage_records (user_id, created_at)
    WHERE mode = 'charged';

-- Per-user cap overrides set by admins; NULL keeps the default from the settings.
CREATE TABLE user_caps (
    user_id                  text PRIMARY KEY,
    per_request_millicredits bigint CHECK (per_request_millicredits >= 0),
    per_day_millicredits     bigint CHECK (per_day_millicredits >= 0),
    per_hour_millicredits    bigint CHECK (per_hour_millicredits >= 0),
    updated_by               text NOT NULL,
    reason                   text NOT NULL,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- The worst case of each charged call that passed the caps and is not settled yet: added
-- in the transaction that checks the caps (under the user's advisory lock), removed in the
-- one that stores the call's usage record, or when the call fails. A row left by a crashed
-- process stops counting at expires_at (once its hold can no longer be active).
CREATE TABLE inflight_charges (
    usage_id              uuid PRIMARY KEY,
    user_id               text NOT NULL,
    estimate_millicredits bigint NOT NULL CHECK (estimate_millicredits >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL
);
CREATE INDEX inflight_charges_user ON inflight_charges (user_id, expires_at);

-- A user paused by the session (rolling 60 minutes) cap; active while resumed_at is NULL.
-- One row per user: a later pause replaces a resumed one (guardrail_changes keeps history).
CREATE TABLE user_pauses (
    user_id       text PRIMARY KEY,
    reason        text NOT NULL,
    paused_at     timestamptz NOT NULL,
    resumed_at    timestamptz,
    resumed_by    text,
    resume_reason text
);

-- Charged calls over 5x the user's recent average, for review (the call was served).
CREATE TABLE review_flags (
    id                   bigserial PRIMARY KEY,
    user_id              text NOT NULL,
    usage_id             uuid NOT NULL UNIQUE,
    model                text NOT NULL,
    charge_millicredits  bigint NOT NULL,
    average_millicredits bigint NOT NULL,
    recent_calls         integer NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX review_flags_user ON review_flags (user_id, created_at);

-- Shadow billing's log: every call made while shadowBilling is on. charged_millicredits is
-- the charge computed for it, i.e. what real billing charges for the call, whether or not
-- it was deducted: mode says which (charged: an allowlisted user; shadow: nothing was).
-- would_be_mode is the mode the call would get with shadow billing off.
CREATE TABLE shadow_charges (
    usage_id             uuid PRIMARY KEY,
    user_id              text NOT NULL,
    model                text NOT NULL,
    input_tokens         bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens        bigint NOT NULL CHECK (output_tokens >= 0),
    charged_millicredits bigint NOT NULL CHECK (charged_millicredits >= 0),
    mode                 text NOT NULL CHECK (mode IN ('charged', 'shadow')),
    would_be_mode        text NOT NULL CHECK (would_be_mode IN ('charged', 'unbilled')),
    rate_card_version    text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shadow_charges_time ON shadow_charges (created_at);

-- Who paused, resumed or changed the caps of whom, and why. Append-only in the database.
CREATE TABLE guardrail_changes (
    id         bigserial PRIMARY KEY,
    action     text NOT NULL CHECK (action IN ('caps_set', 'paused', 'resumed')),
    user_id    text NOT NULL,
    actor      text NOT NULL,
    reason     text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX guardrail_changes_user ON guardrail_changes (user_id, created_at);

CREATE FUNCTION guardrail_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'guardrail_changes is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER guardrail_changes_no_update_delete
    BEFORE UPDATE OR DELETE ON guardrail_changes
    FOR EACH ROW EXECUTE FUNCTION guardrail_changes_append_only();
CREATE TRIGGER guardrail_changes_no_truncate
    BEFORE TRUNCATE ON guardrail_changes
    FOR EACH STATEMENT EXECUTE FUNCTION guardrail_changes_append_only();
