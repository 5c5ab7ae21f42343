-- The read model's rows are each written once by their natural key (the primary keys of
-- seen_stripe_events, seen_usage_records and seen_ledger_transactions, ON CONFLICT DO
-- NOTHING), in the transaction that saves the partition's position, so a redelivery
-- changes nothing without a claim of its own. The inbox claimed each record a second time
-- under the same key: two more rows per AI call (its usage record and its posting), read by
-- nothing.
DROP TABLE inbox;
