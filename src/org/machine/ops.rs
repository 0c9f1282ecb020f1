//! The org operations' rules: decide (proxied, check, reserve), usage events, settling a
//! provisional reservation, releasing a proxied request's units, and origin-reported usage. Each
//! works on a step's context (`Cx`) and records what to write; nothing here does I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::lease::Unspent;
use super::{book_of, meter_row, Loaded, OrgError, OrgMachine, Step};
use crate::org::buckets::BucketKey;
use crate::org::io::{OutboxRow, Seen, SeenKey, SeenResult, Snapshot, Writes};
use crate::org::msg::{DecideKind, OrgReply, SettleAction};
use crate::org::rules::{crossings, earliest, FLUSH_DELAY_MS, MAX_HELD, MAX_OPEN_RESERVATIONS};
use crate::policy::headers::{refusal_problem, View};
use crate::policy::keys::Fingerprint;
use crate::policy::{
    Aggregation, Book, Decision, EventId, LimitStatus, MeterId, ReserveAs, Settlement, Timestamp, UsageError,
};
use crate::telemetry::{DecisionLine, Outcome};
use crate::wire::{decision_json, limit_json, UsageEvent};

/// A proxied request's units, held in memory until its release window passes: what a failed
/// origin call gives back, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::org) struct Held {
    /// The request's id: a token is only a number, so a release must name its request too.
    pub(super) id: EventId,
    pub(super) meter: MeterId,
    pub(super) quantity: u64,
    /// Its ledger buckets: the meter's, then any composite's it is part of.
    pub(super) buckets: Vec<BucketKey>,
    pub(super) admitted: Timestamp,
    pub(super) until: Timestamp,
    /// The audit row it queued, if the meter keeps one.
    pub(super) audit_seq: Option<u64>,
}

impl OrgMachine {
    /// Holds a proxied request's units for its release window; returns the token. Holds past
    /// their window are dropped first (tokens grow with time, so they are at the front).
    pub(super) fn hold(&mut self, h: Held, now: Timestamp) -> u64 {
        while let Some(entry) = self.held.first_entry() {
            if entry.get().until > now {
                break;
            }
            entry.remove();
        }
        // At the cap the oldest hold goes early: its units stay counted (never lost usage).
        while self.held.len() >= MAX_HELD {
            self.held.pop_first();
        }
        let token = self.next_token;
        self.next_token = token.saturating_add(1);
        self.held.insert(token, h);
        token
    }

    /// Records an admitted proxied request's usage and holds its units for its release window;
    /// returns the hold's token. Its audit row waits until it can no longer be released.
    fn hold_proxied(&mut self, cx: &mut Cx<'_>, id: &EventId, meter: &MeterId, quantity: u64, ttl_ms: u64) -> u64 {
        let now = cx.now;
        let until = now.saturating_add_ms(ttl_ms);
        let row =
            OutboxRow { ready_at: until.millis(), ..OutboxRow::audit(id.to_string(), meter, quantity, "proxy", now) };
        let (buckets, audit_seq) = self.record_usage(cx, meter, row);
        let h = Held { id: id.clone(), meter: meter.clone(), quantity, buckets, admitted: now, until, audit_seq };
        self.hold(h, now)
    }

    /// Counts usage into its ledger bucket, and queues its audit row when the meter keeps them.
    /// Returns the bucket and the audit row's sequence.
    pub(super) fn record_usage(
        &mut self,
        cx: &mut Cx<'_>,
        meter: &MeterId,
        row: OutboxRow,
    ) -> (Vec<BucketKey>, Option<u64>) {
        let key = self.count_usage(cx, meter, row.quantity, row.ts);
        let audit = cx.loaded.policy.meter(meter).is_some_and(|m| m.audit);
        (key, audit.then(|| self.enqueue(cx, row)))
    }

    /// Queues a row for the ledger under the next sequence number, and wakes the machine when
    /// it is ready (a row ready now still waits a moment, so that a burst goes to D1 in one
    /// batch). Returns the sequence number.
    fn enqueue(&mut self, cx: &mut Cx<'_>, mut row: OutboxRow) -> u64 {
        row.seq = self.next_seq;
        self.next_seq = row.seq.saturating_add(1);
        let ready = Timestamp::from_millis(row.ready_at).max(cx.now.saturating_add_ms(FLUSH_DELAY_MS));
        self.wake.outbox_ready = earliest(self.wake.outbox_ready, Some(ready));
        let seq = row.seq;
        cx.writes.outbox.push(row);
        seq
    }

