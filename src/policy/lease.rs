//! Pre-debited leases (Doorman's scheme): how many units the org's DO may hand one Worker
//! isolate to spend without a round trip, and how that isolate spends them.
//!
//! Owns the sizing rule (`grant_size`), the stranded bound, and the holder's side of a lease
//! (`LocalLease`: spend, give back, when to renew, what to report). The DO counts a grant as
//! used the moment it hands it out, so a lease can only ever strand capacity, never admit past a
//! hard limit. Must never do I/O or read a clock: `now` is always an argument.

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::ids::EventId;
use super::json::{err, Obj};
use super::plan::PlanError;

/// The largest `ttl_secs` a plan may name (what plans written before `RECALL_MS` hold).
pub const MAX_TTL_SECS: u64 = 10;

/// The longest any grant is spent for, whatever the plan's `ttl_secs`: a holder asks the DO
/// again within this, so a revoked or expired key, a reset and an override (and a plan change,
/// once the DO has adopted it) reach every lease holder within 2 s.
pub const RECALL_MS: u64 = 2_000;

/// What a holder with no history asks for: this many requests (a first lease is small; the
/// next ones follow the holder's own rate).
pub const FIRST_WANT: u64 = 32;

/// Share divisor `k`: a holder gets at most `room / (k × holders)`, so that all current holders
/// together hold at most about `1/k` of what is left.
pub const SHARE: u64 = 4;

/// How many requests of one key and meter within `RECALL_MS` make a lease worth granting, when
/// the plan does not say: four requests in 2 s (2 a second) save a lease at least three round
/// trips to the DO. A quieter key is decided strictly, request by request.
pub const DEFAULT_MIN_REQUESTS: u64 = 4;
/// The most `min_requests` may be.
pub const MAX_MIN_REQUESTS: u64 = 1_000;

/// A plan's lease rules: the largest lease, how long one may be spent, and how busy a key must
/// be on a meter (`min_requests` within `RECALL_MS`) before it gets one. Every plan has them
/// unless it says `"lease": false`: leases are adaptive and on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRules {
    pub max_units: NonZeroU64,
    pub ttl_ms: u64,
    pub min_requests: NonZeroU64,
}

impl LeaseRules {
    /// The rules of a plan that names none: leases of up to 1,000 units for 2 s, for a key that
    /// made 4 requests on the meter within 2 s.
    pub const DEFAULT: Self = Self {
        max_units: NonZeroU64::new(1000).unwrap(),
        ttl_ms: RECALL_MS,
        min_requests: NonZeroU64::new(DEFAULT_MIN_REQUESTS).unwrap(),
    };

    /// The plan's `lease`: absent (or `null`, or `true`) is the default rules, `false` turns
    /// leases off (`None`: every request asks the DO), and an object tunes them:
    /// `{"max_units": 1000, "ttl_secs": 2, "min_requests": 4}`.
    pub fn of_plan(path: &str, v: Option<&serde_json::Value>) -> Result<Option<Self>, PlanError> {
        match v {
            None | Some(serde_json::Value::Null | serde_json::Value::Bool(true)) => Ok(Some(Self::DEFAULT)),
            Some(serde_json::Value::Bool(false)) => Ok(None),
            Some(v) => Self::parse(path, v).map(Some),
        }
    }

    /// Parses the plan's `lease` object: `{"max_units": 1000, "ttl_secs": 5, "min_requests": 4}`.
    pub fn parse(path: &str, v: &serde_json::Value) -> Result<Self, PlanError> {
        let o = Obj::new(path, v, &["max_units", "ttl_secs", "min_requests"])?;
        let max = o.uint_opt("max_units")?.unwrap_or(1000);
        let Some(max_units) = NonZeroU64::new(max) else {
            return err(o.at("max_units"), "must be at least 1");
        };
        let ttl = o.uint_opt("ttl_secs")?.unwrap_or(RECALL_MS / 1000);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return err(o.at("ttl_secs"), format!("must be from 1 to {MAX_TTL_SECS} (got {ttl})"));
        }
        let min = o.uint_opt("min_requests")?.unwrap_or(DEFAULT_MIN_REQUESTS);
        let Some(min_requests) = NonZeroU64::new(min).filter(|m| m.get() <= MAX_MIN_REQUESTS) else {
            return err(o.at("min_requests"), format!("must be from 1 to {MAX_MIN_REQUESTS} (got {min})"));
        };
        Ok(Self { max_units, ttl_ms: ttl * 1000, min_requests })
    }
}

/// The stranded bound of a hard limit: at most 1% of it may sit in leases, with no floor. A
/// limit under 400 units leaves no holder a lease of two requests, so it is decided strictly,
/// request by request: a small customer's month is never a lease's to strand.
pub const fn stranded_bound(limit: u64) -> u64 {
    limit / 100
}

/// One hard limit the lease would spend, as the DO sees it after admitting the asking request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub limit: u64,
    pub remaining: u64,
}

