//! `Store`: every SQL statement of the org Durable Object's own `SQLite` storage, the versioned
//! schema, one `load` for what a step needs and one `apply` for what it wrote.
//!
//! It translates between rows and the org machine's `Boot`, `Snapshot` and `Writes`, and owns the
//! number boundary into `SQLite` integers (checked, never saturated). The versioned schema and
//! its upgrades are in `schema`; the rows the drain reads and settles are in `queue`. It must never decide
//! anything and never await: every call is synchronous, so a step's reads and writes happen in
//! one turn of the event loop.

mod queue;
mod schema;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use serde::Deserialize;
use wasm_bindgen::closure::ScopedClosure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{SqlCursor, SqlStorage, SqlStorageValue, State};

use crate::org::buckets::{Bucket, BucketKey, Terms};
use crate::org::{Boot, KeyHash, Need, Seen, SeenResult, Snapshot, StoredConfig, StoredKey, Tallies, Writes};
use crate::policy::keys::Fingerprint;
use crate::policy::{Reservation, Timestamp};

/// A storage failure: the step that met it answers 500 and its machine is rebuilt from storage.
pub type StoreResult<T> = Result<T, worker::Error>;

#[derive(Deserialize)]
struct N {
    n: Option<i64>,
}

#[derive(Deserialize)]
struct Text {
    v: String,
}

#[derive(Deserialize)]
struct Pair {
    k: String,
    v: String,
}

/// A key row: `expires` and `used_day` are null until set.
#[derive(Deserialize)]
struct KeyRow {
    key_id: String,
    hash: String,
    expires: Option<i64>,
    used_day: Option<i64>,
}

/// An idempotency record as stored: `fp` and `busy_until` (0: not in flight) are a proxied
/// request's.
#[derive(Deserialize)]
struct SeenRow {
    id: String,
    result: String,
    fp: Option<String>,
    busy_until: i64,
}

#[derive(Deserialize)]
struct CountRow {
    meter: String,
    outcome: String,
    n: i64,
}

fn text(s: &str) -> SqlStorageValue {
    SqlStorageValue::String(s.to_owned())
}

/// A count or an instant as an `SQLite` integer. It crosses JavaScript as a number, so past
/// 2^53 − 1 it is refused, not rounded.
fn int(n: u64) -> StoreResult<SqlStorageValue> {
    let n = i64::try_from(n).map_err(|_| worker::Error::RustError(format!("{n} exceeds i64")))?;
    SqlStorageValue::try_from_i64(n)
}

fn uint(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[wasm_bindgen]
extern "C" {
    /// The Durable Object's storage, for the one method workers-rs does not wrap.
    #[wasm_bindgen(extends = js_sys::Object)]
    #[derive(Debug)]
    type TxStorage;
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &TxStorage,
        body: &ScopedClosure<dyn FnMut() -> Result<(), JsValue>>,
    ) -> Result<JsValue, JsValue>;
}

/// Runs `apply` in one `SQLite` transaction (`storage.transactionSync`): when it fails, none of
/// the writes it made stay (and the caller rebuilds its machine from storage).
fn atomically(storage: &TxStorage, apply: impl FnOnce() -> StoreResult<()>) -> StoreResult<()> {
    let mut apply = Some(apply);
    let mut failed: Option<worker::Error> = None;
    let outcome = {
        let mut body = || match apply.take().map(|f| f()) {
            Some(Err(e)) => {
                let thrown = JsValue::from_str(&e.to_string());
                failed = Some(e);
                Err(thrown)
            }
            _ => Ok(()),
        };
        let body = ScopedClosure::borrow_mut_aborting(&mut body);
        storage.transaction_sync(&body)
    };
    if let Some(e) = failed {
        return Err(e);
    }
    outcome.map(drop).map_err(|e| worker::Error::RustError(format!("transaction: {e:?}")))
}

