-- The admission's two reads of the user's state, guard_state (pause, caps, what was charged
-- and is in flight) and recent_charges (the anomaly check's look-back), become SQL functions
-- that PostgreSQL inlines into the statement that calls them. As PL/pgSQL functions each
-- was a call of its own inside the admission: a function entry with its search_path set and
-- restored, a statement started for its one query, and its rows passed back through a
-- tuple store. Inlined, their queries are part of the admission's statements and plans,
-- and of the step-by-step path's (guard_state).
--
-- They are the queries of 0007 (guard_state) and 0004 (recent_charges), unchanged. Their
-- bodies are SQL-standard, so their tables are bound to this schema when they are created
-- (the reason the PL/pgSQL versions carried SET search_path); a function with a SET clause
-- is never inlined.
--
-- recent_charges carried plan_cache_mode = force_generic_plan (0009): its look-back size
-- is a parameter of a LIMIT, and plans made for its value looked cheaper than the reusable
-- one, so the plan cache planned it again on every call. Inlined, its query is a
-- statement of admit_charged_call, which takes the setting instead (the other statements
-- of the admission look up keys; their reusable plans are the same index scans).

CREATE OR REPLACE FUNCTION guard_state(p_user_id text, p_day_start timestamptz,
                                       p_hour_start timestamptz, p_now timestamptz)
RETURNS TABLE (pause_user_id text, pause_reason text, paused_at timestamptz,
               resumed_at timestamptz, resumed_by text, resume_reason text,
               cap_user_id text, per_request_millicredits bigint,
               per_day_millicredits bigint, per_hour_millicredits bigint,
               updated_by text, reason text, updated_at timestamptz,
               charged_today bigint, charged_last_hour bigint, in_flight bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT p.user_id, p.reason, p.paused_at, p.resumed_at, p.resumed_by, p.resume_reason,
        c.user_id, c.per_request_millicredits, c.per_day_millicredits,
        c.per_hour_millicredits, c.updated_by, c.reason, c.updated_at,
        (SELECT coalesce(sum(charged_millicredits), 0) FROM spend_days
         WHERE user_id = p_user_id AND day >= (p_day_start AT TIME ZONE 'UTC')::date)::bigint,
        ((SELECT coalesce(sum(charged_millicredits), 0) FROM spend_minutes
          WHERE user_id = p_user_id AND minute > date_trunc('minute', p_hour_start, 'UTC'))
         + (SELECT coalesce(sum(charged_millicredits), 0) FROM usage_records
            WHERE user_id = p_user_id AND mode = 'charged' AND created_at > p_hour_start
                AND created_at < date_trunc('minute', p_hour_start, 'UTC')
                    + interval '1 minute'))::bigint,
        (SELECT coalesce(sum(estimate_millicredits), 0) FROM inflight_charges
         WHERE user_id = p_user_id AND expires_at > p_now)::bigint
    FROM (SELECT p_user_id AS user_id) u
    LEFT JOIN user_pauses p ON p.user_id = u.user_id
    LEFT JOIN user_caps c ON c.user_id = u.user_id;
END;

CREATE OR REPLACE FUNCTION recent_charges(p_user_id text, p_limit integer)
RETURNS TABLE (calls integer, total bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT count(*)::integer, coalesce(sum(charged_millicredits), 0)::bigint
    FROM (SELECT charged_millicredits FROM usage_records
          WHERE user_id = p_user_id AND mode = 'charged'
          ORDER BY created_at DESC LIMIT p_limit) recent;
END;

ALTER FUNCTION admit_charged_call(text, uuid, text, boolean, text, double precision, bigint,
    timestamptz, timestamptz, timestamptz, bigint, bigint, bigint, timestamptz, integer, text,
    timestamptz, timestamptz, integer, bigint, bigint, integer, integer)
    SET plan_cache_mode = force_generic_plan;
