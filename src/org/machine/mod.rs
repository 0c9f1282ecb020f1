//! `OrgMachine`: one org's rules as a deterministic state machine (the quinn-proto pattern).
//!
//! The Durable Object asks `needs_*` what to load for a message, loads it into a `Snapshot`,
//! calls `step_*`, applies the returned `Writes`, arms its alarm for `wake`, and replies. The
//! machine owns authorisation, replays, the ledger buckets and their sealed batches, audit rows,
//! the in-memory holds a failed origin call releases, provisional reservations and their expiry,
//! alert crossings, decision counts, flush timing and backoff, plan refresh and report times,
//! the usage API's own limit and the reconciliation arithmetic. It keeps in memory only what it
//! is the single writer of (config, key hashes, reset marks, buckets, sequence numbers, wake-up
//! times, unsaved counts), plus the holds and the API allowance, which are memory only by
//! design. This file holds the machine and its dispatch; `ops` the org operations' rules,
//! `reconcile` the comparison with the ledger, `api` the usage API's limit. It must never do
//! I/O, read a clock or import `worker`; `now` is always an argument.

mod api;
mod error;
mod keys;
mod lease;
mod ledger;
mod levels;
mod ops;
mod reconcile;

pub use error::OrgError;
pub use levels::LimitLevel;
pub use reconcile::{ReconcileWindow, Repair};

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::{json, Value};

use self::ops::{Cx, Held};
use super::buckets::Buckets;
use super::io::{AlertView, Boot, Need, SeenKey, Snapshot, Tallies, Writes};
use super::msg::{AdminOp, Caller, DecideKind, KeyHash, OrgOp, OrgReply, StoredConfig};
use super::rules::{decode_counters, encode_counters, Wake, COUNTS_EVERY_MS, IDEMPOTENCY_MS};
use crate::policy::{
    Book, EventId, LimitStatus, MeterId, OrgId, OrgTerms, Plan, Policy, ReservationKind, ReserveAs, Timestamp,
};
use crate::telemetry::{DecisionLine, Outcome};
use crate::wire::{limit_json, status_json, usage_json};

/// A step's result: the answer, what to write, and the decision log lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub reply: OrgReply,
    pub writes: Writes,
    pub log: Vec<DecisionLine>,
}

#[derive(Debug, Clone)]
struct Loaded {
    org: OrgId,
    policy: Policy,
    webhook_url: Option<String>,
    customer: Option<String>,
    plan_version: u64,
    shard: u32,
    /// As stored: a newer plan version is adopted by re-running it with the new plan.
    config: StoredConfig,
}

/// One org's machine.
#[derive(Debug, Clone)]
pub struct OrgMachine {
    /// Shared, not cloned, by each step: the policy is read on every decision.
    cfg: Option<Rc<Loaded>>,
    keys: keys::Keys,
    resets: BTreeMap<String, Timestamp>,
    next_seq: u64,
    /// The highest sequence storage knows was handed out.
    seq_saved: u64,
    wake: Wake,
    flush_failures: u32,
    /// Decision counts not yet saved: (meter, outcome) → n.
    counts: BTreeMap<(MeterId, Outcome), u64>,
    /// Usage on its way to D1, aggregated (also in storage: the machine is its single writer).
    ledger: Buckets,
    epoch: u64,
    config_at: Option<Timestamp>,
    flush_every_ms: u64,
    last_flush: Option<Timestamp>,
    /// Proxied requests whose units a failed origin call may still give back, by token, in
    /// token order (which is admission order). Memory only: nothing per request is stored.
    held: BTreeMap<u64, Held>,
    next_token: u64,
    /// Provisional reservations open in storage (at most `MAX_OPEN_RESERVATIONS`).
    open_reservations: u64,
    /// When this instance last learned its plan's current version from D1.
    plan_checked: Option<Timestamp>,
    plan_refresh_ms: u64,
    report_every_ms: u64,
    last_report: Option<Timestamp>,
    /// The levels the last report wrote to D1 (in memory: a restarted object writes them again).
    published_levels: Option<Vec<LimitLevel>>,
    /// The usage API's own per-org limit (memory only).
    api: Option<api::ApiLimiter>,
    /// Open leases by hold token: what they hold until their deadline (memory only; a lost
    /// instance's leases stay counted, which strands units but never admits past a limit).
    leases: BTreeMap<u64, lease::OpenLease>,
    /// Recent lease asks by (key, meter): the adaptive switch (in memory).
    demand: BTreeMap<KeyHash, BTreeMap<MeterId, lease::Demand>>,
    /// Units of leases never closed (memory only, like the leases).
    written_off: Vec<lease::WrittenOff>,
}

