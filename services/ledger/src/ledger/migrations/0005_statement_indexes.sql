-- Monthly statements cut a user's wallet entries on their timestamps (the opening balance
-- is the last entry before the month), and the daily accounting export walks all
-- transactions of a day in (created_at, id) order; both were full scans without these.
CREATE INDEX journal_entries_wallet_time
    ON journal_entries (user_id, created_at, id) WHERE user_id IS NOT NULL;
CREATE INDEX journal_transactions_time ON journal_transactions (created_at, id);
