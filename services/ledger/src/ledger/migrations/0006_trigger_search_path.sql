-- The journal's trigger functions name their tables unqualified; pin their search_path to
-- this schema so they work for any session (an operator's psql, another service's role),
-- not only for sessions that happen to have the ledger schema first on their path.
ALTER FUNCTION check_transaction_balanced() SET search_path FROM CURRENT;
ALTER FUNCTION refuse_change() SET search_path FROM CURRENT;
