-- The posting event a capture writes, at a fifth of its cost. Each capture encoded its
-- LedgerTransactionPosted through SQL helpers that carried SET search_path: PostgreSQL does
-- not inline such a function, and version 15 plans the body of a SQL function it does not
-- inline again on every call, so one event cost about 260 us of CPU, measured on its own:
-- more than the rest of the capture. Now (52 us):
-- - the field helpers have no SET clause (their bodies were bound to this schema when they
--   were created, being SQL-standard bodies), so they inline into their caller;
-- - usage_posted_event is PL/pgSQL, which keeps its plan for the session;
-- - pb_varint works in bigint bit arithmetic instead of numeric division.
-- The bytes are the same (tests/integration/test_ledger_posting_event.py checks them
-- against the generated protobuf classes).

-- Varint of a 64-bit value, two's complement for negatives (ten bytes), in bigint arithmetic.
CREATE OR REPLACE FUNCTION pb_varint(p_value bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_rest bigint := p_value;
    v_out  bytea := ''::bytea;
BEGIN
    LOOP
        -- The low seven bits; then a logical shift (>> is arithmetic on bigint).
        IF v_rest >= 0 AND v_rest < 128 THEN
            RETURN v_out || set_byte('\x00'::bytea, 0, v_rest::integer);
        END IF;
        v_out := v_out || set_byte('\x00'::bytea, 0, ((v_rest & 127) | 128)::integer);
        v_rest := (v_rest >> 7) & 144115188075855871;  -- 2^57 - 1
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION pb_int(p_field integer, p_value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pb_varint(p_field * 8) || pb_varint(p_value);

CREATE OR REPLACE FUNCTION pb_bytes(p_field integer, p_value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pb_varint(p_field * 8 + 2) || pb_varint(length(p_value)) || p_value;

CREATE OR REPLACE FUNCTION pb_text(p_field integer, p_value text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pb_bytes(p_field, convert_to(p_value, 'UTF8'));

CREATE OR REPLACE FUNCTION pb_timestamp(p_field integer, p_at timestamptz) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pb_bytes(p_field,
    pb_int(1, floor(extract(epoch FROM p_at))::bigint)
    || pb_int(2, ((extract(epoch FROM p_at) - floor(extract(epoch FROM p_at))) * 1e9)::bigint));

CREATE OR REPLACE FUNCTION usage_posted_event(
    p_transaction_id uuid, p_user_id text, p_usage_id text, p_charge bigint,
    p_balance_after bigint, p_posted_at timestamptz, p_correlation_id text
) RETURNS bytea
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    RETURN pb_bytes(1, pb_text(1, replace(gen_random_uuid()::text, '-', ''))
                       || pb_timestamp(2, p_posted_at)
                       || pb_text(3, p_correlation_id)
                       || pb_text(4, 'ledger'))
        || pb_text(2, p_transaction_id::text)
        || pb_int(3, 2)
        || pb_text(4, p_user_id)
        || pb_text(5, p_usage_id)
        || pb_bytes(6, pb_text(1, 'wallet:' || p_user_id) || pb_int(2, -p_charge))
        || pb_bytes(6, pb_text(1, 'revenue') || pb_int(2, p_charge))
        || pb_int(7, p_balance_after)
        || pb_timestamp(8, p_posted_at);
END $$;
