//! The decision engine: counters, reservations, and check / reserve / commit / release / expire.
//!
//! Owns the arithmetic of every limit. Rate windows (second/minute/hour) run GCRA in exact
//! integer math; day, month and lifetime limits are fixed windows that roll over at their exact
//! boundary. `Book` holds only the counters and reservations a caller loaded; the caller persists
//! what changed. Must never do I/O or read a clock: `now` is always an argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::decision::{Decision, Level, LimitStatus, Refusal, RefusalKind};
use super::ids::{EventId, MeterId};
use super::period::Window;
use super::plan::{Aggregation, Cap, Limit, MeterSpec, Policy};

/// The persisted state of one limit: the smallest thing that decides the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Counter {
    /// GCRA for a rate window of `W` ms and limit `n`: `backlog` is the not-yet-replenished
    /// usage at instant `at`, in units of ms × n (one unit of usage is `W`). It drains by `n`
    /// per ms. A request of `q` fits when `backlog + q·W ≤ W·n`.
    Gcra { at: Timestamp, backlog: u64 },
    /// A fixed window starting at `start`: committed `used` and provisionally `reserved` units.
    /// For `max` and `latest` meters `used` is the peak or the last value.
    Window { start: Timestamp, used: u64, reserved: u64 },
}

/// The committed usage of one fixed window, for reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUsage {
    pub key: String,
    pub meter: MeterId,
    pub start: Timestamp,
    /// `None` for lifetime.
    pub end: Option<Timestamp>,
    pub used: u64,
    pub reserved: u64,
}

/// Who settles a reservation that nobody commits or releases before it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationKind {
    /// Proxied requests: counted as used at once, so the common path is one DO call; a release
    /// (origin non-2xx or unreachable) gives it back, and expiry simply keeps it.
    Optimistic,
    /// `/v1/check` with `reserve`: held apart from usage; the caller commits or releases, and
    /// expiry releases it back to the org.
    Provisional,
}

/// How to hold units that were admitted: under which id, settled how, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveAs {
    pub id: EventId,
    pub kind: ReservationKind,
    /// Milliseconds until an unsettled reservation expires.
    pub ttl_ms: u64,
}

/// Where a reservation was counted: the limit and, for a fixed window, which window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub key: String,
    /// `None` for a rate window.
    pub window: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: EventId,
    pub meter: MeterId,
    pub quantity: u64,
    pub kind: ReservationKind,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub holds: Vec<Hold>,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome")]
pub enum Settlement {
    Committed { quantity: u64 },
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub reservation: Reservation,
    pub settlement: Settlement,
}

/// Why a usage request cannot be decided at all (as opposed to being refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown meter '{0}'")]
    UnknownMeter(MeterId),
    #[error("meter '{meter}' aggregates by {aggregation}; reservations need a sum meter")]
    NotReservable { meter: MeterId, aggregation: Aggregation },
    #[error("reservation '{0}' already exists")]
    DuplicateReservation(EventId),
    #[error("no open reservation '{0}' (already committed, released or expired)")]
    UnknownReservation(EventId),
    #[error("meter '{meter}' is the sum of {parts}: record usage on those meters")]
    Composite { meter: MeterId, parts: String },
}

/// The counters and open reservations a caller loaded for one org.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    /// Keyed by `Limit::policy_name()`.
    pub counters: BTreeMap<String, Counter>,
    pub reservations: BTreeMap<EventId, Reservation>,
}

fn scaled(q: u64, w: u64) -> u128 {
    u128::from(q) * u128::from(w)
}

fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// A limit's counter, brought up to `now`: a rolled window, a drained GCRA backlog.
fn current(limit: &Limit, counter: Option<&Counter>, policy: &Policy, now: Timestamp) -> Counter {
    current_in(limit, counter, limit.period().window(now, policy.billing_anchor), now)
}

