-- One row per charged AI call (gateway or reconcile), written in the same transaction as
-- its UsageRecorded outbox record. idempotency_key is the hold's key (`chat:<user>:<key>`,
-- `reconcile:<key>`, or a fresh one), unique per user so one key is charged once;
-- response_body is the answer given, returned again to a retry with the same key.
CREATE TABLE usage_records (
    usage_id                 uuid PRIMARY KEY,
    user_id                  text NOT NULL,
    model                    text NOT NULL,
    input_tokens             bigint NOT NULL CHECK (input_tokens >= 0),
    output_tokens            bigint NOT NULL CHECK (output_tokens >= 0),
    charged_millicredits     bigint NOT NULL CHECK (charged_millicredits >= 0),
    -- Priced but not collectable: the actual call beat the hold and the balance was short.
    uncollected_millicredits bigint NOT NULL DEFAULT 0 CHECK (uncollected_millicredits >= 0),
    cost_millicredits        bigint NOT NULL CHECK (cost_millicredits >= 0),
    rate_card_version        text NOT NULL,
    hold_id                  text NOT NULL,
    idempotency_key          text NOT NULL,
    provider_request_id      text,
    -- The ledger's usage transaction; NULL when the capture failed and the ledger settles
    -- the record from billing.usage.v1 instead.
    transaction_id           text,
    mode                     text NOT NULL CHECK (mode IN ('charged', 'shadow', 'unbilled')),
    correlation_id           text,
    -- json, not jsonb: a replay answers the body byte for byte, keys in their order.
    response_body            json NOT NULL,
    created_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX usage_records_user_time ON usage_records (user_id, created_at);

-- A client idempotency key is claimed here before any hold is made, so two requests with
-- one key never both call the model. A failed attempt releases its claim (the next one
-- takes it over with attempt + 1, and a hold key of its own); a claim left in progress by
-- a crashed process is taken over once older than the hold's lifetime.
CREATE TABLE request_claims (
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    text NOT NULL,
    state           text NOT NULL DEFAULT 'in_progress'
                        CHECK (state IN ('in_progress', 'released', 'done')),
    attempt         integer NOT NULL DEFAULT 1,
    claimed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);

-- UsageRecorded records for billing.usage.v1, published by the relay. Copied verbatim from
-- billing_events.outbox.OUTBOX_DDL (a unit test keeps the two equal).
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    message_key  bytea,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