/// Synchronous access to one org's tables, with the work it did counted (for the rows-written
/// check in the end-to-end tests and the benchmark).
#[derive(Debug)]
pub struct Store {
    sql: SqlStorage,
    /// The storage object `transactionSync` is called on: every `apply` is one transaction.
    tx: TxStorage,
    counters: RefCell<Cached>,
    statements: Cell<u64>,
    /// `SQLite`'s rows-written count, read from each write's cursor only when `QUOTA_DEBUG_WORK`
    /// asks for it (`None` otherwise): one call less into the runtime per statement.
    rows_written: Option<Cell<u64>>,
}

/// Counter rows known in memory: every row (after a full read), or those read or written so
/// far (`None`: known to be absent).
#[derive(Debug)]
enum Cached {
    All(BTreeMap<String, String>),
    Some(BTreeMap<String, Option<String>>),
}

impl Store {
    /// `count_rows`: read each write's rows-written count (`take_work`), for `QUOTA_DEBUG_WORK`.
    pub fn open(state: &State, now: Timestamp, count_rows: bool) -> StoreResult<Self> {
        let tx = js_sys::Reflect::get(state.as_raw(), &JsValue::from_str("storage"))
            .map(JsCast::unchecked_into)
            .map_err(|e| worker::Error::RustError(format!("storage: {e:?}")))?;
        let store = Self {
            sql: state.storage().sql(),
            tx,
            counters: RefCell::new(Cached::Some(BTreeMap::new())),
            statements: Cell::new(0),
            rows_written: count_rows.then(|| Cell::new(0)),
        };
        store.migrate(now)?;
        Ok(store)
    }

    fn exec(&self, q: &str, args: Vec<SqlStorageValue>) -> StoreResult<SqlCursor> {
        let cursor = self.sql.exec(q, if args.is_empty() { None } else { Some(args) })?;
        self.statements.set(self.statements.get().saturating_add(1));
        Ok(cursor)
    }

    fn all<T: for<'de> Deserialize<'de>>(&self, q: &str, args: Vec<SqlStorageValue>) -> StoreResult<Vec<T>> {
        self.exec(q, args)?.to_array()
    }

    fn write(&self, q: &str, args: Vec<SqlStorageValue>) -> StoreResult<()> {
        let cursor = self.exec(q, args)?;
        if let Some(rows) = &self.rows_written {
            // Read after the statement ran: the cursor is exhausted by `exec` for writes.
            let written = u64::try_from(cursor.rows_written()).unwrap_or(0);
            rows.set(rows.get().saturating_add(written));
        }
        Ok(())
    }

    /// (statements, rows written) since the last call; rows written are 0 unless counted.
    pub fn take_work(&self) -> (u64, u64) {
        (self.statements.replace(0), self.rows_written.as_ref().map_or(0, |r| r.replace(0)))
    }

    fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self
            .all::<Text>("SELECT value AS v FROM meta WHERE key = ?", vec![text(key)])?
            .into_iter()
            .next()
            .map(|r| r.v))
    }

    fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        self.write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![text(key), text(value)],
        )
    }

    /// What the machine keeps in memory, read once per instance.
    pub fn boot(&self) -> StoreResult<Boot> {
        let config = self
            .all::<Text>("SELECT body AS v FROM config WHERE id = 1", Vec::new())?
            .into_iter()
            .next()
            .and_then(|r| serde_json::from_str::<StoredConfig>(&r.v).ok());
        let keys = self
            .all::<KeyRow>("SELECT key_id, hash, expires, used_day FROM keys", Vec::new())?
            .into_iter()
            .map(|r| StoredKey {
                key_id: r.key_id,
                hash: KeyHash(r.hash),
                expires_at: r.expires.map(|t| Timestamp::from_millis(uint(t))),
                used_day: r.used_day.map(uint),
            })
            .collect();
        let resets = self
            .all::<Pair>("SELECT substr(key, 7) AS k, value AS v FROM meta WHERE key LIKE 'reset:%'", Vec::new())?
            .into_iter()
            .filter_map(|p| Some((p.k, Timestamp::from_millis(p.v.parse().ok()?))))
            .collect();
        let one = |q: &str| -> StoreResult<Option<u64>> {
            Ok(self.all::<N>(q, Vec::new())?.into_iter().next().and_then(|r| r.n).map(uint))
        };
        let seq_mark = self.meta("outbox_seq")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let num = |k: &str| -> StoreResult<Option<u64>> { Ok(self.meta(k)?.and_then(|v| v.parse::<u64>().ok())) };
        let buckets: Vec<BucketRow> = self.all(
            "SELECT batch, meter, start, quantity, events, max_value, last_value, last_ts, first_ts, plan, event_name, \
             customer FROM ledger_buckets",
            Vec::new(),
        )?;
        Ok(Boot {
            config,
            keys,
            resets,
            max_seq: one("SELECT MAX(seq) AS n FROM ledger_outbox")?.unwrap_or(0).max(seq_mark),
            seq_mark,
            outbox_ready: one("SELECT MIN(ready_at) AS n FROM ledger_outbox")?.map(Timestamp::from_millis),
            alert_due: one("SELECT MIN(next_at) AS n FROM alerts WHERE status = 'pending'")?
                .map(Timestamp::from_millis),
            reservation_expires: one("SELECT MIN(expires) AS n FROM reservations")?.map(Timestamp::from_millis),
            open_reservations: one("SELECT COUNT(*) AS n FROM reservations")?.unwrap_or(0),
            flush_failures: self.meta("flush_failures")?.and_then(|v| v.parse().ok()).unwrap_or(0),
            buckets: buckets.into_iter().map(BucketRow::into_parts).collect(),
            flush_seq: num("flush_seq")?.unwrap_or(0),
            epoch: num("ledger_epoch")?.unwrap_or(0),
            config_at: num("config_at")?.map(Timestamp::from_millis),
            flush_every_ms: 0,
            plan_refresh_ms: 0,
            report_every_ms: 0,
            api_reads_per_minute: 0,
            api_calls_per_minute: 0,
        })
    }

    /// What a step needs: for a proxied request, the meter's one counter row and nothing else.
    pub fn load(&self, need: &Need, now: Timestamp) -> StoreResult<Snapshot> {
        let mut s = Snapshot { rows: self.counter_rows(need)?, ..Snapshot::default() };
        if !need.seen.is_empty() {
            let stored: Vec<String> = need.seen.iter().map(crate::org::SeenKey::stored).collect();
            let marks = vec!["?"; stored.len()].join(",");
            let q = format!("SELECT id, result, fp, busy_until FROM idempotency_keys WHERE id IN ({marks})");
            let found: Vec<SeenRow> = self.all(&q, stored.iter().map(|i| text(i)).collect())?;
            for row in found {
                // Matched back to the key it was asked for: no stored id is parsed.
                let Some(key) = stored.iter().position(|s| *s == row.id).and_then(|i| need.seen.get(i)) else {
                    continue;
                };
                let result = if row.result == "rejected" { SeenResult::Rejected } else { SeenResult::Accepted };
                let fingerprint = row
                    .fp
                    .as_deref()
                    .map(Fingerprint::parse)
                    .transpose()
                    .map_err(|e| worker::Error::RustError(format!("idempotency record {}: {e}", row.id)))?;
                let busy_until = (row.busy_until > 0).then(|| Timestamp::from_millis(uint(row.busy_until)));
                s.seen.insert(key.clone(), Seen { result, fingerprint, busy_until });
            }
        }
        if let Some(id) = &need.reservation {
            let found: Vec<Text> =
                self.all("SELECT state AS v FROM reservations WHERE id = ?", vec![text(id.as_str())])?;
            for r in found {
                s.reservations.push(decode_reservation(&r.v)?);
            }
        }
        if need.expired {
            let due: Vec<Text> = self.all(
                "SELECT state AS v FROM reservations WHERE expires <= ? ORDER BY expires LIMIT 64",
                vec![int(now.millis())?],
            )?;
            for r in due {
                s.reservations.push(decode_reservation(&r.v)?);
            }
            let ids: Vec<String> = s.reservations.iter().map(|r| r.id.to_string()).collect();
            // The next expiry after these (some may be beyond the batch of 64: then it is now).
            let next: Vec<N> =
                self.all("SELECT MIN(expires) AS n FROM reservations WHERE expires > ?", vec![int(now.millis())?])?;
            s.next_expiry = next.into_iter().next().and_then(|r| r.n).map(|n| Timestamp::from_millis(uint(n)));
            if ids.len() == 64 {
                s.next_expiry = Some(now);
            }
        }
        if need.alerts {
            s.alerts = self.all(
                "SELECT policy, window_start, payload, status, attempts FROM alerts ORDER BY fired_at, id",
                Vec::new(),
            )?;
        }
        if need.tallies {
            s.tallies = self.tallies()?;
        }
        Ok(s)
    }

    /// The counter rows a step needs. The DO is their single writer, so a row read or written
    /// once is served from memory afterwards: a proxied request reads nothing. Every write goes
    /// through `apply`, which keeps the copy current, and a failed write drops it.
    fn counter_rows(&self, need: &Need) -> StoreResult<BTreeMap<String, String>> {
        let mut cache = self.counters.borrow_mut();
        if need.all_counters {
            let rows: Vec<Pair> = self.all("SELECT meter AS k, state AS v FROM meter_counters", Vec::new())?;
            let rows: BTreeMap<String, String> = rows.into_iter().map(|p| (p.k, p.v)).collect();
            *cache = Cached::All(rows.clone());
            return Ok(rows);
        }
        let mut out = BTreeMap::new();
        for m in &need.meters {
            let m = m.as_str();
            let known = match &*cache {
                Cached::All(rows) => Some(rows.get(m).cloned()),
                Cached::Some(rows) => rows.get(m).cloned(),
            };
            let row = if let Some(row) = known {
                row
            } else {
                let found: Vec<Text> =
                    self.all("SELECT state AS v FROM meter_counters WHERE meter = ?", vec![text(m)])?;
                let row = found.into_iter().next().map(|r| r.v);
                if let Cached::Some(rows) = &mut *cache {
                    rows.insert(m.to_owned(), row.clone());
                }
                row
            };
            if let Some(row) = row {
                out.insert(m.to_owned(), row);
            }
        }
        Ok(out)
    }

    /// Forgets every cached row (after a failed write, storage is the truth again).
    pub fn forget_cache(&self) {
        *self.counters.borrow_mut() = Cached::Some(BTreeMap::new());
    }

    fn cache_row(&self, meter: &str, row: Option<&str>) {
        match &mut *self.counters.borrow_mut() {
            Cached::All(rows) => match row {
                Some(r) => {
                    rows.insert(meter.to_owned(), r.to_owned());
                }
                None => {
                    rows.remove(meter);
                }
            },
            Cached::Some(rows) => {
                rows.insert(meter.to_owned(), row.map(str::to_owned));
            }
        }
    }

    pub fn tallies(&self) -> StoreResult<Tallies> {
        let count = |q: &str| -> StoreResult<u64> {
            Ok(self.all::<N>(q, Vec::new())?.into_iter().next().and_then(|r| r.n).map_or(0, uint))
        };
        Ok(Tallies {
            open_reservations: count("SELECT COUNT(*) AS n FROM reservations")?,
            outbox_pending: count("SELECT COUNT(*) AS n FROM ledger_outbox")?,
            counter_rows: count("SELECT COUNT(*) AS n FROM meter_counters")?,
            decision_series: count("SELECT COUNT(*) AS n FROM decisions")?,
            idempotency_records: count("SELECT COUNT(*) AS n FROM idempotency_keys")?,
        })
    }

    /// Writes a step's changes. Synchronous, so they commit together with the step's reads.
    /// The step's idempotency records: added (the first write of a key wins), settled (no longer
    /// in flight) and forgotten.
    fn apply_seen(&self, w: &Writes, now: Timestamp) -> StoreResult<()> {
        for (key, seen) in &w.remember {
            self.write(
                "INSERT INTO idempotency_keys (id, result, at, fp, busy_until) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT(id) DO NOTHING",
                vec![
                    text(&key.stored()),
                    text(seen.result.as_str()),
                    int(now.millis())?,
                    seen.fingerprint.as_ref().map_or(SqlStorageValue::Null, |f| text(f.as_str())),
                    int(seen.busy_until.map_or(0, Timestamp::millis))?,
                ],
            )?;
        }
        for key in &w.settled {
            self.write("UPDATE idempotency_keys SET busy_until = 0 WHERE id = ?", vec![text(&key.stored())])?;
        }
        for key in &w.forget {
            self.write("DELETE FROM idempotency_keys WHERE id = ?", vec![text(&key.stored())])?;
        }
        Ok(())
    }

    pub fn apply(&self, w: &Writes, now: Timestamp) -> StoreResult<()> {
        self.apply_with(w, now, false)
    }

    /// `apply`, failing after the counters when `fail_midway` (`QUOTA_FAULTS=apply_fails`, tests
    /// only, and only for a step that records an idempotency key): the half-applied step the
    /// transaction must undo. Writes nothing, and calls nothing, when there is nothing to write
    /// (a refusal, a check).
    pub fn apply_with(&self, w: &Writes, now: Timestamp, fail_midway: bool) -> StoreResult<()> {
        if *w == Writes::default() {
            return Ok(());
        }
        atomically(&self.tx, || self.write_all(w, now, fail_midway))
    }

    /// The key rows a step changed: whole rows for new and rolled keys, one column for a key's
    /// first use of a day, a delete for a revoked one.
    fn write_keys(&self, w: &Writes) -> StoreResult<()> {
        for k in &w.key_put {
            let expires = k.expires_at.map(|t| int(t.millis())).transpose()?.unwrap_or(SqlStorageValue::Null);
            let used = k.used_day.map(int).transpose()?.unwrap_or(SqlStorageValue::Null);
            self.write(
                "INSERT OR REPLACE INTO keys (key_id, hash, expires, used_day) VALUES (?, ?, ?, ?)",
                vec![text(&k.key_id), text(&k.hash.0), expires, used],
            )?;
        }
        if let Some(u) = &w.key_used {
            // One column of one row: the hash (and its unique index) stays as it is.
            self.write("UPDATE keys SET used_day = ? WHERE key_id = ?", vec![int(u.day)?, text(&u.key_id)])?;
        }
        if let Some(key_id) = &w.key_delete {
            self.write("DELETE FROM keys WHERE key_id = ?", vec![text(key_id)])?;
        }
        Ok(())
    }

    fn write_all(&self, w: &Writes, now: Timestamp, fail_midway: bool) -> StoreResult<()> {
        if let Some(cfg) = &w.config {
            let body = serde_json::to_string(cfg).map_err(|e| worker::Error::RustError(e.to_string()))?;
            self.write("INSERT OR REPLACE INTO config (id, body) VALUES (1, ?)", vec![text(&body)])?;
        }
        for (meter, row) in &w.counters {
            self.write(
                "INSERT INTO meter_counters (meter, state) VALUES (?, ?) ON CONFLICT(meter) DO UPDATE SET state = excluded.state",
                vec![text(meter), text(row)],
            )?;
            self.cache_row(meter, Some(row));
        }
        for meter in &w.drop_counters {
            self.write("DELETE FROM meter_counters WHERE meter = ?", vec![text(meter)])?;
            self.cache_row(meter, None);
        }
        if fail_midway && !w.remember.is_empty() {
            return Err(worker::Error::RustError("fault injected: apply_fails".into()));
        }
        for r in &w.outbox {
            let metadata = r.metadata.as_deref().map_or(SqlStorageValue::Null, text);
            self.write(
                "INSERT INTO ledger_outbox (seq, event_id, meter, quantity, ts, source, metadata, ready_at, audit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![int(r.seq)?, text(&r.event_id), text(&r.meter), int(r.quantity)?, int(r.ts)?, text(&r.source), metadata, int(r.ready_at)?, int(u64::from(r.audit))?],
            )?;
        }
        for (k, b) in &w.buckets {
            self.write(
                "INSERT OR REPLACE INTO ledger_buckets (batch, meter, start, quantity, events, max_value, last_value, last_ts, \
                 first_ts, plan, event_name, customer) VALUES (0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    text(&k.meter),
                    int(k.start)?,
                    SqlStorageValue::try_from_i64(b.quantity)?,
                    SqlStorageValue::try_from_i64(b.events)?,
                    int(b.max_value)?,
                    int(b.last_value)?,
                    int(b.last_ts)?,
                    int(b.first_ts)?,
                    text(&b.terms.plan),
                    text(&b.terms.event_name),
                    b.terms.customer.as_deref().map_or(SqlStorageValue::Null, text),
                ],
            )?;
        }
        if let Some(seq) = w.seal {
            self.write("UPDATE ledger_buckets SET batch = ? WHERE batch = 0", vec![int(seq)?])?;
            self.set_meta("flush_seq", &seq.to_string())?;
        }
        if let Some(seq) = w.sealed_done {
            self.write("DELETE FROM ledger_buckets WHERE batch = ?", vec![int(seq)?])?;
        }
        for seq in &w.outbox_delete {
            self.write("DELETE FROM ledger_outbox WHERE seq = ?", vec![int(*seq)?])?;
        }
        for r in &w.reservation_put {
            self.write(
                "INSERT OR REPLACE INTO reservations (id, meter, expires, state) VALUES (?, ?, ?, ?)",
                vec![text(r.id.as_str()), text(r.meter.as_str()), int(r.expires.millis())?, text(&r.encode())],
            )?;
        }
        for id in &w.reservation_delete {
            self.write("DELETE FROM reservations WHERE id = ?", vec![text(id.as_str())])?;
        }
        self.apply_seen(w, now)?;
        for a in &w.alerts {
            // The unique key is the backstop: a crossing seen again after a release fires nothing.
            self.write(
                "INSERT INTO alerts (id, policy, window_start, level, payload, fired_at, status, attempts, next_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?) ON CONFLICT DO NOTHING",
                vec![
                    text(&a.id),
                    text(&a.policy),
                    int(a.window_start.millis())?,
                    text(a.level.as_str()),
                    text(&a.payload),
                    int(now.millis())?,
                    int(now.millis())?,
                ],
            )?;
        }
        for (k, v) in &w.meta {
            self.set_meta(k, v)?;
        }
        self.write_keys(w)?;
        for (meter, outcome, n) in &w.counts {
            self.write(
                "INSERT INTO decisions (meter, outcome, n) VALUES (?, ?, ?) ON CONFLICT (meter, outcome) DO UPDATE SET n = n + excluded.n",
                vec![text(meter), text(outcome), int(*n)?],
            )?;
        }
        Ok(())
    }

    /// The saved decision counts.
    pub fn counts(&self) -> StoreResult<Vec<(String, String, u64)>> {
        let rows: Vec<CountRow> =
            self.all("SELECT meter, outcome, n FROM decisions ORDER BY meter, outcome", Vec::new())?;
        Ok(rows.into_iter().map(|r| (r.meter, r.outcome, uint(r.n))).collect())
    }

    /// A cheap round trip for `/_quota/healthz`.
    pub fn ping(&self) -> StoreResult<bool> {
        Ok(self.all::<N>("SELECT 1 AS n", Vec::new())?.into_iter().next().and_then(|r| r.n) == Some(1))
    }
}

/// A stored ledger bucket.
#[derive(Deserialize)]
struct BucketRow {
    batch: i64,
    meter: String,
    start: i64,
    quantity: i64,
    events: i64,
    max_value: i64,
    last_value: i64,
    last_ts: i64,
    first_ts: i64,
    plan: String,
    event_name: String,
    customer: Option<String>,
}

impl BucketRow {
    fn into_parts(self) -> (u64, BucketKey, Bucket) {
        let bucket = Bucket {
            quantity: self.quantity,
            events: self.events,
            max_value: uint(self.max_value),
            last_value: uint(self.last_value),
            last_ts: uint(self.last_ts),
            first_ts: uint(self.first_ts),
            terms: Terms { plan: self.plan, event_name: self.event_name, customer: self.customer },
        };
        (uint(self.batch), BucketKey { meter: self.meter, start: uint(self.start) }, bucket)
    }
}

fn decode_reservation(s: &str) -> StoreResult<Reservation> {
    Reservation::decode(s).map_err(|e| worker::Error::RustError(e.to_string()))
}
