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

/// The longest a lease may be spent for: a dead isolate's units are stranded at most this long
/// past their last use, and a revoked key keeps working at most this long.
pub const MAX_TTL_SECS: u64 = 10;

/// Share divisor `k`: a holder gets at most `room / (k × holders)`, so that all current holders
/// together hold at most about `1/k` of what is left.
pub const SHARE: u64 = 4;

/// A plan's lease mode: the largest lease and how long one may be spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRules {
    pub max_units: NonZeroU64,
    pub ttl_ms: u64,
}

impl LeaseRules {
    /// Parses the plan's `lease` object: `{"max_units": 1000, "ttl_secs": 5}`.
    pub fn parse(path: &str, v: &serde_json::Value) -> Result<Self, PlanError> {
        let o = Obj::new(path, v, &["max_units", "ttl_secs"])?;
        let max = o.uint_opt("max_units")?.unwrap_or(1000);
        let Some(max_units) = NonZeroU64::new(max) else {
            return err(o.at("max_units"), "must be at least 1");
        };
        let ttl = o.uint_opt("ttl_secs")?.unwrap_or(5);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return err(o.at("ttl_secs"), format!("must be from 1 to {MAX_TTL_SECS} (got {ttl})"));
        }
        Ok(Self { max_units, ttl_ms: ttl * 1000 })
    }
}

/// The stranded bound of a hard limit: at most 1% of it or 100 units, whichever is larger, may
/// sit in leases near the limit.
pub const fn stranded_bound(limit: u64) -> u64 {
    let pct = limit / 100;
    if pct > 100 {
        pct
    } else {
        100
    }
}

/// One hard limit the lease would spend, as the DO sees it after admitting the asking request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub limit: u64,
    pub remaining: u64,
}

/// How many units to lease (a whole number of requests of `cost`), or 0 for strict decisions.
///
/// `rooms` are the meter's hard limits (composites included); `outstanding` is what open leases
/// on the meter already hold and `holders` how many there are besides the asker. For each hard
/// limit with bound `B`:
/// - at or below `B` remaining, leases stop (strict per-request decisions take the rest);
/// - a lease is at most `(remaining − B) / (k × (holders + 1))`;
/// - all open leases together stay within `max(B, remaining / k)`.
///
/// Without a hard limit (unlimited or soft meters) the lease is simply `max_units`: it only
/// batches counting.
pub fn grant_size(
    rules: &LeaseRules,
    cost: NonZeroU64,
    rooms: impl IntoIterator<Item = Room>,
    outstanding: u64,
    holders: u64,
) -> u64 {
    let mut size = rules.max_units.get();
    let share = SHARE.saturating_mul(holders.saturating_add(1));
    for r in rooms {
        let bound = stranded_bound(r.limit);
        let above_bound = r.remaining.saturating_sub(bound);
        let all_leases = bound.max(r.remaining / SHARE).min(r.remaining);
        size = size.min(above_bound / share).min(all_leases.saturating_sub(outstanding));
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

/// What a holder says of a lease it stops spending: which one, and how much it did not spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    pub token: u64,
    pub unused: u64,
}

/// A lease in the holder's (the isolate's) memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    pub grant: Grant,
    pub cost: u64,
    pub left: u64,
    /// The holder's own deadline: it received the grant after the DO made it, so this is never
    /// earlier than the DO's; the DO allows a grace beyond its own for that flight time.
    pub until: Timestamp,
    /// A renewal is on its way: no second one.
    pub renewing: bool,
}

impl LocalLease {
    pub fn new(grant: Grant, cost: u64, received: Timestamp) -> Self {
        let until = received.saturating_add_ms(grant.ttl_ms);
        Self { left: grant.units, grant, cost, until, renewing: false }
    }

    /// Spends one request's units if the lease still has them and is in time.
    pub fn take(&mut self, now: Timestamp) -> bool {
        if now >= self.until || self.left < self.cost {
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
        let half_time = self.until.millis().saturating_sub(self.grant.ttl_ms / 2);
        !self.renewing && (self.left.saturating_mul(2) < self.grant.units || now.millis() >= half_time)
    }

    /// Stops spending: what to report.
    pub const fn close(&self) -> Closing {
        Closing { token: self.grant.token, unused: self.left }
    }

    /// The limits as this holder shows them now: the org's remaining is the DO's figure plus
    /// what this holder has not spent (other holders' unspent units are not visible here).
    pub fn limits(&self) -> impl Iterator<Item = LeaseLimit> + '_ {
        self.grant
            .limits
            .iter()
            .map(|l| LeaseLimit { remaining: l.remaining.saturating_add(self.left).min(l.limit), ..l.clone() })
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
