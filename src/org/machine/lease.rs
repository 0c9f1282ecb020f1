//! Lease mode in the org machine: granting a pre-debited lease, closing one (its unspent units
//! go back), and which leases are open. A grant is an admission of its whole size, counted
//! in the counters and the ledger buckets at once like a proxied request; a close is a partial
//! release. So every rule of the hot path (composites, windows, resets, the ledger's negative
//! deltas) holds for leases unchanged, and a lease its holder never closes stays counted: it
//! strands units, it never admits past a limit. Nothing here does I/O.

use std::collections::BTreeMap;

use serde_json::json;

use super::ops::{Cx, Held};
use super::{OrgError, OrgMachine};
use crate::org::io::OutboxRow;
use crate::org::msg::{KeyHash, LeaseClosing, OrgReply};
use crate::policy::lease::{grant_size, Grant, LeaseLimit, Room, RECALL_MS};
use crate::policy::{Decision, EventId, MeterId, Timestamp, UsageError};
use crate::telemetry::Outcome;

/// How long past its own deadline the DO counts a lease as open: the holder's deadline runs
/// from when it received the grant, so it ends after the DO's by the flight time.
pub const GRACE_MS: u64 = 2_000;

/// How long a closed (or expired) lease's hold is kept for late releases and a late close.
pub const REPORT_WINDOW_MS: u64 = 120_000;

/// A grant shorter than this is not worth a lease (a fixed window about to end): strict.
const MIN_TTL_MS: u64 = 500;

/// What a lease not yet closed holds: spendable until `until`; after that its holder either
/// closes it late (it was alive) or never does (it died), and at `drop_at` its units count as
/// stranded for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLease {
    meter: MeterId,
    units: u64,
    granted: Timestamp,
    until: Timestamp,
    drop_at: Timestamp,
}

/// How often one key asked for a lease on one meter lately: its asks in the current window of
/// `RECALL_MS` (adaptive leases: a key busy enough gets one, a quiet one is decided strictly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    since: Timestamp,
    asks: u64,
}

/// The most keys whose demand is kept (each with one entry per meter it asked on). Keys are made
/// by the admin and meters by the plan (an unknown meter never gets here), so this only trims
/// the quiet ones of a large org.
const MAX_DEMAND: usize = 4_096;

/// Units one lease holds that no request is known to have spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unspent {
    /// The lease's hold token (`None`: granted in this step, or written off).
    pub(super) token: Option<u64>,
    pub(super) meter: MeterId,
    /// When it was granted: it counts in the windows that contain this instant only.
    pub(super) granted: Timestamp,
    pub(super) units: u64,
}

/// Units of leases never closed: stranded in the window they were counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenOff {
    meter: MeterId,
    granted: Timestamp,
    units: u64,
}

impl OrgMachine {
    /// What open leases hold, for the state view: how many are being spent, their units, and
    /// the units of leases never closed (stranded) since this instance started.
    pub(super) fn open_leases(&self, now: Timestamp) -> serde_json::Value {
        let open = self.leases.values().filter(|l| l.until > now);
        let (count, units) = open.fold((0u64, 0u64), |(n, u), l| (n + 1, u.saturating_add(l.units)));
        let stranded = self.written_off.iter().fold(0u64, |a, w| a.saturating_add(w.units));
        json!({"count": count, "units": units, "stranded": stranded})
    }

    /// Units leases hold that no request is known to have spent: every lease not closed, and
    /// those written off (never closed: stranded, never spent), each with its grant time.
    pub(super) fn unspent(&self) -> Vec<Unspent> {
        let open = self.leases.iter().map(|(t, l)| Unspent {
            token: Some(*t),
            meter: l.meter.clone(),
            granted: l.granted,
            units: l.units,
        });
        let gone = self.written_off.iter().map(|w| Unspent {
            token: None,
            meter: w.meter.clone(),
            granted: w.granted,
            units: w.units,
        });
        open.chain(gone).collect()
    }