fn parse_config(cfg: &StoredConfig) -> Result<Loaded, OrgError> {
    let plan = Plan::parse(&cfg.plan_id, &cfg.plan)?;
    let terms = OrgTerms::parse(cfg.billing_anchor.as_ref(), cfg.overrides.as_ref(), &plan)?;
    Ok(Loaded {
        org: cfg.org.clone(),
        policy: Policy::new(&plan, &terms),
        webhook_url: cfg.webhook_url.clone(),
        customer: cfg.stripe_customer.clone(),
        plan_version: cfg.plan_version,
        shard: cfg.shard,
        config: cfg.clone(),
    })
}

impl OrgMachine {
    /// The machine of an instance, from what storage holds. A stored config that no longer
    /// validates leaves the org unconfigured (its org operations answer 404) rather than failing
    /// every message.
    pub fn boot(b: Boot) -> Self {
        let ledger = Buckets::from_rows(b.buckets, b.flush_seq);
        // Whatever a previous instance left unflushed goes at the first alarm.
        let ledger_due = (ledger.pending() > 0).then_some(Timestamp::from_millis(0));
        Self {
            cfg: b.config.as_ref().and_then(|c| parse_config(c).ok()).map(Rc::new),
            keys: keys::Keys::new(b.keys),
            resets: b.resets,
            next_seq: b.max_seq.saturating_add(1),
            seq_saved: b.seq_mark,
            wake: Wake {
                outbox_ready: b.outbox_ready,
                flush_retry: None,
                alert_due: b.alert_due,
                reservation_expires: b.reservation_expires,
                counts_due: None,
                ledger_due,
                report_due: None,
            },
            flush_failures: b.flush_failures,
            counts: BTreeMap::new(),
            ledger,
            epoch: b.epoch,
            config_at: b.config_at,
            flush_every_ms: b.flush_every_ms.max(1_000),
            last_flush: None,
            held: BTreeMap::new(),
            next_token: 1,
            open_reservations: b.open_reservations,
            plan_checked: None,
            plan_refresh_ms: b.plan_refresh_ms.max(1_000),
            report_every_ms: b.report_every_ms.max(1_000),
            last_report: None,
            published_levels: None,
            api: api::ApiLimiter::new(b.api_reads_per_minute, b.api_calls_per_minute),
            leases: BTreeMap::new(),
            demand: BTreeMap::new(),
            written_off: Vec::new(),
        }
    }

    /// When the alarm should next run.
    pub fn wake(&self) -> Option<Timestamp> {
        self.wake.next()
    }

    pub fn org(&self) -> Option<&OrgId> {
        self.cfg.as_ref().map(|c| &c.org)
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.cfg.as_ref().map(|c| &c.policy)
    }

    pub fn webhook_url(&self) -> Option<&str> {
        self.cfg.as_ref().and_then(|c| c.webhook_url.as_deref())
    }

    pub const fn flush_failures(&self) -> u32 {
        self.flush_failures
    }

    fn loaded(&self) -> Result<&Rc<Loaded>, OrgError> {
        self.cfg.as_ref().ok_or(OrgError::NotConfigured)
    }

    /// What `step` will need for an org operation: the counter rows of the meters it names and
    /// of every composite they are part of. Nothing for a caller the step will refuse: the key
    /// is checked before anything is loaded for the request.
    pub fn needs_org(&self, caller: &Caller, op: &OrgOp, now: Timestamp) -> Need {
        if self.check_caller(caller, op, now).is_err() {
            return Need::default();
        }
        let mut need = self.needs_org_own(op);
        if let Some(policy) = self.policy() {
            // A meter the plan does not know has no row to read, and asking for one would
            // remember its absence: a client's random names must create no state at all.
            need.meters.retain(|m| policy.meter(m).is_some());
            let composites: Vec<MeterId> =
                need.meters.iter().flat_map(|m| policy.composites_of(m).iter().cloned()).collect();
            need.meters.extend(composites);
        }
        need
    }

