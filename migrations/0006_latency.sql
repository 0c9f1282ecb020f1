-- quotagate D1 ledger, schema v6: Durable Object call latency, summed over every Worker isolate.
-- Each isolate adds its buckets here at most every METRICS_FLUSH_SECS; /_quota/admin/metrics
-- renders them as a Prometheus histogram. Buckets are not cumulative here; le_ms = -1 is +Inf.
CREATE TABLE do_call_latency (
  op     TEXT NOT NULL,      -- the DO message: decide, settle, report, events, usage, ...
  le_ms  INTEGER NOT NULL,   -- the bucket's upper bound in ms (-1: +Inf)
  n      INTEGER NOT NULL,   -- samples in this bucket
  sum_ms INTEGER NOT NULL,   -- their total, for the histogram's _sum
  PRIMARY KEY (op, le_ms)
);
