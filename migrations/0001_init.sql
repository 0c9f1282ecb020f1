-- quotagate D1 ledger, schema v1.
-- Counts are INTEGER (SQLite's 64-bit signed); the Worker refuses quantities above 2^53 - 1
-- before they get here, because D1 moves numbers through JavaScript.
-- Timestamps are INTEGER milliseconds since the Unix epoch, UTC; days are 'YYYY-MM-DD' in UTC.

-- Validated plan documents, as the admin API accepted them.
CREATE TABLE plans (
  id         TEXT PRIMARY KEY,
  name       TEXT NOT NULL,
  body       TEXT NOT NULL,            -- the plan JSON as accepted (re-validated on load)
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
);

CREATE TABLE orgs (
  id                 TEXT PRIMARY KEY,
  name               TEXT,
  plan_id            TEXT NOT NULL REFERENCES plans(id),
  billing_anchor     TEXT,             -- 'YYYY-MM-DD' or NULL for calendar months
  stripe_customer_id TEXT,
  webhook_url        TEXT,
  overrides          TEXT NOT NULL DEFAULT '[]',  -- limit list, same shape as a plan's limits
  created_at         INTEGER NOT NULL,
  updated_at         INTEGER NOT NULL
);
CREATE INDEX orgs_plan ON orgs(plan_id);

-- API keys: only the SHA-256 of the key is stored; the plaintext is shown once at creation.
CREATE TABLE api_keys (
  id         TEXT PRIMARY KEY,          -- public key id, e.g. 'key_…'
  org_id     TEXT NOT NULL REFERENCES orgs(id),
  key_hash   TEXT NOT NULL UNIQUE,      -- lowercase hex SHA-256 of the full key
  prefix     TEXT NOT NULL,             -- first characters of the key, for people to recognise it
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);
CREATE INDEX api_keys_org ON api_keys(org_id);

-- The usage ledger: one row per committed usage event, exactly once per (org, event id).
-- Event ids are the client's Idempotency-Key or a random id, so they are unique per org.
CREATE TABLE usage_events (
  org_id             TEXT NOT NULL,
  event_id           TEXT NOT NULL,
  meter              TEXT NOT NULL,
  quantity           INTEGER NOT NULL CHECK (quantity >= 0),
  ts                 INTEGER NOT NULL,  -- when the usage happened
  day                TEXT NOT NULL,     -- UTC day of ts, the rollup key
  source             TEXT NOT NULL,     -- 'proxy' | 'event' | 'reservation'
  metadata           TEXT,              -- JSON object or NULL
  recorded_at        INTEGER NOT NULL,  -- when the ledger received it
  stripe_reported_at INTEGER,           -- when Stripe Billing Meters confirmed it
  PRIMARY KEY (org_id, event_id)
);
CREATE INDEX usage_events_org_meter_ts ON usage_events(org_id, meter, ts);
CREATE INDEX usage_events_unreported ON usage_events(org_id, ts) WHERE stripe_reported_at IS NULL;

-- Daily rollup per (org, meter, UTC day), upserted in the same D1 batch as the events.
CREATE TABLE usage_daily (
  org_id     TEXT NOT NULL,
  meter      TEXT NOT NULL,
  day        TEXT NOT NULL,
  quantity   INTEGER NOT NULL DEFAULT 0,  -- sum of quantities
  events     INTEGER NOT NULL DEFAULT 0,
  max_value  INTEGER NOT NULL DEFAULT 0,  -- peak, for max meters
  last_value INTEGER NOT NULL DEFAULT 0,  -- value of the latest event, for latest meters
  last_ts    INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (org_id, meter, day)
);
