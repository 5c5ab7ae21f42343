-- The admission calls the ledger's create_hold by name instead of through EXECUTE, which
-- parsed and planned the call on every admission. The ledger's schema is a setting of the
-- deployment: `metering migrate` puts it on this function's search_path, after metering's
-- own (db_access.py), so the call is static and keeps its plan for the session. The
-- function is otherwise that of 0004 (its outcomes are described there), less its
-- p_ledger_schema argument.
DROP FUNCTION admit_charged_call(text, uuid, text, boolean, text, double precision, bigint,
    timestamptz, timestamptz, timestamptz, bigint, bigint, bigint, timestamptz, integer, text,
    timestamptz, timestamptz, integer, bigint, bigint, text, integer, integer);

CREATE FUNCTION admit_charged_call(
    p_user_id text, p_usage_id uuid, p_key text, p_keyed boolean, p_request_hash text,
    p_takeover_s double precision, p_estimate bigint, p_now timestamptz,
    p_day_start timestamptz, p_hour_start timestamptz,
    p_cap_request bigint, p_cap_day bigint, p_cap_hour bigint, p_inflight_expires timestamptz,
    p_lock_space integer, p_rate_key text, p_rate_window timestamptz,
    p_rate_previous timestamptz, p_rate_limit integer, p_rate_remaining_ms bigint,
    p_rate_length_ms bigint, p_hold_ttl_s integer, p_history integer)
RETURNS TABLE (r_outcome text, r_attempt integer, r_claim_state text, r_request_hash text,
               r_response_body json, r_rate_previous integer, r_rate_budget bigint,
               r_rate_current integer, r_hold_id uuid, r_hold_amount bigint,
               r_balance bigint, r_held bigint, r_recent_calls integer,
               r_recent_total bigint)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    v_attempt integer := 1;
    v_claim   record;
    v_state   record;
    v_rate    record;
    v_hold    record;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_space, hashtext(p_user_id));
    IF p_keyed THEN
        v_attempt := claim_request(p_user_id, p_key, p_request_hash, p_takeover_s);
        IF v_attempt IS NULL THEN
            SELECT c.state, c.request_hash, u.response_body INTO v_claim
            FROM request_claims c LEFT JOIN usage_records u
                ON u.user_id = c.user_id AND u.idempotency_key = c.idempotency_key
            WHERE c.user_id = p_user_id AND c.idempotency_key = p_key;
            RETURN QUERY SELECT 'taken'::text, NULL::integer, v_claim.state,
                v_claim.request_hash, v_claim.response_body, NULL::integer, NULL::bigint,
                NULL::integer, NULL::uuid, NULL::bigint, NULL::bigint, NULL::bigint, NULL::integer,
                NULL::bigint;
            RETURN;
        END IF;
    END IF;
    SELECT * INTO v_state FROM guard_state(p_user_id, p_day_start, p_hour_start, p_now);
    IF (v_state.pause_user_id IS NOT NULL AND v_state.resumed_at IS NULL)
        OR p_estimate > coalesce(v_state.per_request_millicredits, p_cap_request)
        OR v_state.charged_today + v_state.in_flight + p_estimate
            > coalesce(v_state.per_day_millicredits, p_cap_day)
        OR v_state.charged_last_hour + v_state.in_flight + p_estimate
            > coalesce(v_state.per_hour_millicredits, p_cap_hour) THEN
        RETURN QUERY SELECT 'refer'::text, v_attempt, NULL::text, NULL::text, NULL::json,
            NULL::integer, NULL::bigint, NULL::integer, NULL::uuid, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    SELECT * INTO v_rate FROM rate_limit_take(p_rate_key, p_rate_window, p_rate_previous,
        p_rate_limit, p_rate_remaining_ms, p_rate_length_ms);
    IF v_rate.counted IS NULL THEN
        PERFORM release_claim(p_user_id, p_key, p_keyed);
        RETURN QUERY SELECT 'limited'::text, v_attempt, NULL::text, NULL::text, NULL::json,
            v_rate.previous, v_rate.budget, v_rate.current, NULL::uuid, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    -- The ledger's create_hold. An attempt after a failed one needs a hold of its own: the
    -- first was released.
    SELECT * INTO v_hold FROM create_hold(p_user_id, p_estimate,
        CASE WHEN v_attempt = 1 THEN p_key ELSE p_key || ':' || v_attempt END, p_hold_ttl_s);
    IF v_hold.r_outcome NOT IN ('created', 'existing') THEN
        PERFORM release_claim(p_user_id, p_key, p_keyed);
        RETURN QUERY SELECT v_hold.r_outcome, v_attempt, NULL::text, NULL::text, NULL::json,
            NULL::integer, NULL::bigint, NULL::integer, NULL::uuid, p_estimate,
            v_hold.r_balance, v_hold.r_held, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    PERFORM reserve_inflight(p_usage_id, p_user_id, p_estimate, p_now, p_inflight_expires);
    RETURN QUERY SELECT 'admitted'::text, v_attempt, NULL::text, NULL::text, NULL::json,
        NULL::integer, NULL::bigint, NULL::integer, v_hold.r_hold_id, v_hold.r_amount,
        v_hold.r_balance, v_hold.r_held, h.calls, h.total
    FROM recent_charges(p_user_id, p_history) h;
END $$;
