-- One audit trail for the whole platform. audit_log keeps the ledger's own admin actions
-- (written in their transaction) and every AdminActionRecorded the other services and the
-- ops CLI publish on billing.audit.v1 (switch changes, caps, resumes, replays, runs...).
-- The table stays append-only (migration 0002's triggers); rows are only ever added.
ALTER TABLE audit_log
    -- The record's event id: a redelivered record is kept once.
    ADD COLUMN event_id    text UNIQUE,
    -- What was acted on, "<kind>:<id>" (user:alice, switch:purchasesEnabled, ...).
    ADD COLUMN target      text,
    -- The service (or "billing-cli") that took the action.
    ADD COLUMN source      text,
    -- When the action was taken (created_at is when the ledger recorded it).
    ADD COLUMN occurred_at timestamptz;

CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_target ON audit_log (target, id);

-- The trail as GET /api/admin/audit reads it. Rows written before this migration have no
-- target, source or occurred_at of their own (they cannot be updated): derive them.
CREATE VIEW audit_trail AS
SELECT
    id,
    event_id,
    actor,
    action,
    COALESCE(
        target,
        CASE WHEN action = 'fulfill_purchase' THEN 'purchase:' || reference_id
             ELSE 'user:' || target_user_id END
    ) AS target,
    target_user_id,
    reference_id,
    reason,
    correlation_id,
    details,
    COALESCE(source, 'ledger') AS source,
    COALESCE(occurred_at, created_at) AS occurred_at,
    created_at
FROM audit_log;
