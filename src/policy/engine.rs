//! The decision engine: one atomic decision across every limit a meter touches, reservations,
//! and check / reserve / commit / release / expire.
//!
//! One limit's arithmetic is `counter`'s; this module decides across limits. `Book` holds only
//! the counters and reservations a caller loaded; the caller persists what changed. Must never
//! do I/O or read a clock: `now` is always an argument.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::counter::{admit, capacity, current, current_in, proposed, sat, scaled, status, wait_secs, Apply, Counter};
use super::decision::{Decision, LimitStatus, Refusal, RefusalKind};
use super::ids::{EventId, MeterId};
use super::period::Window;
use super::plan::{Aggregation, Cap, Counts, Limit, MeterSpec, Policy, MAX_SAFE_INTEGER};

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
    /// The count would pass `MAX_SAFE_INTEGER`, the largest that JSON, D1 and the DO's storage keep
    /// exactly; nothing is counted.
    #[error("'{policy}' would pass {max}, the largest count the gateway keeps", max = MAX_SAFE_INTEGER)]
    CountCeiling { policy: String },
}

/// The counters and open reservations a caller loaded for one org.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Book {
    /// Keyed by `Limit::policy_name()`.
    pub counters: BTreeMap<String, Counter>,
    pub reservations: BTreeMap<EventId, Reservation>,
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
    /// record needs none and allocates none. Usage that would take a window's count past
    /// `MAX_SAFE_INTEGER` is an error, and changes nothing.
    fn decide(
        &mut self,
        policy: &Policy,
        spec: &MeterSpec,
        q: u64,
        enforce: bool,
        apply: Apply,
        now: Timestamp,
    ) -> Result<(Decision, Vec<Hold>), UsageError> {
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
            // Only a fixed window counts without a bound of its own (a soft or unlimited limit); a
            // rate window's backlog is bounded by its hard limit.
            let past = |&&(l, _, c): &&(&Limit, Window, Counter)| {
                matches!(c, Counter::Window { .. })
                    && proposed(l, spec.aggregation, c, q) > u128::from(MAX_SAFE_INTEGER)
            };
            if let Some(&(l, ..)) = (!matches!(apply, Apply::Nothing)).then(|| limits.iter().find(past)).flatten() {
                return Err(UsageError::CountCeiling { policy: l.policy_name().to_owned() });
            }
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
        Ok((Decision { meter: spec.id.clone(), quantity: q, now, limits: statuses, refusal }, holds))
    }

    /// Asks whether `q` units would be admitted now, changing no usage.
    pub fn check(&mut self, policy: &Policy, meter: &MeterId, q: u64, now: Timestamp) -> Result<Decision, UsageError> {
        let spec = Self::meter_spec(policy, meter)?;
        Ok(self.decide(policy, spec, q, true, Apply::Nothing, now)?.0)
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
        Ok(self.decide(policy, spec, q, enforce, Apply::Use { reservation: false }, now)?.0)
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
        let (decision, holds) = self.decide(policy, spec, q, true, apply, now)?;
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
        let r = self.reservations.get(id).ok_or_else(|| UsageError::UnknownReservation(id.clone()))?;
        let actual = match settlement {
            Settlement::Committed { quantity } => quantity,
            Settlement::Released => 0,
        };
        // Every counter's next value first: a commit that would pass the ceiling changes nothing
        // and leaves the reservation open.
        let mut next_counters = Vec::with_capacity(r.holds.len());
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
                (Counter::Window { start, used, reserved }, Some(ws)) if ws == start => {
                    let with_actual = u128::from(used) + u128::from(actual);
                    let (used, reserved) = match r.kind {
                        ReservationKind::Provisional => (with_actual, reserved.saturating_sub(r.quantity)),
                        ReservationKind::Optimistic => (with_actual.saturating_sub(u128::from(r.quantity)), reserved),
                    };
                    if used + u128::from(reserved) > u128::from(MAX_SAFE_INTEGER) {
                        return Err(UsageError::CountCeiling { policy: hold.key.clone() });
                    }
                    Counter::Window { start, used: sat(used), reserved }
                }
                (c, _) => c,
            };
            next_counters.push((hold.key.clone(), next));
        }
        let r = self.reservations.remove(id).ok_or_else(|| UsageError::UnknownReservation(id.clone()))?;
        self.counters.extend(next_counters);
        Ok(Settled { reservation: r, settlement })
    }

    /// Gives back `q` units that a proxied request was admitted with at `admitted_at` (on its
    /// meter and every composite it is part of), to each limit that counts successes only (a
    /// limit counting attempts keeps them): a rate window's backlog shrinks by `q`, and a fixed
    /// window gives them back only if it is still the window they were counted in.
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
        // A limit that counts attempts keeps them: the request reached the origin.
        for limit in policy.enforced_for(meter).filter(|l| l.counts == Counts::Successes) {
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "view_tests.rs"]
mod view_tests;