    fn needs_org_own(&self, op: &OrgOp) -> Need {
        let mut need = Need::default();
        match op {
            OrgOp::Decide { meter, id, kind, idempotency, .. } => {
                need.meters.insert(meter.clone());
                if idempotency.is_some() && matches!(kind, DecideKind::Proxy | DecideKind::ProxyReported) {
                    need.seen.push(SeenKey::Request(id.clone()));
                }
                // A reservation id in use is refused, not overwritten.
                if *kind == DecideKind::Reserve {
                    need.reservation = Some(id.clone());
                }
            }
            OrgOp::Events { events, .. } => {
                need.meters.extend(events.iter().map(|e| e.meter.clone()));
                need.seen.extend(events.iter().map(|e| SeenKey::Event(e.id.clone())));
            }
            OrgOp::Usage { short } => {
                need.all_counters = true;
                need.alerts = !short;
            }
            OrgOp::Settle { id, .. } => {
                need.reservation = Some(id.clone());
                // The reservation's meter is known only once it is loaded: load every counter.
                need.all_counters = true;
            }
            OrgOp::Release { held, .. } => {
                if let Some(h) = self.held.get(held) {
                    need.meters.insert(h.meter.clone());
                }
            }
            OrgOp::Lease { meter, .. } => {
                need.meters.insert(meter.clone());
            }
            OrgOp::Report { id, usage } => {
                need.meters.extend(usage.iter().map(|(m, _)| m.clone()));
                need.seen.push(SeenKey::Request(id.clone()));
                need.seen.extend(usage.iter().map(|(m, _)| SeenKey::Reported(id.clone(), m.clone())));
            }
            OrgOp::Forget { .. } | OrgOp::Gate => {}
        }
        need
    }

    /// What `step_admin` will need.
    pub fn needs_admin(op: &AdminOp) -> Need {
        match op {
            AdminOp::Configure(_) | AdminOp::Reset { .. } => Need { all_counters: true, ..Need::default() },
            AdminOp::State => Need { all_counters: true, tallies: true, ..Need::default() },
            AdminOp::AddKey(_) | AdminOp::RollKey { .. } | AdminOp::RevokeKey { .. } | AdminOp::Keys => Need::default(),
        }
    }

    /// What the alarm's `tick` needs: expired provisional reservations, if any are due.
    pub fn needs_tick(&self, now: Timestamp) -> Need {
        let due = self.wake.reservation_expires.is_some_and(|t| t <= now);
        Need { expired: due, all_counters: due, ..Need::default() }
    }

    /// Whether `caller` may run `op` at `now`; for a key, until when (its expiry, if it has one).
    fn check_caller(&self, caller: &Caller, op: &OrgOp, now: Timestamp) -> Result<Option<Timestamp>, OrgError> {
        if !op.allows(caller) {
            return Err(OrgError::Unauthorized);
        }
        // The key is checked before anything else, so an unknown org answers like a wrong key,
        // and so does an expired key.
        match caller {
            Caller::Key(hash) => self.keys.active(hash, now).map(|k| k.expires_at).ok_or(OrgError::Unauthorized),
            Caller::Gateway | Caller::Admin | Caller::Binding => Ok(None),
        }
    }

