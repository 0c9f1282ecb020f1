-- quotagate D1 ledger, schema v10: how near its limits each org stands, for the operator's org
-- list (sorted by nearest to a limit). Each org's report replaces its own rows; one row per
-- limited limit of its plan, so the table grows with orgs and plans, never with requests.
CREATE TABLE org_levels (
  org_id     TEXT NOT NULL,
  policy     TEXT NOT NULL,     -- e.g. requests-month
  meter      TEXT NOT NULL,
  pct        INTEGER NOT NULL,  -- used / limit, whole percent rounded down
  until      INTEGER,           -- ms: the window's reset, after which the level reads 0; NULL never
  updated_at INTEGER NOT NULL,  -- ms: the report that wrote it
  PRIMARY KEY (org_id, policy)
) WITHOUT ROWID;
