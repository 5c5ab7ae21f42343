-- A capture in one statement: charge a hold's real usage once per usage id (at most what
-- is available once the hold is freed), settle the hold, and write the posting's
-- LedgerTransactionPosted to the outbox, all in the caller's transaction. Metering calls it
-- around every AI call, as it calls create_hold; the ledger's own capture API and its usage
-- consumer call it too, so there is one implementation.
--
-- The outbox record is protobuf (billing_events.v1.LedgerTransactionPosted), encoded here
-- with the helpers below; the ledger's tests decode it with the generated classes.

-- The journal's balance check is a deferred trigger: it runs at COMMIT as whoever commits,
-- which for a capture is metering's role, with no right to read the journal. It reads
-- only, and a trigger function cannot be called directly, so it runs as the schema's owner.
ALTER FUNCTION check_transaction_balanced() SECURITY DEFINER;

CREATE FUNCTION pb_varint(p_value bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
    -- Negative int64 values are sent as their 64-bit two's complement (ten bytes).
    v_rest numeric := CASE WHEN p_value < 0 THEN p_value + 18446744073709551616::numeric
                           ELSE p_value::numeric END;
    v_out bytea := ''::bytea;
    v_byte integer;
BEGIN
    LOOP
        v_byte := (v_rest % 128)::integer;
        v_rest := div(v_rest, 128);
        IF v_rest > 0 THEN
            v_out := v_out || set_byte('\x00'::bytea, 0, v_byte + 128);
        ELSE
            RETURN v_out || set_byte('\x00'::bytea, 0, v_byte);
        END IF;
    END LOOP;
END $$;

-- A varint field (wire type 0).
CREATE FUNCTION pb_int(p_field integer, p_value bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
RETURN pb_varint(p_field * 8) || pb_varint(p_value);

-- A length-delimited field (wire type 2): bytes, a string's UTF-8, an embedded message.
CREATE FUNCTION pb_bytes(p_field integer, p_value bytea) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
RETURN pb_varint(p_field * 8 + 2) || pb_varint(length(p_value)) || p_value;

CREATE FUNCTION pb_text(p_field integer, p_value text) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
RETURN pb_bytes(p_field, convert_to(p_value, 'UTF8'));

-- google.protobuf.Timestamp.
CREATE FUNCTION pb_timestamp(p_field integer, p_at timestamptz) RETURNS bytea
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT
RETURN pb_bytes(p_field,
    pb_int(1, floor(extract(epoch FROM p_at))::bigint)
    || pb_int(2, ((extract(epoch FROM p_at) - floor(extract(epoch FROM p_at))) * 1e9)::bigint));

-- LedgerTransactionPosted of a usage posting (kind TRANSACTION_KIND_USAGE = 2).
CREATE FUNCTION usage_posted_event(
    p_transaction_id uuid, p_user_id text, p_usage_id text, p_charge bigint,
    p_balance_after bigint, p_posted_at timestamptz, p_correlation_id text
) RETURNS bytea
LANGUAGE sql SET search_path FROM CURRENT
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

CREATE FUNCTION capture_hold(
    p_hold_id uuid, p_usage_id text, p_amount bigint, p_model text,
    p_input_tokens bigint, p_output_tokens bigint, p_rate_card_version text,
    p_correlation_id text, p_headers jsonb, p_topic text
)
RETURNS TABLE (r_outcome text, r_user_id text, r_status text, r_charged bigint,
               r_transaction_id uuid, r_balance bigint, r_held bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_user    text;
    v_hold    holds%ROWTYPE;
    v_after   balances%ROWTYPE;
    v_posted  record;
    v_charge  bigint := 0;
    v_txn     uuid;
    v_created timestamptz;
BEGIN
    SELECT user_id INTO v_user FROM holds WHERE id = p_hold_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'hold_not_found'::text, NULL::text, NULL::text, 0::bigint,
            NULL::uuid, 0::bigint, 0::bigint;
        RETURN;
    END IF;
    -- The order of every balance change: the user's balance row, then the hold.
    PERFORM 1 FROM balances WHERE user_id = v_user FOR UPDATE;
    SELECT * INTO v_hold FROM holds WHERE id = p_hold_id FOR UPDATE;
    IF v_hold.status = 'captured' THEN
        SELECT * INTO v_after FROM balances WHERE user_id = v_user;
        RETURN QUERY SELECT
            CASE WHEN v_hold.usage_id = p_usage_id THEN 'captured' ELSE 'captured_other' END,
            v_user, v_hold.status, coalesce(v_hold.charged_millicredits, 0),
            v_hold.transaction_id, coalesce(v_after.balance_millicredits, 0),
            coalesce(v_after.held_millicredits, 0);
        RETURN;
    END IF;
    IF v_hold.status = 'active' THEN
        UPDATE balances SET held_millicredits = held_millicredits - v_hold.amount_millicredits,
            updated_at = now()
        WHERE user_id = v_user;
    END IF;
    SELECT t.id, t.user_id, e.amount_millicredits INTO v_posted
    FROM journal_transactions t
    JOIN journal_entries e ON e.transaction_id = t.id AND e.user_id IS NOT NULL
    WHERE t.kind = 'usage' AND t.reference_id = p_usage_id;
    IF FOUND THEN
        IF v_posted.user_id <> v_user THEN
            RAISE EXCEPTION 'usage % was charged to another user', p_usage_id
                USING ERRCODE = 'P0001', HINT = 'usage_id_conflict';
        END IF;
        v_txn := v_posted.id;
        v_charge := -v_posted.amount_millicredits;
    ELSE
        SELECT greatest(0, least(p_amount, balance_millicredits - held_millicredits))
        INTO v_charge FROM balances WHERE user_id = v_user;
        v_charge := coalesce(v_charge, 0);
    END IF;
    IF v_charge > 0 AND v_txn IS NULL THEN
        v_txn := gen_random_uuid();
        INSERT INTO journal_transactions (id, kind, user_id, reference_id, correlation_id,
                                          source, details)
        VALUES (v_txn, 'usage', v_user, p_usage_id, p_correlation_id,
                'hold:' || p_hold_id::text,
                jsonb_build_object('model', p_model, 'input_tokens', p_input_tokens,
                    'output_tokens', p_output_tokens, 'rate_card_version', p_rate_card_version,
                    'requested_millicredits', p_amount, 'hold_id', p_hold_id::text))
        ON CONFLICT DO NOTHING RETURNING created_at INTO v_created;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'usage % was posted concurrently', p_usage_id;
        END IF;
        UPDATE balances SET balance_millicredits = balance_millicredits - v_charge,
            updated_at = now()
        WHERE user_id = v_user
        RETURNING * INTO v_after;
        INSERT INTO journal_entries (transaction_id, account, user_id, amount_millicredits,
                                     balance_after_millicredits)
        VALUES (v_txn, 'wallet:' || v_user, v_user, -v_charge, v_after.balance_millicredits),
               (v_txn, 'revenue', NULL, v_charge, NULL);
        INSERT INTO outbox (topic, message_key, payload, headers)
        VALUES (p_topic, convert_to(v_user, 'UTF8'),
                usage_posted_event(v_txn, v_user, p_usage_id, v_charge,
                                   v_after.balance_millicredits, v_created, p_correlation_id),
                coalesce(p_headers, '{}'::jsonb) || jsonb_build_object('kind', 'usage'));
    END IF;
    UPDATE holds SET
        status = CASE WHEN status = 'active' THEN 'captured' ELSE status END,
        usage_id = p_usage_id, charged_millicredits = v_charge, transaction_id = v_txn,
        settled_at = now()
    WHERE id = p_hold_id
    RETURNING * INTO v_hold;
    SELECT * INTO v_after FROM balances WHERE user_id = v_user;
    RETURN QUERY SELECT 'captured'::text, v_user, v_hold.status, v_charge, v_txn,
        coalesce(v_after.balance_millicredits, 0), coalesce(v_after.held_millicredits, 0);
END $$;
REVOKE ALL ON FUNCTION capture_hold(uuid, text, bigint, text, bigint, bigint, text, text, jsonb,
                                    text) FROM PUBLIC;
