-- A charged call's settlement in one statement: settle_charged_call captures its hold in
-- the ledger and stores its usage record, in one transaction. They were two: a metering
-- process killed between them left a posting in the ledger with no usage record here until
-- the client came back after the claim's takeover time, and the reconciler flagged the
-- difference meanwhile. One statement also saves a round trip and a commit per call.
--
-- The record's statement (record_usage) is shared with every other record (shadow,
-- unbilled, a capture left to the ledger's consumer), so it has one implementation.

-- Store a usage record, free its in-flight reservation, mark its key's claim done and, if
-- the record is new, add its outbox row; and read the user's last p_history charged calls
-- before it (the anomaly check's; 0: skip). new is false when its usage id or (user, key)
-- was stored before.
CREATE FUNCTION record_usage(
    p_usage_id uuid, p_user_id text, p_model text, p_input_tokens bigint,
    p_output_tokens bigint, p_charged bigint, p_uncollected bigint, p_cost bigint,
    p_rate_card_version text, p_hold_id text, p_key text, p_provider_request_id text,
    p_transaction_id text, p_mode text, p_correlation_id text, p_body json, p_priced bigint,
    p_topic text, p_message_key bytea, p_payload bytea, p_headers jsonb, p_history integer
)
RETURNS TABLE (new boolean, calls integer, total bigint)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH stored AS (
        INSERT INTO usage_records (usage_id, user_id, model, input_tokens, output_tokens,
            charged_millicredits, uncollected_millicredits, cost_millicredits,
            rate_card_version, hold_id, idempotency_key, provider_request_id, transaction_id,
            mode, correlation_id, response_body, priced_millicredits)
        VALUES (p_usage_id, p_user_id, p_model, p_input_tokens, p_output_tokens, p_charged,
            p_uncollected, p_cost, p_rate_card_version, p_hold_id, p_key,
            p_provider_request_id, p_transaction_id, p_mode, p_correlation_id, p_body,
            p_priced)
        ON CONFLICT DO NOTHING RETURNING true
    ), freed AS (
        DELETE FROM inflight_charges WHERE usage_id = p_usage_id
    ), done AS (
        UPDATE request_claims SET state = 'done'
        WHERE user_id = p_user_id AND idempotency_key = p_key
    ), published AS (
        INSERT INTO outbox (topic, message_key, payload, headers)
        SELECT p_topic, p_message_key, p_payload, p_headers WHERE EXISTS (SELECT FROM stored)
    ), recent AS (
        -- The statement's snapshot predates its own insert: these are the calls before it.
        SELECT charged_millicredits FROM usage_records
        WHERE p_history > 0 AND user_id = p_user_id AND mode = 'charged'
            AND usage_id <> p_usage_id
        ORDER BY created_at DESC LIMIT p_history
    )
    SELECT EXISTS (SELECT FROM stored), (SELECT count(*)::integer FROM recent),
        (SELECT coalesce(sum(charged_millicredits), 0)::bigint FROM recent);
END $$;

-- billing_platform.money.credits_text: 12500 -> '12.500', -1 -> '-0.001'.
CREATE FUNCTION credits_text(p_millicredits bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN p_millicredits < 0 THEN '-' ELSE '' END
    || (abs(p_millicredits) / 1000)::text || '.'
    || lpad((abs(p_millicredits) % 1000)::text, 3, '0');

-- The end of a charged answer's body, as bodies.settled builds it in Python: its usage and
-- the balance after the capture, appended to the keys the gateway gave, in this order.
CREATE FUNCTION settled_body(p_head json, p_input_tokens bigint, p_output_tokens bigint,
                             p_charged bigint, p_balance bigint, p_held bigint)
RETURNS json LANGUAGE sql STABLE PARALLEL SAFE  -- json_build_object is STABLE: so inlinable
RETURN (left(p_head::text, -1)
    || CASE WHEN p_head::text ~ '^\{\s*\}$' THEN '' ELSE ', ' END
    || '"usage": ' || json_build_object('inputTokens', p_input_tokens,
        'outputTokens', p_output_tokens, 'chargedMillicredits', p_charged)::text
    || ', "balance": ' || json_build_object('balanceMillicredits', p_balance,
        'heldMillicredits', p_held, 'availableMillicredits', p_balance - p_held,
        'balanceCredits', credits_text(p_balance),
        'availableCredits', credits_text(p_balance - p_held))::text
    || '}')::json;

-- UsageRecorded's charged_millicredits (field 7, a varint) for a charge of at least 0. The
-- gateway encodes the rest of the record before the charge is known; a protobuf parser
-- takes fields in any order, so the field goes last.
CREATE FUNCTION usage_charge_field(p_charged bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_rest bigint := p_charged;
    v_out  bytea := '\x38'::bytea;
BEGIN
    IF p_charged <= 0 THEN
        RETURN ''::bytea;  -- proto3 leaves a zero out
    END IF;
    WHILE v_rest >= 128 LOOP
        v_out := v_out || set_byte('\x00'::bytea, 0, ((v_rest & 127) | 128)::integer);
        v_rest := v_rest >> 7;
    END LOOP;
    RETURN v_out || set_byte('\x00'::bytea, 0, v_rest::integer);
END $$;

-- Capture the hold for p_amount (the ledger's capture_hold writes the posting and its
-- event) and store the usage record with what was charged, one transaction. When the
-- ledger cannot capture (the hold expired or went to another usage), the record goes out
-- with the amount asked and no transaction: the ledger's usage consumer charges it from
-- billing.usage.v1, once per usage id, as before. The ledger's own refusals (a usage id
-- charged to another user) raise, and the gateway records the call without the capture.
-- capture_hold is the ledger's: `metering migrate` puts the ledger's schema on this
-- function's search_path (db_access.py), so the call is static and keeps its plan.
CREATE FUNCTION settle_charged_call(
    p_ledger_topic text, p_ledger_headers jsonb, p_hold_id uuid,
    p_hold_balance bigint, p_hold_held bigint,
    p_usage_id uuid, p_user_id text, p_model text, p_input_tokens bigint,
    p_output_tokens bigint, p_amount bigint, p_cost bigint, p_rate_card_version text,
    p_key text, p_provider_request_id text, p_correlation_id text, p_body_head json,
    p_priced bigint, p_topic text, p_message_key bytea, p_payload bytea, p_headers jsonb,
    p_history integer
)
RETURNS TABLE (r_outcome text, r_new boolean, r_charged bigint, r_transaction_id uuid,
               r_balance bigint, r_held bigint, r_recent_calls integer, r_recent_total bigint)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    v_cap     record;
    v_charged bigint := p_amount;
    v_txn     uuid;
    v_balance bigint := p_hold_balance;
    v_held    bigint := p_hold_held;
    v_stored  record;
BEGIN
    SELECT * INTO v_cap FROM capture_hold(p_hold_id, p_usage_id::text, p_amount, p_model,
        p_input_tokens, p_output_tokens, p_rate_card_version, p_correlation_id,
        p_ledger_headers, p_ledger_topic);
    IF v_cap.r_outcome = 'captured' THEN
        v_charged := v_cap.r_charged;
        v_txn := v_cap.r_transaction_id;
        v_balance := v_cap.r_balance;
        v_held := v_cap.r_held;
    END IF;
    SELECT * INTO v_stored FROM record_usage(p_usage_id, p_user_id, p_model, p_input_tokens,
        p_output_tokens, v_charged, greatest(0, p_amount - v_charged), p_cost,
        p_rate_card_version, p_hold_id::text, p_key, p_provider_request_id, v_txn::text,
        'charged', p_correlation_id,
        settled_body(p_body_head, p_input_tokens, p_output_tokens, v_charged, v_balance,
                     v_held),
        p_priced, p_topic, p_message_key, p_payload || usage_charge_field(v_charged),
        p_headers, p_history);
    RETURN QUERY SELECT v_cap.r_outcome, v_stored.new, v_charged, v_txn, v_balance, v_held,
        v_stored.calls, v_stored.total;
END $$;
