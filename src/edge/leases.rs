//! This isolate's leases (lease mode): one `policy::lease::Slot` per (org, key, meter, cost),
//! in isolate memory.
//!
//! Glue only: spending, renewing, swapping and closing are the slot's rules (pure, natively
//! tested and simulated); granting is the org machine's. This file keeps the map. It must never
//! decide a request a lease does not cover.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::policy::headers::HeaderList;
use crate::policy::lease::{Grant, LeaseClosing, Slot, Spend};
use crate::policy::{MeterId, OrgId, Timestamp};

/// A request class of an org's key: whose lease (the DO checked that key when it granted it),
/// and whose remembered refusal (`super::recalls`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClassKey {
    pub org: OrgId,
    pub key_hash: String,
    pub meter: MeterId,
    /// The route's fixed cost (0 for a reported-cost route).
    pub cost: u64,
    /// A reported-cost route (never leased).
    pub reported: bool,
}

thread_local! {
    static SLOTS: RefCell<HashMap<ClassKey, Slot>> = RefCell::new(HashMap::new());
}

/// Runs `f` on the key's slot (made empty if there is none and `make`); an idle slot goes.
/// The common case (a slot exists) looks the key up without copying it.
fn with<T>(k: &ClassKey, make: bool, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
    SLOTS.with(|m| {
        let mut m = m.borrow_mut();
        if !m.contains_key(k) {
            if !make {
                return None;
            }
            m.insert(k.clone(), Slot::default());
        }
        let slot = m.get_mut(k)?;
        let out = f(slot);
        if slot.is_idle() {
            m.remove(k);
        }
        Some(out)
    })
}

/// A request admitted from a lease: the slot's answer, plus its headers and plan.
pub struct Taken {
    pub spend: Spend,
    pub plan: String,
    pub headers: HeaderList,
}

/// Spends one request from the key's lease; the headers and plan come with an admission.
pub fn take(k: &ClassKey, now: Timestamp) -> Taken {
    let none = || Taken { spend: Spend::Ask, plan: String::new(), headers: Vec::new() };
    with(k, false, |s| {
        let spend = s.spend(now);
        let (plan, headers) = if matches!(spend, Spend::Taken { .. }) {
            (s.plan().to_owned(), s.headers(now))
        } else {
            (String::new(), Vec::new())
        };
        Taken { spend, plan, headers }
    })
    .unwrap_or_else(none)
}

pub fn ask(k: &ClassKey, now: Timestamp) -> bool {
    with(k, true, |s| s.ask(now)).unwrap_or(false)
}

pub fn no_lease(k: &ClassKey, now: Timestamp) {
    with(k, true, |s| s.no_lease(now));
}

pub fn asked(k: &ClassKey) {
    with(k, false, Slot::asked);
}

pub fn install(k: &ClassKey, grant: Grant, plan: String, now: Timestamp) -> Option<LeaseClosing> {
    with(k, true, |s| s.install(grant, k.cost, plan, now)).flatten()
}

pub fn refused(k: &ClassKey, failed: bool) -> Vec<LeaseClosing> {
    with(k, false, |s| s.refused(failed)).unwrap_or_default()
}

pub fn give_back(k: &ClassKey, token: u64, q: u64) -> bool {
    with(k, false, |s| s.give_back(token, q)).unwrap_or(false)
}
