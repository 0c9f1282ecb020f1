-- quotagate D1 ledger, schema v2: exactly-once rollups, first-event times, reset records.

-- The daily rollup is maintained by a trigger on usage_events. It fires only for rows that
-- `INSERT … ON CONFLICT DO NOTHING` really inserted, so a batch that is flushed twice (D1
-- committed but the confirmation was lost) can never count twice, and it runs in the same
-- transaction as the insert.
ALTER TABLE usage_daily ADD COLUMN first_ts INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events
BEGIN
  INSERT INTO usage_daily (org_id, meter, day, quantity, events, max_value, last_value, last_ts, first_ts)
  VALUES (NEW.org_id, NEW.meter, NEW.day, NEW.quantity, 1, NEW.quantity, NEW.quantity, NEW.ts, NEW.ts)
  ON CONFLICT (org_id, meter, day) DO UPDATE SET
    quantity   = quantity + excluded.quantity,
    events     = events + 1,
    max_value  = MAX(max_value, excluded.max_value),
    last_value = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_value ELSE last_value END,
    last_ts    = MAX(last_ts, excluded.last_ts),
    first_ts   = CASE WHEN first_ts = 0 THEN excluded.first_ts ELSE MIN(first_ts, excluded.first_ts) END;
END;

-- Admin resets of a meter's current window, for audit and for reconciliation.
CREATE TABLE counter_resets (
  org_id TEXT NOT NULL,
  meter  TEXT,                 -- NULL: every meter
  at     INTEGER NOT NULL,
  PRIMARY KEY (org_id, at)
);