    /// Carries out an org operation: synchronous, from the snapshot to the writes.
    pub fn step_org(&mut self, caller: &Caller, op: OrgOp, snap: Snapshot, now: Timestamp) -> Result<Step, OrgError> {
        let key_until = self.check_caller(caller, &op, now)?;
        let loaded = Rc::clone(self.loaded()?);
        // A key's first use of a day is written (its listing shows the day); later uses are not.
        let used = match caller {
            Caller::Key(hash) => self.keys.touch(hash, now),
            Caller::Gateway | Caller::Admin | Caller::Binding => None,
        };
        // The usage API's own limit, for keys (not the admin API), after the key is known good
        // and before any work.
        if let (Caller::Key(_) | Caller::Binding, Some(class), Some(api)) = (caller, op.api_class(), self.api.as_mut())
        {
            if let Some(refused) = api.admit(class, loaded.policy.plan.as_str(), now) {
                let writes = Writes { key_used: used, ..Writes::default() };
                return Ok(Step { reply: refused, writes, log: Vec::new() });
            }
        }
        let mut cx = Cx::new(&loaded, snap, now)?;
        cx.key_until = key_until;
        if !self.leases.is_empty() || !self.written_off.is_empty() {
            let unspent = self.unspent();
            cx.unspent_after.clone_from(&unspent);
            cx.unspent_before = unspent;
        }
        cx.writes.key_used = used;
        let reply = match op {
            OrgOp::Decide { meter, quantity, kind, id, ttl_ms, idempotency, lease, recalled } => {
                let replayable = idempotency.is_some();
                if loaded.policy.meter(&meter).is_some() {
                    self.count_n(&meter, Outcome::Refused, recalled, now);
                }
                // Adaptive leases: an admitted request of fixed cost from a key busy enough on the
                // meter (`min_requests` within 2 s) also takes a lease for the next ones (a
                // replayable one does not: its replays must be seen here), named after the
                // request (unique: the holder's id). A quieter key is decided strictly; a plan
                // with leases off says so, and the holder stops asking.
                let leasing = lease && !replayable && kind == DecideKind::Proxy;
                // Only a meter the plan declares is counted: a name nobody declared keeps nothing.
                let known = loaded.policy.meter(&meter).is_some();
                let busy = match (leasing && known, loaded.policy.lease, caller) {
                    (true, Some(rules), Caller::Key(hash)) => {
                        self.busy_enough(hash, &meter, rules.min_requests.get(), now)
                    }
                    _ => false,
                };
                let lease_id = busy.then(|| EventId::parse(&format!("{id}.lease")).ok()).flatten();
                let how = ReserveAs { id, kind: ReservationKind::Provisional, ttl_ms };
                let mut reply = self.decide(&mut cx, &meter, quantity, kind, how, idempotency)?;
                if let (Some(_), Some(lease_id)) = (reply.held, lease_id) {
                    let want = quantity.saturating_mul(crate::policy::lease::FIRST_WANT);
                    reply.lease = self.grant(&mut cx, &meter, (quantity, want), lease_id);
                }
                reply.no_lease = leasing && loaded.policy.lease.is_none();
                reply
            }
            OrgOp::Events { events, enforce } => self.events(&mut cx, &events, enforce),
            OrgOp::Usage { short } => {
                let statuses = cx.book.overview(&loaded.policy, now);
                let body = if short {
                    status_json(&loaded.org, &loaded.policy, &statuses)
                } else {
                    usage_json(&loaded.org, &loaded.policy, &statuses, &alerts_view(&cx.snap.alerts, &statuses), now)
                };
                OrgReply::ok(body, Some(loaded.policy.plan.to_string()))
            }
            OrgOp::Settle { id, action } => self.settle(&mut cx, &id, action)?,
            OrgOp::Release { id, held, quantity } => self.release(&mut cx, &id, held, quantity)?,
            OrgOp::Lease { meter, cost, want, id, closing } => {
                self.lease(&mut cx, &meter, (cost, want), id, closing.as_ref())?
            }
            OrgOp::Report { id, usage } => self.report(&mut cx, &id, &usage),
            // Only a request that reached the org counted anything; this one gave its key up.
            OrgOp::Forget { id } => {
                cx.writes.forget.push(SeenKey::Request(id));
                OrgReply::ok(Value::Null, Some(loaded.policy.plan.to_string()))
            }
            OrgOp::Gate => OrgReply::ok(json!({"allowed": true}), Some(loaded.policy.plan.to_string())),
        };
        Ok(cx.finish(self, reply))
    }

