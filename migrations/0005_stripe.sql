-- quotagate D1 ledger, schema v5: Stripe Billing Meters reporting.
-- Unreported events are claimed into a frozen batch (one per org, meter and hour) before anything
-- is sent. Retries resend the same batch with the same identifier and value, so a lost response
-- can never bill twice, and events that arrive later go into a new batch.
ALTER TABLE usage_events ADD COLUMN stripe_batch TEXT;
CREATE INDEX usage_events_stripe_batch ON usage_events(stripe_batch);

CREATE TABLE stripe_batches (
  id                 TEXT PRIMARY KEY,  -- also the Stripe meter event identifier
  org_id             TEXT NOT NULL,
  stripe_customer_id TEXT NOT NULL,
  event_name         TEXT NOT NULL,
  meter              TEXT NOT NULL,
  hour               INTEGER NOT NULL,  -- epoch seconds of the hour the usage happened in
  value              INTEGER NOT NULL,
  events             INTEGER NOT NULL,
  status             TEXT NOT NULL,     -- 'pending' | 'reported' | 'expired'
  attempts           INTEGER NOT NULL DEFAULT 0,
  next_at            INTEGER NOT NULL DEFAULT 0,
  last_error         TEXT,
  created_at         INTEGER NOT NULL,
  reported_at        INTEGER
);
CREATE INDEX stripe_batches_due ON stripe_batches(status, next_at);

-- The circuit breaker: consecutive failures, and until when reporting is paused.
CREATE TABLE stripe_state (
  id         INTEGER PRIMARY KEY CHECK (id = 1),
  failures   INTEGER NOT NULL DEFAULT 0,
  open_until INTEGER NOT NULL DEFAULT 0
);
INSERT INTO stripe_state (id, failures, open_until) VALUES (1, 0, 0);
