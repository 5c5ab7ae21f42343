-- A hold in one statement: the caller (the ledger's own API, or metering directly, which may
-- EXECUTE this and capture_hold and nothing else here) spends one round trip per AI call.
-- The rules are those of every balance change: the user's balances row is locked first;
-- the same key answers the hold it made; overdue holds are expired before the check; the
-- availability check and the reservation are one UPDATE, so concurrent holds can never
-- reserve more than the balance. SECURITY DEFINER with the search_path pinned to this
-- schema: the caller needs no right on any table.
CREATE FUNCTION create_hold(p_user_id text, p_amount bigint, p_key text, p_ttl_s integer)
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
    VALUES (gen_random_uuid(), p_user_id, p_amount, p_key, now() + make_interval(secs => p_ttl_s))
    RETURNING * INTO v_hold;
    RETURN QUERY SELECT 'created'::text, v_hold.id, v_hold.amount_millicredits, v_hold.status,
        v_hold.expires_at, v_after.balance_millicredits, v_after.held_millicredits;
END $$;
REVOKE ALL ON FUNCTION create_hold(text, bigint, text, integer) FROM PUBLIC;
