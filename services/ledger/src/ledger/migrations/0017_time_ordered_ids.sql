-- Holds and the journal's transactions get ids in the order they are made (the layout of
-- UUID version 7: the milliseconds since the epoch, then random bits). Their ids were random
-- (version 4), so each new hold, each capture's transaction and its entries went to a random
-- leaf of their primary keys and of the entries' index by transaction, as did the
-- reconciler's copy of every transaction: pages all over indexes that grow by a row per AI
-- call, each read into the buffer cache for one insert, and after every checkpoint copied
-- whole into the WAL at its first change. Those four indexes made three fifths of the full
-- page images in the WAL of a gateway run (pg_waldump, one segment at 100 calls/s), and the
-- images two thirds of its bytes, which are written, flushed before each answer, and
-- archived. In creation order, inserts go to the right-hand leaf, which stays in the cache.
-- The ledger's Python postings use the same layout (billing_platform.ids).

-- The clock's milliseconds in the first 48 bits; version 7; the rest random (from
-- gen_random_uuid, whose variant bits are already RFC 4122's).
CREATE FUNCTION time_ordered_uuid() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
RETURN encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
        FROM 3)
    FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
REVOKE ALL ON FUNCTION time_ordered_uuid() FROM PUBLIC;

-- create_hold of 0008, its hold's id in creation order.
CREATE OR REPLACE FUNCTION create_hold(p_user_id text, p_amount bigint, p_key text, p_ttl_s integer)
RETURNS TABLE (r_outcome text, r_hold_id uuid, r_amount bigint, r_status text,
               r_expires_at timestamptz, r_balance bigint, r_held bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_hold   holds%ROWTYPE;
    v_locked balances%ROWTYPE;
    v_after  balances%ROWTYPE;
    v_freed  bigint;
BEGIN
    IF p_amount <= 0 OR p_ttl_s <= 0 THEN
        RAISE EXCEPTION 'hold amount and ttl must be positive' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v_locked FROM balances WHERE user_id = p_user_id FOR UPDATE;
    SELECT * INTO v_hold FROM holds WHERE user_id = p_user_id AND idempotency_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT
            CASE WHEN v_hold.amount_millicredits = p_amount THEN 'existing' ELSE 'key_reused' END,
            v_hold.id, v_hold.amount_millicredits, v_hold.status, v_hold.expires_at,
            coalesce(v_locked.balance_millicredits, 0), coalesce(v_locked.held_millicredits, 0);
        RETURN;
    END IF;
    WITH due AS (
        UPDATE holds SET status = 'expired', settled_at = now()
        WHERE user_id = p_user_id AND status = 'active' AND expires_at <= now()
        RETURNING amount_millicredits
    )
    SELECT coalesce(sum(amount_millicredits), 0) INTO v_freed FROM due;
    IF v_freed > 0 THEN
        UPDATE balances SET held_millicredits = held_millicredits - v_freed, updated_at = now()
        WHERE user_id = p_user_id;
    END IF;
    UPDATE balances SET held_millicredits = held_millicredits + p_amount, updated_at = now()
    WHERE user_id = p_user_id AND balance_millicredits - held_millicredits >= p_amount
    RETURNING * INTO v_after;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'insufficient'::text, NULL::uuid, p_amount, NULL::text,
            NULL::timestamptz, coalesce(v_locked.balance_millicredits, 0),
            coalesce(v_locked.held_millicredits, 0) - v_freed;
        RETURN;
    END IF;
    INSERT INTO holds (id, user_id, amount_millicredits, idempotency_key, expires_at)
    VALUES (time_ordered_uuid(), p_user_id, p_amount, p_key, now() + make_interval(secs => p_ttl_s))
    RETURNING * INTO v_hold;
    RETURN QUERY SELECT 'created'::text, v_hold.id, v_hold.amount_millicredits, v_hold.status,
        v_hold.expires_at, v_after.balance_millicredits, v_after.held_millicredits;
END $$;

-- capture_hold of 0013, its transaction's id in creation order.
CREATE OR REPLACE FUNCTION capture_hold(
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
    v_balance bigint;
    v_held    bigint;
    v_release bigint := 0;
    v_debit   bigint := 0;
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
    SELECT balance_millicredits, held_millicredits INTO v_balance, v_held
    FROM balances WHERE user_id = v_user FOR UPDATE;
    SELECT * INTO v_hold FROM holds WHERE id = p_hold_id FOR UPDATE;
    IF v_hold.status = 'captured' THEN
        RETURN QUERY SELECT
            CASE WHEN v_hold.usage_id = p_usage_id THEN 'captured' ELSE 'captured_other' END,
            v_user, v_hold.status, coalesce(v_hold.charged_millicredits, 0),
            v_hold.transaction_id, coalesce(v_balance, 0), coalesce(v_held, 0);
        RETURN;
    END IF;
    IF v_hold.status = 'active' THEN
        v_release := v_hold.amount_millicredits;
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
        -- At most what is available once this hold is freed.
        v_charge := coalesce(greatest(0, least(p_amount, v_balance - (v_held - v_release))), 0);
    END IF;
    IF v_charge > 0 AND v_txn IS NULL THEN
        v_txn := time_ordered_uuid();
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
        v_debit := v_charge;
    END IF;
    IF v_release > 0 OR v_debit > 0 THEN
        UPDATE balances SET held_millicredits = held_millicredits - v_release,
            balance_millicredits = balance_millicredits - v_debit, updated_at = now()
        WHERE user_id = v_user
        RETURNING balance_millicredits, held_millicredits INTO v_balance, v_held;
    END IF;
    IF v_debit > 0 THEN
        INSERT INTO journal_entries (transaction_id, account, user_id, amount_millicredits,
                                     balance_after_millicredits)
        VALUES (v_txn, 'wallet:' || v_user, v_user, -v_debit, v_balance),
               (v_txn, 'revenue', NULL, v_debit, NULL);
        INSERT INTO outbox (topic, message_key, payload, headers)
        VALUES (p_topic, convert_to(v_user, 'UTF8'),
                usage_posted_event(v_txn, v_user, p_usage_id, v_debit, v_balance, v_created,
                                   p_correlation_id),
                coalesce(p_headers, '{}'::jsonb) || jsonb_build_object('kind', 'usage'));
    END IF;
    UPDATE holds SET
        status = CASE WHEN status = 'active' THEN 'captured' ELSE status END,
        usage_id = p_usage_id, charged_millicredits = v_charge, transaction_id = v_txn,
        settled_at = now()
    WHERE id = p_hold_id
    RETURNING status INTO v_hold.status;
    RETURN QUERY SELECT 'captured'::text, v_user, v_hold.status, v_charge, v_txn,
        coalesce(v_balance, 0), coalesce(v_held, 0);
END $$;
