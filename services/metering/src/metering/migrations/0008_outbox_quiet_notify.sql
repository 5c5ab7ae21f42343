-- Every settled call writes a usage record here; the relay publishes them with a linger.
-- A writer notifies only when no older row is waiting (billing_events.outbox.
-- OUTBOX_QUIET_NOTIFY_DDL, word for word; a unit test keeps the two equal): under load the
-- relay looks again after each linger on its own, and no notification is sent per call.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL
                   AND id < (SELECT min(id) FROM new_rows)) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