/// `current`, given the limit's window at `now` (a month's bounds are calendar arithmetic: a
/// decision works them out once per limit).
fn current_in(limit: &Limit, counter: Option<&Counter>, window: Window, now: Timestamp) -> Counter {
    if limit.period().is_rate() {
        let n = limit.cap.limit().unwrap_or(0);
        return match counter {
            Some(&Counter::Gcra { at, backlog }) if at < now => {
                let drained = u128::from(now.since(at)) * u128::from(n);
                Counter::Gcra { at: now, backlog: sat(u128::from(backlog).saturating_sub(drained)) }
            }
            Some(&c @ Counter::Gcra { .. }) => c,
            _ => Counter::Gcra { at: now, backlog: 0 },
        };
    }
    let start = window.start;
    match counter {
        // A window never goes back: a clock that steps backwards keeps the later window.
        Some(&c @ Counter::Window { start: s, .. }) if s >= start => c,
        _ => Counter::Window { start, used: 0, reserved: 0 },
    }
}

/// Units a counter holds: committed plus reserved, or (GCRA) not yet replenished.
fn in_use(limit: &Limit, c: Counter) -> u64 {
    match c {
        Counter::Gcra { backlog, .. } => {
            let w = limit.period().rate_millis().unwrap_or(1).max(1);
            backlog.div_ceil(w)
        }
        Counter::Window { used, reserved, .. } => used.saturating_add(reserved),
    }
}

/// What the counter would hold after admitting `q`.
fn proposed(limit: &Limit, agg: Aggregation, c: Counter, q: u64) -> u128 {
    match (c, agg) {
        (Counter::Gcra { backlog, .. }, _) => {
            u128::from(backlog) + scaled(q, limit.period().rate_millis().unwrap_or(1))
        }
        (Counter::Window { used, reserved, .. }, Aggregation::Sum) => {
            u128::from(used) + u128::from(reserved) + u128::from(q)
        }
        (Counter::Window { used, .. }, Aggregation::Max) => u128::from(used.max(q)),
        (Counter::Window { .. }, Aggregation::Latest) => u128::from(q),
    }
}

/// The cap `proposed` is compared with: `limit`, or `W·n` for GCRA.
fn capacity(limit: &Limit, n: u64) -> u128 {
    match limit.period().rate_millis() {
        Some(w) => scaled(n, w),
        None => u128::from(n),
    }
}

/// Seconds until a violated limit would admit `q`, or `None` if it never will without a change
/// of plan.
fn wait_secs(limit: &Limit, c: Counter, q: u64, n: u64, policy: &Policy, now: Timestamp) -> Option<u64> {
    if q > n || limit.needs_upgrade() {
        return None;
    }
    match (c, limit.period().rate_millis()) {
        (Counter::Gcra { backlog, .. }, Some(w)) => {
            let excess = (u128::from(backlog) + scaled(q, w)).saturating_sub(scaled(n, w));
            let ms = excess.div_ceil(u128::from(n.max(1)));
            Some(sat(ms).div_ceil(1000).max(1))
        }
        _ => limit.period().window(now, policy.billing_anchor).seconds_until_reset(now).map(|s| s.max(1)),
    }
}

