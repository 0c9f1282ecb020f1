//! `OrgMachine`: one org's rules as a deterministic state machine (the quinn-proto pattern).
//!
//! The Durable Object asks `needs` what to load for a message, loads it into a `Snapshot`,
//! calls `step`, applies the returned `Writes`, arms its alarm for `wake`, and replies. The
//! machine owns authorisation, replays, the outbox and its readiness, the optimistic
//! reservation that *is* an outbox row, provisional reservations and their expiry, alert
//! crossings, decision counts, flush backoff and the reconciliation arithmetic. It keeps in
//! memory only what it is the single writer of (config, key hashes, reset marks, the outbox
//! sequence, wake-up times, unsaved counts). It must never do I/O, read a clock or import
//! `worker`; `now` is always an argument.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::{json, Value};

use super::msg::{AdminOp, Caller, DecideKind, KeyHash, OrgOp, OrgReply, SettleAction, StoredConfig};
use super::rules::{
    crossings, decode_counters, earliest, encode_counters, expected, flush_backoff_ms, ledger_figure, LedgerAgg,
    NewAlert, Wake, COUNTS_EVERY_MS, FLUSH_DELAY_MS, IDEMPOTENCY_MS,
};
use crate::policy::headers::{decision_headers, refusal_problem};
use crate::policy::{
    Aggregation, Book, Decision, EventId, LimitStatus, MeterId, OrgId, OrgTerms, Plan, PlanError, Policy, Reservation,
    ReservationKind, ReserveAs, Settlement, Timestamp, UsageError,
};
use crate::telemetry::{DecisionLine, Outcome};
use crate::wire::{
    decision_json, limit_json, problem_body, status_json, unauthorized_body, usage_error_status, usage_json, UsageEvent,
};

/// Why the machine could not carry out a message: its one error type, mapped to an answer by
/// `into_reply` alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("org is not configured")]
    NotConfigured,
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("stored state does not decode: {0}")]
    Corrupt(String),
}

impl OrgError {
    /// The answer for this error.
    pub fn into_reply(self) -> OrgReply {
        let (status, kind, title, detail) = match &self {
            Self::Unauthorized => return OrgReply::problem(401, unauthorized_body()),
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
            Self::Corrupt(_) => {
                (500, "internal", "Internal error", "The org's quota state could not be read.".to_owned())
            }
        };
        OrgReply::problem(status, problem_body(status, kind, title, &detail))
    }
}

/// One outbox row: usage on its way to the ledger. A proxied request's row is also its
/// optimistic reservation: deleting it before it is ready is the release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OutboxRow {
    pub seq: u64,
    pub event_id: String,
    pub meter: String,
    pub quantity: u64,
    pub ts: u64,
    pub source: String,
    pub metadata: Option<String>,
    pub ready_at: u64,
}

/// A stored threshold alert, for the usage view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AlertView {
    pub policy: String,
    pub window_start: u64,
    pub payload: String,
    pub status: String,
    pub attempts: u32,
}

/// Counts the admin state view shows, read on demand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tallies {
    pub open_reservations: u64,
    pub outbox_pending: u64,
}

/// What a step needs loaded from storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // a load plan: each flag is one independent query
pub struct Need {
    /// Counter rows of these meters (ignored when `all_counters`).
    pub meters: BTreeSet<MeterId>,
    pub all_counters: bool,
    /// Idempotency records with these ids.
    pub seen: Vec<String>,
    /// This provisional reservation.
    pub reservation: Option<EventId>,
    /// Provisional reservations that expired by now.
    pub expired: bool,
    /// This outbox row.
    pub outbox_row: Option<u64>,
    pub alerts: bool,
    pub tallies: bool,
}

/// What the store loaded for a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Counter rows by meter, as stored.
    pub rows: BTreeMap<String, String>,
    /// Idempotency records found: id → the original status.
    pub seen: BTreeMap<String, String>,
    pub reservations: Vec<Reservation>,
    /// When the earliest provisional reservation left after `reservations` expires.
    pub next_expiry: Option<Timestamp>,
    pub outbox_row: Option<OutboxRow>,
    pub alerts: Vec<AlertView>,
    pub tallies: Tallies,
}

