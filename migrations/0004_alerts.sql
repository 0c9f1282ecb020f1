-- quotagate D1 ledger, schema v4: every threshold-alert delivery attempt.
CREATE TABLE alert_deliveries (
  org_id      TEXT NOT NULL,
  alert_id    TEXT NOT NULL,     -- deterministic: one alert per (limit, window, level)
  attempt     INTEGER NOT NULL,  -- 1, 2, …
  url         TEXT NOT NULL,
  status_code INTEGER,           -- NULL when no answer came
  error       TEXT,
  outcome     TEXT NOT NULL,     -- 'delivered' | 'retry' | 'dead'
  at          INTEGER NOT NULL,
  PRIMARY KEY (org_id, alert_id, attempt)
);
