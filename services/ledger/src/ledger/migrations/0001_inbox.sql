-- Every consumed message the ledger has acted on, by its natural key (Stripe event id,
-- usage id, ...). Handlers insert here in the same transaction as their effect, so a
-- redelivered message finds its key and changes nothing.
CREATE TABLE inbox (
    message_key     text PRIMARY KEY,
    kind            text NOT NULL,
    topic           text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint NOT NULL,
    correlation_id  text,
    trace_id        text,
    received_at     timestamptz NOT NULL DEFAULT now()
);