fn status(limit: &Limit, c: Counter, window: Window, now: Timestamp) -> LimitStatus {
    let used = in_use(limit, c);
    let n = limit.cap.limit();
    let reset = match c {
        // A rate window's `reset` is when the next unit comes back (draft-ietf-httpapi-
        // ratelimit-headers-10: `t` is the time until more quota is available), which is also
        // what `Retry-After` says for one unit. An untouched window has nothing to wait for.
        Counter::Gcra { backlog, .. } => {
            let w = limit.period().rate_millis().unwrap_or(1).max(1);
            let per_ms = n.unwrap_or(1).max(1);
            // Overdrawn (usage recorded past the cap) counts from the cap: the wait is for
            // `remaining` to become one again.
            let keep = used.min(n.unwrap_or(0)).saturating_sub(1).saturating_mul(w);
            Some(now.saturating_add_ms(backlog.saturating_sub(keep).div_ceil(per_ms)))
        }
        Counter::Window { .. } => window.end,
    };
    let (overage, overage_cost_cents) = match limit.cap {
        Cap::Soft { limit: cap, price } => {
            let over = used.saturating_sub(cap);
            (over, price.map_or(0, |p| p.cost_cents(over)))
        }
        Cap::Hard { .. } | Cap::Unlimited => (0, 0),
    };
    LimitStatus {
        policy: limit.shared_name(),
        meter: limit.meter().clone(),
        period: limit.period(),
        mode: limit.cap.mode_name(),
        limit: n,
        used,
        remaining: n.map(|n| n.saturating_sub(used)),
        window_start: window.start,
        window_secs: limit.period().rate_millis().map_or_else(|| window.length_secs(), |w| Some(w / 1000)),
        reset,
        level: Level::of(used, n),
        overage,
        overage_cost_cents,
        needs_upgrade: limit.needs_upgrade(),
    }
}

/// How admitted usage lands in the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply {
    /// Counted as used: a record, or (`reservation`) an optimistic reservation, which also
    /// returns its holds so that a release can give the units back.
    Use { reservation: bool },
    /// Held apart as reserved (provisional reservation).
    Hold,
    /// Not applied (check only).
    Nothing,
}

impl Book {
    /// Stores a limit's counter, allocating its key only the first time.
    fn put(&mut self, limit: &Limit, c: Counter) {
        match self.counters.get_mut(limit.policy_name()) {
            Some(slot) => *slot = c,
            None => {
                self.counters.insert(limit.policy_name().to_owned(), c);
            }
        }
    }

