-- Purchases per source IP, counted here so that every replica shares one count (see
-- billing_platform.ratelimit; this DDL is its RATE_LIMIT_DDL, word for word).
CREATE TABLE rate_limit_hits (
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer NOT NULL CHECK (hits > 0),
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_limit_hits_window_start ON rate_limit_hits (window_start);
