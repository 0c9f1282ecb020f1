//! `OrgQuota`: the Durable Object that is the single writer of one org's counters and the
//! at-least-once source of its usage ledger.
//!
//! It translates between its `SQLite` storage, D1 and the policy core, and nothing else. Every
//! decision is handled by `handle`, which is synchronous from the first read to the last write:
//! load → decide (core) → persist (counters, reservations, outbox, idempotency) → reply, with no
//! `.await` in between, so the output gate and `SQLite`'s implicit transaction make it atomic.
//! Only the ledger I/O (flush, reconcile) awaits D1, and it never holds decided state across an
//! await. It never answers from memory alone, never calls the origin, and never panics.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{
    durable_object, D1PreparedStatement, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use super::error::json_response;
use super::platform::{config, js_int, now};
use crate::policy::engine::DecodeError;
use crate::policy::headers::{decision_headers, refusal_problem};
use crate::policy::{
    Aggregation, Book, Counter, EventId, Limit, LimitStatus, MeterId, OrgId, OrgTerms, Plan, PlanError, PlanId, Policy,
    Reservation, ReservationKind, ReserveAs, Settlement, Timestamp, UsageError,
};
use crate::wire::{
    decision_json, limit_json, problem_body, status_json, unauthorized_body, usage_error_status, usage_json,
    DecideKind, DoReply, DoRequest, SettleAction, UsageEvent,
};

/// How many expired reservations one message settles; the rest wait for the next message.
const SWEEP_BATCH: i64 = 64;
/// Rows per INSERT: 9 bound parameters each, under D1's 100 per statement.
const ROWS_PER_INSERT: usize = 11;
/// Rows per flush round: 50 statements, far under D1's 1,000 queries per invocation.
const ROWS_PER_ROUND: i64 = 550;
const ROUNDS_PER_FLUSH: usize = 4;
/// A first flush waits this long so that bursts go to D1 in one batch.
const FLUSH_DELAY_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 300_000;
/// Idempotency records are kept at least 24 hours (48 here).
const IDEMPOTENCY_MS: u64 = 48 * 3_600_000;

/// The org's configuration as stored: the raw documents, re-validated whenever they are loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredConfig {
    org: OrgId,
    plan_id: PlanId,
    plan: Value,
    billing_anchor: Option<Value>,
    overrides: Option<Value>,
    #[serde(default)]
    webhook_url: Option<String>,
}

#[derive(Debug)]
struct Loaded {
    org: OrgId,
    policy: Policy,
    webhook_url: Option<String>,
}