/// How many units to lease (a whole number of requests of `cost`), or 0 for strict decisions.
///
/// `rooms` are the meter's hard limits (composites included); `at_risk` is what leases on the
/// meter hold that could still be stranded (every lease not closed, and those written off in
/// the current window) and `holders` how many are being spent besides the asker's. For each
/// hard limit with bound `B`:
/// - a lease is at most `remaining / (k × (holders + 1))`: leases shrink as the limit nears,
///   and below two requests the limit is decided strictly, request by request;
/// - everything at risk stays within `B`: if every holder died at once, the capacity stranded
///   for the rest of the window would still be within the bound; and one holder's lease is at
///   most `B / (2 × (holders + 1))`, its fair share of that bound.
///
/// And never more than the holder `want`s (its own rate over a lease period), so that an
/// isolate that dies strands about half a period of its own traffic, not a share of the org's.
/// Without a hard limit (unlimited or soft meters) only `max_units` and `want` apply: the lease
/// only batches counting.
pub fn grant_size(
    rules: &LeaseRules,
    cost: NonZeroU64,
    want: u64,
    rooms: impl IntoIterator<Item = Room>,
    at_risk: u64,
    holders: u64,
) -> u64 {
    let mut size = rules.max_units.get().min(want);
    let share = SHARE.saturating_mul(holders.saturating_add(1));
    for r in rooms {
        let bound = stranded_bound(r.limit);
        // A fair share of the bound: each holder has up to two leases at risk (the one it
        // spends and the one it replaced, closed with its next renewal).
        let fair = bound / holders.saturating_add(1).saturating_mul(2);
        size = size.min(r.remaining / share).min(bound.saturating_sub(at_risk)).min(fair);
    }
    let cost = cost.get();
    let whole = size / cost * cost;
    // A lease of one request is no better than asking: strict instead.
    if whole / cost < 2 {
        0
    } else {
        whole
    }
}

/// One limit as the holder renders it in the `RateLimit` fields: its remaining after the grant
/// (the org's, less every open lease), to which the holder adds what it has not spent yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLimit {
    pub policy: String,
    pub limit: u64,
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_secs: Option<u64>,
    /// When the limit resets, in epoch ms (`None` for lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_ms: Option<u64>,
}

/// A lease as the DO grants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The hold that carries the lease's units in the DO (and the request id it is under).
    pub token: u64,
    pub id: EventId,
    pub units: u64,
    /// How long it may be spent, from when the holder received it (≤ `MAX_TTL_SECS`; ends
    /// earlier at a fixed window's end, so no unit is spent in a window it was not counted in).
    pub ttl_ms: u64,
    pub limits: Vec<LeaseLimit>,
}

/// What a holder says of a lease it stops spending: its hold, what of it the holder did not
/// spend, and how many requests it admitted from it (for the decision counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClosing {
    pub id: EventId,
    pub token: u64,
    pub unused: u64,
    pub spent: u64,
}

/// A lease in the holder's (the isolate's) memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    pub grant: Grant,
    pub cost: u64,
    pub left: u64,
    /// When the holder received it: its spending rate is measured from here.
    pub received: Timestamp,
    /// A renewal is on its way: no second one.
    pub renewing: bool,
}

impl LocalLease {
    pub fn new(grant: Grant, cost: u64, received: Timestamp) -> Self {
        Self { left: grant.units, grant, cost, received, renewing: false }
    }

    /// The holder's own deadline: it received the grant after the DO made it, so this is never
    /// earlier than the DO's; the DO allows a grace beyond its own for that flight time.
    pub const fn until(&self) -> Timestamp {
        self.received.saturating_add_ms(self.grant.ttl_ms)
    }

    /// Spends one request's units if the lease still has them and is in time.
    pub fn take(&mut self, now: Timestamp) -> bool {
        if now >= self.until() || self.left < self.cost {
            return false;
        }
        self.left -= self.cost;
        true
    }

    /// A request this lease admitted failed at the origin: its units return to the lease.
    pub fn give_back(&mut self, q: u64) {
        self.left = self.left.saturating_add(q).min(self.grant.units);
    }

    /// Renew ahead of exhaustion or expiry: once half is spent or half the time has passed.
    pub fn wants_renewal(&self, now: Timestamp) -> bool {
        let half_time = self.until().millis().saturating_sub(self.grant.ttl_ms / 2);
        !self.renewing && (self.left.saturating_mul(2) < self.grant.units || now.millis() >= half_time)
    }

    /// The next lease's size this holder asks for: what it spent per lease period so far,
    /// doubled (it renews at half), and at least two requests.
    pub fn want(&self, now: Timestamp) -> u64 {
        let spent = u128::from(self.grant.units.saturating_sub(self.left));
        let elapsed = u128::from(now.since(self.received).max(1));
        let per_period = spent * u128::from(self.grant.ttl_ms) / elapsed;
        u64::try_from(per_period.saturating_mul(2)).unwrap_or(u64::MAX).max(self.cost.saturating_mul(2))
    }

    /// Stops spending: what to report.
    pub fn close(&self) -> LeaseClosing {
        let spent = self.grant.units.saturating_sub(self.left).checked_div(self.cost).unwrap_or(0);
        LeaseClosing { id: self.grant.id.clone(), token: self.grant.token, unused: self.left, spent }
    }
}

