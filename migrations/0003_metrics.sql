-- quotagate D1 ledger, schema v3: gauges that scheduled jobs publish for /_quota/admin/metrics.
CREATE TABLE metric_gauges (
  name       TEXT NOT NULL,     -- Prometheus metric name
  labels     TEXT NOT NULL,     -- rendered label set, e.g. org="acme"
  value      INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (name, labels)
);
