-- A charged call's admission in one statement (one round trip, one transaction):
-- admit_charged_call claims the idempotency key, weighs the call against the user's pause
-- and caps, counts it against the rate limit, holds its worst case in the ledger and counts
-- it in flight, under the user's guard lock (guard_store.py). The pieces it shares
-- with the step-by-step path (the claim, the rate limit, the guard state, the in-flight
-- row) are functions both call, so each rule has one implementation. They are PL/pgSQL,
-- which keeps each statement's plan for the session: PostgreSQL 15 plans the body of a SQL
-- function it cannot inline again on every call.

-- The rate limit's take statement (billing_platform.ratelimit; this is its
-- RATE_LIMIT_TAKE_DDL, word for word).
CREATE FUNCTION rate_limit_take(text, timestamptz, timestamptz, integer, bigint, bigint)
 RETURNS TABLE (counted integer, previous integer, budget bigint, current integer)
 LANGUAGE plpgsql VOLATILE AS $take$ #variable_conflict use_column
BEGIN RETURN QUERY
WITH previous AS (
    SELECT coalesce(max(hits), 0) AS hits FROM rate_limit_hits
    WHERE key = $1 AND window_start = $3
), budget AS (
    SELECT $4::integer - ((previous.hits::bigint * $5::bigint + $6::bigint - 1) / $6::bigint)
        AS hits
    FROM previous
), counted AS (
    INSERT INTO rate_limit_hits AS r (key, window_start, hits)
    SELECT $1, $2, 1 FROM budget WHERE budget.hits >= 1
    ON CONFLICT (key, window_start) DO UPDATE SET hits = r.hits + 1
        WHERE r.hits < (SELECT hits FROM budget)
    RETURNING r.hits
)
SELECT (SELECT hits FROM counted) AS counted,
       (SELECT hits FROM previous) AS previous,
       (SELECT hits FROM budget) AS budget,
       coalesce((SELECT hits FROM rate_limit_hits WHERE key = $1 AND window_start = $2), 0)
           AS current
; END $take$;

-- Claim an idempotency key: the attempt number, or NULL when another request has it. A
-- released claim (its attempt failed) or one abandoned in progress is taken over.
CREATE FUNCTION claim_request(p_user_id text, p_key text, p_request_hash text,
                              p_takeover_s double precision)
RETURNS integer LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    v_attempt integer;
BEGIN
    INSERT INTO request_claims (user_id, idempotency_key, request_hash)
    VALUES (p_user_id, p_key, p_request_hash)
    ON CONFLICT (user_id, idempotency_key) DO UPDATE SET
        state = 'in_progress', attempt = request_claims.attempt + 1,
        request_hash = EXCLUDED.request_hash, claimed_at = now()
    WHERE request_claims.state = 'released' OR (request_claims.state = 'in_progress'
        AND request_claims.claimed_at < now() - make_interval(secs => p_takeover_s))
    RETURNING attempt INTO v_attempt;
    RETURN v_attempt;
END $$;

-- Release a claim whose attempt ended without an answer (a refusal, a failed call).
CREATE FUNCTION release_claim(p_user_id text, p_key text, p_keyed boolean)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE request_claims SET state = 'released'
    WHERE p_keyed AND user_id = p_user_id AND idempotency_key = p_key
        AND state = 'in_progress';
END $$;

-- What the guardrails weigh a call against: the user's pause (NULL columns when never
-- paused), cap override (cap_user_id NULL when none), what was charged since p_day_start
-- and after p_hour_start, and the worst case in flight (expired reservations excluded).
CREATE FUNCTION guard_state(p_user_id text, p_day_start timestamptz,
                            p_hour_start timestamptz, p_now timestamptz)
