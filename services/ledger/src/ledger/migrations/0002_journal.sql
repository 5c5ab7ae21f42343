-- The double-entry journal. Every transaction's entries sum to zero across accounts
-- (checked at commit); a user's balance is the sum of that user's wallet entries and is
-- kept in `balances` in the same transaction as the entries.
--
-- Accounts: wallet:<user_id> (credits owed to the user), stripe_clearing (money received
-- through Stripe), promotional (bonus credits), adjustments (admin corrections).

CREATE TABLE journal_transactions (
    id              uuid PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN
                        ('purchase', 'refund', 'adjustment', 'reversal', 'usage')),
    user_id         text NOT NULL,
    reference_id    text NOT NULL,
    reverses_id     uuid REFERENCES journal_transactions (id),
    idempotency_key text UNIQUE,
    correlation_id  text,
    source          text NOT NULL,
    details         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Exactly one grant per purchase, whatever path (webhook, admin) tries to post it.
CREATE UNIQUE INDEX journal_one_grant_per_purchase
    ON journal_transactions (reference_id) WHERE kind = 'purchase';
CREATE INDEX journal_transactions_user ON journal_transactions (user_id, created_at);

CREATE TABLE journal_entries (
    id                         bigserial PRIMARY KEY,
    transaction_id             uuid NOT NULL REFERENCES journal_transactions (id),
    account                    text NOT NULL,
    user_id                    text,
    amount_millicredits        bigint NOT NULL,
    balance_after_millicredits bigint,
    created_at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((user_id IS NULL) = (balance_after_millicredits IS NULL))
);
CREATE INDEX journal_entries_wallet ON journal_entries (user_id, id) WHERE user_id IS NOT NULL;
CREATE INDEX journal_entries_transaction ON journal_entries (transaction_id);

CREATE TABLE balances (
    user_id              text PRIMARY KEY,
    balance_millicredits bigint NOT NULL DEFAULT 0,
    held_millicredits    bigint NOT NULL DEFAULT 0,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- One row per granted purchase: the database's guard against a second grant, and the
-- running state of its refunds (Stripe reports refunds cumulatively per charge).
CREATE TABLE purchase_grants (
    purchase_id              text PRIMARY KEY,
    user_id                  text NOT NULL,
    transaction_id           uuid NOT NULL REFERENCES journal_transactions (id),
    package_code             text NOT NULL,
    price_cents              bigint NOT NULL,
    currency                 text NOT NULL,
    grant_millicredits       bigint NOT NULL,
    stripe_session_id        text,
    payment_intent           text,
    refunded_cents           bigint NOT NULL DEFAULT 0,
    clawed_back_millicredits bigint NOT NULL DEFAULT 0,
    source                   text NOT NULL,
    granted_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchase_grants_payment_intent ON purchase_grants (payment_intent);

CREATE TABLE audit_log (
    id             bigserial PRIMARY KEY,
    actor          text NOT NULL,
    action         text NOT NULL,
    target_user_id text,
    reference_id   text,
    reason         text,
    correlation_id text,
    details        jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- What the ledger decided about each consumed message (granted, rejected with an alert...).
ALTER TABLE inbox ADD COLUMN outcome text, ADD COLUMN detail text;

-- Append-only, enforced here rather than trusted to code: UPDATE, DELETE and TRUNCATE on
-- the journal and the audit log fail for every role that does not disable triggers.
CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER journal_transactions_append_only BEFORE UPDATE OR DELETE ON journal_transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_transactions_no_truncate BEFORE TRUNCATE ON journal_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

REVOKE UPDATE, DELETE, TRUNCATE ON journal_transactions, journal_entries, audit_log FROM PUBLIC;

-- Zero-sum per transaction, checked once the inserting transaction commits.
CREATE FUNCTION check_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total numeric;
BEGIN
    SELECT sum(amount_millicredits) INTO total
        FROM journal_entries WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'transaction % does not balance (sum %)', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journal_entries_balanced AFTER INSERT ON journal_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_transaction_balanced();