    /// Carries out an admin operation.
    pub fn step_admin(&mut self, op: AdminOp, snap: &Snapshot, now: Timestamp) -> Result<Step, OrgError> {
        let mut writes = Writes::default();
        let reply = match op {
            AdminOp::AddKey(new) => {
                let row = self.keys.add(new);
                let reply = OrgReply::ok(json!({"key_id": row.key_id}), None);
                writes.key_put.push(row);
                reply
            }
            AdminOp::RollKey { old, old_expires_at, new } => {
                // The old key first: a roll of a key this org does not have changes nothing.
                let old_row =
                    self.keys.expire(&old, old_expires_at).ok_or_else(|| OrgError::UnknownKey(old.clone()))?;
                let new_row = self.keys.add(new);
                let reply = OrgReply::ok(
                    json!({"key_id": new_row.key_id, "rolled": old_row.key_id,
                           "old_expires_at": old_row.expires_at.map(Timestamp::rfc3339)}),
                    None,
                );
                writes.key_put.extend([old_row, new_row]);
                reply
            }
            AdminOp::RevokeKey { key_id } => {
                let removed = self.keys.revoke(&key_id);
                writes.key_delete = Some(key_id.clone());
                OrgReply::ok(json!({"key_id": key_id, "removed": removed}), None)
            }
            AdminOp::Keys => OrgReply::ok(json!({"keys": self.keys.view()}), None),
            AdminOp::Configure(cfg) => {
                // Validated before storing: a config that does not parse never reaches storage.
                let loaded = parse_config(&cfg)?;
                let book = book_of(&snap.rows)?;
                let meters: BTreeSet<&MeterId> = loaded.policy.limits.iter().map(crate::policy::Limit::meter).collect();
                for m in snap.rows.keys() {
                    if !meters.iter().any(|k| k.as_str() == m) {
                        writes.drop_counters.push(m.clone());
                    }
                }
                // Counters of limits the new policy keeps carry over; the others go.
                for m in meters {
                    let row = meter_row(&loaded.policy, &book, m);
                    if snap.rows.get(m.as_str()) != Some(&row) {
                        writes.counters.push((m.to_string(), row));
                    }
                }
                writes.config = Some(cfg);
                // Usage from now on goes to new buckets, which carry the new plan.
                writes.meta.push(("config_at".to_owned(), now.millis().to_string()));
                self.config_at = Some(now);
                self.plan_checked = Some(now);
                // A new plan moves the levels: the report publishes them. A new org has none yet
                // (its first usage schedules its first report).
                if self.cfg.replace(Rc::new(loaded)).is_some() {
                    self.report_after_change(now);
                }
                let state = self.state_json(&book, snap.tallies, now)?;
                OrgReply::ok(state, self.policy().map(|p| p.plan.to_string()))
            }
            AdminOp::State => {
                let book = book_of(&snap.rows)?;
                let state = self.state_json(&book, snap.tallies, now)?;
                OrgReply::ok(state, self.policy().map(|p| p.plan.to_string()))
            }
            AdminOp::Reset { meter } => {
                let loaded = Rc::clone(self.loaded()?);
                let mut book = book_of(&snap.rows)?;
                book.reset(&loaded.policy, meter.as_ref(), now);
                let mark = meter.as_ref().map_or("*", MeterId::as_str).to_owned();
                // Reconciliation counts the ledger from the reset on, and a release of usage
                // admitted before it gives nothing back.
                writes.meta.push((format!("reset:{mark}"), now.millis().to_string()));
                self.resets.insert(mark, now);
                let meters: BTreeSet<&MeterId> = loaded.policy.limits.iter().map(crate::policy::Limit::meter).collect();
                for m in meters.into_iter().filter(|m| meter.as_ref().is_none_or(|x| x == *m)) {
                    writes.counters.push((m.to_string(), meter_row(&loaded.policy, &book, m)));
                }
                self.report_after_change(now);
                let state = self.state_json(&book, snap.tallies, now)?;
                OrgReply::ok(state, Some(loaded.policy.plan.to_string()))
            }
        };
        Ok(Step { reply, writes, log: Vec::new() })
    }

    /// The alarm's synchronous part: expired provisional reservations go back to the org, and
    /// decision counts are saved.
    pub fn tick(&mut self, snap: Snapshot, now: Timestamp) -> Result<Writes, OrgError> {
        let mut writes = Writes::default();
        if let Some(loaded) = self.cfg.as_ref().map(Rc::clone) {
            if !snap.reservations.is_empty() {
                let mut book = book_of(&snap.rows)?;
                let mut meters = BTreeSet::new();
                for r in snap.reservations {
                    meters.insert(r.meter.clone());
                    writes.reservation_delete.push(r.id.clone());
                    self.open_reservations = self.open_reservations.saturating_sub(1);
                    book.reservations.insert(r.id.clone(), r);
                }
                // Provisional reservations are released; nothing else is ever in this table.
                book.expire(&loaded.policy, now);
                for m in &meters {
                    let row = meter_row(&loaded.policy, &book, m);
                    if snap.rows.get(m.as_str()) != Some(&row) {
                        writes.counters.push((m.to_string(), row));
                    }
                }
            }
            if self.wake.reservation_expires.is_some_and(|t| t <= now) {
                self.wake.reservation_expires = snap.next_expiry;
            }
        }
        writes.counts = self.take_counts();
        Ok(writes)
    }

