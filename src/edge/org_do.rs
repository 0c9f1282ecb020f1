//! `OrgQuota`: the Durable Object that is the single writer of one org's counters.
//!
//! It translates between its `SQLite` storage and the policy core, and nothing else. Every message
//! is handled by `handle`, which is synchronous from the first read to the last write: load →
//! decide (core) → persist → reply, with no `.await` in between, so the output gate and
//! `SQLite`'s implicit transaction make each decision atomic. It never answers from memory alone
//! (the parsed policy is cached, but counters are always read from storage), never calls the
//! origin, and never panics: failures become a `DoReply`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker::{
    durable_object, DurableObject, Env, Request, Response, Result, SqlStorage, SqlStorageValue,
    State,
};

use super::error::json_response;
use super::platform::now;
use crate::policy::engine::DecodeError;
use crate::policy::headers::{decision_headers, refusal_problem};
use crate::policy::{
    Book, Counter, EventId, MeterId, OrgId, OrgTerms, Plan, PlanError, PlanId, Policy, Reservation,
    ReservationKind, ReserveAs, Settlement, Timestamp, UsageError,
};
use crate::wire::{
    decision_json, limit_json, problem_body, usage_error_status, DecideKind, DoReply, DoRequest,
    SettleAction,
};

/// How many expired reservations one message settles; the rest wait for the next message.
const SWEEP_BATCH: i64 = 64;

/// The org's configuration as stored: the raw documents, re-validated whenever they are loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredConfig {
    org: OrgId,
    plan_id: PlanId,
    plan: Value,
    billing_anchor: Option<Value>,
    overrides: Option<Value>,
}

#[derive(Debug)]
struct Loaded {
    org: OrgId,
    policy: Policy,
}

/// The Durable Object layer's one error type; `into_reply` is its one mapping to an answer.
#[derive(Debug, thiserror::Error)]
enum DoError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("org is not configured")]
    NotConfigured,
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
                    body: crate::wire::unauthorized_body(),
                    plan: None,
                };
            }
            Self::NotConfigured => (
                404,
                "unknown-org",
                "Unknown org",
                "This org has no plan; PUT /_quota/admin/orgs/{org} first.".to_owned(),
            ),
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
                (
                    500,
                    "internal",
                    "Internal error",
                    "The org's quota state could not be read or written.".to_owned(),
                )
            }
        };
        DoReply {
            status,
            headers: Vec::new(),
            body: problem_body(status, kind, title, &detail),
            plan: None,
        }
    }
}

type DoResult<T> = std::result::Result<T, DoError>;

#[durable_object]
#[allow(missing_debug_implementations)] // `State` has no Debug
pub struct OrgQuota {
    state: State,
    migrated: Cell<bool>,
    loaded: RefCell<Option<Rc<Loaded>>>,
}

impl DurableObject for OrgQuota {
    fn new(state: State, _env: Env) -> Self {
        Self {
            state,
            migrated: Cell::new(false),
            loaded: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == "/ping" {
            let sql = self.state.storage().sql();
            let ok = sql.exec("SELECT 1 AS ok", None)?.one::<OneRow>()?.ok == 1;
            return json_response(
                200,
                &json!({"ok": ok, "storage": "sqlite"}),
                "application/json",
            );
        }
        // The only await: reading the message, before any state is touched.
        let reply = match req.json::<DoRequest>().await {
            Ok(msg) => self.handle(msg, now()).unwrap_or_else(DoError::into_reply),
            Err(e) => DoReply {
                status: 400,
                headers: Vec::new(),
                body: problem_body(400, "bad-message", "Bad message", &e.to_string()),
                plan: None,
            },
        };
        json_response(
            200,
            &serde_json::to_value(&reply).unwrap_or(Value::Null),
            "application/json",
        )
    }
}

#[derive(Deserialize)]
struct OneRow {
    ok: i64,
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

/// Synchronous access to the DO's tables.
struct Store {
    sql: SqlStorage,
}

fn text(s: &str) -> SqlStorageValue {
    SqlStorageValue::String(s.to_owned())
}

fn ms(t: Timestamp) -> SqlStorageValue {
    // Milliseconds since the epoch stay far below 2^53 until the year 287396.
    SqlStorageValue::Integer(i64::try_from(t.millis()).unwrap_or(i64::MAX))
}

impl Store {
    fn migrate(&self) -> Result<()> {
        for stmt in [
            "CREATE TABLE IF NOT EXISTS config (id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, state TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS reservations (id TEXT PRIMARY KEY, meter TEXT NOT NULL, expires INTEGER NOT NULL, state TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS reservations_expires ON reservations(expires)",
            "CREATE TABLE IF NOT EXISTS keys (key_id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE)",
        ] {
            self.sql.exec(stmt, None)?;
        }
        Ok(())
    }