/// What the store must write, all in the step's one synchronous transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub config: Option<StoredConfig>,
    /// Counter rows to upsert, by meter.
    pub counters: Vec<(String, String)>,
    /// Meters whose counter rows go (no longer in the plan).
    pub drop_counters: Vec<String>,
    pub outbox: Vec<OutboxRow>,
    pub outbox_delete: Vec<u64>,
    pub reservation_put: Vec<Reservation>,
    pub reservation_delete: Vec<EventId>,
    /// Idempotency records to add (id, status).
    pub remember: Vec<(String, &'static str)>,
    pub forget: Vec<String>,
    pub alerts: Vec<NewAlert>,
    pub meta: Vec<(String, String)>,
    pub key_put: Option<(String, KeyHash)>,
    pub key_delete: Option<String>,
    /// Decision counts to add: (meter, outcome, n).
    pub counts: Vec<(String, &'static str, u64)>,
}

/// A step's result: the answer, what to write, and the decision log lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub reply: OrgReply,
    pub writes: Writes,
    pub log: Vec<DecisionLine>,
}

/// What the store loads once per Durable Object instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    pub config: Option<StoredConfig>,
    pub keys: Vec<(String, KeyHash)>,
    /// Reset marks: meter (or `*`) → when.
    pub resets: BTreeMap<String, Timestamp>,
    /// The highest outbox sequence ever handed out: max of the outbox and meta `outbox_seq`.
    pub max_seq: u64,
    /// Meta `outbox_seq` alone: what storage has recorded of it.
    pub seq_mark: u64,
    pub outbox_ready: Option<Timestamp>,
    pub alert_due: Option<Timestamp>,
    pub reservation_expires: Option<Timestamp>,
    pub flush_failures: u32,
}

#[derive(Debug, Clone)]
struct Loaded {
    org: OrgId,
    policy: Policy,
    webhook_url: Option<String>,
}

/// How a flush ended, as the drain reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushResult {
    /// D1 took what was ready; `next_ready` is when the earliest row left becomes ready.
    Done { pending: u64, next_ready: Option<Timestamp> },
    /// D1 refused or could not be reached; nothing left the outbox.
    Failed,
}

/// One fixed window, as reconciliation compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileWindow {
    pub key: String,
    pub meter: MeterId,
    pub aggregation: Aggregation,
    /// Counted from here: the window start, or a later reset.
    pub from: u64,
    pub to: u64,
    pub start: Timestamp,
}

/// One org's machine.
#[derive(Debug, Clone)]
pub struct OrgMachine {
    /// Shared, not cloned, by each step: the policy is read on every decision.
    cfg: Option<Rc<Loaded>>,
    keys: BTreeMap<String, KeyHash>,
    resets: BTreeMap<String, Timestamp>,
    next_seq: u64,
    /// The highest sequence storage knows was handed out.
    seq_saved: u64,
    wake: Wake,
    flush_failures: u32,
    /// Decision counts not yet saved: (meter, outcome) → n.
    counts: BTreeMap<(MeterId, Outcome), u64>,
}

fn parse_config(cfg: &StoredConfig) -> Result<Loaded, OrgError> {
    let plan = Plan::parse(&cfg.plan_id, &cfg.plan)?;
    let terms = OrgTerms::parse(cfg.billing_anchor.as_ref(), cfg.overrides.as_ref(), &plan)?;
    Ok(Loaded { org: cfg.org.clone(), policy: Policy::new(&plan, &terms), webhook_url: cfg.webhook_url.clone() })
}