    /// Counts an ask of `key` for a lease on `meter`: whether the key has now asked `min` times
    /// within `RECALL_MS` (the adaptive switch: a lease is worth granting only to a busy key).
    /// A key and meter seen before are found without copying either (no allocation per ask).
    pub(super) fn busy_enough(&mut self, key: &KeyHash, meter: &MeterId, min: u64, now: Timestamp) -> bool {
        if !self.demand.contains_key(key) {
            // A new key: quiet ones make room; with none quiet, it is decided strictly (the
            // table never passes its bound, and a full one is scanned only for a new key).
            if self.demand.len() >= MAX_DEMAND {
                self.demand.retain(|_, by_meter| {
                    by_meter.retain(|_, d| now.since(d.since) < RECALL_MS);
                    !by_meter.is_empty()
                });
                if self.demand.len() >= MAX_DEMAND {
                    return false;
                }
            }
            self.demand.insert(key.clone(), BTreeMap::new());
        }
        let Some(by_meter) = self.demand.get_mut(key) else { return false };
        if !by_meter.contains_key(meter) {
            by_meter.insert(meter.clone(), Demand { since: now, asks: 0 });
        }
        let Some(d) = by_meter.get_mut(meter) else { return false };
        if now.since(d.since) >= RECALL_MS {
            *d = Demand { since: now, asks: 0 };
        }
        d.asks = d.asks.saturating_add(1);
        d.asks >= min
    }