    fn config(&self) -> DoResult<Option<StoredConfig>> {
        let rows: Vec<BodyRow> = self
            .sql
            .exec("SELECT body FROM config WHERE id = 1", None)?
            .to_array()?;
        rows.first()
            .map(|r| {
                serde_json::from_str(&r.body)
                    .map_err(|e| DoError::Corrupt(DecodeError::from_serde(&e)))
            })
            .transpose()
    }

    fn key_ok(&self, hash: &str) -> DoResult<bool> {
        let rows: Vec<OneRow> = self
            .sql
            .exec("SELECT 1 AS ok FROM keys WHERE hash = ?", vec![text(hash)])?
            .to_array()?;
        Ok(!rows.is_empty())
    }

    /// The counters with these keys.
    fn counters(&self, keys: &BTreeSet<String>, book: &mut Book) -> DoResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let marks = vec!["?"; keys.len()].join(",");
        let q = format!("SELECT key, state FROM counters WHERE key IN ({marks})");
        let rows: Vec<StateRow> = self
            .sql
            .exec(&q, keys.iter().map(|k| text(k)).collect::<Vec<_>>())?
            .to_array()?;
        for r in rows {
            book.counters.insert(r.key, Counter::decode(&r.state)?);
        }
        Ok(())
    }

    fn all_counters(&self, book: &mut Book) -> DoResult<()> {
        let rows: Vec<StateRow> = self
            .sql
            .exec("SELECT key, state FROM counters", None)?
            .to_array()?;
        for r in rows {
            book.counters.insert(r.key, Counter::decode(&r.state)?);
        }
        Ok(())
    }

    fn reservations(
        &self,
        query: &str,
        args: Vec<SqlStorageValue>,
        book: &mut Book,
    ) -> DoResult<()> {
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
        for id in before
            .reservations
            .keys()
            .filter(|id| !after.reservations.contains_key(*id))
        {
            self.sql.exec(
                "DELETE FROM reservations WHERE id = ?",
                vec![text(id.as_str())],
            )?;
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
}

fn keys_of(policy: &Policy, meters: &BTreeSet<&MeterId>) -> BTreeSet<String> {
    policy
        .limits
        .iter()
        .filter(|l| meters.contains(&l.meter))
        .map(crate::policy::Limit::policy_name)
        .collect()
}

fn ok(body: Value, plan: &Policy) -> DoReply {
    DoReply {
        status: 200,
        headers: Vec::new(),
        body,
        plan: Some(plan.plan.to_string()),
    }
}

impl OrgQuota {
    fn store(&self) -> DoResult<Store> {
        let store = Store {
            sql: self.state.storage().sql(),
        };
        if !self.migrated.get() {
            store.migrate()?;
            self.migrated.set(true);
        }
        Ok(store)
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
        let l = Rc::new(Loaded {
            org: cfg.org,
            policy: Policy::new(&plan, &terms),
        });
        *self.loaded.borrow_mut() = Some(Rc::clone(&l));
        Ok(l)
    }

    /// Every message, synchronously: no `.await` from the first read to the last write.
    fn handle(&self, msg: DoRequest, now: Timestamp) -> DoResult<DoReply> {
        let store = self.store()?;
        if let DoRequest::Configure {
            org,
            plan_id,
            plan,
            billing_anchor,
            overrides,
        } = msg
        {
            return self.configure(
                &store,
                StoredConfig {
                    org,
                    plan_id,
                    plan,
                    billing_anchor,
                    overrides,
                },
                now,
            );
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
                });
            }
            DoRequest::RevokeKey { key_id } => {
                let n = store
                    .sql
                    .exec("DELETE FROM keys WHERE key_id = ?", vec![text(&key_id)])?
                    .rows_written();
                return Ok(DoReply {
                    status: 200,
                    headers: Vec::new(),
                    body: json!({"key_id": key_id, "removed": n > 0}),
                    plan: None,
                });
            }
            _ => {}
        }
        // The key is checked before anything else, so an unknown org answers like a wrong key.
        let key_hash = match &msg {
            DoRequest::Decide { key_hash, .. } => Some(key_hash.as_str()),
            DoRequest::Settle { key_hash, .. } => key_hash.as_deref(),
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
            DoRequest::Decide {
                meter,
                quantity,
                kind,
                id,
                ttl_ms,
                ..
            } => decide(
                &store,
                policy,
                &meter,
                quantity,
                kind,
                ReserveAs {
                    id,
                    kind: ReservationKind::Optimistic,
                    ttl_ms,
                },
                now,
            ),
            DoRequest::Settle { id, action, .. } => settle(&store, policy, &id, action, now),
            DoRequest::Report { id, usage } => report(&store, policy, &id, &usage, now),
            DoRequest::Reset { meter } => {
                let mut book = Book::default();
                store.all_counters(&mut book)?;
                let before = book.clone();
                book.reset(policy, meter.as_ref(), now);
                store.save(&before, &book)?;
                Ok(ok(overview(&store, &loaded, now)?, policy))
            }
            DoRequest::State
            | DoRequest::Configure { .. }
            | DoRequest::AddKey { .. }
            | DoRequest::RevokeKey { .. } => Ok(ok(overview(&store, &loaded, now)?, policy)),
        }
    }