impl OrgMachine {
    /// The machine of an instance, from what storage holds. A stored config that no longer
    /// validates leaves the org unconfigured (its org operations answer 404) rather than failing
    /// every message.
    pub fn boot(b: Boot) -> Self {
        Self {
            cfg: b.config.as_ref().and_then(|c| parse_config(c).ok()).map(Rc::new),
            keys: b.keys.into_iter().collect(),
            resets: b.resets,
            next_seq: b.max_seq.saturating_add(1),
            seq_saved: b.seq_mark,
            wake: Wake {
                outbox_ready: b.outbox_ready,
                flush_retry: None,
                alert_due: b.alert_due,
                reservation_expires: b.reservation_expires,
                counts_due: None,
            },
            flush_failures: b.flush_failures,
            counts: BTreeMap::new(),
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

    /// What `step` will need for an org operation.
    pub fn needs_org(&self, op: &OrgOp) -> Need {
        let mut need = Need::default();
        match op {
            OrgOp::Decide { meter, id, kind, replayable, .. } => {
                need.meters.insert(meter.clone());
                if *replayable && *kind == DecideKind::Proxy {
                    need.seen.push(id.to_string());
                }
                // A reservation id in use is refused, not overwritten.
                if *kind == DecideKind::Reserve {
                    need.reservation = Some(id.clone());
                }
            }
            OrgOp::Events { events, .. } => {
                need.meters.extend(events.iter().map(|e| e.meter.clone()));
                need.seen.extend(events.iter().map(|e| e.id.to_string()));
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
            OrgOp::Release { seq, .. } => {
                need.outbox_row = Some(*seq);
                need.all_counters = true;
            }
            OrgOp::Report { id, usage } => {
                need.meters.extend(usage.iter().map(|(m, _)| m.clone()));
                need.seen.extend(usage.iter().map(|(m, _)| format!("{id}:{m}")));
            }
        }
        need
    }

    /// What `step_admin` will need.
    pub fn needs_admin(op: &AdminOp) -> Need {
        match op {
            AdminOp::Configure(_) | AdminOp::Reset { .. } => Need { all_counters: true, ..Need::default() },
            AdminOp::State => Need { all_counters: true, tallies: true, ..Need::default() },
            AdminOp::AddKey { .. } | AdminOp::RevokeKey { .. } => Need::default(),
        }
    }

    /// What the alarm's `tick` needs: expired provisional reservations, if any are due.
    pub fn needs_tick(&self, now: Timestamp) -> Need {
        let due = self.wake.reservation_expires.is_some_and(|t| t <= now);
        Need { expired: due, all_counters: due, ..Need::default() }
    }

    fn check_caller(&self, caller: &Caller, op: &OrgOp) -> Result<(), OrgError> {
        if !op.allows(caller) {
            return Err(OrgError::Unauthorized);
        }
        // The key is checked before anything else, so an unknown org answers like a wrong key.
        if let Caller::Key(hash) = caller {
            if !self.keys.values().any(|h| h == hash) {
                return Err(OrgError::Unauthorized);
            }
        }
        Ok(())
    }

    /// Carries out an org operation: synchronous, from the snapshot to the writes.
    pub fn step_org(&mut self, caller: &Caller, op: OrgOp, snap: Snapshot, now: Timestamp) -> Result<Step, OrgError> {
        self.check_caller(caller, &op)?;
        let loaded = Rc::clone(self.loaded()?);
        let mut cx = Cx::new(&loaded, snap, now)?;
        let reply = match op {
            OrgOp::Decide { meter, quantity, kind, id, ttl_ms, replayable } => self.decide(
                &mut cx,
                &meter,
                quantity,
                kind,
                ReserveAs { id, kind: ReservationKind::Provisional, ttl_ms },
                replayable,
            )?,
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
            OrgOp::Release { id, seq } => self.release(&mut cx, &id, seq)?,
            OrgOp::Report { id, usage } => self.report(&mut cx, &id, &usage),
        };
        Ok(cx.finish(self, reply))
    }

    /// Carries out an admin operation.
    pub fn step_admin(&mut self, op: AdminOp, snap: &Snapshot, now: Timestamp) -> Result<Step, OrgError> {
        let mut writes = Writes::default();
        let reply = match op {
            AdminOp::AddKey { key_id, hash } => {
                self.keys.insert(key_id.clone(), hash.clone());
                writes.key_put = Some((key_id.clone(), hash));
                OrgReply::ok(json!({"key_id": key_id}), None)
            }
            AdminOp::RevokeKey { key_id } => {
                let removed = self.keys.remove(&key_id).is_some();
                writes.key_delete = Some(key_id.clone());
                OrgReply::ok(json!({"key_id": key_id, "removed": removed}), None)
            }
            AdminOp::Configure(cfg) => {
                // Validated before storing: a config that does not parse never reaches storage.
                let loaded = parse_config(&cfg)?;
                let book = book_of(&snap.rows)?;
                let meters: BTreeSet<&MeterId> = loaded.policy.limits.iter().map(|l| &l.meter).collect();
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
                self.cfg = Some(Rc::new(loaded));
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
                let meters: BTreeSet<&MeterId> = loaded.policy.limits.iter().map(|l| &l.meter).collect();
                for m in meters.into_iter().filter(|m| meter.as_ref().is_none_or(|x| x == *m)) {
                    writes.counters.push((m.to_string(), meter_row(&loaded.policy, &book, m)));
                }
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
        let c = self.counts.entry((meter.clone(), outcome)).or_insert(0);
        *c = c.saturating_add(1);
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

    /// How a flush ended: when to run next, and the meta rows to write: the failure count when
    /// it changed, and the highest outbox sequence handed out (so that a restarted instance,
    /// whose outbox D1 may have emptied, never hands the same number out again).
    pub fn after_flush(&mut self, result: FlushResult, now: Timestamp) -> Vec<(String, String)> {
        let before = self.flush_failures;
        let mut meta = Vec::new();
        let high = self.next_seq.saturating_sub(1);
        if high != self.seq_saved {
            self.seq_saved = high;
            meta.push(("outbox_seq".to_owned(), high.to_string()));
        }
        match result {
            FlushResult::Done { pending, next_ready } => {
                self.flush_failures = 0;
                self.wake.flush_retry = None;
                // Rows not yet ready (proxied requests awaiting a possible release) flush later.
                self.wake.outbox_ready = (pending > 0).then(|| next_ready.filter(|r| *r > now).unwrap_or(now));
            }
            FlushResult::Failed => {
                self.flush_failures = self.flush_failures.saturating_add(1);
                self.wake.flush_retry = Some(now.saturating_add_ms(flush_backoff_ms(self.flush_failures)));
            }
        }
        if self.flush_failures != before {
            meta.push(("flush_failures".to_owned(), self.flush_failures.to_string()));
        }
        meta
    }

    /// The flush is busy: try again shortly.
    pub fn flush_busy(&mut self, now: Timestamp) {
        self.wake.flush_retry = Some(now.saturating_add_ms(500));
    }

    /// When alert delivery next needs to run.
    pub fn alerts_due(&mut self, at: Option<Timestamp>) {
        self.wake.alert_due = at;
    }

    /// Idempotency records older than this may go.
    pub const fn idempotency_cutoff(now: Timestamp) -> Timestamp {
        now.saturating_sub_ms(IDEMPOTENCY_MS)
    }

    /// The fixed windows reconciliation compares, with the range of ledger time each covers.
    pub fn reconcile_windows(&self, snap: &Snapshot, now: Timestamp) -> Result<Vec<ReconcileWindow>, OrgError> {
        let loaded = self.loaded()?;
        let book = book_of(&snap.rows)?;
        Ok(book
            .window_usage(&loaded.policy, now)
            .into_iter()
            .map(|w| {
                let reset = self.resets.get(w.meter.as_str()).or_else(|| self.resets.get("*"));
                let from = reset.map_or(0, |t| t.millis()).max(w.start.millis());
                let aggregation = loaded.policy.meter(&w.meter).map_or(Aggregation::Sum, |m| m.aggregation);
                ReconcileWindow {
                    key: w.key,
                    meter: w.meter,
                    aggregation,
                    from,
                    to: w.end.map_or(u64::MAX >> 11, Timestamp::millis),
                    start: w.start,
                }
            })
            .collect())
    }

    /// Compares each window's counter with the ledger plus the outbox; with `repair`, the
    /// counter takes that value (the ledger is the truth for committed usage).
    pub fn reconcile(
        &mut self,
        windows: &[(ReconcileWindow, LedgerAgg, LedgerAgg)],
        snap: &Snapshot,
        repair: bool,
        tallies: Tallies,
        saved: &[(String, String, u64)],
        now: Timestamp,
    ) -> Result<Step, OrgError> {
        let loaded = Rc::clone(self.loaded()?);
        let mut book = book_of(&snap.rows)?;
        let current = book.window_usage(&loaded.policy, now);
        let mut limits = Vec::new();
        let mut total_drift: u128 = 0;
        let mut touched = BTreeSet::new();
        for (w, ledger, queued) in windows {
            // A window that rolled over during the D1 reads is compared next time.
            let Some(now_w) = current.iter().find(|c| c.key == w.key && c.start == w.start) else { continue };
            let want = expected(w.aggregation, ledger, queued);
            let drift = i128::from(now_w.used) - i128::from(want);
            total_drift = total_drift.saturating_add(drift.unsigned_abs());
            if repair && drift != 0 {
                book.repair(&loaded.policy, &w.key, want, now);
                touched.insert(w.meter.clone());
            }
            limits.push(json!({
                "policy": w.key, "meter": w.meter.as_str(), "window_start": w.start.rfc3339(),
                "window_end": (w.to != u64::MAX >> 11).then(|| Timestamp::from_millis(w.to).rfc3339()),
                "counter": now_w.used, "ledger": ledger_figure(w.aggregation, ledger), "outbox": queued.total,
                "expected": want, "drift": i64::try_from(drift).unwrap_or(i64::MAX), "repaired": repair && drift != 0,
            }));
        }
        let mut writes = Writes::default();
        for m in &touched {
            writes.counters.push((m.to_string(), meter_row(&loaded.policy, &book, m)));
        }
        // Saved counts plus those still in memory: the cron publishes the sum.
        let mut all: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (m, o, n) in saved {
            let c = all.entry((m.clone(), o.clone())).or_insert(0);
            *c = c.saturating_add(*n);
        }
        for (m, o, n) in self.unsaved_counts() {
            let c = all.entry((m.to_string(), o.as_str().to_owned())).or_insert(0);
            *c = c.saturating_add(n);
        }
        let decisions: Vec<Value> =
            all.into_iter().map(|((m, o), n)| json!({"meter": m, "outcome": o, "n": n})).collect();
        let body = json!({
            "org_id": loaded.org.as_str(), "checked_at": now.rfc3339(), "repair": repair,
            "total_drift": u64::try_from(total_drift).unwrap_or(u64::MAX), "limits": limits,
            "outbox_pending": tallies.outbox_pending, "flush_failures": self.flush_failures,
            "decisions": decisions,
        });
        Ok(Step { reply: OrgReply::ok(body, Some(loaded.policy.plan.to_string())), writes, log: Vec::new() })
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
            "active_keys": self.keys.len(),
            "outbox_pending": tallies.outbox_pending,
        }))
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq = s.saturating_add(1);
        s
    }

    fn outbox(&mut self, cx: &mut Cx<'_>, row: OutboxRow) {
        // A row ready now still waits a moment, so that a burst goes to D1 in one batch.
        let ready = Timestamp::from_millis(row.ready_at).max(cx.now.saturating_add_ms(FLUSH_DELAY_MS));
        self.wake.outbox_ready = earliest(self.wake.outbox_ready, Some(ready));
        cx.writes.outbox.push(row);
    }

    fn decide(
        &mut self,
        cx: &mut Cx<'_>,
        meter: &MeterId,
        quantity: u64,
        kind: DecideKind,
        how: ReserveAs,
        replayable: bool,
    ) -> Result<OrgReply, OrgError> {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let (id, ttl_ms) = (how.id.clone(), how.ttl_ms);
        let is_replay = kind == DecideKind::Proxy && replayable && cx.snap.seen.contains_key(id.as_str());
        let decision = match kind {
            DecideKind::Check => cx.book.check(policy, meter, quantity, now)?,
            // A replayed Idempotency-Key is admitted and forwarded, but counted once only.
            DecideKind::Proxy if is_replay => cx.book.check(policy, meter, 0, now)?,
            // Admitted while one unit remains: see the overshoot bound in the README.
            DecideKind::ProxyReported => cx.book.check(policy, meter, 1, now)?,
            DecideKind::Proxy => {
                let spec = policy.meter(meter).ok_or_else(|| UsageError::UnknownMeter(meter.clone()))?;
                if spec.aggregation != Aggregation::Sum {
                    return Err(
                        UsageError::NotReservable { meter: meter.clone(), aggregation: spec.aggregation }.into()
                    );
                }
                cx.book.record(policy, meter, quantity, true, now)?
            }
            DecideKind::Reserve => {
                for r in &cx.snap.reservations {
                    cx.book.reservations.insert(r.id.clone(), r.clone());
                }
                cx.book.reserve(policy, meter, quantity, how, now)?
            }
        };
        let allowed = decision.allowed();
        let counts = matches!(kind, DecideKind::Proxy | DecideKind::Reserve) && allowed && !is_replay;
        let mut held = None;
        if counts {
            cx.persist(meter);
            cx.alerts_for(meter, &decision.limits);
        }
        if kind == DecideKind::Proxy && counts {
            let seq = self.next_seq();
            held = Some(seq);
            // Ready for the ledger once it can no longer be released.
            let ready_at = now.saturating_add_ms(ttl_ms).millis();
            let row = OutboxRow {
                seq,
                event_id: id.to_string(),
                meter: meter.to_string(),
                quantity,
                ts: now.millis(),
                source: "proxy".to_owned(),
                metadata: None,
                ready_at,
            };
            self.outbox(cx, row);
            if replayable {
                cx.writes.remember.push((id.to_string(), "accepted"));
            }
        }
        if kind == DecideKind::Reserve && allowed {
            if let Some(r) = cx.book.reservations.get(&id) {
                self.wake.reservation_expires = earliest(self.wake.reservation_expires, Some(r.expires));
                cx.writes.reservation_put.push(r.clone());
            }
        }
        self.count(meter, if allowed { Outcome::Allowed } else { Outcome::Refused }, now);
        let source = match kind {
            DecideKind::Check => "check",
            DecideKind::Reserve => "reserve",
            DecideKind::Proxy | DecideKind::ProxyReported => "proxy",
        };
        // Proxied decisions are logged by the Worker, which knows the round trip's latency.
        if matches!(kind, DecideKind::Check | DecideKind::Reserve) {
            cx.log(
                meter,
                quantity,
                if allowed { Outcome::Allowed } else { Outcome::Refused },
                decision.status(),
                source,
            );
        }
        let mut headers: Vec<(String, String)> =
            decision_headers(&decision).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if is_replay {
            headers.push(("Idempotent-Replayed".into(), "true".into()));
        }
        let plan = Some(policy.plan.to_string());
        let reply = match kind {
            DecideKind::Proxy | DecideKind::ProxyReported => {
                match refusal_problem(&decision, policy.plan.as_str(), policy.upgrade_url.as_deref()) {
                    Some(problem) => OrgReply { status: decision.status(), headers, body: problem, plan, held: None },
                    // An allowed proxied request needs only the headers: no body is built.
                    None => OrgReply { status: 200, headers, body: Value::Null, plan, held },
                }
            }
            DecideKind::Reserve => {
                let mut body = decision_json(&decision);
                if let (Some(r), Some(obj)) = (cx.book.reservations.get(&id), body.as_object_mut()) {
                    let view = json!({"id": r.id.as_str(), "quantity": r.quantity, "expires_at": r.expires.rfc3339()});
                    obj.insert("reservation".into(), view);
                }
                OrgReply { status: 200, headers, body, plan, held: None }
            }
            DecideKind::Check => OrgReply { status: 200, headers, body: decision_json(&decision), plan, held: None },
        };
        Ok(reply)
    }

    /// Usage events: each is accepted (counted and queued for the ledger), rejected (would pass
    /// a hard limit with `enforce`, or names an unknown meter), or a duplicate of an id seen in
    /// the idempotency window (counted once, answered with its original result).
    fn events(&mut self, cx: &mut Cx<'_>, events: &[UsageEvent], enforce: bool) -> OrgReply {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let mut results = Vec::with_capacity(events.len());
        let mut batch_seen: BTreeMap<&str, &'static str> = BTreeMap::new();
        for e in events {
            let original =
                cx.snap.seen.get(e.id.as_str()).map(String::as_str).or_else(|| batch_seen.get(e.id.as_str()).copied());
            if let Some(original) = original {
                results.push(json!({"id": e.id.as_str(), "status": "duplicate", "original_status": original}));
                continue;
            }
            let before = cx.book.overview(policy, now);
            let (status, reason) = match cx.book.record(policy, &e.meter, e.quantity, enforce, now) {
                Ok(d) if d.allowed() => ("accepted", None),
                Ok(d) => ("rejected", Some(refusal_reason(&d))),
                Err(err) => ("rejected", Some(err.to_string())),
            };
            batch_seen.insert(e.id.as_str(), status);
            cx.writes.remember.push((e.id.to_string(), status));
            let outcome = if status == "accepted" { Outcome::Accepted } else { Outcome::Refused };
            self.count(&e.meter, if status == "accepted" { Outcome::Allowed } else { Outcome::Refused }, now);
            cx.log(&e.meter, e.quantity, outcome, if status == "accepted" { 200 } else { 422 }, "events");
            if status == "accepted" {
                cx.persist(&e.meter);
                let after = cx.book.overview(policy, now);
                cx.writes.alerts.extend(crossings(&cx.loaded.org, &before, &after, now));
                let seq = self.next_seq();
                let row = OutboxRow {
                    seq,
                    event_id: e.id.to_string(),
                    meter: e.meter.to_string(),
                    quantity: e.quantity,
                    ts: e.timestamp.unwrap_or(now.millis()),
                    source: "event".to_owned(),
                    metadata: e.metadata.as_ref().map(Value::to_string),
                    ready_at: now.millis(),
                };
                self.outbox(cx, row);
            }
            let mut r = json!({"id": e.id.as_str(), "status": status});
            if let (Some(reason), Some(o)) = (reason, r.as_object_mut()) {
                o.insert("reason".into(), json!(reason));
            }
            results.push(r);
        }
        OrgReply::ok(json!({"results": results}), Some(policy.plan.to_string()))
    }

    fn settle(&mut self, cx: &mut Cx<'_>, id: &EventId, action: SettleAction) -> Result<OrgReply, OrgError> {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let Some(res) = cx.snap.reservations.iter().find(|r| &r.id == id).cloned() else {
            return Err(UsageError::UnknownReservation(id.clone()).into());
        };
        let meter = res.meter.clone();
        cx.writes.reservation_delete.push(id.clone());
        let expired = res.expires <= now;
        cx.book.reservations.insert(id.clone(), res.clone());
        let settled = match action {
            // An expired reservation goes back to the org now (the alarm had not swept it yet),
            // and answers as if it were gone: the release is written with the refusal.
            _ if expired => {
                cx.book.release(policy, id, now)?;
                cx.persist(&meter);
                return Ok(OrgError::from(UsageError::UnknownReservation(id.clone())).into_reply());
            }
            SettleAction::Commit { quantity } => cx.book.commit(policy, id, quantity.unwrap_or(res.quantity), now)?,
            SettleAction::Release => cx.book.release(policy, id, now)?,
        };
        cx.persist(&meter);
        let (outcome, quantity) = match settled.settlement {
            Settlement::Committed { quantity } => ("committed", quantity),
            Settlement::Released => ("released", 0),
        };
        if let Settlement::Committed { quantity } = settled.settlement {
            let statuses: Vec<LimitStatus> =
                cx.book.overview(policy, now).into_iter().filter(|l| l.meter == meter).collect();
            cx.alerts_for(&meter, &statuses);
            let seq = self.next_seq();
            let row = OutboxRow {
                seq,
                event_id: id.to_string(),
                meter: meter.to_string(),
                quantity,
                ts: now.millis(),
                source: "reservation".to_owned(),
                metadata: None,
                ready_at: now.millis(),
            };
            self.outbox(cx, row);
        }
        let after: Vec<Value> =
            cx.book.overview(policy, now).iter().filter(|l| l.meter == meter).map(|l| limit_json(l, now)).collect();
        let body = json!({"id": id.as_str(), "outcome": outcome, "meter": meter.as_str(), "quantity": quantity, "limits": after});
        Ok(OrgReply::ok(body, Some(policy.plan.to_string())))
    }

    /// Gives back a proxied request's units: its outbox row goes, exactly once.
    fn release(&mut self, cx: &mut Cx<'_>, id: &EventId, seq: u64) -> Result<OrgReply, OrgError> {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        // The row must still be queued (not yet flushed) and be this request's.
        let row = cx
            .snap
            .outbox_row
            .clone()
            .filter(|r| r.seq == seq && r.event_id == id.as_str() && r.source == "proxy")
            .ok_or_else(|| UsageError::UnknownReservation(id.clone()))?;
        let meter = MeterId::parse(&row.meter).map_err(|e| OrgError::Corrupt(e.to_string()))?;
        let admitted = Timestamp::from_millis(row.ts);
        let reset = self.resets.get(meter.as_str()).or_else(|| self.resets.get("*"));
        // A reset after the admission already gave everything back.
        if reset.is_none_or(|r| *r < admitted) {
            cx.book.release_admitted(policy, &meter, row.quantity, admitted, now);
            cx.persist(&meter);
        }
        cx.writes.outbox_delete.push(seq);
        // The request was not counted, so a replay of its Idempotency-Key must count afresh.
        cx.writes.forget.push(id.to_string());
        let body = json!({"id": id.as_str(), "outcome": "released", "meter": meter.as_str(), "quantity": 0});
        Ok(OrgReply::ok(body, Some(policy.plan.to_string())))
    }

    fn report(&mut self, cx: &mut Cx<'_>, id: &EventId, usage: &[(MeterId, u64)]) -> OrgReply {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let mut recorded = Vec::new();
        let mut ignored = Vec::new();
        for (m, q) in usage {
            // A replayed request (same Idempotency-Key) reports again: each (request, meter)
            // counts once.
            let event_id = format!("{id}:{m}");
            if policy.meter(m).is_none() || cx.snap.seen.contains_key(&event_id) {
                if policy.meter(m).is_none() {
                    ignored.push(m.as_str().to_owned());
                }
                continue;
            }
            if recorded.iter().any(|(r, _): &(&MeterId, u64)| *r == m) {
                continue;
            }
            let before = cx.book.overview(policy, now);
            if cx.book.record(policy, m, *q, false, now).is_err() {
                continue;
            }
            cx.persist(m);
            let after = cx.book.overview(policy, now);
            cx.writes.alerts.extend(crossings(&cx.loaded.org, &before, &after, now));
            cx.writes.remember.push((event_id.clone(), "accepted"));
            let seq = self.next_seq();
            let row = OutboxRow {
                seq,
                event_id,
                meter: m.to_string(),
                quantity: *q,
                ts: now.millis(),
                source: "origin".to_owned(),
                metadata: None,
                ready_at: now.millis(),
            };
            self.outbox(cx, row);
            recorded.push((m, *q));
        }
        let recorded: Vec<Value> = recorded.iter().map(|(m, q)| json!({"meter": m.as_str(), "quantity": q})).collect();
        OrgReply::ok(
            json!({"id": id.as_str(), "recorded": recorded, "ignored": ignored}),
            Some(policy.plan.to_string()),
        )
    }
}

fn refusal_reason(d: &Decision) -> String {
    d.violated().map_or_else(String::new, |l| {
        format!("would exceed the hard limit {} ({} used of {})", l.policy, l.used, l.limit.unwrap_or(0))
    })
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
    let keys: Vec<String> = policy.limits_for(meter).map(crate::policy::Limit::policy_name).collect();
    encode_counters(keys.iter().filter_map(|k| book.counters.get_key_value(k)))
}

/// The alerts fired in the limits' current windows, with their delivery state.
fn alerts_view(alerts: &[AlertView], statuses: &[LimitStatus]) -> Vec<Value> {
    alerts
        .iter()
        .filter(|r| statuses.iter().any(|l| l.policy == r.policy && l.window_start.millis() == r.window_start))
        .filter_map(|r| {
            let mut v: Value = serde_json::from_str(&r.payload).ok()?;
            v.as_object_mut()?.insert("delivery".into(), json!({"status": r.status, "attempts": r.attempts}));
            Some(v)
        })
        .collect()
}

/// One step's working context: the loaded rows as a book, and what the step writes and logs.
struct Cx<'a> {
    loaded: &'a Loaded,
    snap: Snapshot,
    book: Book,
    now: Timestamp,
    writes: Writes,
    log: Vec<DecisionLine>,
    touched: BTreeSet<MeterId>,
}

impl<'a> Cx<'a> {
    fn new(loaded: &'a Loaded, snap: Snapshot, now: Timestamp) -> Result<Self, OrgError> {
        let book = book_of(&snap.rows)?;
        Ok(Self { loaded, snap, book, now, writes: Writes::default(), log: Vec::new(), touched: BTreeSet::new() })
    }

