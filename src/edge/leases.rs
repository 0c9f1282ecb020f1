//! This isolate's leases (lease mode): one per (org, key, meter, cost), in isolate memory.
//!
//! Glue only: the spending rules are `policy::lease::LocalLease`, the granting rules are the
//! org machine's. This file keeps the map, swaps in a new grant (the lease it replaces is
//! closed with the holder's next renewal), and says when to renew. It must never decide a
//! request a lease does not cover, and never spend a lease past its own deadline.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use crate::org::msg::LeaseClosing;
use crate::policy::headers::lease_headers;
use crate::policy::lease::{Grant, LocalLease};
use crate::policy::{EventId, MeterId, OrgId, Timestamp};

/// Whose lease: an org's key (the DO checked that key when it granted it) for one request class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    pub org: OrgId,
    pub key_hash: String,
    pub meter: MeterId,
    pub cost: u64,
}

struct Entry {
    lease: LocalLease,
    plan: String,
    /// The lease this one replaced, not yet closed: it goes with the next renewal.
    to_close: Option<LeaseClosing>,
}

thread_local! {
    static LEASES: RefCell<HashMap<LeaseKey, Entry>> = RefCell::new(HashMap::new());
    /// Keys with a strict decision on its way that asked for a lease: one asks at a time, so a
    /// burst of first requests does not take a lease each.
    static ASKING: RefCell<HashSet<LeaseKey>> = RefCell::new(HashSet::new());
}

/// Whether this strict decision should ask for a lease (none is on its way for the key); if so,
/// the key is marked until `asked`.
pub fn ask(k: &LeaseKey) -> bool {
    let renewing = LEASES.with(|m| m.borrow().get(k).is_some_and(|e| e.lease.renewing));
    !renewing && ASKING.with(|a| a.borrow_mut().insert(k.clone()))
}

/// The decision that asked came back (with or without a lease, or not at all).
pub fn asked(k: &LeaseKey) {
    ASKING.with(|a| a.borrow_mut().remove(k));
}

/// A request admitted from a lease.
pub struct Taken {
    pub token: u64,
    pub id: EventId,
    pub plan: String,
    pub headers: Vec<(String, String)>,
    /// Renew now, off the request path.
    pub renew: bool,
    /// The replaced lease's closing, to send with that renewal.
    pub to_close: Option<LeaseClosing>,
}

fn closing_of(l: &LocalLease) -> LeaseClosing {
    let c = l.close();
    let spent = l.grant.units.saturating_sub(c.unused).checked_div(l.cost).unwrap_or(0);
    LeaseClosing { id: l.grant.id.clone(), token: c.token, unused: c.unused, spent }
}

/// What the key's lease says of one request.
pub enum Spend {
    Taken(Taken),
    /// No lease here: ask the DO.
    Ask,
    /// The lease ran out or expired: ask the DO, and close these (their unspent units go back).
    AskAndClose(Vec<LeaseClosing>),
}

/// Spends one request from the key's lease, if it has one in time with room.
pub fn take(k: &LeaseKey, now: Timestamp) -> Spend {
    LEASES.with(|m| {
        let mut m = m.borrow_mut();
        let Some(e) = m.get_mut(k) else { return Spend::Ask };
        if !e.lease.take(now) {
            // A renewal on its way will replace it; otherwise it is done with.
            if e.lease.renewing {
                return Spend::Ask;
            }
            let mut out: Vec<LeaseClosing> = e.to_close.take().into_iter().collect();
            out.push(closing_of(&e.lease));
            m.remove(k);
            return Spend::AskAndClose(out);
        }
        let renew = e.lease.wants_renewal(now);
        let to_close = if renew { e.to_close.take() } else { None };
        e.lease.renewing |= renew;
        let headers = lease_headers(&e.lease.limits().collect::<Vec<_>>(), now)
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        Spend::Taken(Taken {
            token: e.lease.grant.token,
            id: e.lease.grant.id.clone(),
            plan: e.plan.clone(),
            headers,
            renew,
            to_close,
        })
    })
}

/// Installs a new grant for the key. The lease it replaces stops being spent now; its closing
/// waits for the next renewal, or is returned when one is already waiting (send it now).
pub fn install(k: LeaseKey, grant: Grant, plan: String, now: Timestamp) -> Option<LeaseClosing> {
    let cost = k.cost;
    LEASES.with(|m| {
        let mut m = m.borrow_mut();
        let fresh = LocalLease::new(grant, cost, now);
        if let Some(e) = m.get_mut(&k) {
            let old = std::mem::replace(&mut e.lease, fresh);
            e.plan = plan;
            return e.to_close.replace(closing_of(&old));
        }
        m.insert(k, Entry { lease: fresh, plan, to_close: None });
        None
    })
}

/// A renewal came back without a lease (strict from now on), or failed: the current lease is
/// spent until its deadline, then requests go to the DO; the closings to send now.
pub fn renewal_refused(k: &LeaseKey, failed: bool) -> Vec<LeaseClosing> {
    LEASES.with(|m| {
        let mut m = m.borrow_mut();
        let Some(e) = m.get_mut(k) else { return Vec::new() };
        e.lease.renewing = false;
        if failed {
            return Vec::new();
        }
        // No more leases for now: close this one too, so its units go back to strict decisions.
        let mut out: Vec<LeaseClosing> = e.to_close.take().into_iter().collect();
        out.push(closing_of(&e.lease));
        m.remove(k);
        out
    })
}

/// Gives a failed request's units back to the lease it came from, if that lease is still the
/// one being spent; `false` means it was replaced, and the DO must release them.
pub fn give_back(k: &LeaseKey, token: u64, q: u64) -> bool {
    LEASES.with(|m| {
        let mut m = m.borrow_mut();
        match m.get_mut(k) {
            Some(e) if e.lease.grant.token == token => {
                e.lease.give_back(q);
                true
            }
            _ => false,
        }
    })
}
