-- Reconciliation runs and what they found. A run is written once, whole, in the
-- transaction that ran its checks (with its alerts in the outbox); a run that failed is
-- recorded afterwards, on its own, without its idempotency key so the key can be retried.
CREATE TABLE reconciliation_runs (
    id                       uuid PRIMARY KEY,
    period_date              date NOT NULL,
    period_from              timestamptz NOT NULL,
    period_to                timestamptz NOT NULL,
    trigger                  text NOT NULL CHECK (trigger IN ('api', 'schedule')),
    requested_by             text,
    status                   text NOT NULL CHECK (status IN ('clean', 'findings', 'failed')),
    started_at               timestamptz NOT NULL,
    finished_at              timestamptz NOT NULL,
    duration_ms              bigint NOT NULL CHECK (duration_ms >= 0),
    findings_count           integer NOT NULL DEFAULT 0,
    -- [{"name": check, "findings": count}] in the order the checks ran.
    check_counts             jsonb NOT NULL DEFAULT '[]',
    -- Checkout Sessions the Stripe API listed for the period; NULL when it did not answer.
    stripe_api_sessions_seen integer,
    -- The hash chain's head after the run (see journal_chain).
    journal_last_entry_id    bigint,
    journal_chain_hash       bytea,
    idempotency_key          text UNIQUE,
    request_hash             text,
    error                    text
);
-- GET /api/admin/reconciliation/latest
CREATE INDEX reconciliation_runs_latest ON reconciliation_runs (finished_at DESC)
    WHERE status <> 'failed';

CREATE TABLE findings (
    id                    bigserial PRIMARY KEY,
    run_id                uuid NOT NULL REFERENCES reconciliation_runs (id),
    check_name            text NOT NULL,
    kind                  text NOT NULL,
    user_id               text,
    reference_ids         text[] NOT NULL,
    expected_millicredits bigint,
    actual_millicredits   bigint,
    detail                text NOT NULL
);
CREATE INDEX findings_run ON findings (run_id, id);
-- Support looks up what was ever found about one user.
CREATE INDEX findings_user ON findings (user_id, run_id) WHERE user_id IS NOT NULL;