    pub(super) fn decide(
        &mut self,
        cx: &mut Cx<'_>,
        meter: &MeterId,
        quantity: u64,
        kind: DecideKind,
        how: ReserveAs,
        idempotency: Option<Fingerprint>,
    ) -> Result<OrgReply, OrgError> {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let (id, ttl_ms) = (how.id.clone(), how.ttl_ms);
        let idempotency = idempotency.filter(|_| matches!(kind, DecideKind::Proxy | DecideKind::ProxyReported));
        let remember = idempotency.is_none();
        let is_replay = replay_of(&cx.snap, &id, idempotency.as_ref(), now)?;
        let decision = match kind {
            DecideKind::Check => cx.book.check(policy, meter, quantity, now)?,
            // A replayed Idempotency-Key is admitted and forwarded, flagged, but counted once
            // only: its first request was counted, and the origin answers from its record.
            DecideKind::Proxy | DecideKind::ProxyReported if is_replay => cx.book.check(policy, meter, 0, now)?,
            // Admitted while one unit remains: see the overshoot bound in the README.
            DecideKind::ProxyReported => cx.book.check(policy, meter, 1, now)?,
            DecideKind::Proxy => {
                let spec = policy.meter(meter).ok_or_else(|| UsageError::UnknownMeter(meter.clone()))?;
                if spec.aggregation != Aggregation::Sum {
                    return Err(
                        UsageError::NotReservable { meter: meter.clone(), aggregation: spec.aggregation }.into()
                    );
                }
                self.bucket_room(cx.loaded, meter, quantity, now.millis())?;
                cx.book.record(policy, meter, quantity, true, now)?
            }
            DecideKind::Reserve => {
                if self.open_reservations >= MAX_OPEN_RESERVATIONS {
                    let retry_after_secs = self.wake.reservation_expires.map(|t| t.since(now).div_ceil(1000).max(1));
                    return Err(OrgError::TooManyReservations { retry_after_secs });
                }
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
            cx.alerts_for(&decision.limits);
        }
        if kind == DecideKind::Proxy && counts {
            held = Some(self.hold_proxied(cx, &id, meter, quantity, ttl_ms));
        }
        if let (Some(fp), true, false) = (idempotency, allowed, is_replay) {
            // In flight until the gateway reports the origin's answer, or the release window
            // ends (a gateway that died before reporting).
            let busy_until = Some(now.saturating_add_ms(ttl_ms));
            let seen = Seen { result: SeenResult::Accepted, fingerprint: Some(fp), busy_until };
            cx.writes.remember.push((SeenKey::Request(id.clone()), seen));
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
        // Numbers, not header text: the Worker renders them (`OrgReply::rendered`).
        let view = Some(Box::new(View::of(&decision)));
        let mut base = OrgReply { view, plan: Some(policy.plan.to_string()), ..OrgReply::EMPTY };
        if is_replay {
            base.headers.push(("Idempotent-Replayed".into(), "true".into()));
        }
        let reply = match kind {
            DecideKind::Proxy | DecideKind::ProxyReported => {
                match refusal_problem(&decision, policy.plan.as_str(), policy.upgrade_url.as_deref()) {
                    // Without an Idempotency-Key the refusal stands for the whole class (org,
                    // key, meter, cost) until its `t`: the isolate may remember it.
                    Some(problem) => {
                        OrgReply { status: decision.status(), body: problem, rememberable: remember, ..base }
                    }
                    // An allowed proxied request needs only the headers: no body is built.
                    None => OrgReply { held, replayed: is_replay, ..base },
                }
            }
            DecideKind::Reserve | DecideKind::Check => {
                let reservation = cx.book.reservations.get(&id).filter(|_| kind == DecideKind::Reserve);
                OrgReply { body: check_body(&decision, reservation, policy), ..base }
            }
        };
        Ok(reply)
    }

    /// Usage events: each is accepted (counted and queued for the ledger), rejected (would pass
    /// a hard limit with `enforce`, or names an unknown meter), or a duplicate of an id seen in
    /// the idempotency window (counted once, answered with its original result).
    pub(super) fn events(&mut self, cx: &mut Cx<'_>, events: &[UsageEvent], enforce: bool) -> OrgReply {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let mut results = Vec::with_capacity(events.len());
        let mut batch_seen: BTreeMap<&str, &'static str> = BTreeMap::new();
        for e in events {
            let key = SeenKey::Event(e.id.clone());
            let original =
                cx.snap.seen.get(&key).map(|s| s.result.as_str()).or_else(|| batch_seen.get(e.id.as_str()).copied());
            if let Some(original) = original {
                results.push(json!({"id": e.id.as_str(), "status": "duplicate", "original_status": original}));
                continue;
            }
            // An unknown meter is refused before anything is kept: no idempotency record, no
            // decision count (a metric series), no counter row, whatever names a client sends.
            if policy.meter(&e.meter).is_none() {
                let reason = UsageError::UnknownMeter(e.meter.clone()).to_string();
                cx.log(&e.meter, e.quantity, Outcome::Refused, 422, "events");
                results.push(json!({"id": e.id.as_str(), "status": "rejected", "reason": reason}));
                continue;
            }
            let ts = e.timestamp.unwrap_or(now.millis());
            let fits = self.bucket_room(cx.loaded, &e.meter, e.quantity, ts);
            let (status, reason) = match fits.and_then(|()| cx.book.record(policy, &e.meter, e.quantity, enforce, now))
            {
                Ok(d) if d.allowed() => ("accepted", None),
                Ok(d) => ("rejected", Some(refusal_reason(&d))),
                Err(err) => ("rejected", Some(err.to_string())),
            };
            batch_seen.insert(e.id.as_str(), status);
            let result = if status == "accepted" { SeenResult::Accepted } else { SeenResult::Rejected };
            cx.writes.remember.push((key, Seen { result, fingerprint: None, busy_until: None }));
            let outcome = if status == "accepted" { Outcome::Accepted } else { Outcome::Refused };
            self.count(&e.meter, if status == "accepted" { Outcome::Allowed } else { Outcome::Refused }, now);
            cx.log(&e.meter, e.quantity, outcome, if status == "accepted" { 200 } else { 422 }, "events");
            if status == "accepted" {
                cx.persist(&e.meter);
                let row = OutboxRow {
                    ts,
                    metadata: e.metadata.as_ref().map(Value::to_string),
                    ..OutboxRow::audit(e.id.to_string(), &e.meter, e.quantity, "event", now)
                };
                self.record_usage(cx, &e.meter, row);
            }
            let mut r = json!({"id": e.id.as_str(), "status": status});
            if let (Some(reason), Some(o)) = (reason, r.as_object_mut()) {
                o.insert("reason".into(), json!(reason));
            }
            results.push(r);
        }
        cx.alerts_for_touched();
        OrgReply::ok(json!({"results": results}), Some(policy.plan.to_string()))
    }

    pub(super) fn settle(&mut self, cx: &mut Cx<'_>, id: &EventId, action: SettleAction) -> Result<OrgReply, OrgError> {
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
            SettleAction::Commit { quantity } => {
                let q = quantity.unwrap_or(res.quantity);
                self.bucket_room(cx.loaded, &meter, q, now.millis())?;
                cx.book.commit(policy, id, q, now)?
            }
            SettleAction::Release => cx.book.release(policy, id, now)?,
        };
        cx.persist(&meter);
        let (outcome, quantity) = match settled.settlement {
            Settlement::Committed { quantity } => ("committed", quantity),
            Settlement::Released => ("released", 0),
        };
        if let Settlement::Committed { quantity } = settled.settlement {
            let composites = policy.composites_of(&meter);
            let statuses: Vec<LimitStatus> = cx
                .book
                .overview(policy, now)
                .into_iter()
                .filter(|l| l.meter == meter || composites.contains(&l.meter))
                .collect();
            cx.alerts_for(&statuses);
            self.record_usage(cx, &meter, OutboxRow::audit(id.to_string(), &meter, quantity, "reservation", now));
        }
        let after: Vec<Value> =
            cx.book.overview(policy, now).iter().filter(|l| l.meter == meter).map(|l| limit_json(l, now)).collect();
        let body = json!({"id": id.as_str(), "outcome": outcome, "meter": meter.as_str(), "quantity": quantity, "limits": after});
        Ok(OrgReply::ok(body, Some(policy.plan.to_string())))
    }

    /// Gives back a proxied request's units, exactly once: the counter and the ledger bucket
    /// (a negative delta if the bucket already went to D1), and its audit row if still queued.
    /// A token this instance does not hold (released already, past its window, or issued before
    /// a restart) gives nothing back: the request stays counted. `part` gives back that many of
    /// a lease's units (one request the holder admitted from a lease it already closed).
    pub(super) fn release(
        &mut self,
        cx: &mut Cx<'_>,
        id: &EventId,
        token: u64,
        part: Option<u64>,
    ) -> Result<OrgReply, OrgError> {
        let now = cx.now;
        let unknown = || UsageError::UnknownReservation(id.clone());
        // Another request's token (a number an earlier instance also handed out) releases nothing.
        let h = self.held.get_mut(&token).filter(|h| &h.id == id && h.until > now).ok_or_else(unknown)?;
        let q = part.unwrap_or(h.quantity).min(h.quantity);
        h.quantity -= q;
        let h =
            if h.quantity == 0 || part.is_none() { self.held.remove(&token) } else { self.held.get(&token).cloned() };
        let h = h.ok_or_else(unknown)?;
        self.give_back(cx, &h, q);
        let whole = part.is_none();
        if whole {
            if let Some(seq) = h.audit_seq {
                cx.writes.outbox_delete.push(seq);
            }
            // The request was not counted, so a replay of its Idempotency-Key must count afresh.
            cx.writes.forget.push(SeenKey::Request(id.clone()));
        }
        let body = json!({"id": id.as_str(), "outcome": "released", "meter": h.meter.as_str(), "quantity": 0});
        Ok(OrgReply::ok(body, Some(cx.loaded.policy.plan.to_string())))
    }

    /// Gives `q` of a hold's units back to the counters (unless a reset after its admission
    /// already did) and takes them out of its ledger buckets.
    pub(super) fn give_back(&mut self, cx: &mut Cx<'_>, h: &Held, q: u64) {
        if q == 0 {
            return;
        }
        let policy = &cx.loaded.policy;
        let reset = self.resets.get(h.meter.as_str()).or_else(|| self.resets.get("*"));
        if reset.is_none_or(|r| *r < h.admitted) {
            cx.book.release_admitted(policy, &h.meter, q, h.admitted, cx.now);
            cx.persist(&h.meter);
        }
        // The ledger bills what the origin served: the units leave it whatever the counters did.
        for bucket in &h.buckets {
            self.take_back_usage(cx, bucket.clone(), q);
        }
    }

    pub(super) fn report(&mut self, cx: &mut Cx<'_>, id: &EventId, usage: &[(MeterId, u64)]) -> OrgReply {
        let (policy, now) = (&cx.loaded.policy, cx.now);
        let mut recorded = Vec::new();
        let mut ignored = Vec::new();
        // A request with an Idempotency-Key: its flight ends here, and a replay of it reports
        // again, so each (request, meter) is remembered and counts once. A request without one
        // cannot be replayed, and its report leaves no record.
        let idempotent = cx.snap.seen.contains_key(&SeenKey::Request(id.clone()));
        if idempotent {
            cx.writes.settled.push(SeenKey::Request(id.clone()));
        }
        for (m, q) in usage {
            let key = SeenKey::Reported(id.clone(), m.clone());
            let event_id = format!("{id}:{m}");
            if policy.meter(m).is_none() || cx.snap.seen.contains_key(&key) {
                if policy.meter(m).is_none() {
                    ignored.push(m.as_str().to_owned());
                }
                continue;
            }
            if recorded.iter().any(|(r, _): &(&MeterId, u64)| *r == m) {
                continue;
            }
            // A composite is recorded through its parts: a report naming one is ignored, visibly.
            // So is usage past what the ledger keeps exactly (2^53 − 1 in an hour's bucket).
            if self.bucket_room(cx.loaded, m, *q, now.millis()).is_err()
                || cx.book.record(policy, m, *q, false, now).is_err()
            {
                ignored.push(m.as_str().to_owned());
                continue;
            }
            cx.persist(m);
            if idempotent {
                cx.writes
                    .remember
                    .push((key, Seen { result: SeenResult::Accepted, fingerprint: None, busy_until: None }));
            }
            self.record_usage(cx, m, OutboxRow::audit(event_id, m, *q, "origin", now));
            recorded.push((m, *q));
        }
        cx.alerts_for_touched();
        let recorded: Vec<Value> = recorded.iter().map(|(m, q)| json!({"meter": m.as_str(), "quantity": q})).collect();
        OrgReply::ok(
            json!({"id": id.as_str(), "recorded": recorded, "ignored": ignored}),
            Some(policy.plan.to_string()),
        )
    }
}

/// Whether a proxied request with an `Idempotency-Key` repeats a served first request. Its key is
/// bound to the first request's fingerprint, and busy while that request is in flight: another
/// fingerprint is refused (422), and so is any request meanwhile (409). Neither reaches the origin.
fn replay_of(snap: &Snapshot, id: &EventId, fp: Option<&Fingerprint>, now: Timestamp) -> Result<bool, OrgError> {
    let (Some(fp), Some(seen)) = (fp, snap.seen.get(&SeenKey::Request(id.clone()))) else { return Ok(false) };
    if seen.fingerprint.as_ref() != Some(fp) {
        return Err(OrgError::KeyReused(id.clone()));
    }
    if seen.busy_until.is_some_and(|t| t > now) {
        return Err(OrgError::KeyInFlight(id.clone()));
    }
    Ok(true)
}

fn refusal_reason(d: &Decision) -> String {
    d.violated().map_or_else(String::new, |l| {
        format!("would exceed the hard limit {} ({} used of {})", l.policy, l.used, l.limit.unwrap_or(0))
    })
}

/// `/v1/check`'s body (and the service binding's check and reserve): the decision, the
/// reservation it made, and on a refusal the problem a proxied request would get, so a caller
/// (the Hono middleware) answers its client with the same 429 or 402.
fn check_body(
    decision: &Decision,
    reservation: Option<&crate::policy::Reservation>,
    policy: &crate::policy::Policy,
) -> Value {
    let mut body = decision_json(decision);
    if let Some(obj) = body.as_object_mut() {
        if let Some(r) = reservation {
            let view = json!({"id": r.id.as_str(), "quantity": r.quantity, "expires_at": r.expires.rfc3339()});
            obj.insert("reservation".into(), view);
        }
        if let Some(p) = refusal_problem(decision, policy.plan.as_str(), policy.upgrade_url.as_deref()) {
            obj.insert("problem".into(), p);
        }
    }
    body
}

/// One step's working context: the loaded rows as a book, and what the step writes and logs.
pub(super) struct Cx<'a> {
    pub(super) loaded: &'a Loaded,
    pub(super) snap: Snapshot,
    pub(super) book: Book,
    pub(super) now: Timestamp,
    pub(super) writes: Writes,
    pub(super) log: Vec<DecisionLine>,
    pub(super) touched: BTreeSet<MeterId>,
    /// Ledger buckets this step changed: each is stored once, whole, at the end.
    pub(super) buckets: BTreeSet<BucketKey>,
    /// When the calling key expires, if it does: no lease outlives it.
    pub(super) key_until: Option<Timestamp>,
    /// Units the counters hold for leases but no request has been known to spend, by meter: at
    /// the step's start, and now (a grant adds its units, a close takes its lease's away). A
    /// lease is counted when granted and spent later, out of the DO's sight: alerts judge each
    /// level on the counter less these, so none fires below its level on units not spent, and
    /// one fires at the close or renewal that reports them spent (within `RECALL_MS`).
    pub(super) unspent_before: Vec<Unspent>,
    pub(super) unspent_after: Vec<Unspent>,
}

