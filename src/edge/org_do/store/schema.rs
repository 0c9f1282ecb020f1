//! The org DO's `SQLite` schema, versioned by the `schema` row in `meta`, and the in-place
//! upgrades from earlier versions. Runs once per instance, before any step; it must never lose
//! a queued outbox row.

use std::collections::BTreeMap;

use super::{text, Pair, Store, StoreResult, Text};
use crate::org::rules::encode_counters;
use crate::policy::{Counter, Reservation, ReservationKind, Timestamp};

/// The schema this build writes. 1 was one JSON counter row per limit, optimistic reservations
/// as rows, and an outbox with two secondary indexes; 2 is one integer row per meter, the
/// outbox row as the reservation, and no secondary index on the hot path's tables; 3 adds the
/// aggregated ledger buckets, and the outbox keeps only per-event audit rows (and rows an
/// earlier build queued, which D1 still counts, exactly once by event id); 4 binds a proxied
/// request's idempotency record to its fingerprint and marks it while in flight; 5 gives a key
/// its expiry and its last-used day.
const SCHEMA: u32 = 5;

impl Store {
    pub(super) fn migrate(&self, now: Timestamp) -> StoreResult<()> {
        self.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)", Vec::new())?;
        let version = self.meta("schema")?.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        if version >= SCHEMA {
            return Ok(());
        }
        for stmt in [
            "CREATE TABLE IF NOT EXISTS config (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)",
            // One row per meter, no rowid: an upsert writes exactly one row.
            "CREATE TABLE IF NOT EXISTS meter_counters (meter TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, meter TEXT NOT NULL, expires INTEGER NOT NULL, state TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS reservations_expires ON reservations(expires)",
            "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, expires INTEGER, \
             used_day INTEGER)",
            // `seq` is the rowid and the only key: an insert writes one row. Releases find a row
            // by `seq`; D1 deduplicates by event id.
            "CREATE TABLE IF NOT EXISTS ledger_outbox (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, meter TEXT NOT NULL, \
             quantity INTEGER NOT NULL, ts INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT, ready_at INTEGER NOT NULL, \
             audit INTEGER NOT NULL DEFAULT 0)",
            // Keyed by the id alone, no rowid: recording a key writes one row.
            "CREATE TABLE IF NOT EXISTS idempotency_keys (id TEXT PRIMARY KEY, result TEXT NOT NULL, at INTEGER NOT NULL, \
             fp TEXT, busy_until INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, policy TEXT NOT NULL, window_start INTEGER NOT NULL, \
             level TEXT NOT NULL, payload TEXT NOT NULL, fired_at INTEGER NOT NULL, status TEXT NOT NULL, \
             attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, last_error TEXT, UNIQUE (policy, window_start, level))",
            "CREATE INDEX IF NOT EXISTS alerts_due ON alerts(status, next_at)",
            "CREATE TABLE IF NOT EXISTS decisions (meter TEXT NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL, \
             PRIMARY KEY (meter, outcome))",
            // One row per (batch, meter, segment): batch 0 is open, any other is the batch in
            // flight to D1. Admitted usage rewrites its open row; nothing here grows per request.
            "CREATE TABLE IF NOT EXISTS ledger_buckets (batch INTEGER NOT NULL, meter TEXT NOT NULL, start INTEGER NOT NULL, \
             quantity INTEGER NOT NULL, events INTEGER NOT NULL, max_value INTEGER NOT NULL, last_value INTEGER NOT NULL, \
             last_ts INTEGER NOT NULL, first_ts INTEGER NOT NULL, plan TEXT NOT NULL, event_name TEXT NOT NULL, customer TEXT, \
             PRIMARY KEY (batch, meter, start)) WITHOUT ROWID",
        ] {
            self.exec(stmt, Vec::new())?;
        }
        if self.has_schema_1()? {
            self.upgrade_from_1()?;
        }
        // Rows an earlier build queued are counted usage (audit 0); this build's are audit rows.
        // (A column that is missing fails the probe: the table is schema 2's.)
        if self.exec("SELECT audit FROM ledger_outbox LIMIT 0", Vec::new()).is_err() {
            self.exec("ALTER TABLE ledger_outbox ADD COLUMN audit INTEGER NOT NULL DEFAULT 0", Vec::new())?;
            // Their release window held them back so that a release could delete them; this
            // build keeps releases in memory, so nothing can release them any more: they go now.
            self.write("UPDATE ledger_outbox SET ready_at = 0", Vec::new())?;
        }
        // Schema 3's idempotency records: events' and requests' alike, with no fingerprint. The
        // requests' were stored under their bare key, which this build no longer looks up (its
        // keys are `req#<key>`): a replay across the upgrade counts once more, and they age out.
        if self.exec("SELECT fp FROM idempotency_keys LIMIT 0", Vec::new()).is_err() {
            self.exec("ALTER TABLE idempotency_keys ADD COLUMN fp TEXT", Vec::new())?;
            self.exec("ALTER TABLE idempotency_keys ADD COLUMN busy_until INTEGER NOT NULL DEFAULT 0", Vec::new())?;
        }
        // Schema 4's keys never expire and were never marked used.
        if self.exec("SELECT expires FROM keys LIMIT 0", Vec::new()).is_err() {
            self.exec("ALTER TABLE keys ADD COLUMN expires INTEGER", Vec::new())?;
            self.exec("ALTER TABLE keys ADD COLUMN used_day INTEGER", Vec::new())?;
        }
        if self.meta("ledger_epoch")?.is_none() {
            self.set_meta("ledger_epoch", &now.millis().to_string())?;
        }
        self.set_meta("schema", &SCHEMA.to_string())
    }

    /// Whether schema 1's tables are here (an object made by an earlier build). A fresh object
    /// has none, and skips the upgrade. If the catalogue cannot be read, the upgrade runs
    /// anyway: it is safe on empty tables.
    fn has_schema_1(&self) -> StoreResult<bool> {
        let found: Result<Vec<Text>, _> = self
            .all("SELECT name AS v FROM sqlite_master WHERE type = 'table' AND name IN ('counters', 'outbox', 'idempotency')", Vec::new());
        let Ok(found) = found else { return Ok(true) };
        if found.is_empty() {
            return Ok(false);
        }
        // The upgrade reads all three: make sure each exists, whichever the older build made.
        for stmt in [
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, state TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS idempotency (id TEXT PRIMARY KEY, result TEXT NOT NULL, at INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, \
             meter TEXT NOT NULL, quantity INTEGER NOT NULL, ts INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT, \
             ready_at INTEGER NOT NULL)",
        ] {
            self.exec(stmt, Vec::new())?;
        }
        Ok(true)
    }

    /// Schema 1 → 2, in place and losing nothing queued: per-limit counters become per-meter
    /// rows; optimistic reservation rows go (their outbox rows stay queued and simply stand as
    /// committed); the outbox moves to the index-free table with its sequence numbers, and
    /// idempotency records to a table without a rowid.
    fn upgrade_from_1(&self) -> StoreResult<()> {
        let old: Vec<Pair> = self.all("SELECT key AS k, state AS v FROM counters", Vec::new())?;
        let mut by_meter: BTreeMap<String, BTreeMap<String, Counter>> = BTreeMap::new();
        for row in old {
            let Ok(c) = Counter::decode(&row.v) else { continue };
            // A policy name is `meter-period`, and periods have no '-'.
            let Some((meter, _)) = row.k.rsplit_once('-') else { continue };
            by_meter.entry(meter.to_owned()).or_default().insert(row.k.clone(), c);
        }
        for (meter, counters) in &by_meter {
            self.write(
                "INSERT OR REPLACE INTO meter_counters (meter, state) VALUES (?, ?)",
                vec![text(meter), text(&encode_counters(counters.iter()))],
            )?;
        }
        let reservations: Vec<Pair> = self.all("SELECT id AS k, state AS v FROM reservations", Vec::new())?;
        for r in reservations {
            if Reservation::decode(&r.v).is_ok_and(|res| res.kind == ReservationKind::Optimistic) {
                self.write("DELETE FROM reservations WHERE id = ?", vec![text(&r.k)])?;
            }
        }
        self.write(
            "INSERT OR IGNORE INTO ledger_outbox (seq, event_id, meter, quantity, ts, source, metadata, ready_at) \
             SELECT seq, event_id, meter, quantity, ts, source, metadata, ready_at FROM outbox",
            Vec::new(),
        )?;
        self.write(
            "INSERT OR IGNORE INTO idempotency_keys (id, result, at) SELECT id, result, at FROM idempotency",
            Vec::new(),
        )?;
        for stmt in ["DROP TABLE counters", "DROP TABLE outbox", "DROP TABLE idempotency"] {
            self.exec(stmt, Vec::new())?;
        }
        Ok(())
    }
}
