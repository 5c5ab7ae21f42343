-- Holds (authorisations): credits reserved for an AI call before the model is asked.
-- `balances.held_millicredits` is the sum of a user's active holds and moves in the same
-- statement that checks availability, so concurrent holds can never reserve more than
-- the balance.
CREATE TABLE holds (
    id                    uuid PRIMARY KEY,
    user_id               text NOT NULL,
    amount_millicredits   bigint NOT NULL CHECK (amount_millicredits > 0),
    idempotency_key       text NOT NULL,
    status                text NOT NULL DEFAULT 'active'
                              CHECK (status IN ('active', 'captured', 'released', 'expired')),
    expires_at            timestamptz NOT NULL,
    usage_id              text,
    charged_millicredits  bigint,
    transaction_id        uuid REFERENCES journal_transactions (id),
    created_at            timestamptz NOT NULL DEFAULT now(),
    settled_at            timestamptz,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'active';

-- One usage posting per usage record, whichever path (capture call, usage topic) posts it.
CREATE UNIQUE INDEX journal_one_posting_per_usage
    ON journal_transactions (reference_id) WHERE kind = 'usage';

ALTER TABLE balances ADD CONSTRAINT balances_held_not_negative CHECK (held_millicredits >= 0);
