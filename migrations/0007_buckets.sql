-- quotagate D1 ledger, schema v7: usage aggregated before D1, tiered retention, versioned plans,
-- ledger shards.
--
-- Each org's Durable Object sends its usage as buckets, one per (meter, segment): a segment is a
-- UTC hour, cut short where a reset or a plan change falls inside it. A flush is one D1 batch,
-- guarded by the org's mark in `ledger_marks`: it applies only while the mark is below the
-- batch's number (same epoch), and raises the mark in the same transaction, so a batch sent
-- twice counts once. Storage grows with orgs × meters × hours, never with requests.

-- The hourly tier: kept at least 40 days (HOURLY_RETENTION_DAYS), for Stripe's 35-day window,
-- reconciliation and history. Each row keeps the plan, the Stripe event name and the Stripe
-- customer in force when its usage was recorded.
CREATE TABLE usage_hourly (
  org_id         TEXT NOT NULL,
  meter          TEXT NOT NULL,
  start          INTEGER NOT NULL,           -- ms: the hour's start, or a reset/plan change inside it
  plan_id        TEXT,
  event_name     TEXT NOT NULL,
  customer       TEXT,                       -- Stripe customer, NULL when the org has none
  quantity       INTEGER NOT NULL,           -- net of releases
  events         INTEGER NOT NULL,
  max_value      INTEGER NOT NULL DEFAULT 0,
  last_value     INTEGER NOT NULL DEFAULT 0,
  last_ts        INTEGER NOT NULL DEFAULT 0,
  first_ts       INTEGER NOT NULL DEFAULT 0,
  stripe_claimed INTEGER NOT NULL DEFAULT 0, -- quantity already claimed into Stripe batches
  PRIMARY KEY (org_id, meter, start)
) WITHOUT ROWID;

-- Exactly-once per org: the last flush batch applied, per ledger epoch of its Durable Object.
CREATE TABLE ledger_marks (
  org_id TEXT PRIMARY KEY,
  epoch  INTEGER NOT NULL,
  seq    INTEGER NOT NULL,
  at     INTEGER NOT NULL
) WITHOUT ROWID;

-- The daily tier (kept RETENTION_DAYS) now says which plan its last usage ran under.
ALTER TABLE usage_daily ADD COLUMN plan_id TEXT;

-- usage_events keeps per-event rows of audit meters only (rolled = 0), plus rows that Durable
-- Objects of an earlier build still had queued (rolled = 1: counted into the tiers below).
ALTER TABLE usage_events ADD COLUMN rolled INTEGER NOT NULL DEFAULT 1;

-- Plans are versioned: org DOs adopt a newer version by themselves (no fan-out on PUT).
ALTER TABLE plans ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- Which ledger shard (D1 database) holds an org's usage; orgs from before sharding stay on 0.
ALTER TABLE orgs ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;

-- Existing usage moves into the hourly tier (usage_daily already holds it). Usage already
-- claimed into a Stripe batch stays claimed.
INSERT INTO usage_hourly (org_id, meter, start, plan_id, event_name, customer, quantity, events, max_value,
                          last_value, last_ts, first_ts, stripe_claimed)
SELECT e.org_id, e.meter, (e.ts / 3600000) * 3600000, o.plan_id,
       COALESCE((SELECT json_extract(m.value, '$.event_name') FROM plans p, json_each(p.body, '$.meters') m
                 WHERE p.id = o.plan_id AND json_extract(m.value, '$.id') = e.meter), e.meter),
       o.stripe_customer_id, SUM(e.quantity), COUNT(*), MAX(e.quantity),
       (SELECT x.quantity FROM usage_events x WHERE x.org_id = e.org_id AND x.meter = e.meter
          AND x.ts / 3600000 = e.ts / 3600000 ORDER BY x.ts DESC, x.event_id DESC LIMIT 1),
       MAX(e.ts), MIN(e.ts), SUM(CASE WHEN e.stripe_batch IS NOT NULL THEN e.quantity ELSE 0 END)
FROM usage_events e LEFT JOIN orgs o ON o.id = e.org_id
GROUP BY e.org_id, e.meter, e.ts / 3600000;

-- Rows an earlier build's DOs flush after the upgrade still count, exactly once by event id:
-- the trigger fires only for rows really inserted, and only for counted (not audit) rows.
DROP TRIGGER usage_events_rollup;
CREATE TRIGGER usage_events_rollup AFTER INSERT ON usage_events WHEN NEW.rolled = 1
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
  INSERT INTO usage_hourly (org_id, meter, start, plan_id, event_name, customer, quantity, events, max_value,
                            last_value, last_ts, first_ts)
  VALUES (NEW.org_id, NEW.meter, (NEW.ts / 3600000) * 3600000,
          (SELECT plan_id FROM orgs WHERE id = NEW.org_id), NEW.meter,
          (SELECT stripe_customer_id FROM orgs WHERE id = NEW.org_id),
          NEW.quantity, 1, NEW.quantity, NEW.quantity, NEW.ts, NEW.ts)
  ON CONFLICT (org_id, meter, start) DO UPDATE SET
    quantity   = quantity + excluded.quantity,
    events     = events + 1,
    max_value  = MAX(max_value, excluded.max_value),
    last_value = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_value ELSE last_value END,
    last_ts    = MAX(last_ts, excluded.last_ts),
    first_ts   = CASE WHEN first_ts = 0 THEN excluded.first_ts ELSE MIN(first_ts, excluded.first_ts) END;
END;
