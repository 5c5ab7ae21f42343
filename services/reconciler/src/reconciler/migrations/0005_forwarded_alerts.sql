-- Alerts of billing.alerts.v1 the webhook has accepted (reconciler.alerts): a redelivered
-- record finds its row and is not posted again.
CREATE TABLE forwarded_alerts (
    alert_id     text PRIMARY KEY,
    kind         text NOT NULL,
    forwarded_at timestamptz NOT NULL DEFAULT now()
);
