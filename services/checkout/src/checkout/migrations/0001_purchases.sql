-- One row per purchase attempt. The package terms are a snapshot taken when the purchase is
-- created, so a later catalog change never changes what an earlier purchase grants.
CREATE TABLE purchases (
    id                    text PRIMARY KEY,  -- a UUID string
    user_id               text NOT NULL,
    package_code          text NOT NULL,
    package_name          text NOT NULL,
    price_cents           integer NOT NULL CHECK (price_cents > 0),
    currency              text NOT NULL,
    credits               bigint NOT NULL CHECK (credits >= 0),
    bonus_credits         bigint NOT NULL CHECK (bonus_credits >= 0),
    grant_millicredits    bigint NOT NULL CHECK (grant_millicredits >= 0),
    status                text NOT NULL CHECK (status IN
                              ('pending', 'paid', 'fulfilled', 'refunded',
                               'partially_refunded', 'failed')),
    return_to             text,
    stripe_session_id     text UNIQUE,
    checkout_url          text,
    failure_code          text,
    refunded_millicredits bigint NOT NULL DEFAULT 0 CHECK (refunded_millicredits >= 0),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX purchases_user_created_idx ON purchases (user_id, created_at);

-- Idempotency-Key of POST /api/purchases, scoped per user. A key is claimed (in_progress)
-- before the work and holds the answer once done, so a repeat gets the same answer.
CREATE TABLE idempotency_keys (
    user_id         text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    text NOT NULL,
    state           text NOT NULL CHECK (state IN ('in_progress', 'done')),
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);

-- Messages the purchase status consumer has acted on (stripe:<event id>,
-- ledger:<transaction id>), claimed in the same transaction as their effect.
CREATE TABLE inbox (
    message_key text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- CONTRACT: the ledger reads <checkout schema>.purchase_terms to validate and size grants.
-- Keep these column names and meanings; add columns only at the end.
CREATE VIEW purchase_terms AS
SELECT id AS purchase_id,
       user_id,
       package_code,
       price_cents,
       currency,
       grant_millicredits,
       stripe_session_id,
       created_at
FROM purchases;

-- A view over one table would be auto-updatable; this makes it read-only for every role.
CREATE FUNCTION purchase_terms_read_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'purchase_terms is read-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER purchase_terms_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON purchase_terms
    FOR EACH ROW EXECUTE FUNCTION purchase_terms_read_only();
