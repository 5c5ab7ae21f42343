-- Every verified Stripe event, once, by Stripe's event id: a redelivery finds its id and
-- changes nothing. payload is the raw body exactly as verified, so it can be re-verified,
-- re-parsed or replayed later.
CREATE TABLE stripe_events (
    event_id       text PRIMARY KEY,
    type           text NOT NULL,
    object_id      text,
    livemode       boolean NOT NULL,
    api_version    text,
    stripe_created timestamptz,
    payload        bytea NOT NULL,
    correlation_id text,
    received_at    timestamptz NOT NULL DEFAULT now()
);

-- Records for stripe.events.v1, written in the same transaction as the event above and
-- published by the relay. Copied verbatim from billing_events.outbox.OUTBOX_DDL (a unit
-- test keeps the two equal).
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