    fn take_counts(&mut self) -> Vec<(String, &'static str, u64)> {
        self.wake.counts_due = None;
        std::mem::take(&mut self.counts).into_iter().map(|((m, o), n)| (m.to_string(), o.as_str(), n)).collect()
    }

    /// Counts that could not be saved (the write failed) come back for the next tick.
    pub fn restore_counts(&mut self, counts: Vec<(String, &'static str, u64)>, now: Timestamp) {
        for (m, o, n) in counts {
            let (Ok(m), Some(o)) = (MeterId::parse(&m), Outcome::parse(o)) else { continue };
            let c = self.counts.entry((m, o)).or_insert(0);
            *c = c.saturating_add(n);
        }
        self.count_due(now);
    }

    fn count(&mut self, meter: &MeterId, outcome: Outcome, now: Timestamp) {
        self.count_n(meter, outcome, 1, now);
    }

    fn count_n(&mut self, meter: &MeterId, outcome: Outcome, n: u64, now: Timestamp) {
        if n == 0 {
            return;
        }
        let c = self.counts.entry((meter.clone(), outcome)).or_insert(0);
        *c = c.saturating_add(n);
        self.count_due(now);
    }

    fn count_due(&mut self, now: Timestamp) {
        if self.wake.counts_due.is_none() && !self.counts.is_empty() {
            self.wake.counts_due = Some(now.saturating_add_ms(COUNTS_EVERY_MS));
        }
    }

    /// Unsaved counts, for the state view and metrics: what storage holds plus these.
    pub fn unsaved_counts(&self) -> impl Iterator<Item = (&MeterId, Outcome, u64)> {
        self.counts.iter().map(|((m, o), n)| (m, *o, *n))
    }

    /// Idempotency records older than this may go.
    pub const fn idempotency_cutoff(now: Timestamp) -> Timestamp {
        now.saturating_sub_ms(IDEMPOTENCY_MS)
    }

    fn state_json(&self, book: &Book, tallies: Tallies, now: Timestamp) -> Result<Value, OrgError> {
        let loaded = self.loaded()?;
        let limits: Vec<Value> = book.overview(&loaded.policy, now).iter().map(|l| limit_json(l, now)).collect();
        Ok(json!({
            "org_id": loaded.org.as_str(),
            "plan": loaded.policy.plan.as_str(),
            "on_failure": loaded.policy.on_failure.as_str(),
            "billing_anchor": loaded.policy.billing_anchor.map(|d| d.to_string()),
            "limits": limits,
            "open_reservations": tallies.open_reservations,
            "active_keys": self.keys.active_count(now),
            "outbox_pending": tallies.outbox_pending,
            "ledger_pending": self.ledger.pending_events(),
            "plan_version": loaded.plan_version,
            "ledger_shard": loaded.shard,
            "open_leases": self.open_leases(now),
            // What one org holds, whatever its clients send: each is bounded (ARCHITECTURE.md).
            "held_requests": self.held.len(),
            "counter_rows": tallies.counter_rows,
            "decision_series": tallies.decision_series,
            "idempotency_records": tallies.idempotency_records,
        }))
    }
}

/// The book of every loaded counter row.
fn book_of(rows: &BTreeMap<String, String>) -> Result<Book, OrgError> {
    let mut book = Book::default();
    for (meter, row) in rows {
        let counters = decode_counters(row).ok_or_else(|| OrgError::Corrupt(format!("counter row of {meter}")))?;
        book.counters.extend(counters);
    }
    Ok(book)
}

/// A meter's counter row as the book holds it now: only the policy's current limits.
fn meter_row(policy: &Policy, book: &Book, meter: &MeterId) -> String {
    encode_counters(policy.limits_for(meter).filter_map(|l| book.counters.get_key_value(l.policy_name())))
}

/// The alerts fired in the limits' current windows, with their delivery state.
fn alerts_view(alerts: &[AlertView], statuses: &[LimitStatus]) -> Vec<Value> {
    alerts
        .iter()
        .filter(|r| statuses.iter().any(|l| *l.policy == *r.policy && l.window_start.millis() == r.window_start))
        .filter_map(|r| {
            let mut v: Value = serde_json::from_str(&r.payload).ok()?;
            v.as_object_mut()?.insert("delivery".into(), json!({"status": r.status, "attempts": r.attempts}));
            Some(v)
        })
        .collect()
}
