-- Usage ids in creation order, kept by the claim of their key.
--
-- A usage id was uuid5 of the user and the key, so that every attempt under one key had
-- the same id without asking: a retry's in-flight row replaced the crashed attempt's, and a
-- late capture by an attempt taken over found the posting of the other in the ledger (one
-- posting per usage id). Those ids are random, so each new usage record, the ledger's
-- posting of it (its index of one posting per usage id) and the reconciler's copy of it
-- went to a random leaf of their indexes: on a database that has taken many calls, pages
-- read into the cache for one insert and, after each checkpoint, copied whole into the WAL.
-- They made most of a gateway call's remaining full-page images.
--
-- Now the gateway makes a time-ordered id (billing_platform.ids) for each request, and the
-- claim of its key keeps the id of the first attempt: a claim taken over answers with the
-- id it holds, so every attempt under one key still has one usage id. A claim made before
-- this migration holds none; taking it over stores the id its attempts had (uuid5, which
-- the gateway passes as p_usage_id_before) so the rule holds across the upgrade too. A call
-- without a key has no claim and is never retried: its fresh id is its own.
ALTER TABLE request_claims ADD COLUMN usage_id uuid;

-- Claim an idempotency key for the usage id p_usage_id: the attempt number and the usage id
-- the claim holds, or NULLs when another request has the key. A released claim (its attempt
-- failed) or one abandoned in progress is taken over.
CREATE FUNCTION claim_usage(p_user_id text, p_key text, p_request_hash text,
                            p_takeover_s double precision, p_usage_id uuid,
                            p_usage_id_before uuid, OUT r_attempt integer, OUT r_usage_id uuid)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO request_claims AS c (user_id, idempotency_key, request_hash, usage_id)
    VALUES (p_user_id, p_key, p_request_hash, p_usage_id)
    ON CONFLICT (user_id, idempotency_key) DO UPDATE SET
        state = 'in_progress', attempt = c.attempt + 1,
        request_hash = EXCLUDED.request_hash, claimed_at = now(),
        usage_id = coalesce(c.usage_id, p_usage_id_before, EXCLUDED.usage_id)
    WHERE c.state = 'released' OR (c.state = 'in_progress'
        AND c.claimed_at < now() - make_interval(secs => p_takeover_s))
    RETURNING c.attempt, c.usage_id INTO r_attempt, r_usage_id;
END $$;

-- The admission of 0006 (its outcomes are described in 0004) with the claim of the usage id:
-- p_usage_id is the request's new id, p_usage_id_before the one a claim made before this
-- migration stands for; r_usage_id is the call's usage id when it is admitted or referred
-- (the claim's, for a call with a key). Its statements take reusable plans, as 0011 set.
DROP FUNCTION admit_charged_call(text, uuid, text, boolean, text, double precision, bigint,
    timestamptz, timestamptz, timestamptz, bigint, bigint, bigint, timestamptz, integer, text,
    timestamptz, timestamptz, integer, bigint, bigint, integer, integer);

CREATE FUNCTION admit_charged_call(
    p_user_id text, p_usage_id uuid, p_usage_id_before uuid, p_key text, p_keyed boolean,
    p_request_hash text, p_takeover_s double precision, p_estimate bigint, p_now timestamptz,
    p_day_start timestamptz, p_hour_start timestamptz,
    p_cap_request bigint, p_cap_day bigint, p_cap_hour bigint, p_inflight_expires timestamptz,
    p_lock_space integer, p_rate_key text, p_rate_window timestamptz,
    p_rate_previous timestamptz, p_rate_limit integer, p_rate_remaining_ms bigint,
    p_rate_length_ms bigint, p_hold_ttl_s integer, p_history integer)
RETURNS TABLE (r_outcome text, r_attempt integer, r_usage_id uuid, r_claim_state text,
               r_request_hash text, r_response_body json, r_rate_previous integer,
               r_rate_budget bigint, r_rate_current integer, r_hold_id uuid,
               r_hold_amount bigint, r_balance bigint, r_held bigint, r_recent_calls integer,
               r_recent_total bigint)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_attempt integer := 1;
    v_usage   uuid := p_usage_id;
    v_claim   record;
    v_state   record;
    v_rate    record;
    v_hold    record;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_space, hashtext(p_user_id));
    IF p_keyed THEN
        SELECT c.r_attempt, c.r_usage_id INTO v_attempt, v_usage
        FROM claim_usage(p_user_id, p_key, p_request_hash, p_takeover_s, p_usage_id,
                         p_usage_id_before) c;
        IF v_attempt IS NULL THEN
            SELECT c.state, c.request_hash, u.response_body INTO v_claim
            FROM request_claims c LEFT JOIN usage_records u
                ON u.user_id = c.user_id AND u.idempotency_key = c.idempotency_key
            WHERE c.user_id = p_user_id AND c.idempotency_key = p_key;
            RETURN QUERY SELECT 'taken'::text, NULL::integer, NULL::uuid, v_claim.state,
                v_claim.request_hash, v_claim.response_body, NULL::integer, NULL::bigint,
                NULL::integer, NULL::uuid, NULL::bigint, NULL::bigint, NULL::bigint,
                NULL::integer, NULL::bigint;
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
        RETURN QUERY SELECT 'refer'::text, v_attempt, v_usage, NULL::text, NULL::text,
            NULL::json, NULL::integer, NULL::bigint, NULL::integer, NULL::uuid, NULL::bigint,
            NULL::bigint, NULL::bigint, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    SELECT * INTO v_rate FROM rate_limit_take(p_rate_key, p_rate_window, p_rate_previous,
        p_rate_limit, p_rate_remaining_ms, p_rate_length_ms);
    IF v_rate.counted IS NULL THEN
        PERFORM release_claim(p_user_id, p_key, p_keyed);
        RETURN QUERY SELECT 'limited'::text, v_attempt, NULL::uuid, NULL::text, NULL::text,
            NULL::json, v_rate.previous, v_rate.budget, v_rate.current, NULL::uuid,
            NULL::bigint, NULL::bigint, NULL::bigint, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    -- The ledger's create_hold. An attempt after a failed one needs a hold of its own: the
    -- first was released.
    SELECT * INTO v_hold FROM create_hold(p_user_id, p_estimate,
        CASE WHEN v_attempt = 1 THEN p_key ELSE p_key || ':' || v_attempt END, p_hold_ttl_s);
    IF v_hold.r_outcome NOT IN ('created', 'existing') THEN
        PERFORM release_claim(p_user_id, p_key, p_keyed);
        RETURN QUERY SELECT v_hold.r_outcome, v_attempt, NULL::uuid, NULL::text, NULL::text,
            NULL::json, NULL::integer, NULL::bigint, NULL::integer, NULL::uuid, p_estimate,
            v_hold.r_balance, v_hold.r_held, NULL::integer, NULL::bigint;
        RETURN;
    END IF;
    PERFORM reserve_inflight(v_usage, p_user_id, p_estimate, p_now, p_inflight_expires);
    RETURN QUERY SELECT 'admitted'::text, v_attempt, v_usage, NULL::text, NULL::text,
        NULL::json, NULL::integer, NULL::bigint, NULL::integer, v_hold.r_hold_id,
        v_hold.r_amount, v_hold.r_balance, v_hold.r_held, h.calls, h.total
    FROM recent_charges(p_user_id, p_history) h;
END $$;

-- The step-by-step path claims through claim_usage too.
DROP FUNCTION claim_request(text, text, text, double precision);