    fn configure(&self, store: &Store, cfg: StoredConfig, now: Timestamp) -> DoResult<DoReply> {
        // Validate before storing: a config that does not parse never reaches storage.
        let plan = Plan::parse(&cfg.plan_id, &cfg.plan)?;
        let terms = OrgTerms::parse(cfg.billing_anchor.as_ref(), cfg.overrides.as_ref(), &plan)?;
        let policy = Policy::new(&plan, &terms);
        let body = serde_json::to_string(&cfg)
            .map_err(|e| DoError::Corrupt(DecodeError::from_serde(&e)))?;
        store.sql.exec(
            "INSERT OR REPLACE INTO config (id, body) VALUES (1, ?)",
            vec![text(&body)],
        )?;
        // Counters of limits the new policy no longer has are dropped; the others carry over.
        let keep: BTreeSet<String> = policy
            .limits
            .iter()
            .map(crate::policy::Limit::policy_name)
            .collect();
        let mut book = Book::default();
        store.all_counters(&mut book)?;
        for k in book.counters.keys().filter(|k| !keep.contains(*k)) {
            store
                .sql
                .exec("DELETE FROM counters WHERE key = ?", vec![text(k)])?;
        }
        let loaded = Rc::new(Loaded {
            org: cfg.org,
            policy,
        });
        *self.loaded.borrow_mut() = Some(Rc::clone(&loaded));
        Ok(ok(overview(store, &loaded, now)?, &loaded.policy))
    }
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
    let mut full = Book {
        counters: std::collections::BTreeMap::default(),
        reservations: book.reservations.clone(),
    };
    store.counters(&keys, &mut full)?;
    let before = full.clone();
    full.expire(policy, now);
    store.save(&before, &full)
}