/// The Durable Object layer's one error type; `into_reply` is its one mapping to an answer.
#[derive(Debug, thiserror::Error)]
enum DoError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("org is not configured")]
    NotConfigured,
    #[error("the ledger is busy with a flush or a reconciliation; retry shortly")]
    Busy,
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("storage: {0}")]
    Storage(#[from] worker::Error),
    #[error("{0}")]
    Corrupt(#[from] DecodeError),
}

impl DoError {
    fn into_reply(self) -> DoReply {
        let (status, kind, title, detail) = match &self {
            Self::Unauthorized => {
                return DoReply {
                    status: 401,
                    headers: Vec::new(),
                    body: unauthorized_body(),
                    plan: None,
                    reserved: false,
                };
            }
            Self::NotConfigured => (
                404,
                "unknown-org",
                "Unknown org",
                "This org has no plan; PUT /_quota/admin/orgs/{org} first.".to_owned(),
            ),
            Self::Busy => (409, "busy", "Busy", self.to_string()),
            Self::Plan(e) => (400, "invalid-plan", "Invalid plan", e.to_string()),
            Self::Usage(e) => {
                let (s, k, t) = usage_error_status(e);
                (s, k, t, e.to_string())
            }
            Self::Storage(_) | Self::Corrupt(_) => {
                worker::console_error!(
                    "{}",
                    json!({"level": "error", "component": "org_do", "error": self.to_string()})
                );
                (500, "internal", "Internal error", "The org's quota state could not be read or written.".to_owned())
            }
        };
        DoReply {
            status,
            headers: Vec::new(),
            body: problem_body(status, kind, title, &detail),
            plan: None,
            reserved: false,
        }
    }
}

type DoResult<T> = std::result::Result<T, DoError>;

#[durable_object]
#[allow(missing_debug_implementations)] // `State` has no Debug
pub struct OrgQuota {
    state: State,
    env: Env,
    migrated: Cell<bool>,
    loaded: RefCell<Option<Rc<Loaded>>>,
    /// Set when a message wrote to the outbox: the alarm must be armed before replying.
    outbox_written: Cell<bool>,
    /// An alarm is known to be armed (cleared when it fires).
    armed: Cell<bool>,
    /// A flush or a reconciliation is awaiting D1: they must not interleave.
    ledger_busy: Cell<bool>,
    /// Set when a message fired a threshold alert: the alarm must run now to deliver it.
    alerts_fired: Cell<bool>,
    /// This instance has checked that a non-empty outbox has an alarm (after a crash between an
    /// outbox write and arming the alarm, the outbox would otherwise wait for the next write).
    alarm_checked: Cell<bool>,
}

impl DurableObject for OrgQuota {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            migrated: Cell::new(false),
            loaded: RefCell::new(None),
            outbox_written: Cell::new(false),
            armed: Cell::new(false),
            ledger_busy: Cell::new(false),
            alarm_checked: Cell::new(false),
            alerts_fired: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        super::platform::set_clock(&self.env);
        if req.path() == "/ping" {
            let sql = self.state.storage().sql();
            let ok = sql.exec("SELECT 1 AS n", None)?.one::<CountRow>()?.n == 1;
            return json_response(200, &json!({"ok": ok, "storage": "sqlite"}), "application/json");
        }
        // Reading the message is the only await before any state is touched.
        let reply = match req.json::<DoRequest>().await {
            Ok(DoRequest::Flush) => self.flush_reply().await,
            Ok(DoRequest::Reconcile { repair }) => self.reconcile(repair).await.unwrap_or_else(DoError::into_reply),
            Ok(msg) => self.handle(msg, now()).unwrap_or_else(DoError::into_reply),
            Err(e) => DoReply {
                status: 400,
                headers: Vec::new(),
                body: problem_body(400, "bad-message", "Bad message", &e.to_string()),
                plan: None,
                reserved: false,
            },
        };
        if self.alerts_fired.replace(false) {
            self.arm(now()).await?;
        }
        if self.outbox_written.replace(false) && !self.armed.get() {
            self.arm(now().saturating_add_ms(FLUSH_DELAY_MS)).await?;
        }
        if !self.alarm_checked.replace(true) && !self.armed.get() {
            let pending = self
                .store()
                .and_then(|s| Ok(s.sql.exec("SELECT COUNT(*) AS n FROM outbox", None)?.one::<CountRow>()?.n));
            if pending.is_ok_and(|n| n > 0) && self.state.storage().get_alarm().await?.is_none() {
                self.arm(now().saturating_add_ms(FLUSH_DELAY_MS)).await?;
            }
        }
        json_response(200, &serde_json::to_value(&reply).unwrap_or(Value::Null), "application/json")
    }

    async fn alarm(&self) -> Result<Response> {
        super::platform::set_clock(&self.env);
        self.armed.set(false);
        let t = now();
        let alert_next = match self.deliver_alerts(t).await {
            Ok(next) => next,
            Err(e) => {
                worker::console_error!("{}", json!({"msg": "alert delivery failed", "error": e.to_string()}));
                Some(t.saturating_add_ms(5_000))
            }
        };
        let ledger_next = match self.flush().await {
            Ok((_, pending, next_ready)) => {
                self.set_meta("flush_failures", "0").map_err(worker_err)?;
                // Rows not yet ready (proxied requests awaiting a possible release) flush later.
                (pending > 0).then(|| next_ready.filter(|r| *r > t).unwrap_or_else(|| t.saturating_add_ms(250)))
            }
            // An org without a config has nothing to flush.
            Err(DoError::NotConfigured) => None,
            Err(DoError::Busy) => Some(t.saturating_add_ms(500)),
            Err(e) => {
                let failures = self.meta("flush_failures").map_err(worker_err)?;
                let failures = failures.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0).saturating_add(1);
                self.set_meta("flush_failures", &failures.to_string()).map_err(worker_err)?;
                let backoff = 1_000u64.saturating_mul(1u64 << failures.min(20)).min(MAX_BACKOFF_MS);
                let line = json!({"msg": "ledger flush failed", "failures": failures, "retry_in_ms": backoff, "error": e.to_string()});
                worker::console_error!("{line}");
                Some(t.saturating_add_ms(backoff))
            }
        };
        if let Some(at) = [alert_next, ledger_next].into_iter().flatten().min() {
            self.arm(at).await?;
        }
        Response::ok("")
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(worker_err)`
fn worker_err(e: DoError) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

#[derive(Deserialize)]
struct CountRow {
    n: i64,
}

#[derive(Deserialize)]
struct StateRow {
    key: String,
    state: String,
}

#[derive(Deserialize)]
struct BodyRow {
    body: String,
}

#[derive(Deserialize)]
struct ValueRow {
    value: String,
}

#[derive(Debug, Clone, Deserialize)]
struct OutboxRow {
    seq: i64,
    event_id: String,
    meter: String,
    quantity: u64,
    ts: u64,
    source: String,
    metadata: Option<String>,
}

#[derive(Deserialize)]
struct PendingRow {
    n: i64,
    next: Option<u64>,
}

/// Synchronous access to the DO's tables.
struct Store {
    sql: SqlStorage,
}

fn text(s: &str) -> SqlStorageValue {
    SqlStorageValue::String(s.to_owned())
}

fn int(n: u64) -> SqlStorageValue {
    // Quantities are ≤ 2^53 − 1 at the API boundary; milliseconds stay below it until year 287396.
    SqlStorageValue::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn ms(t: Timestamp) -> SqlStorageValue {
    int(t.millis())
}

/// One row for the outbox.
struct Outgoing<'a> {
    event_id: &'a str,
    meter: &'a MeterId,
    quantity: u64,
    ts: Timestamp,
    source: &'a str,
    metadata: Option<&'a Value>,
    ready_at: Timestamp,
}

impl Store {
    fn migrate(&self) -> Result<()> {
        for stmt in [
            "CREATE TABLE IF NOT EXISTS config (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, state TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, meter TEXT NOT NULL, expires INTEGER NOT NULL, state TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS reservations_expires ON reservations(expires)",
            "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE)",
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE, \
             meter TEXT NOT NULL, quantity INTEGER NOT NULL, ts INTEGER NOT NULL, source TEXT NOT NULL, metadata TEXT, \
             ready_at INTEGER NOT NULL)",
            "CREATE INDEX IF NOT EXISTS outbox_ready ON outbox(ready_at)",
            "CREATE TABLE IF NOT EXISTS idempotency (id TEXT PRIMARY KEY, result TEXT NOT NULL, at INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, policy TEXT NOT NULL, window_start INTEGER NOT NULL, \
             level TEXT NOT NULL, payload TEXT NOT NULL, fired_at INTEGER NOT NULL, status TEXT NOT NULL, \
             attempts INTEGER NOT NULL DEFAULT 0, next_at INTEGER NOT NULL, last_error TEXT, UNIQUE (policy, window_start, level))",
            "CREATE INDEX IF NOT EXISTS alerts_due ON alerts(status, next_at)",
            "CREATE TABLE IF NOT EXISTS decisions (meter TEXT NOT NULL, outcome TEXT NOT NULL, n INTEGER NOT NULL, \
             PRIMARY KEY (meter, outcome))",
        ] {
            self.sql.exec(stmt, None)?;
        }
        Ok(())
    }

    fn config(&self) -> DoResult<Option<StoredConfig>> {
        let rows: Vec<BodyRow> = self.sql.exec("SELECT body FROM config WHERE id = 1", None)?.to_array()?;
        rows.first()
            .map(|r| serde_json::from_str(&r.body).map_err(|e| DoError::Corrupt(DecodeError::from_serde(&e))))
            .transpose()
    }

    fn key_ok(&self, hash: &str) -> DoResult<bool> {
        let rows: Vec<CountRow> =
            self.sql.exec("SELECT 1 AS n FROM keys WHERE hash = ?", vec![text(hash)])?.to_array()?;
        Ok(!rows.is_empty())
    }

    /// The counters with these keys.
    fn counters(&self, keys: &BTreeSet<String>, book: &mut Book) -> DoResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let marks = vec!["?"; keys.len()].join(",");
        let q = format!("SELECT key, state FROM counters WHERE key IN ({marks})");
        let rows: Vec<StateRow> = self.sql.exec(&q, keys.iter().map(|k| text(k)).collect::<Vec<_>>())?.to_array()?;
        for r in rows {
            book.counters.insert(r.key, Counter::decode(&r.state)?);
        }
        Ok(())
    }

    fn all_counters(&self, book: &mut Book) -> DoResult<()> {
        let rows: Vec<StateRow> = self.sql.exec("SELECT key, state FROM counters", None)?.to_array()?;
        for r in rows {
            book.counters.insert(r.key, Counter::decode(&r.state)?);
        }
        Ok(())
    }

    fn reservations(&self, query: &str, args: Vec<SqlStorageValue>, book: &mut Book) -> DoResult<()> {
        let rows: Vec<StateRow> = self.sql.exec(query, args)?.to_array()?;
        for r in rows {
            let res = Reservation::decode(&r.state)?;
            book.reservations.insert(res.id.clone(), res);
        }
        Ok(())
    }

    /// Writes what changed between `before` and `after`.
    fn save(&self, before: &Book, after: &Book) -> DoResult<()> {
        for (k, c) in &after.counters {
            if before.counters.get(k) != Some(c) {
                self.sql.exec(
                    "INSERT INTO counters (key, state) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state",
                    vec![text(k), text(&c.encode())],
                )?;
            }
        }
        for id in before.reservations.keys().filter(|id| !after.reservations.contains_key(*id)) {
            self.sql.exec("DELETE FROM reservations WHERE id = ?", vec![text(id.as_str())])?;
        }
        for (id, r) in &after.reservations {
            if before.reservations.get(id) != Some(r) {
                self.sql.exec(
                    "INSERT INTO reservations (id, meter, expires, state) VALUES (?, ?, ?, ?) \
                     ON CONFLICT(id) DO UPDATE SET expires = excluded.expires, state = excluded.state",
                    vec![text(id.as_str()), text(r.meter.as_str()), ms(r.expires), text(&r.encode())],
                )?;
            }
        }
        Ok(())
    }

    fn outbox_add(&self, row: &Outgoing<'_>) -> DoResult<()> {
        let metadata = row.metadata.map_or(SqlStorageValue::Null, |m| text(&m.to_string()));
        self.sql.exec(
            "INSERT INTO outbox (event_id, meter, quantity, ts, source, metadata, ready_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(event_id) DO NOTHING",
            vec![
                text(row.event_id),
                text(row.meter.as_str()),
                int(row.quantity),
                ms(row.ts),
                text(row.source),
                metadata,
                ms(row.ready_at),
            ],
        )?;
        Ok(())
    }

    fn idempotent(&self, ids: &[&str]) -> DoResult<BTreeMap<String, String>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        let marks = vec!["?"; ids.len()].join(",");
        let q = format!("SELECT id AS key, result AS state FROM idempotency WHERE id IN ({marks})");
        let rows: Vec<StateRow> = self.sql.exec(&q, ids.iter().map(|i| text(i)).collect::<Vec<_>>())?.to_array()?;
        Ok(rows.into_iter().map(|r| (r.key, r.state)).collect())
    }

    fn remember(&self, id: &str, result: &str, at: Timestamp) -> DoResult<()> {
        self.sql.exec(
            "INSERT INTO idempotency (id, result, at) VALUES (?, ?, ?) ON CONFLICT(id) DO NOTHING",
            vec![text(id), text(result), ms(at)],
        )?;
        Ok(())
    }
}

fn keys_of(policy: &Policy, meters: &BTreeSet<&MeterId>) -> BTreeSet<String> {
    policy.limits.iter().filter(|l| meters.contains(&l.meter)).map(Limit::policy_name).collect()
}

fn ok(body: Value, plan: &Policy) -> DoReply {
    DoReply { status: 200, headers: Vec::new(), body, plan: Some(plan.plan.to_string()), reserved: false }
}

impl OrgQuota {
    fn store(&self) -> DoResult<Store> {
        let store = Store { sql: self.state.storage().sql() };
        if !self.migrated.get() {
            store.migrate()?;
            self.migrated.set(true);
        }
        Ok(store)
    }

    async fn arm(&self, at: Timestamp) -> Result<()> {
        let offset = std::time::Duration::from_millis(at.since(now()));
        self.state.storage().set_alarm(offset).await?;
        self.armed.set(true);
        Ok(())
    }

    fn meta(&self, key: &str) -> DoResult<Option<String>> {
        let store = self.store()?;
        let rows: Vec<ValueRow> =
            store.sql.exec("SELECT value FROM meta WHERE key = ?", vec![text(key)])?.to_array()?;
        Ok(rows.into_iter().next().map(|r| r.value))
    }

    fn set_meta(&self, key: &str, value: &str) -> DoResult<()> {
        self.store()?.sql.exec(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            vec![text(key), text(value)],
        )?;
        Ok(())
    }

    /// The org's policy: parsed once per instance from the stored config, re-parsed after
    /// `configure`.
    fn loaded(&self, store: &Store) -> DoResult<Rc<Loaded>> {
        if let Some(l) = self.loaded.borrow().as_ref() {
            return Ok(Rc::clone(l));
        }
        let cfg = store.config()?.ok_or(DoError::NotConfigured)?;
        let plan = Plan::parse(&cfg.plan_id, &cfg.plan)?;
        let terms = OrgTerms::parse(cfg.billing_anchor.as_ref(), cfg.overrides.as_ref(), &plan)?;
        let l = Rc::new(Loaded { org: cfg.org, policy: Policy::new(&plan, &terms), webhook_url: cfg.webhook_url });
        *self.loaded.borrow_mut() = Some(Rc::clone(&l));
        Ok(l)
    }

    fn outbox(&self, store: &Store, row: &Outgoing<'_>) -> DoResult<()> {
        store.outbox_add(row)?;
        self.outbox_written.set(true);
        Ok(())
    }

    /// Every decision, synchronously: no `.await` from the first read to the last write.
    fn handle(&self, msg: DoRequest, now: Timestamp) -> DoResult<DoReply> {
        let store = self.store()?;
        if let DoRequest::Configure { org, plan_id, plan, billing_anchor, overrides, webhook_url } = msg {
            let cfg = StoredConfig { org, plan_id, plan, billing_anchor, overrides, webhook_url };
            return self.configure(&store, cfg, now);
        }
        match msg {
            DoRequest::AddKey { key_id, hash } => {
                store.sql.exec(
                    "INSERT OR REPLACE INTO keys (key_id, hash) VALUES (?, ?)",
                    vec![text(&key_id), text(&hash)],
                )?;
                return Ok(DoReply {
                    status: 200,
                    headers: Vec::new(),
                    body: json!({"key_id": key_id}),
                    plan: None,
                    reserved: false,
                });
            }
            DoRequest::RevokeKey { key_id } => {
                let n = store.sql.exec("DELETE FROM keys WHERE key_id = ?", vec![text(&key_id)])?.rows_written();
                let body = json!({"key_id": key_id, "removed": n > 0});
                return Ok(DoReply { status: 200, headers: Vec::new(), body, plan: None, reserved: false });
            }
            _ => {}
        }
        // The key is checked before anything else, so an unknown org answers like a wrong key.
        let key_hash = match &msg {
            DoRequest::Decide { key_hash, .. } | DoRequest::Events { key_hash, .. } => Some(key_hash.as_str()),
            DoRequest::Settle { key_hash, .. } | DoRequest::Usage { key_hash, .. } => key_hash.as_deref(),
            _ => None,
        };
        if let Some(h) = key_hash {
            if !store.key_ok(h)? {
                return Err(DoError::Unauthorized);
            }
        }
        let loaded = self.loaded(&store)?;
        let policy = &loaded.policy;
        sweep(&store, policy, now)?;
        match msg {
            DoRequest::Decide { meter, quantity, kind, id, ttl_ms, replayable, .. } => {
                let how = ReserveAs { id, kind: ReservationKind::Optimistic, ttl_ms };
                self.decide(&store, policy, &meter, quantity, kind, how, replayable, now)
            }
            DoRequest::Settle { id, action, .. } => self.settle(&store, policy, &id, action, now),
            DoRequest::Report { id, usage } => self.report(&store, policy, &id, &usage, now),
            DoRequest::Events { events, enforce, .. } => self.events(&store, policy, &events, enforce, now),
            DoRequest::Usage { short, .. } => {
                let mut book = Book::default();
                store.all_counters(&mut book)?;
                let statuses = book.overview(policy, now);
                let body = if short {
                    status_json(&loaded.org, policy, &statuses)
                } else {
                    usage_json(&loaded.org, policy, &statuses, &current_alerts(&store, &statuses)?, now)
                };
                Ok(ok(body, policy))
            }
            DoRequest::Reset { meter } => {
                let mut book = Book::default();
                store.all_counters(&mut book)?;
                let before = book.clone();
                book.reset(policy, meter.as_ref(), now);
                store.save(&before, &book)?;
                // Reconciliation counts the ledger from the reset on.
                let key = format!("reset:{}", meter.as_ref().map_or("*", MeterId::as_str));
                store.sql.exec(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    vec![text(&key), text(&now.millis().to_string())],
                )?;
                Ok(ok(overview(&store, &loaded, now)?, policy))
            }
            DoRequest::State
            | DoRequest::Configure { .. }
            | DoRequest::AddKey { .. }
            | DoRequest::RevokeKey { .. }
            // Flush and Reconcile await D1 and are dispatched by `fetch` before `handle`.
            | DoRequest::Flush
            | DoRequest::Reconcile { .. } => Ok(ok(overview(&store, &loaded, now)?, policy)),
        }
    }

    /// Records each threshold alert (warning 80%, critical 95%, over 100%) that a day, month or
    /// lifetime limit reached for the first time in its window. The unique key (limit, window,
    /// level) makes it fire once per period, however usage hovers or requests race.
    fn fire_alerts(&self, store: &Store, statuses: &[LimitStatus], now: Timestamp) -> DoResult<()> {
        let org = self.loaded.borrow().as_ref().map(|l| l.org.to_string()).unwrap_or_default();
        for l in statuses.iter().filter(|l| !l.period.is_rate() && l.limit.is_some()) {
            for level in l.level.reached() {
                let id = format!("alrt_{org}_{}_{}_{}", l.policy, l.window_start.millis(), level.as_str());
                let payload = json!({
                    "id": id, "type": "quota.threshold", "org_id": org, "meter": l.meter.as_str(), "policy": l.policy,
                    "period": l.period.to_string(), "level": level.as_str(), "threshold_pct": level.threshold_pct(),
                    "used": l.used, "limit": l.limit, "window_start": l.window_start.rfc3339(),
                    "reset_at": l.reset.map(Timestamp::rfc3339), "timestamp": now.rfc3339(),
                });
                let written = store
                    .sql
                    .exec(
                        "INSERT INTO alerts (id, policy, window_start, level, payload, fired_at, status, attempts, next_at) \
                         VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?) ON CONFLICT DO NOTHING",
                        vec![
                            text(&id),
                            text(&l.policy),
                            ms(l.window_start),
                            text(level.as_str()),
                            text(&payload.to_string()),
                            ms(now),
                            ms(now),
                        ],
                    )?
                    .rows_written();
                if written > 0 {
                    self.alerts_fired.set(true);
                    worker::console_log!(
                        "{}",
                        json!({"msg": "alert fired", "org": org, "policy": l.policy, "level": level.as_str()})
                    );
                }
            }
        }
        Ok(())
    }

    /// Delivers due alerts: a signed POST each, recorded in D1; failures retry with exponential
    /// backoff until `ALERT_MAX_ATTEMPTS` (8), then the alert is dead. Returns when the next
    /// pending alert is due.
    async fn deliver_alerts(&self, t: Timestamp) -> DoResult<Option<Timestamp>> {
        let store = self.store()?;
        let loaded = match self.loaded(&store) {
            Ok(l) => l,
            Err(DoError::NotConfigured) => return Ok(None),
            Err(e) => return Err(e),
        };
        let due: Vec<AlertRow> = store
            .sql
            .exec(
                "SELECT id, payload, attempts FROM alerts WHERE status = 'pending' AND next_at <= ? ORDER BY next_at LIMIT 20",
                vec![ms(t)],
            )?
            .to_array()?;
        let target = loaded.webhook_url.clone().or_else(|| config(&self.env, "ALERT_WEBHOOK_URL"));
        let max_attempts = config(&self.env, "ALERT_MAX_ATTEMPTS")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| (1..=20).contains(n))
            .unwrap_or(8);
        let secret = config(&self.env, "WEBHOOK_SECRET").unwrap_or_default();
        for row in due {
            let Some(url) = target.as_deref() else {
                store.sql.exec("UPDATE alerts SET status = 'no_target' WHERE id = ?", vec![text(&row.id)])?;
                continue;
            };
            let attempt = row.attempts.saturating_add(1);
            let (code, error) = post_webhook(url, &row.id, &row.payload, secret.as_bytes(), t).await;
            let outcome = if code.is_some_and(|c| (200..300).contains(&c)) {
                "delivered"
            } else if attempt >= max_attempts {
                "dead"
            } else {
                "retry"
            };
            let status = if outcome == "retry" { "pending" } else { outcome };
            let next = t.saturating_add_ms(1_000u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(12)));
            store.sql.exec(
                "UPDATE alerts SET attempts = ?, status = ?, next_at = ?, last_error = ? WHERE id = ?",
                vec![
                    int(u64::from(attempt)),
                    text(status),
                    ms(next),
                    error.as_deref().map_or(SqlStorageValue::Null, text),
                    text(&row.id),
                ],
            )?;
            let record = AlertAttempt {
                org: &loaded.org,
                alert_id: &row.id,
                attempt,
                url,
                code,
                error: error.as_deref(),
                outcome,
                at: t,
            };
            if let Err(e) = record_attempt(&self.env, &record).await {
                worker::console_error!(
                    "{}",
                    json!({"msg": "alert attempt not recorded", "alert": row.id, "error": e.to_string()})
                );
            }
        }
        let next: PendingRow = store
            .sql
            .exec("SELECT COUNT(*) AS n, MIN(next_at) AS next FROM alerts WHERE status = 'pending'", None)?
            .one()?;
        Ok(next.next.map(Timestamp::from_millis))
    }

    fn configure(&self, store: &Store, cfg: StoredConfig, now: Timestamp) -> DoResult<DoReply> {
        // Validate before storing: a config that does not parse never reaches storage.
        let plan = Plan::parse(&cfg.plan_id, &cfg.plan)?;
        let terms = OrgTerms::parse(cfg.billing_anchor.as_ref(), cfg.overrides.as_ref(), &plan)?;
        let policy = Policy::new(&plan, &terms);
        let body = serde_json::to_string(&cfg).map_err(|e| DoError::Corrupt(DecodeError::from_serde(&e)))?;
        store.sql.exec("INSERT OR REPLACE INTO config (id, body) VALUES (1, ?)", vec![text(&body)])?;
        // Counters of limits the new policy no longer has are dropped; the others carry over.
        let keep: BTreeSet<String> = policy.limits.iter().map(Limit::policy_name).collect();
        let mut book = Book::default();
        store.all_counters(&mut book)?;
        for k in book.counters.keys().filter(|k| !keep.contains(*k)) {
            store.sql.exec("DELETE FROM counters WHERE key = ?", vec![text(k)])?;
        }
        let loaded = Rc::new(Loaded { org: cfg.org, policy, webhook_url: cfg.webhook_url });
        *self.loaded.borrow_mut() = Some(Rc::clone(&loaded));
        Ok(ok(overview(store, &loaded, now)?, &loaded.policy))
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        store: &Store,
        policy: &Policy,
        meter: &MeterId,
        quantity: u64,
        kind: DecideKind,
        how: ReserveAs,
        replayable: bool,
        now: Timestamp,
    ) -> DoResult<DoReply> {
        let mut book = Book::default();
        store.counters(&keys_of(policy, &BTreeSet::from([meter])), &mut book)?;
        let before = book.clone();
        let id = how.id.clone();
        let is_replay = replayable && kind == DecideKind::Proxy && !store.idempotent(&[id.as_str()])?.is_empty();
        let decision = match kind {
            DecideKind::Check => book.check(policy, meter, quantity, now)?,
            // A replayed Idempotency-Key is admitted and forwarded, but counted once only.
            DecideKind::Proxy if is_replay => book.check(policy, meter, 0, now)?,
            // Admitted while one unit remains: see the overshoot bound in the README.
            DecideKind::ProxyReported => book.check(policy, meter, 1, now)?,
            DecideKind::Proxy => book.reserve(policy, meter, quantity, how, now)?,
            DecideKind::Reserve => {
                book.reserve(policy, meter, quantity, ReserveAs { kind: ReservationKind::Provisional, ..how }, now)?
            }
        };
        store.save(&before, &book)?;
        let outcome = if decision.allowed() { "allowed" } else { "refused" };
        count_decision(store, meter, outcome)?;
        if matches!(kind, DecideKind::Check | DecideKind::Reserve) {
            // Proxied decisions are logged by the Worker, with the round-trip latency.
            log_decision(
                &self.env,
                meter,
                quantity,
                outcome,
                decision.status(),
                if kind == DecideKind::Check { "check" } else { "reserve" },
            );
        }
        if matches!(kind, DecideKind::Proxy | DecideKind::Reserve) && decision.allowed() && !is_replay {
            self.fire_alerts(store, &decision.limits, now)?;
        }
        if let (DecideKind::Proxy, false, Some(r)) = (kind, is_replay, book.reservations.get(&id)) {
            // Ready when the reservation can no longer be released.
            let row = Outgoing {
                event_id: id.as_str(),
                meter,
                quantity,
                ts: now,
                source: "proxy",
                metadata: None,
                ready_at: r.expires,
            };
            self.outbox(store, &row)?;
            if replayable {
                store.remember(id.as_str(), "accepted", now)?;
            }
        }
        let mut headers: Vec<(String, String)> =
            decision_headers(&decision).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if is_replay {
            headers.push(("Idempotent-Replayed".into(), "true".into()));
        }
        let reserved = kind == DecideKind::Proxy && !is_replay && book.reservations.contains_key(&id);
        let mut reply = DoReply {
            status: 200,
            headers,
            body: decision_json(&decision),
            plan: Some(policy.plan.to_string()),
            reserved,
        };
        match kind {
            DecideKind::Proxy | DecideKind::ProxyReported => {
                if let Some(problem) = refusal_problem(&decision, policy.plan.as_str(), policy.upgrade_url.as_deref()) {
                    reply.status = decision.status();
                    reply.body = problem;
                }
            }
            DecideKind::Reserve => {
                if let (Some(r), Some(obj)) = (book.reservations.get(&id), reply.body.as_object_mut()) {
                    let view = json!({"id": r.id.as_str(), "quantity": r.quantity, "expires_at": r.expires.rfc3339()});
                    obj.insert("reservation".into(), view);
                }
            }
            DecideKind::Check => {}
        }
        Ok(reply)
    }

    fn settle(
        &self,
        store: &Store,
        policy: &Policy,
        id: &EventId,
        action: SettleAction,
        now: Timestamp,
    ) -> DoResult<DoReply> {
        let mut book = Book::default();
        store.reservations(
            "SELECT id AS key, state FROM reservations WHERE id = ?",
            vec![text(id.as_str())],
            &mut book,
        )?;
        let Some(res) = book.reservations.get(id) else {
            return Err(UsageError::UnknownReservation(id.clone()).into());
        };
        let (meter, reserved, kind) = (res.meter.clone(), res.quantity, res.kind);
        store.counters(&keys_of(policy, &BTreeSet::from([&meter])), &mut book)?;
        let before = book.clone();
        let settled = match action {
            SettleAction::Commit { quantity } => book.commit(policy, id, quantity.unwrap_or(reserved), now)?,
            SettleAction::Release => book.release(policy, id, now)?,
        };
        store.save(&before, &book)?;
        let (outcome, quantity) = match settled.settlement {
            Settlement::Committed { quantity } => ("committed", quantity),
            Settlement::Released => ("released", 0),
        };
        match (kind, settled.settlement) {
            (ReservationKind::Provisional, Settlement::Committed { quantity }) => {
                let row = Outgoing {
                    event_id: id.as_str(),
                    meter: &meter,
                    quantity,
                    ts: now,
                    source: "reservation",
                    metadata: None,
                    ready_at: now,
                };
                self.outbox(store, &row)?;
            }
            (ReservationKind::Optimistic, Settlement::Committed { quantity }) => {
                store.sql.exec(
                    "UPDATE outbox SET quantity = ?, ready_at = ? WHERE event_id = ?",
                    vec![int(quantity), ms(now), text(id.as_str())],
                )?;
                self.outbox_written.set(true);
            }
            (ReservationKind::Optimistic, Settlement::Released) => {
                // Not counted: the unflushed event and its idempotency record go with it.
                store.sql.exec("DELETE FROM outbox WHERE event_id = ?", vec![text(id.as_str())])?;
                store.sql.exec("DELETE FROM idempotency WHERE id = ?", vec![text(id.as_str())])?;
            }
            (ReservationKind::Provisional, Settlement::Released) => {}
        }
        let after: Vec<LimitStatus> = book.overview(policy, now).into_iter().filter(|l| l.meter == meter).collect();
        if matches!(settled.settlement, Settlement::Committed { .. }) {
            self.fire_alerts(store, &after, now)?;
        }
        let limits: Vec<Value> = after.iter().map(|l| limit_json(l, now)).collect();
        let body = json!({"id": id.as_str(), "outcome": outcome, "meter": meter.as_str(), "quantity": quantity, "limits": limits});
        Ok(ok(body, policy))
    }

    fn report(
        &self,
        store: &Store,
        policy: &Policy,
        id: &EventId,
        usage: &[(MeterId, u64)],
        now: Timestamp,
    ) -> DoResult<DoReply> {
        let (known, unknown): (Vec<_>, Vec<_>) = usage.iter().partition(|(m, _)| policy.meter(m).is_some());
        // A replayed request (same Idempotency-Key) reports again: each (request, meter) counts once.
        let event_ids: Vec<String> = known.iter().map(|(m, _)| format!("{id}:{m}")).collect();
        let seen = store.idempotent(&event_ids.iter().map(String::as_str).collect::<Vec<_>>())?;
        let known: Vec<_> = known.into_iter().filter(|(m, _)| !seen.contains_key(&format!("{id}:{m}"))).collect();
        for (m, _) in &known {
            store.remember(&format!("{id}:{m}"), "accepted", now)?;
        }
        let meters: BTreeSet<&MeterId> = known.iter().map(|(m, _)| m).collect();
        let mut book = Book::default();
        store.counters(&keys_of(policy, &meters), &mut book)?;
        let before = book.clone();
        for (m, q) in &known {
            book.record(policy, m, *q, false, now)?;
        }
        store.save(&before, &book)?;
        let touched: Vec<LimitStatus> =
            book.overview(policy, now).into_iter().filter(|l| meters.contains(&l.meter)).collect();
        self.fire_alerts(store, &touched, now)?;
        for (m, q) in &known {
            let event_id = format!("{id}:{m}");
            let row = Outgoing {
                event_id: &event_id,
                meter: m,
                quantity: *q,
                ts: now,
                source: "origin",
                metadata: None,
                ready_at: now,
            };
            self.outbox(store, &row)?;
        }
        let recorded: Vec<Value> = known.iter().map(|(m, q)| json!({"meter": m.as_str(), "quantity": q})).collect();
        let ignored: Vec<&str> = unknown.iter().map(|(m, _)| m.as_str()).collect();
        Ok(ok(json!({"id": id.as_str(), "recorded": recorded, "ignored": ignored}), policy))
    }

    /// Usage events: each is accepted (counted and queued for the ledger), rejected (would pass
    /// a hard limit with `enforce`, or names an unknown meter), or a duplicate of an id seen in the
    /// idempotency window (counted once, answered with its original result).
    fn events(
        &self,
        store: &Store,
        policy: &Policy,
        events: &[UsageEvent],
        enforce: bool,
        now: Timestamp,
    ) -> DoResult<DoReply> {
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let seen = store.idempotent(&ids)?;
        let meters: BTreeSet<&MeterId> = events.iter().map(|e| &e.meter).collect();
        let mut book = Book::default();
        store.counters(&keys_of(policy, &meters), &mut book)?;
        let before = book.clone();
        let mut results = Vec::with_capacity(events.len());
        let mut accepted = Vec::new();
        for e in events {
            if let Some(original) = seen.get(e.id.as_str()) {
                results.push(json!({"id": e.id.as_str(), "status": "duplicate", "original_status": original}));
                continue;
            }
            let (status, reason) = match book.record(policy, &e.meter, e.quantity, enforce, now) {
                Ok(d) if d.allowed() => ("accepted", None),
                Ok(d) => {
                    let why = d.violated().map_or_else(String::new, |l| {
                        format!(
                            "would exceed the hard limit {} ({} used of {})",
                            l.policy,
                            l.used,
                            l.limit.unwrap_or(0)
                        )
                    });
                    ("rejected", Some(why))
                }
                Err(err) => ("rejected", Some(err.to_string())),
            };
            store.remember(e.id.as_str(), status, now)?;
            count_decision(store, &e.meter, if status == "accepted" { "allowed" } else { "refused" })?;
            log_decision(
                &self.env,
                &e.meter,
                e.quantity,
                status,
                if status == "accepted" { 200 } else { 422 },
                "events",
            );
            if status == "accepted" {
                accepted.push(e);
            }
            let mut r = json!({"id": e.id.as_str(), "status": status});
            if let (Some(reason), Some(o)) = (reason, r.as_object_mut()) {
                o.insert("reason".into(), json!(reason));
            }
            results.push(r);
        }
        store.save(&before, &book)?;
        let touched: Vec<LimitStatus> =
            book.overview(policy, now).into_iter().filter(|l| meters.contains(&l.meter)).collect();
        self.fire_alerts(store, &touched, now)?;
        for e in accepted {
            let ts = e.timestamp.map_or(now, Timestamp::from_millis);
            let row = Outgoing {
                event_id: e.id.as_str(),
                meter: &e.meter,
                quantity: e.quantity,
                ts,
                source: "event",
                metadata: e.metadata.as_ref(),
                ready_at: now,
            };
            self.outbox(store, &row)?;
        }
        Ok(ok(json!({"results": results}), policy))
    }

    async fn flush_reply(&self) -> DoReply {
        match self.flush().await {
            Ok((flushed, pending, _)) => DoReply {
                status: 200,
                headers: Vec::new(),
                body: json!({"flushed": flushed, "pending": pending}),
                plan: None,
                reserved: false,
            },
            Err(DoError::Storage(e)) => {
                let detail = format!("The ledger did not accept the batch; the events stay queued. ({e})");
                let mut body = problem_body(503, "ledger-unavailable", "Ledger unavailable", &detail);
                let pending = self
                    .store()
                    .and_then(|s| Ok(s.sql.exec("SELECT COUNT(*) AS n FROM outbox", None)?.one::<CountRow>()?.n));
                if let (Some(o), Ok(n)) = (body.as_object_mut(), pending) {
                    o.insert("pending".into(), json!(n));
                }
                DoReply { status: 503, headers: Vec::new(), body, plan: None, reserved: false }
            }
            Err(e) => e.into_reply(),
        }
    }

    /// Drains ready outbox rows to D1: `INSERT … ON CONFLICT DO NOTHING` (the rollup trigger
    /// counts only rows really inserted), then deletes exactly the rows D1 confirmed. Returns
    /// (flushed, still pending, when the next pending row is ready).
    async fn flush(&self) -> DoResult<(u64, u64, Option<Timestamp>)> {
        if self.ledger_busy.replace(true) {
            return Err(DoError::Busy);
        }
        let r = self.flush_rounds().await;
        self.ledger_busy.set(false);
        r
    }

    async fn flush_rounds(&self) -> DoResult<(u64, u64, Option<Timestamp>)> {
        let store = self.store()?;
        let loaded = self.loaded(&store)?;
        let db = self.env.d1("LEDGER")?;
        let mut flushed = 0u64;
        for _ in 0..ROUNDS_PER_FLUSH {
            let t = now();
            let rows: Vec<OutboxRow> = store
                .sql
                .exec(
                    "SELECT seq, event_id, meter, quantity, ts, source, metadata FROM outbox WHERE ready_at <= ? ORDER BY seq LIMIT ?",
                    vec![ms(t), SqlStorageValue::Integer(ROWS_PER_ROUND)],
                )?
                .to_array()?;
            if rows.is_empty() {
                break;
            }
            let stmts = insert_statements(&db, &loaded.org, &rows, t)?;
            let results = db.batch(stmts).await?;
            if let Some(bad) = results.iter().find(|r| !r.success()) {
                return Err(DoError::Storage(worker::Error::RustError(bad.error().unwrap_or_default())));
            }
            // Only after D1 confirmed: delete exactly these rows (new ones may have arrived).
            for chunk in rows.chunks(100) {
                let marks = vec!["?"; chunk.len()].join(",");
                let args: Vec<SqlStorageValue> = chunk.iter().map(|r| SqlStorageValue::Integer(r.seq)).collect();
                store.sql.exec(&format!("DELETE FROM outbox WHERE seq IN ({marks})"), args)?;
            }
            flushed = flushed.saturating_add(u64::try_from(rows.len()).unwrap_or(0));
        }
        let cutoff = now().saturating_sub_ms(IDEMPOTENCY_MS);
        store.sql.exec("DELETE FROM idempotency WHERE at < ?", vec![ms(cutoff)])?;
        let p: PendingRow = store.sql.exec("SELECT COUNT(*) AS n, MIN(ready_at) AS next FROM outbox", None)?.one()?;
        Ok((flushed, u64::try_from(p.n).unwrap_or(0), p.next.map(Timestamp::from_millis)))
    }

    /// Compares each fixed-window counter with what the ledger (plus the unflushed outbox) says
    /// was committed in that window since any reset; with `repair`, the counter takes the
    /// ledger's value.
    async fn reconcile(&self, repair: bool) -> DoResult<DoReply> {
        if self.ledger_busy.replace(true) {
            return Err(DoError::Busy);
        }
        let r = self.reconcile_inner(repair).await;
        self.ledger_busy.set(false);
        r
    }

    async fn reconcile_inner(&self, repair: bool) -> DoResult<DoReply> {
        let store = self.store()?;
        let loaded = self.loaded(&store)?;
        let policy = &loaded.policy;
        let t = now();
        let mut book = Book::default();
        store.all_counters(&mut book)?;
        let windows = book.window_usage(policy, t);
        let resets = reset_marks(&store)?;
        let db = self.env.d1("LEDGER")?;
        let mut ledger = Vec::with_capacity(windows.len());
        for w in &windows {
            let from =
                resets.get(w.meter.as_str()).or_else(|| resets.get("*")).copied().unwrap_or(0).max(w.start.millis());
            let to = w.end.map_or(u64::MAX >> 11, Timestamp::millis);
            let agg = policy.meter(&w.meter).map_or(Aggregation::Sum, |m| m.aggregation);
            let row: Option<LedgerAgg> = db
                .prepare(
                    "SELECT COALESCE(SUM(quantity), 0) AS total, COALESCE(MAX(quantity), 0) AS peak, \
                     (SELECT quantity FROM usage_events WHERE org_id = ?1 AND meter = ?2 AND ts >= ?3 AND ts < ?4 \
                      ORDER BY ts DESC, event_id DESC LIMIT 1) AS last, MAX(ts) AS last_ts \
                     FROM usage_events WHERE org_id = ?1 AND meter = ?2 AND ts >= ?3 AND ts < ?4",
                )
                .bind(&[
                    JsValue::from_str(loaded.org.as_str()),
                    JsValue::from_str(w.meter.as_str()),
                    js_int(from).map_err(|e| DoError::Storage(worker::Error::RustError(e.to_string())))?,
                    js_int(to).map_err(|e| DoError::Storage(worker::Error::RustError(e.to_string())))?,
                ])?
                .first(None)
                .await?;
            ledger.push((from, to, agg, row.unwrap_or_default()));
        }
        // From here on synchronous: re-read counters and the outbox, compare, repair.
        let t = now();
        let mut book = Book::default();
        store.all_counters(&mut book)?;
        let before = book.clone();
        let current = book.window_usage(policy, t);
        let mut limits = Vec::new();
        let mut total_drift: i128 = 0;
        for (w, (from, to, agg, l)) in windows.iter().zip(&ledger) {
            let Some(now_w) = current.iter().find(|c| c.key == w.key && c.start == w.start) else { continue };
            let queued: LedgerAgg = store
                .sql
                .exec(
                    "SELECT COALESCE(SUM(quantity), 0) AS total, COALESCE(MAX(quantity), 0) AS peak, \
                     (SELECT quantity FROM outbox WHERE meter = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts DESC, seq DESC LIMIT 1) AS last, \
                     MAX(ts) AS last_ts FROM outbox WHERE meter = ?1 AND ts >= ?2 AND ts < ?3",
                    vec![text(w.meter.as_str()), int(*from), int(*to)],
                )?
                .one()?;
            let expected = match agg {
                Aggregation::Sum => l.total.saturating_add(queued.total),
                Aggregation::Max => l.peak.max(queued.peak),
                Aggregation::Latest => {
                    if queued.last_ts.unwrap_or(0) >= l.last_ts.unwrap_or(0) && queued.last.is_some() {
                        queued.last.unwrap_or(0)
                    } else {
                        l.last.unwrap_or(0)
                    }
                }
            };
            let drift = i128::from(now_w.used) - i128::from(expected);
            total_drift = total_drift.saturating_add(drift.abs());
            if repair && drift != 0 {
                book.repair(policy, &w.key, expected, t);
            }
            limits.push(json!({
                "policy": w.key, "meter": w.meter.as_str(), "window_start": w.start.rfc3339(),
                "window_end": w.end.map(Timestamp::rfc3339), "counter": now_w.used, "ledger": match agg {
                    Aggregation::Sum => l.total, Aggregation::Max => l.peak, Aggregation::Latest => l.last.unwrap_or(0) },
                "outbox": queued.total, "expected": expected, "drift": i64::try_from(drift).unwrap_or(i64::MAX),
                "repaired": repair && drift != 0,
            }));
        }
        store.save(&before, &book)?;
        // The ledger's health travels with the reconciliation, for the cron's gauges.
        let outbox_pending = store.sql.exec("SELECT COUNT(*) AS n FROM outbox", None)?.one::<CountRow>()?.n;
        let flush_failures = self.meta("flush_failures")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let decisions: Vec<DecisionCount> =
            store.sql.exec("SELECT meter, outcome, n FROM decisions ORDER BY meter, outcome", None)?.to_array()?;
        let body = json!({"org_id": loaded.org.as_str(), "checked_at": t.rfc3339(), "repair": repair,
                          "total_drift": u64::try_from(total_drift).unwrap_or(u64::MAX), "limits": limits,
                          "outbox_pending": outbox_pending, "flush_failures": flush_failures, "decisions": decisions});
        Ok(ok(body, policy))
    }
}

#[derive(Debug, Deserialize, Serialize)]
struct DecisionCount {
    meter: String,
    outcome: String,
    n: u64,
}

#[derive(Debug, Default, Deserialize)]
struct LedgerAgg {
    total: u64,
    peak: u64,
    last: Option<u64>,
    last_ts: Option<u64>,
}

/// When each meter (or `*`, every meter) was last reset, in ms.
fn reset_marks(store: &Store) -> DoResult<BTreeMap<String, u64>> {
    let rows: Vec<StateRow> = store
        .sql
        .exec("SELECT substr(key, 7) AS key, value AS state FROM meta WHERE key LIKE 'reset:%'", None)?
        .to_array()?;
    Ok(rows.into_iter().filter_map(|r| r.state.parse().ok().map(|v| (r.key, v))).collect())
}

/// Multi-row inserts of outbox rows into the ledger, within D1's bound-parameter limit.
fn insert_statements(
    db: &worker::D1Database,
    org: &OrgId,
    rows: &[OutboxRow],
    recorded: Timestamp,
) -> DoResult<Vec<D1PreparedStatement>> {
    let conv = |e: super::error::EdgeError| DoError::Storage(worker::Error::RustError(e.to_string()));
    let mut out = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO usage_events (org_id, event_id, meter, quantity, ts, day, source, metadata, recorded_at) \
             VALUES {values} ON CONFLICT (org_id, event_id) DO NOTHING"
        );
        let mut args = Vec::with_capacity(chunk.len().saturating_mul(9));
        for r in chunk {
            args.extend([
                JsValue::from_str(org.as_str()),
                JsValue::from_str(&r.event_id),
                JsValue::from_str(&r.meter),
                js_int(r.quantity).map_err(conv)?,
                js_int(r.ts).map_err(conv)?,
                JsValue::from_str(&Timestamp::from_millis(r.ts).date().to_string()),
                JsValue::from_str(&r.source),
                r.metadata.as_deref().map_or(JsValue::NULL, JsValue::from_str),
                js_int(recorded.millis()).map_err(conv)?,
            ]);
        }
        out.push(db.prepare(sql).bind(&args)?);
    }
    Ok(out)
}

/// Settles up to `SWEEP_BATCH` expired reservations.
fn sweep(store: &Store, policy: &Policy, now: Timestamp) -> DoResult<()> {
    let mut book = Book::default();
    store.reservations(
        "SELECT id AS key, state FROM reservations WHERE expires <= ? ORDER BY expires LIMIT ?",
        vec![ms(now), SqlStorageValue::Integer(SWEEP_BATCH)],
        &mut book,
    )?;
    if book.reservations.is_empty() {
        return Ok(());
    }
    let meters: BTreeSet<&MeterId> = book.reservations.values().map(|r| &r.meter).collect();
    let keys = keys_of(policy, &meters);
    let mut full = Book { counters: BTreeMap::default(), reservations: book.reservations.clone() };
    store.counters(&keys, &mut full)?;
    let before = full.clone();
    full.expire(policy, now);
    store.save(&before, &full)
}

fn overview(store: &Store, loaded: &Loaded, now: Timestamp) -> DoResult<Value> {
    let mut book = Book::default();
    store.all_counters(&mut book)?;
    let limits: Vec<Value> = book.overview(&loaded.policy, now).iter().map(|l| limit_json(l, now)).collect();
    let count = |q: &str| -> DoResult<i64> { Ok(store.sql.exec(q, None)?.one::<CountRow>()?.n) };
    Ok(json!({
        "org_id": loaded.org.as_str(),
        "plan": loaded.policy.plan.as_str(),
        "on_failure": loaded.policy.on_failure.as_str(),
        "billing_anchor": loaded.policy.billing_anchor.map(|d| d.to_string()),
        "limits": limits,
        "open_reservations": count("SELECT COUNT(*) AS n FROM reservations")?,
        "active_keys": count("SELECT COUNT(*) AS n FROM keys")?,
        "outbox_pending": count("SELECT COUNT(*) AS n FROM outbox")?,
    }))
}

#[derive(Deserialize)]
struct AlertRow {
    id: String,
    payload: String,
    attempts: u32,
}

/// POSTs one alert; returns the status code (if any answer came) and an error text.
async fn post_webhook(
    url: &str,
    id: &str,
    payload: &str,
    secret: &[u8],
    t: Timestamp,
) -> (Option<u16>, Option<String>) {
    let headers = worker::Headers::new();
    let signature = crate::policy::keys::webhook_signature(secret, t.secs(), payload);
    for (k, v) in [
        ("Content-Type", "application/json"),
        ("User-Agent", "quotagate-webhooks/1"),
        ("X-Quota-Webhook-Id", id),
        ("X-Quota-Webhook-Signature", signature.as_str()),
    ] {
        if let Err(e) = headers.set(k, v) {
            return (None, Some(e.to_string()));
        }
    }
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post).with_headers(headers).with_body(Some(JsValue::from_str(payload)));
    let sent = match Request::new_with_init(url, &init) {
        Ok(req) => worker::Fetch::Request(req).send().await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(res) if (200..300).contains(&res.status_code()) => (Some(res.status_code()), None),
        Ok(res) => (Some(res.status_code()), Some(format!("receiver answered {}", res.status_code()))),
        Err(e) => (None, Some(e.to_string())),
    }
}

struct AlertAttempt<'a> {
    org: &'a OrgId,
    alert_id: &'a str,
    attempt: u32,
    url: &'a str,
    code: Option<u16>,
    error: Option<&'a str>,
    outcome: &'a str,
    at: Timestamp,
}

/// Every delivery attempt goes to D1's `alert_deliveries`.
async fn record_attempt(env: &Env, a: &AlertAttempt<'_>) -> DoResult<()> {
    let conv = |e: super::error::EdgeError| DoError::Storage(worker::Error::RustError(e.to_string()));
    env.d1("LEDGER")?
        .prepare(
            "INSERT OR IGNORE INTO alert_deliveries (org_id, alert_id, attempt, url, status_code, error, outcome, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&[
            JsValue::from_str(a.org.as_str()),
            JsValue::from_str(a.alert_id),
            JsValue::from(a.attempt),
            JsValue::from_str(a.url),
            a.code.map_or(JsValue::NULL, JsValue::from),
            a.error.map_or(JsValue::NULL, JsValue::from_str),
            JsValue::from_str(a.outcome),
            js_int(a.at.millis()).map_err(conv)?,
        ])?
        .run()
        .await?;
    Ok(())
}

/// The alerts fired in the limits' current windows, with their delivery state.
fn current_alerts(store: &Store, statuses: &[LimitStatus]) -> DoResult<Vec<Value>> {
    #[derive(Deserialize)]
    struct Row {
        policy: String,
        window_start: u64,
        payload: String,
        status: String,
        attempts: u32,
    }
    let rows: Vec<Row> = store
        .sql
        .exec("SELECT policy, window_start, payload, status, attempts FROM alerts ORDER BY fired_at, id", None)?
        .to_array()?;
    Ok(rows
        .into_iter()
        .filter(|r| statuses.iter().any(|l| l.policy == r.policy && l.window_start.millis() == r.window_start))
        .filter_map(|r| {
            let mut v: Value = serde_json::from_str(&r.payload).ok()?;
            let o = v.as_object_mut()?;
            o.insert("delivery".into(), json!({"status": r.status, "attempts": r.attempts}));
            Some(v)
        })
        .collect())
}

/// Counts a decision by meter and outcome, in the same synchronous step as the decision.
fn count_decision(store: &Store, meter: &MeterId, outcome: &str) -> DoResult<()> {
    store.sql.exec(
        "INSERT INTO decisions (meter, outcome, n) VALUES (?, ?, 1) ON CONFLICT (meter, outcome) DO UPDATE SET n = n + 1",
        vec![text(meter.as_str()), text(outcome)],
    )?;
    Ok(())
}

/// One JSON log line per decision made here (the Worker logs proxied ones).
fn log_decision(env: &Env, meter: &MeterId, quantity: u64, outcome: &str, status: u16, source: &str) {
    if !super::platform::decision_log(env).wants(outcome) {
        return;
    }
    worker::console_log!(
        "{}",
        json!({"msg": "decision", "meter": meter.as_str(), "quantity": quantity, "outcome": outcome, "status": status, "source": source})
    );
}