impl<'a> Cx<'a> {
    pub(super) fn new(loaded: &'a Loaded, snap: Snapshot, now: Timestamp) -> Result<Self, OrgError> {
        let book = book_of(&snap.rows)?;
        Ok(Self {
            loaded,
            snap,
            book,
            now,
            writes: Writes::default(),
            log: Vec::new(),
            touched: BTreeSet::new(),
            buckets: BTreeSet::new(),
            key_until: None,
            unspent_before: Vec::new(),
            unspent_after: Vec::new(),
        })
    }

    /// Marks a meter's counters for writing at the end of the step, and those of every composite
    /// it is part of (its usage spent their limits too).
    pub(super) fn persist(&mut self, meter: &MeterId) {
        self.touched.insert(meter.clone());
        for c in self.loaded.policy.composites_of(meter) {
            self.touched.insert(c.clone());
        }
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
    pub(super) fn alerts_for(&mut self, after: &[LimitStatus]) {
        let near = after.iter().any(|l| !l.period.is_rate() && l.limit.is_some() && l.level > crate::policy::Level::Ok);
        if !near {
            return;
        }
        let Ok(before_book) = book_of(&self.snap.rows) else { return };
        let policy = &self.loaded.policy;
        // The same limits as `after`: the meter's own and its composites'.
        let before: Vec<LimitStatus> = before_book
            .overview(policy, self.now)
            .into_iter()
            .filter(|l| after.iter().any(|a| a.policy == l.policy))
            .collect();
        let before = self.spent(before, &self.unspent_before);
        let after = self.spent(after.to_vec(), &self.unspent_after);
        for a in crossings(&self.loaded.org, &before, &after, self.now) {
            // A close and the grant after it judge against the same start: one write each.
            if !self.writes.alerts.iter().any(|w| w.id == a.id) {
                self.writes.alerts.push(a);
            }
        }
    }

    /// `statuses` as spent: each limit's usage less what leases granted in its current window
    /// hold unspent on its meter (and, for a composite, on its parts), and its level again from
    /// that. A lease of an earlier window counts there only.
    fn spent(&self, mut statuses: Vec<LimitStatus>, unspent: &[Unspent]) -> Vec<LimitStatus> {
        if unspent.is_empty() {
            return statuses;
        }
        let policy = &self.loaded.policy;
        for l in &mut statuses {
            let parts = policy.meter(&l.meter).map_or(&[][..], |m| m.parts.as_slice());
            let held = unspent
                .iter()
                .filter(|u| u.granted >= l.window_start && (u.meter == l.meter || parts.contains(&u.meter)))
                .fold(0u64, |a, u| a.saturating_add(u.units));
            l.used = l.used.saturating_sub(held);
            l.level = crate::policy::Level::of(l.used, l.limit);
        }
        statuses
    }

    /// Alerts for every meter this step counted on, once each, after all its usage (a batch of
    /// events crosses a level once, however many of its events it took).
    fn alerts_for_touched(&mut self) {
        let touched: Vec<MeterId> = self.touched.iter().cloned().collect();
        for meter in &touched {
            let after: Vec<LimitStatus> =
                self.book.overview(&self.loaded.policy, self.now).into_iter().filter(|l| &l.meter == meter).collect();
            if !after.is_empty() {
                self.alerts_for(&after);
            }
        }
    }

    pub(super) fn finish(mut self, m: &mut OrgMachine, reply: OrgReply) -> Step {
        for meter in std::mem::take(&mut self.touched) {
            let row = meter_row(&self.loaded.policy, &self.book, &meter);
            if self.snap.rows.get(meter.as_str()) != Some(&row) {
                self.writes.counters.push((meter.to_string(), row));
            }
        }
        for key in std::mem::take(&mut self.buckets) {
            if let Some(row) = m.ledger.open_row(&key) {
                self.writes.buckets.push(row);
            }
        }
        if !self.writes.alerts.is_empty() {
            m.wake.alert_due = Some(self.now);
        }
        // Only a finished step changes how many reservations are open (a reservation is put
        // once, when it is made, and deleted once).
        let opened = u64::try_from(self.writes.reservation_put.len()).unwrap_or(u64::MAX);
        let closed = u64::try_from(self.writes.reservation_delete.len()).unwrap_or(u64::MAX);
        m.open_reservations = m.open_reservations.saturating_add(opened).saturating_sub(closed);
        Step { reply, writes: self.writes, log: self.log }
    }
}
