-- One plain posting per transaction, the anchor of bench/pipeline.py (run by pgbench with
-- -D users=N on the scratch schema bench_plain): lock and update the user's balance, insert
-- the transaction and its two entries, commit. Nothing batched, nothing skipped.
-- chr(58) is ':', which pgbench would read as a variable inside a literal.
\set uid random(1, :users)
\set amount random(1, 100)
BEGIN;
UPDATE bench_plain.balances SET balance = balance - :amount::bigint
    WHERE user_id = 'u' || :uid::text;
INSERT INTO bench_plain.transactions (kind, user_id, amount)
    VALUES ('usage', 'u' || :uid::text, :amount::bigint) RETURNING id AS tx_id \gset
INSERT INTO bench_plain.entries (transaction_id, account, amount)
    VALUES (:tx_id::bigint, 'wallet' || chr(58) || 'u' || :uid::text, - :amount::bigint),
           (:tx_id::bigint, 'revenue', :amount::bigint);
END;
