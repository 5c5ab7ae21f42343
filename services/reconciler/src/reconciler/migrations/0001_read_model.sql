-- What the reconciler has seen on the topics it consumes, one row per natural key (Stripe
-- event id, usage id, ledger transaction id). It is compared with the ledger's own tables
-- to find what the streams delivered but the ledger does not show yet (stream lag).

-- Every consumed message by its natural key (stripe:<event id>, usage:<usage id>,
-- ledger:<transaction id>), claimed in the same transaction as its row below, so a
-- redelivery finds its key and changes nothing.
CREATE TABLE inbox (
    message_key     text PRIMARY KEY,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now()
);

-- stripe.events.v1: verified Stripe events. amount is the session's amount_total or the
-- charge's amount (cents); created is Stripe's own creation time of the event.
CREATE TABLE seen_stripe_events (
    event_id        text PRIMARY KEY,
    type            text NOT NULL,
    object_id       text,
    purchase_id     text,
    amount          bigint,
    amount_refunded bigint,
    created         timestamptz NOT NULL,
    payload         jsonb NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now()
);
-- The lag check walks paid-session events by time.
CREATE INDEX seen_stripe_events_sessions ON seen_stripe_events (created)
    WHERE type IN ('checkout.session.completed', 'checkout.session.async_payment_succeeded');

-- billing.usage.v1: one row per usage record (charged, shadow or unbilled).
CREATE TABLE seen_usage_records (
    usage_id             text PRIMARY KEY,
    user_id              text NOT NULL,
    model                text NOT NULL,
    mode                 text NOT NULL,
    charged_millicredits bigint NOT NULL,
    cost_millicredits    bigint NOT NULL,
    created              timestamptz NOT NULL,
    seen_at              timestamptz NOT NULL DEFAULT now()
);
-- The lag check walks charged records by time.
CREATE INDEX seen_usage_records_charged ON seen_usage_records (created)
    WHERE mode = 'charged' AND charged_millicredits > 0;

-- billing.ledger.v1: posted transactions, with the move on the user's wallet.
CREATE TABLE seen_ledger_transactions (
    transaction_id            text PRIMARY KEY,
    kind                      text NOT NULL,
    user_id                   text NOT NULL,
    reference_id              text NOT NULL,
    wallet_delta_millicredits bigint NOT NULL,
    posted_at                 timestamptz NOT NULL,
    seen_at                   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX seen_ledger_transactions_posted ON seen_ledger_transactions (posted_at);