/// What a holder's lease says of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spend {
    /// Admitted from lease `token` (hold `id`). `renew`: ask for the next lease now, off the
    /// request path, closing `to_close` (the lease the current one replaced) with it.
    /// `want` is the size to ask for.
    Taken { token: u64, id: EventId, renew: bool, want: u64, to_close: Option<LeaseClosing> },
    /// No lease: ask the DO.
    Ask,
    /// The lease ran out or expired: ask the DO, and close these (their unspent units go back).
    AskAndClose(Vec<LeaseClosing>),
}

/// One holder's lease for one request class: the lease being spent, the one it replaced (closed
/// with the next renewal), and whether a strict decision is already asking for a lease. The
/// Worker keeps one per (org, key, meter, cost) in isolate memory; the simulation one per holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    lease: Option<LocalLease>,
    plan: String,
    to_close: Option<LeaseClosing>,
    asking: bool,
    /// The plan has no lease mode: do not ask before this (the DO adopts a plan change
    /// within `NO_LEASE_MS`, so asking again then finds a new lease mode).
    quiet_until: Option<Timestamp>,
}

/// How long a holder stops asking after the DO said the plan has no lease mode (the plan
/// refresh bound, `PLAN_REFRESH_SECS`, by default).
pub const NO_LEASE_MS: u64 = 60_000;

impl Slot {
    /// Spends one request from the lease, if there is one in time with room.
    pub fn spend(&mut self, now: Timestamp) -> Spend {
        let Some(l) = self.lease.as_mut() else { return Spend::Ask };
        if !l.take(now) {
            // A renewal on its way will replace it; otherwise it is done with.
            if l.renewing {
                return Spend::Ask;
            }
            let done = l.close();
            self.lease = None;
            return Spend::AskAndClose(self.to_close.take().into_iter().chain([done]).collect());
        }
        let renew = l.wants_renewal(now);
        l.renewing |= renew;
        let to_close = if renew { self.to_close.take() } else { None };
        Spend::Taken { token: l.grant.token, id: l.grant.id.clone(), renew, want: l.want(now), to_close }
    }

    /// The `RateLimit` headers of a request just admitted from the lease.
    pub fn headers(&self, now: Timestamp) -> super::headers::HeaderList {
        self.lease.as_ref().map(|l| super::headers::lease_headers(&l.grant.limits, l.left, now)).unwrap_or_default()
    }

    /// The plan the lease was granted under (for the origin's tenant headers).
    pub fn plan(&self) -> &str {
        &self.plan
    }

    /// Whether a strict decision should ask for a lease: not while a renewal or another ask is
    /// on its way, so that a burst of requests does not take a lease each, and not for a while
    /// after the DO said the plan has no lease mode.
    pub fn ask(&mut self, now: Timestamp) -> bool {
        if self.quiet_until.is_some_and(|t| now < t) {
            return false;
        }
        self.quiet_until = None;
        let renewing = self.lease.as_ref().is_some_and(|l| l.renewing);
        let ask = !renewing && !self.asking;
        self.asking |= ask;
        ask
    }

    /// The DO said the plan has no lease mode: stop asking for `NO_LEASE_MS`.
    pub fn no_lease(&mut self, now: Timestamp) {
        self.quiet_until = Some(now.saturating_add_ms(NO_LEASE_MS));
    }

    /// The decision that asked came back (with or without a lease, or not at all).
    pub fn asked(&mut self) {
        self.asking = false;
    }

    /// Installs a new grant. The lease it replaces stops being spent now; its closing waits for
    /// the next renewal, or is returned when one is already waiting (send that one now).
    pub fn install(&mut self, grant: Grant, cost: u64, plan: String, now: Timestamp) -> Option<LeaseClosing> {
        self.plan = plan;
        let old = self.lease.replace(LocalLease::new(grant, cost, now))?;
        self.to_close.replace(old.close())
    }

    /// A renewal came back without a lease (`failed`: or not at all). Without a lease on offer
    /// the current one is closed too, so its units go back to strict decisions; a failed one
    /// keeps spending until its deadline. Returns the closings to send now.
    pub fn refused(&mut self, failed: bool) -> Vec<LeaseClosing> {
        if let Some(l) = self.lease.as_mut() {
            l.renewing = false;
        }
        if failed {
            return Vec::new();
        }
        let current = self.lease.take().map(|l| l.close());
        self.to_close.take().into_iter().chain(current).collect()
    }

    /// Gives a failed request's units back to the lease it came from, if that lease is still
    /// the one being spent; `false`: it was replaced, and the DO must release them.
    pub fn give_back(&mut self, token: u64, q: u64) -> bool {
        match self.lease.as_mut() {
            Some(l) if l.grant.token == token => {
                l.give_back(q);
                true
            }
            _ => false,
        }
    }

    /// Nothing held, nothing waiting: the slot can go.
    pub const fn is_idle(&self) -> bool {
        self.lease.is_none() && self.to_close.is_none() && !self.asking && self.quiet_until.is_none()
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
