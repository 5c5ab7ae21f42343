-- The hash chain over the ledger journal (see reconciler.chain for the rules).
--
-- chain_agg folds digests in order: state = sha256(state || digest), from the empty
-- string. sha256() is built into PostgreSQL (11+), so no extension and no privilege beyond
-- this schema is needed; pgcrypto's digest(x, 'sha256') gives the same bytes.
CREATE FUNCTION chain_step(state bytea, item bytea) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT sha256(state || item) $$;

CREATE AGGREGATE chain_agg(bytea) (
    SFUNC = chain_step,
    STYPE = bytea,
    INITCOND = ''
);

-- One checkpoint per segment of journal entry ids ((id - 1) / segment size). A segment is
-- written when its entries have settled and extended while it is the head; a segment whose
-- entries no longer match is never rewritten, so it stays the evidence of the edit.
CREATE TABLE journal_chain (
    segment_no    bigint PRIMARY KEY,
    first_id      bigint NOT NULL,
    last_id       bigint NOT NULL,
    entry_count   integer NOT NULL CHECK (entry_count > 0),
    -- chain_agg over the digests of the segment's entries (ids <= last_id), by id
    segment_hash  bytea NOT NULL,
    -- chain_agg over segment_hash of segments 0..segment_no, by segment
    chain_hash    bytea NOT NULL,
    -- the entry ids covered and an 8-byte digest prefix of each, in the same order, to
    -- name the first entry that differs when segment_hash does not match
    entry_ids     bigint[] NOT NULL,
    entry_digests bytea NOT NULL,
    run_id        uuid,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(entry_ids) = entry_count),
    CHECK (length(entry_digests) = 8 * entry_count)
);
