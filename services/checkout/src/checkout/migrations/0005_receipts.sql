-- The Stripe receipt of a purchase's charge (charge.receipt_url, from the charge events
-- checkout already consumes), for the Credits page's purchase history.
ALTER TABLE purchases ADD COLUMN receipt_url text;

-- The purchase history is read newest first, a page at a time.
CREATE INDEX purchases_user_newest_idx ON purchases (user_id, created_at DESC, id DESC);
