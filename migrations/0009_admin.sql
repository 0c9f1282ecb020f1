-- quotagate D1 ledger, schema v9: keys that expire and roll, named admin tokens, the audit log.

-- A key may expire (a roll sets the old key's expiry to the end of its grace period); a key names
-- the version of the key secret that tagged it (keys before versions are version 1).
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;                        -- ms; NULL never
ALTER TABLE api_keys ADD COLUMN secret_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT;                          -- the key a roll made

-- Admin tokens besides the bootstrap ADMIN_TOKEN: only the SHA-256 of the token is stored; the
-- plaintext is shown once at creation. A token `qga_<id>.<random>` names its row.
CREATE TABLE admin_tokens (
  id         TEXT PRIMARY KEY,                                  -- 'tok_<16 hex>'
  name       TEXT NOT NULL,
  scope      TEXT NOT NULL CHECK (scope IN ('read', 'write')),
  token_hash TEXT NOT NULL UNIQUE,                              -- lowercase hex SHA-256
  prefix     TEXT NOT NULL,                                     -- 'qga_' and 8 hex, to recognise it
  created_at INTEGER NOT NULL,
  created_by TEXT NOT NULL,                                     -- the name of the token that made it
  expires_at INTEGER,
  revoked_at INTEGER
);

-- One row per admin write, written before the change is made (`status` NULL) and given the HTTP
-- status it ended with after. Never a secret: summaries name ids, fields and counts.
CREATE TABLE admin_audit (
  seq        INTEGER PRIMARY KEY AUTOINCREMENT,
  at         INTEGER NOT NULL,      -- ms
  token_id   TEXT NOT NULL,         -- 'bootstrap' for ADMIN_TOKEN
  token_name TEXT NOT NULL,
  action     TEXT NOT NULL,         -- e.g. plan.put, key.roll, token.create
  target     TEXT NOT NULL,         -- e.g. org/acme/key/key_…
  summary    TEXT NOT NULL,
  status     INTEGER                -- NULL until the write has an answer
);
CREATE INDEX admin_audit_at ON admin_audit(at);