    fn meter_spec<'p>(policy: &'p Policy, meter: &MeterId) -> Result<&'p MeterSpec, UsageError> {
        policy.meter(meter).ok_or_else(|| UsageError::UnknownMeter(meter.clone()))
    }

    /// A meter usage can be recorded on: a composite is recorded through its parts.
    fn recordable<'p>(policy: &'p Policy, meter: &MeterId) -> Result<&'p MeterSpec, UsageError> {
        let spec = Self::meter_spec(policy, meter)?;
        if spec.parts.is_empty() {
            return Ok(spec);
        }
        let parts = spec.parts.iter().map(MeterId::as_str).collect::<Vec<_>>().join(", ");
        Err(UsageError::Composite { meter: meter.clone(), parts })
    }

    /// Evaluates `q` units on `meter`; admits and applies them unless a hard limit refuses (and
    /// `enforce` is set). Returns the decision and, for a reservation, the holds it made; a plain
    /// record needs none and allocates none.
    fn decide(
        &mut self,
        policy: &Policy,
        spec: &MeterSpec,
        q: u64,
        enforce: bool,
        apply: Apply,
        now: Timestamp,
    ) -> (Decision, Vec<Hold>) {
        // The meter's own limits and those of every composite it is part of: one atomic decision.
        // Each with its window at `now` and its counter brought up to `now`.
        let mut limits: Vec<(&Limit, Window, Counter)> = policy
            .enforced_for(&spec.id)
            .map(|l| {
                let w = l.period().window(now, policy.billing_anchor);
                (l, w, current_in(l, self.counters.get(l.policy_name()), w, now))
            })
            .collect();

        let mut violated = Vec::new();
        let mut upgrade = None;
        let mut retry_after = Some(0u64);
        let mut latest_free: Option<(u64, usize)> = None;
        for (i, &(l, _, c)) in limits.iter().enumerate() {
            let Cap::Hard { limit: n } = l.cap else {
                continue;
            };
            if !enforce || proposed(l, spec.aggregation, c, q) <= capacity(l, n) {
                continue;
            }
            violated.push(i);
            match wait_secs(l, c, q, n, policy, now) {
                None => {
                    upgrade.get_or_insert(i);
                    retry_after = None;
                }
                Some(s) => {
                    retry_after = retry_after.map(|r| r.max(s));
                    if latest_free.is_none_or(|(best, _)| s > best) {
                        latest_free = Some((s, i));
                    }
                }
            }
        }

        let mut holds = Vec::new();
        let refusal = if violated.is_empty() {
            let holding =
                matches!(apply, Apply::Use { reservation: true } | Apply::Hold) && spec.aggregation == Aggregation::Sum;
            for (l, _, c) in &mut limits {
                let next = admit(l, spec.aggregation, *c, q, apply);
                *c = next;
                if holding {
                    let window = match next {
                        Counter::Window { start, .. } => Some(start),
                        Counter::Gcra { .. } => None,
                    };
                    holds.push(Hold { key: l.policy_name().to_owned(), window });
                }
                self.put(l, next);
            }
            None
        } else {
            for &(l, _, c) in &limits {
                self.put(l, c);
            }
            let (kind, primary) = match upgrade {
                Some(i) => (RefusalKind::UpgradeRequired, i),
                None => (RefusalKind::RetryLater, latest_free.map_or(0, |(_, i)| i)),
            };
            Some(Refusal { kind, violated, primary, retry_after: retry_after.filter(|_| upgrade.is_none()) })
        };

        // `limits` now holds the counters that were just put.
        let statuses = limits.iter().map(|&(l, w, c)| status(l, c, w, now)).collect();
        (Decision { meter: spec.id.clone(), quantity: q, now, limits: statuses, refusal }, holds)
    }

    /// Asks whether `q` units would be admitted now, changing no usage.
    pub fn check(&mut self, policy: &Policy, meter: &MeterId, q: u64, now: Timestamp) -> Result<Decision, UsageError> {
        let spec = Self::meter_spec(policy, meter)?;
        Ok(self.decide(policy, spec, q, true, Apply::Nothing, now).0)
    }

    /// Records usage that happened (usage events): counted at once. With `enforce`, usage that
    /// would pass a hard limit is refused and not counted; without it, it is counted regardless.
    pub fn record(
        &mut self,
        policy: &Policy,
        meter: &MeterId,
        q: u64,
        enforce: bool,
        now: Timestamp,
    ) -> Result<Decision, UsageError> {
        let spec = Self::recordable(policy, meter)?;
        Ok(self.decide(policy, spec, q, enforce, Apply::Use { reservation: false }, now).0)
    }

    /// Checks and, when admitted, reserves `q` units as `how` says.
    pub fn reserve(
        &mut self,
        policy: &Policy,
        meter: &MeterId,
        q: u64,
        how: ReserveAs,
        now: Timestamp,
    ) -> Result<Decision, UsageError> {
        let ReserveAs { id, kind, ttl_ms } = how;
        let spec = Self::recordable(policy, meter)?;
        if spec.aggregation != Aggregation::Sum {
            return Err(UsageError::NotReservable { meter: meter.clone(), aggregation: spec.aggregation });
        }
        if self.reservations.contains_key(&id) {
            return Err(UsageError::DuplicateReservation(id));
        }
        let apply = match kind {
            ReservationKind::Optimistic => Apply::Use { reservation: true },
            ReservationKind::Provisional => Apply::Hold,
        };
        let (decision, holds) = self.decide(policy, spec, q, true, apply, now);
        if decision.allowed() {
            let expires = now.saturating_add_ms(ttl_ms);
            let r =
                Reservation { id: id.clone(), meter: meter.clone(), quantity: q, kind, created: now, expires, holds };
            self.reservations.insert(id, r);
        }
        Ok(decision)
    }

    /// Commits a reservation with the quantity actually used, which may differ from the one
    /// reserved (more, when the origin reported more: the overshoot is bounded by that request).
    pub fn commit(
        &mut self,
        policy: &Policy,
        id: &EventId,
        actual: u64,
        now: Timestamp,
    ) -> Result<Settled, UsageError> {
        self.settle(policy, id, Settlement::Committed { quantity: actual }, now)
    }

    /// Releases a reservation: its units go back to the org, once.
    pub fn release(&mut self, policy: &Policy, id: &EventId, now: Timestamp) -> Result<Settled, UsageError> {
        self.settle(policy, id, Settlement::Released, now)
    }

    /// Settles every loaded reservation that has expired by `now`: provisional ones are released,
    /// optimistic ones stand as committed.
    pub fn expire(&mut self, policy: &Policy, now: Timestamp) -> Vec<Settled> {
        let due: Vec<(EventId, Settlement)> = self
            .reservations
            .values()
            .filter(|r| r.expires <= now)
            .map(|r| {
                let s = match r.kind {
                    ReservationKind::Optimistic => Settlement::Committed { quantity: r.quantity },
                    ReservationKind::Provisional => Settlement::Released,
                };
                (r.id.clone(), s)
            })
            .collect();
        due.into_iter().filter_map(|(id, s)| self.settle(policy, &id, s, now).ok()).collect()
    }

    fn settle(
        &mut self,
        policy: &Policy,
        id: &EventId,
        settlement: Settlement,
        now: Timestamp,
    ) -> Result<Settled, UsageError> {
        let r = self.reservations.remove(id).ok_or_else(|| UsageError::UnknownReservation(id.clone()))?;
        let actual = match settlement {
            Settlement::Committed { quantity } => quantity,
            Settlement::Released => 0,
        };
        for hold in &r.holds {
            // A limit removed from the plan since the reservation has nothing to give back.
            let Some(limit) = policy.limits.iter().find(|l| l.policy_name() == hold.key) else {
                continue;
            };
            let c = current(limit, self.counters.get(&hold.key), policy, now);
            let next = match (c, hold.window) {
                (Counter::Gcra { at, backlog }, None) => {
                    let w = limit.period().rate_millis().unwrap_or(1);
                    let b = u128::from(backlog).saturating_sub(scaled(r.quantity, w)) + scaled(actual, w);
                    Counter::Gcra { at, backlog: sat(b) }
                }
                // Only the window the reservation was counted in is adjusted: once it has rolled
                // over, that usage belongs to the past window (and to the ledger).
                (Counter::Window { start, used, reserved }, Some(ws)) if ws == start => match r.kind {
                    ReservationKind::Provisional => Counter::Window {
                        start,
                        used: used.saturating_add(actual),
                        reserved: reserved.saturating_sub(r.quantity),
                    },
                    ReservationKind::Optimistic => Counter::Window {
                        start,
                        used: sat((u128::from(used) + u128::from(actual)).saturating_sub(u128::from(r.quantity))),
                        reserved,
                    },
                },
                (c, _) => c,
            };
            self.counters.insert(hold.key.clone(), next);
        }
        Ok(Settled { reservation: r, settlement })
    }

    /// Gives back `q` units that a proxied request was admitted with at `admitted_at` (on its
    /// meter and every composite it is part of): each rate window's backlog shrinks by `q`, and
    /// each fixed window gives them back only if it is still the window they were counted in.
    /// The caller guarantees it runs at most once per admission (it drops the request's hold in
    /// the same step) and skips it when a reset came after `admitted_at`.
    pub fn release_admitted(
        &mut self,
        policy: &Policy,
        meter: &MeterId,
        q: u64,
        admitted_at: Timestamp,
        now: Timestamp,
    ) {
        for limit in policy.enforced_for(meter) {
            let next = match current(limit, self.counters.get(limit.policy_name()), policy, now) {
                // An unlimited rate window never filled (see `admit`).
                c @ Counter::Gcra { .. } if limit.cap.limit().is_none() => c,
                Counter::Gcra { at, backlog } => {
                    let w = limit.period().rate_millis().unwrap_or(1);
                    Counter::Gcra { at, backlog: sat(u128::from(backlog).saturating_sub(scaled(q, w))) }
                }
                Counter::Window { start, used, reserved }
                    if limit.period().window(admitted_at, policy.billing_anchor).start == start =>
                {
                    Counter::Window { start, used: used.saturating_sub(q), reserved }
                }
                c @ Counter::Window { .. } => c,
            };
            self.put(limit, next);
        }
    }

    /// Zeroes the current window of every limit on `meter` (all meters when `None`). Open
    /// reservations stay open but no longer hold anything in the reset windows.
    pub fn reset(&mut self, policy: &Policy, meter: Option<&MeterId>, now: Timestamp) {
        for l in policy.limits.iter().filter(|l| meter.is_none_or(|m| l.meter() == m)) {
            let fresh = match l.period().rate_millis() {
                Some(_) => Counter::Gcra { at: now, backlog: 0 },
                None => {
                    Counter::Window { start: l.period().window(now, policy.billing_anchor).start, used: 0, reserved: 0 }
                }
            };
            self.put(l, fresh);
        }
        for r in self.reservations.values_mut() {
            if meter.is_none_or(|m| &r.meter == m) {
                r.holds.clear();
            }
        }
    }

    /// The committed usage of every fixed-window limit (day, month, lifetime) at `now`: what
    /// reconciliation compares with the ledger. Rate windows are not comparable and are left out.
    pub fn window_usage(&self, policy: &Policy, now: Timestamp) -> Vec<WindowUsage> {
        policy
            .limits
            .iter()
            .filter(|l| !l.period().is_rate())
            .filter_map(|l| match current(l, self.counters.get(l.policy_name()), policy, now) {
                Counter::Window { start, used, reserved } => Some(WindowUsage {
                    key: l.policy_name().to_owned(),
                    meter: l.meter().clone(),
                    start,
                    end: l.period().window(now, policy.billing_anchor).end,
                    used,
                    reserved,
                }),
                Counter::Gcra { .. } => None,
            })
            .collect()
    }

    /// Sets the committed usage of a fixed-window limit's current window (reconciliation repair:
    /// the ledger is the truth for committed usage). Held reservations are kept.
    pub fn repair(&mut self, policy: &Policy, key: &str, used: u64, now: Timestamp) {
        let Some(l) = policy.limits.iter().find(|l| l.policy_name() == key && !l.period().is_rate()) else { return };
        if let Counter::Window { start, reserved, .. } = current(l, self.counters.get(key), policy, now) {
            self.counters.insert(key.to_owned(), Counter::Window { start, used, reserved });
        }
    }

    /// The status of every limit of the policy at `now`.
    pub fn overview(&self, policy: &Policy, now: Timestamp) -> Vec<LimitStatus> {
        policy
            .limits
            .iter()
            .map(|l| {
                let w = l.period().window(now, policy.billing_anchor);
                status(l, current_in(l, self.counters.get(l.policy_name()), w, now), w, now)
            })
            .collect()
    }
}

/// The counter after admitting `q` units.
fn admit(limit: &Limit, agg: Aggregation, c: Counter, q: u64, apply: Apply) -> Counter {
    match (c, apply) {
        (_, Apply::Nothing) => c,
        // An unlimited rate window never drains, so it must never fill either.
        (Counter::Gcra { .. }, _) if limit.cap.limit().is_none() => c,
        (Counter::Gcra { at, backlog }, _) => {
            let w = limit.period().rate_millis().unwrap_or(1);
            Counter::Gcra { at, backlog: sat(u128::from(backlog) + scaled(q, w)) }
        }
        (Counter::Window { start, used, reserved }, Apply::Hold) => {
            Counter::Window { start, used, reserved: reserved.saturating_add(q) }
        }
        (Counter::Window { start, used, reserved }, Apply::Use { .. }) => {
            let used = match agg {
                Aggregation::Sum => used.saturating_add(q),
                Aggregation::Max => used.max(q),
                Aggregation::Latest => q,
            };
            Counter::Window { start, used, reserved }
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