fn decide(
    store: &Store,
    policy: &Policy,
    meter: &MeterId,
    quantity: u64,
    kind: DecideKind,
    how: ReserveAs,
    now: Timestamp,
) -> DoResult<DoReply> {
    let mut book = Book::default();
    store.counters(&keys_of(policy, &BTreeSet::from([meter])), &mut book)?;
    let before = book.clone();
    let reservation_id = how.id.clone();
    let decision = match kind {
        DecideKind::Check => book.check(policy, meter, quantity, now)?,
        // Admitted while one unit remains: the overshoot is bounded by this request's cost.
        DecideKind::ProxyReported => book.check(policy, meter, 1, now)?,
        DecideKind::Proxy => book.reserve(policy, meter, quantity, how, now)?,
        DecideKind::Reserve => book.reserve(
            policy,
            meter,
            quantity,
            ReserveAs {
                kind: ReservationKind::Provisional,
                ..how
            },
            now,
        )?,
    };
    store.save(&before, &book)?;
    let headers: Vec<(String, String)> = decision_headers(&decision)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut reply = DoReply {
        status: 200,
        headers,
        body: decision_json(&decision),
        plan: Some(policy.plan.to_string()),
    };
    match kind {
        DecideKind::Proxy | DecideKind::ProxyReported => {
            if let Some(problem) = refusal_problem(
                &decision,
                policy.plan.as_str(),
                policy.upgrade_url.as_deref(),
            ) {
                reply.status = decision.status();
                reply.body = problem;
            }
        }
        DecideKind::Reserve => {
            if let (Some(r), Some(obj)) = (
                book.reservations.get(&reservation_id),
                reply.body.as_object_mut(),
            ) {
                obj.insert("reservation".into(), json!({"id": r.id.as_str(), "quantity": r.quantity, "expires_at": r.expires.rfc3339()}));
            }
        }
        DecideKind::Check => {}
    }
    Ok(reply)
}

fn settle(
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
    let meter = res.meter.clone();
    let reserved = res.quantity;
    store.counters(&keys_of(policy, &BTreeSet::from([&meter])), &mut book)?;
    let before = book.clone();
    let settled = match action {
        SettleAction::Commit { quantity } => {
            book.commit(policy, id, quantity.unwrap_or(reserved), now)?
        }
        SettleAction::Release => book.release(policy, id, now)?,
    };
    store.save(&before, &book)?;
    let (outcome, quantity) = match settled.settlement {
        Settlement::Committed { quantity } => ("committed", quantity),
        Settlement::Released => ("released", 0),
    };
    let limits: Vec<Value> = book
        .overview(policy, now)
        .iter()
        .filter(|l| l.meter == meter)
        .map(|l| limit_json(l, now))
        .collect();
    Ok(ok(
        json!({"id": id.as_str(), "outcome": outcome, "meter": meter.as_str(), "quantity": quantity, "limits": limits}),
        policy,
    ))
}

fn report(
    store: &Store,
    policy: &Policy,
    id: &EventId,
    usage: &[(MeterId, u64)],
    now: Timestamp,
) -> DoResult<DoReply> {
    let (known, unknown): (Vec<_>, Vec<_>) =
        usage.iter().partition(|(m, _)| policy.meter(m).is_some());
    let meters: BTreeSet<&MeterId> = known.iter().map(|(m, _)| m).collect();
    let mut book = Book::default();
    store.counters(&keys_of(policy, &meters), &mut book)?;
    let before = book.clone();
    for (m, q) in &known {
        book.record(policy, m, *q, false, now)?;
    }
    store.save(&before, &book)?;
    let recorded: Vec<Value> = known
        .iter()
        .map(|(m, q)| json!({"meter": m.as_str(), "quantity": q}))
        .collect();
    let ignored: Vec<&str> = unknown.iter().map(|(m, _)| m.as_str()).collect();
    Ok(ok(
        json!({"id": id.as_str(), "recorded": recorded, "ignored": ignored}),
        policy,
    ))
}

fn overview(store: &Store, loaded: &Loaded, now: Timestamp) -> DoResult<Value> {
    let mut book = Book::default();
    store.all_counters(&mut book)?;
    let limits: Vec<Value> = book
        .overview(&loaded.policy, now)
        .iter()
        .map(|l| limit_json(l, now))
        .collect();
    let open: Vec<OneRow> = store
        .sql
        .exec("SELECT COUNT(*) AS ok FROM reservations", None)?
        .to_array()?;
    let keys: Vec<OneRow> = store
        .sql
        .exec("SELECT COUNT(*) AS ok FROM keys", None)?
        .to_array()?;
    Ok(json!({
        "org_id": loaded.org.as_str(),
        "plan": loaded.policy.plan.as_str(),
        "on_failure": loaded.policy.on_failure.as_str(),
        "billing_anchor": loaded.policy.billing_anchor.map(|d| d.to_string()),
        "limits": limits,
        "open_reservations": open.first().map_or(0, |r| r.ok),
        "active_keys": keys.first().map_or(0, |r| r.ok),
    }))
}
