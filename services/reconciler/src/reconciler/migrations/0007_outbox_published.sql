-- Published rows leave the outbox for outbox_published, where the relay keeps them for its
-- retention period (billing_events.outbox.OUTBOX_PUBLISHED_DDL, word for word; a unit test
-- keeps the two equal). Marked in place, each kept a dead entry in the index of
-- unpublished rows until the next vacuum, which the relay's read and every writer's quiet
-- check walked through. The rows published so far move now; any a relay of the release
-- before marks during the update move with the relay's next prune.
CREATE TABLE outbox_published (
    id           bigint NOT NULL,
    topic        text NOT NULL,
    message_key  bytea,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL,
    created_at   timestamptz NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX outbox_published_at ON outbox_published (published_at);
INSERT INTO outbox_published (id, topic, message_key, payload, headers, created_at,
    published_at)
SELECT id, topic, message_key, payload, headers, created_at, published_at
FROM outbox WHERE published_at IS NOT NULL;
DELETE FROM outbox WHERE published_at IS NOT NULL;