    /// On `meter`: units at risk (every lease not closed, live or past its deadline, plus the
    /// written-off units counted since `since`), and how many holders are spending one now.
    fn at_risk(&mut self, meter: &MeterId, since: Timestamp, now: Timestamp) -> (u64, u64) {
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.leases).into_iter().partition(|(_, l)| l.drop_at <= now);
        self.leases = kept.into_iter().collect();
        self.written_off.extend(gone.into_iter().map(|(_, l)| WrittenOff {
            meter: l.meter,
            granted: l.granted,
            units: l.units,
        }));
        self.written_off.retain(|w| w.granted >= since || &w.meter != meter);
        let written: u64 =
            self.written_off.iter().filter(|w| &w.meter == meter).fold(0, |a, w| a.saturating_add(w.units));
        self.leases
            .values()
            .filter(|l| &l.meter == meter)
            .fold((written, 0), |(units, n), l| (units.saturating_add(l.units), n + u64::from(l.until > now)))
    }

    /// A lease for requests of `cost` on `meter`, or `None` (no lease mode, a cost the lease
    /// cannot carry, an audit meter, or too little room left: decide strictly).
    pub(super) fn grant(
        &mut self,
        cx: &mut Cx<'_>,
        meter: &MeterId,
        (cost, want): (u64, u64),
        id: EventId,
    ) -> Option<Grant> {
        let loaded = cx.loaded;
        let (policy, now) = (&loaded.policy, cx.now);
        let rules = policy.lease?;
        let cost = std::num::NonZeroU64::new(cost)?;
        // An audit meter keeps one row per request: those requests must each reach the DO.
        if policy.meter(meter).is_none_or(|m| m.audit || !m.parts.is_empty()) {
            return None;
        }
        let view = cx.book.check(policy, meter, 0, now).ok()?;
        let hard = || view.limits.iter().filter(|l| l.mode == "hard");
        let rooms = hard().map(|l| Room { limit: l.limit.unwrap_or(0), remaining: l.remaining.unwrap_or(0) });
        // Stranded units matter in the windows they were counted in: the oldest current window.
        let since = hard().map(|l| l.window_start).min().unwrap_or(now);
        let (outstanding, holders) = self.at_risk(meter, since, now);
        let units = grant_size(&rules, cost, want, rooms, outstanding, holders);
        // A fixed window's units are spent in that window only, and a key that expires takes
        // its lease with it.
        let ttl_ms = view
            .limits
            .iter()
            .filter(|l| !l.period.is_rate())
            .filter_map(|l| l.reset.map(|r| r.since(now)))
            .chain(cx.key_until.map(|t| t.since(now)))
            .fold(rules.ttl_ms.min(RECALL_MS), u64::min);
        if units == 0 || ttl_ms < MIN_TTL_MS || self.bucket_room(cx.loaded, meter, units, now.millis()).is_err() {
            return None;
        }
        let decision = cx.book.record(policy, meter, units, true, now).ok().filter(Decision::allowed)?;
        cx.persist(meter);
        // Counted, not spent: no alert level is reached by a grant.
        cx.unspent_after.push(Unspent { token: None, meter: meter.clone(), granted: now, units });
        cx.alerts_for(&decision.limits);
        let (buckets, _) = self.record_usage(cx, meter, OutboxRow::audit(id.to_string(), meter, units, "lease", now));
        let deadline = now.saturating_add_ms(ttl_ms.saturating_add(GRACE_MS));
        let until = deadline.saturating_add_ms(REPORT_WINDOW_MS);
        let h = Held {
            id: id.clone(),
            meter: meter.clone(),
            quantity: units,
            buckets,
            admitted: now,
            until,
            audit_seq: None,
        };
        let token = self.hold(h, now);
        self.leases
            .insert(token, OpenLease { meter: meter.clone(), units, granted: now, until: deadline, drop_at: until });
        let limits = decision
            .limits
            .iter()
            .filter_map(|l| {
                Some(LeaseLimit {
                    policy: l.policy.to_string(),
                    limit: l.limit?,
                    remaining: l.remaining?,
                    window_secs: l.window_secs,
                    reset_ms: l.reset.map(Timestamp::millis),
                })
            })
            .collect();
        Some(Grant { token, id, units, ttl_ms, limits })
    }

    /// Closes a lease: its unspent units go back (at most what it holds, and only once), and
    /// the requests it admitted are counted as leased decisions.
    fn close(&mut self, cx: &mut Cx<'_>, c: &LeaseClosing) -> Result<(), OrgError> {
        let unknown = || UsageError::UnknownReservation(c.id.clone());
        // Open means still in `leases` (a lease leaves it when closed, or when its hold goes):
        // a second close, or one for another instance's lease, finds nothing.
        let Some(lease) = self.leases.remove(&c.token) else {
            return Err(unknown().into());
        };
        let h = self.held.get_mut(&c.token).filter(|h| h.id == c.id && h.until > cx.now).ok_or_else(unknown)?;
        let unused = c.unused.min(h.quantity);
        h.quantity -= unused;
        let h = h.clone();
        self.give_back(cx, &h, unused);
        if h.quantity == 0 {
            self.held.remove(&c.token);
        }
        self.count_n(&h.meter, Outcome::Leased, c.spent, cx.now);
        // What it spent is known now: the alerts its requests reached fire.
        cx.unspent_after.retain(|u| u.token != Some(c.token));
        let policy = &cx.loaded.policy;
        let after: Vec<_> = cx
            .book
            .overview(policy, cx.now)
            .into_iter()
            .filter(|l| l.meter == lease.meter || policy.composites_of(&lease.meter).contains(&l.meter))
            .collect();
        cx.alerts_for(&after);
        Ok(())
    }

    /// `OrgOp::Lease`: close the holder's lease, if any, and grant the next one, if the room
    /// allows. A close that names no lease this instance holds (restarted, or closed already)
    /// gives nothing back and is not an error: the holder simply asks afresh.
    pub(super) fn lease(
        &mut self,
        cx: &mut Cx<'_>,
        meter: &MeterId,
        (cost, want): (u64, u64),
        id: EventId,
        closing: Option<&LeaseClosing>,
    ) -> Result<OrgReply, OrgError> {
        let closed = match closing {
            Some(c) => self.close(cx, c).is_ok(),
            None => false,
        };
        let policy = &cx.loaded.policy;
        policy.meter(meter).ok_or_else(|| UsageError::UnknownMeter(meter.clone()))?;
        let plan = Some(policy.plan.to_string());
        // A holder asks for `want`: twice what it spent per lease period. One that spent fewer
        // than `min_requests` requests a period goes back to strict decisions (no renewal).
        let busy = policy.lease.is_some_and(|r| want / 2 >= r.min_requests.get().saturating_mul(cost));
        let lease = if busy { self.grant(cx, meter, (cost, want), id) } else { None };
        let body = json!({"closed": closed});
        Ok(OrgReply { body, plan, lease, ..OrgReply::EMPTY })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::io::Boot;

    #[test]
    fn the_demand_table_never_passes_its_bound() {
        let mut m = OrgMachine::boot(Boot::default());
        let meter = MeterId::parse("requests").unwrap_or_else(|e| unreachable!("{e}"));
        let key = |i: usize| KeyHash(format!("{i:064x}"));
        let t0 = Timestamp::from_millis(1_000_000);
        for i in 0..MAX_DEMAND {
            m.busy_enough(&key(i), &meter, 1, t0);
        }
        // Every key asked within 2 s: a new one is decided strictly and kept nowhere.
        assert!(!m.busy_enough(&key(MAX_DEMAND), &meter, 1, t0.saturating_add_ms(1)));
        assert_eq!(m.demand.len(), MAX_DEMAND);
        // A key already kept still counts.
        assert!(m.busy_enough(&key(7), &meter, 2, t0.saturating_add_ms(1)));
        // Once the others are quiet, the new key makes room for itself.
        let later = t0.saturating_add_ms(RECALL_MS);
        assert!(m.busy_enough(&key(MAX_DEMAND), &meter, 1, later));
        assert!(m.demand.len() <= MAX_DEMAND);
    }
}
