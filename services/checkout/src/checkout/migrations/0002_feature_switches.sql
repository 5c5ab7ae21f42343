-- Run-time switches of billing: one row per switch, changed by admins through the API.
-- Checkout seeds a missing row from its CHECKOUT_* settings at startup and never overwrites
-- an existing one, so an admin change outlives restarts and deploys.
-- The name and value-type rules live here rather than only in code because metering reads
-- these rows too (through feature_flags below) and must never meet a value of another type.
CREATE TABLE feature_switches (
    name       text PRIMARY KEY CHECK (name IN
                   ('billingEnabled', 'purchasesEnabled', 'chargingEnabled',
                    'shadowBilling', 'shadowAllowlist', 'rolloutPercentage')),
    value      jsonb NOT NULL,
    updated_by text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT feature_switches_value_type CHECK (
        CASE name
            -- A nested CASE, as AND does not promise to test the type before the cast.
            WHEN 'rolloutPercentage' THEN
                CASE WHEN jsonb_typeof(value) = 'number'
                     -- digits only: 5.0 is a float to a JSON reader, not an integer
                     THEN value::text ~ '^[0-9]{1,3}$' AND value::numeric BETWEEN 0 AND 100
                     ELSE false
                END
            WHEN 'shadowAllowlist' THEN
                jsonb_typeof(value) = 'array'
                AND NOT jsonb_path_exists(value, '$[*] ? (@.type() != "string")')
            ELSE jsonb_typeof(value) = 'boolean'
        END
    )
);

-- A switch is changed, never removed: every reader can rely on finding all of them.
CREATE FUNCTION feature_switches_keep_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'feature switches are changed, never removed'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER feature_switches_no_delete
    BEFORE DELETE ON feature_switches
    FOR EACH ROW EXECUTE FUNCTION feature_switches_keep_rows();

CREATE TRIGGER feature_switches_no_truncate
    BEFORE TRUNCATE ON feature_switches
    FOR EACH STATEMENT EXECUTE FUNCTION feature_switches_keep_rows();

-- Who changed which switch, from what to what, and why. old_value is NULL for the row's
-- first value (seeded from settings at startup).
CREATE TABLE feature_switch_changes (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL,
    old_value      jsonb,
    new_value      jsonb NOT NULL,
    actor          text NOT NULL,
    reason         text NOT NULL,
    correlation_id text,
    changed_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX feature_switch_changes_name_idx ON feature_switch_changes (name, changed_at);

-- Append-only in the database itself, so the audit trail holds whatever code runs against it.
CREATE FUNCTION feature_switch_changes_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'feature_switch_changes is append-only'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER feature_switch_changes_no_update_delete
    BEFORE UPDATE OR DELETE ON feature_switch_changes
    FOR EACH ROW EXECUTE FUNCTION feature_switch_changes_append_only();

CREATE TRIGGER feature_switch_changes_no_truncate
    BEFORE TRUNCATE ON feature_switch_changes
    FOR EACH STATEMENT EXECUTE FUNCTION feature_switch_changes_append_only();

-- CONTRACT: metering reads <checkout schema>.feature_flags to apply the switches.
-- Columns: name text, value jsonb, updated_at timestamptz; one row per switch:
--   billingEnabled, purchasesEnabled, chargingEnabled, shadowBilling: JSON boolean
--   rolloutPercentage: JSON integer 0..100
--   shadowAllowlist: JSON array of user id strings
-- Keep these names and meanings; add columns only at the end.
CREATE VIEW feature_flags AS
SELECT name, value, updated_at
FROM feature_switches;

-- A view over one table would be auto-updatable; this makes it read-only for every role.
CREATE FUNCTION feature_flags_read_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'feature_flags is read-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER feature_flags_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON feature_flags
    FOR EACH ROW EXECUTE FUNCTION feature_flags_read_only();