RETURNS TABLE (pause_user_id text, pause_reason text, paused_at timestamptz,
               resumed_at timestamptz, resumed_by text, resume_reason text,
               cap_user_id text, per_request_millicredits bigint,
               per_day_millicredits bigint, per_hour_millicredits bigint,
               updated_by text, reason text, updated_at timestamptz,
               charged_today bigint, charged_last_hour bigint, in_flight bigint)
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY SELECT p.user_id, p.reason, p.paused_at, p.resumed_at, p.resumed_by, p.resume_reason,
        c.user_id, c.per_request_millicredits, c.per_day_millicredits,
        c.per_hour_millicredits, c.updated_by, c.reason, c.updated_at,
        (SELECT coalesce(sum(charged_millicredits), 0) FROM usage_records
         WHERE user_id = p_user_id AND mode = 'charged' AND created_at >= p_day_start)::bigint,
        (SELECT coalesce(sum(charged_millicredits), 0) FROM usage_records
         WHERE user_id = p_user_id AND mode = 'charged' AND created_at > p_hour_start)::bigint,
        (SELECT coalesce(sum(estimate_millicredits), 0) FROM inflight_charges
         WHERE user_id = p_user_id AND expires_at > p_now)::bigint
    FROM (SELECT p_user_id AS user_id) u
    LEFT JOIN user_pauses p ON p.user_id = u.user_id
    LEFT JOIN user_caps c ON c.user_id = u.user_id;
END $$;

-- The user's last p_limit charged calls: how many, and their total.
CREATE FUNCTION recent_charges(p_user_id text, p_limit integer)
RETURNS TABLE (calls integer, total bigint)
LANGUAGE plpgsql STABLE SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY SELECT count(*)::integer, coalesce(sum(charged_millicredits), 0)::bigint
    FROM (SELECT charged_millicredits FROM usage_records
          WHERE user_id = p_user_id AND mode = 'charged'
          ORDER BY created_at DESC LIMIT p_limit) recent;
END $$;

-- Count a call in flight. A row left by a crashed attempt under the same key is replaced,
-- not added to; the user's expired reservations go in the same statement (they no longer
-- count anyway).
CREATE FUNCTION reserve_inflight(p_usage_id uuid, p_user_id text, p_estimate bigint,
                                 p_now timestamptz, p_expires_at timestamptz)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
BEGIN
    WITH expired AS (DELETE FROM inflight_charges
        WHERE user_id = p_user_id AND expires_at <= p_now AND usage_id <> p_usage_id)
    INSERT INTO inflight_charges (usage_id, user_id, estimate_millicredits, created_at,
        expires_at) VALUES (p_usage_id, p_user_id, p_estimate, p_now, p_expires_at)
    ON CONFLICT (usage_id) DO UPDATE SET
        estimate_millicredits = EXCLUDED.estimate_millicredits,
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at;
END $$;

-- The admission. Outcomes (r_outcome):
--   admitted      every check passed: the key is claimed (r_attempt), the hold made
--                 (r_hold_id, r_hold_amount, r_balance, r_held), the call counted in flight;
--                 r_recent_calls and r_recent_total are the user's last p_history charged
--                 calls recorded before it (the anomaly check weighs its charge against them);
--   taken         another request holds or answered the key (r_claim_state,
--                 r_request_hash, r_response_body); nothing was written;
--   refer         the user is paused or a cap would trip: the key stays claimed
--                 (r_attempt) and nothing else was written; the caller takes the
--                 step-by-step path, which answers refusals in full (and pauses the user
--                 when the session cap trips);
--   limited       over the rate limit (r_rate_*: the take statement's figures);
--   insufficient  the ledger refused the hold (r_balance, r_held);
--   key_reused    the ledger holds this hold key for another amount.
-- After limited, insufficient and key_reused the key is released, as after any refusal.
-- The caps are those of guardrails.check (guardrails.py): per request, then the UTC day and the
-- rolling hour, each counting what is in flight.
CREATE FUNCTION admit_charged_call(
    p_user_id text, p_usage_id uuid, p_key text, p_keyed boolean, p_request_hash text,
    p_takeover_s double precision, p_estimate bigint, p_now timestamptz,
    p_day_start timestamptz, p_hour_start timestamptz,
    p_cap_request bigint, p_cap_day bigint, p_cap_hour bigint, p_inflight_expires timestamptz,
    p_lock_space integer, p_rate_key text, p_rate_window timestamptz,
    p_rate_previous timestamptz, p_rate_limit integer, p_rate_remaining_ms bigint,
    p_rate_length_ms bigint, p_ledger_schema text, p_hold_ttl_s integer, p_history integer)
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
    -- The ledger's schema is a setting of the deployment, so its function is named here.
    -- An attempt after a failed one needs a hold of its own: the first was released.
    EXECUTE format('SELECT * FROM %I.create_hold($1, $2, $3, $4)', p_ledger_schema)
        INTO v_hold
        USING p_user_id, p_estimate,
            CASE WHEN v_attempt = 1 THEN p_key ELSE p_key || ':' || v_attempt END,
            p_hold_ttl_s;
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
