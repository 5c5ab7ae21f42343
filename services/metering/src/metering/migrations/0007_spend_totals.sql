-- What each user was charged, per UTC day and per minute, kept as the charged usage records
-- are stored. The caps weighed every call against sums over the user's records of the day
-- and of the last hour, so an admission cost grew with the user's calls that day (about
-- 0.1 ms at 200 records; a busy agent makes thousands). guard_state now reads at most two
-- days and an hour of minutes of these totals, plus the records of the one minute the
-- rolling hour starts in, and gives the same sums:
-- - since a UTC midnight: the day rows from that day on;
-- - after p_hour_start: the minute rows after its minute, and the records of its minute
--   that are after it.
-- A trigger keeps them, so every way a charged record is stored counts; it also drops the
-- user's rows that no check reads any more (days before yesterday, minutes over two hours
-- old) whenever it starts a new row.

CREATE TABLE spend_days (
    user_id              text NOT NULL,
    day                  date NOT NULL,  -- UTC
    charged_millicredits bigint NOT NULL CHECK (charged_millicredits >= 0),
    PRIMARY KEY (user_id, day)
);

CREATE TABLE spend_minutes (
    user_id              text NOT NULL,
    minute               timestamptz NOT NULL,  -- its start, a whole UTC minute
    charged_millicredits bigint NOT NULL CHECK (charged_millicredits >= 0),
    PRIMARY KEY (user_id, minute)
);

CREATE FUNCTION count_spend() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_day    date := (NEW.created_at AT TIME ZONE 'UTC')::date;
    v_minute timestamptz := date_trunc('minute', NEW.created_at, 'UTC');
    v_new    boolean;
BEGIN
    IF NEW.mode <> 'charged' OR NEW.charged_millicredits = 0 THEN
        RETURN NULL;
    END IF;
    INSERT INTO spend_days AS s (user_id, day, charged_millicredits)
    VALUES (NEW.user_id, v_day, NEW.charged_millicredits)
    ON CONFLICT (user_id, day) DO UPDATE
        SET charged_millicredits = s.charged_millicredits + EXCLUDED.charged_millicredits
    RETURNING xmax = 0 INTO v_new;
    IF v_new THEN
        DELETE FROM spend_days WHERE user_id = NEW.user_id AND day < v_day - 1;
    END IF;
    INSERT INTO spend_minutes AS s (user_id, minute, charged_millicredits)
    VALUES (NEW.user_id, v_minute, NEW.charged_millicredits)
    ON CONFLICT (user_id, minute) DO UPDATE
        SET charged_millicredits = s.charged_millicredits + EXCLUDED.charged_millicredits
    RETURNING xmax = 0 INTO v_new;
    IF v_new THEN
        DELETE FROM spend_minutes
        WHERE user_id = NEW.user_id AND minute < v_minute - interval '2 hours';
    END IF;
    RETURN NULL;
END $$;

-- The trigger first: its lock holds back new records until the totals below are in.
CREATE TRIGGER usage_records_count_spend AFTER INSERT ON usage_records
    FOR EACH ROW EXECUTE FUNCTION count_spend();

INSERT INTO spend_days (user_id, day, charged_millicredits)
SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, sum(charged_millicredits)
FROM usage_records
WHERE mode = 'charged' AND charged_millicredits > 0
    AND created_at >= date_trunc('day', now(), 'UTC') - interval '1 day'
GROUP BY 1, 2;

INSERT INTO spend_minutes (user_id, minute, charged_millicredits)
SELECT user_id, date_trunc('minute', created_at, 'UTC'), sum(charged_millicredits)
FROM usage_records
WHERE mode = 'charged' AND charged_millicredits > 0
    AND created_at >= date_trunc('minute', now(), 'UTC') - interval '2 hours'
GROUP BY 1, 2;

-- guard_state of 0004, its charged sums read from the totals. p_day_start is a UTC
-- midnight (guardrails.day_start).
CREATE OR REPLACE FUNCTION guard_state(p_user_id text, p_day_start timestamptz,
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
END $$;