    /// Marks a meter's counters for writing at the end of the step.
    fn persist(&mut self, meter: &MeterId) {
        self.touched.insert(meter.clone());
    }

    fn log(&mut self, meter: &MeterId, quantity: u64, outcome: Outcome, status: u16, source: &'static str) {
        self.log.push(DecisionLine {
            org: self.loaded.org.to_string(),
            meter: meter.to_string(),
            quantity,
            outcome,
            status,
            source,
            latency_ms: None,
        });
    }

    /// Alerts for the one decision of this step on `meter`: the level before is computed only
    /// when a level above ok is reached, so the common path below 80% costs nothing.
    fn alerts_for(&mut self, meter: &MeterId, after: &[LimitStatus]) {
        let near = after.iter().any(|l| !l.period.is_rate() && l.limit.is_some() && l.level > crate::policy::Level::Ok);
        if !near {
            return;
        }
        let Ok(before_book) = book_of(&self.snap.rows) else { return };
        let policy = &self.loaded.policy;
        let before: Vec<LimitStatus> =
            before_book.overview(policy, self.now).into_iter().filter(|l| &l.meter == meter).collect();
        self.writes.alerts.extend(crossings(&self.loaded.org, &before, after, self.now));
    }

    fn finish(mut self, m: &mut OrgMachine, reply: OrgReply) -> Step {
        for meter in std::mem::take(&mut self.touched) {
            let row = meter_row(&self.loaded.policy, &self.book, &meter);
            if self.snap.rows.get(meter.as_str()) != Some(&row) {
                self.writes.counters.push((meter.to_string(), row));
            }
        }
        if !self.writes.alerts.is_empty() {
            m.wake.alert_due = Some(self.now);
        }
        Step { reply, writes: self.writes, log: self.log }
    }
}
