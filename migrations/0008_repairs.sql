-- quotagate D1 ledger, schema v8: small drift repaired by the org itself, for audit and metrics;
-- Stripe reporting per shard.
-- An org's own report (ORG_REPORT_SECS) repairs a counter whose drift from the ledger is at most
-- RECONCILE_AUTOFIX_PCT of what the ledger expects, and records each repair here, in its shard.
CREATE TABLE reconcile_repairs (
  org_id       TEXT NOT NULL,
  at           INTEGER NOT NULL,   -- ms
  policy       TEXT NOT NULL,      -- the limit, e.g. requests-month
  window_start INTEGER NOT NULL,   -- ms
  counter      INTEGER NOT NULL,   -- what the counter held
  expected     INTEGER NOT NULL,   -- what the ledger (plus pending usage) says: the counter's new value
  PRIMARY KEY (org_id, at, policy)
) WITHOUT ROWID;

-- Stripe reporting per shard: each shard keeps the batches claimed from its hourly rows, and a
-- batch names the bucket it came from, so a delivery marks the ledger row it reported.
ALTER TABLE stripe_batches ADD COLUMN bucket_start INTEGER;
ALTER TABLE usage_hourly ADD COLUMN stripe_reported_at INTEGER;  -- the last delivery of its usage
