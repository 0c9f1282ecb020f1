//! This isolate's leases: one `policy::lease::Slot` per (org, key, meter, cost), in isolate
//! memory, and the renewals and closes it sends to the org's DO off the client's path.
//!
//! Glue only: spending, renewing, swapping and closing are the slot's rules (pure, natively
//! tested and simulated); granting is the org machine's. This file keeps the map and carries the
//! slot's messages. It must never decide a request a lease does not cover.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::json;
use worker::{Context, Env};

use super::platform::{call_do, now, random_hex};
use crate::org::{Caller, KeyHash, OrgMsg, OrgOp};

use crate::policy::headers::HeaderList;
use crate::policy::lease::{Grant, LeaseClosing, Slot, Spend};
use crate::policy::{EventId, MeterId, OrgId, Timestamp};

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

/// Asks for the key's next lease off the client's path, closing the one it replaced.
pub fn renew_lease(env: &Env, ctx: &Context, k: ClassKey, want: u64, closing: Option<LeaseClosing>) {
    let env = env.clone();
    ctx.wait_until(async move {
        // The new lease's id is this isolate's random, like a request id.
        let Ok(Ok(id)) = random_hex::<12>().map(|h| EventId::parse(&format!("lease_{h}"))) else {
            refused(&k, true);
            return;
        };
        let op = OrgOp::Lease { meter: k.meter.clone(), cost: k.cost, want, id, closing };
        let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(k.key_hash.clone())), op };
        let leftover = match call_do(&env, &k.org, &msg).await {
            Ok(r) if r.status == 200 => match (r.lease, r.plan) {
                (Some(grant), Some(plan)) => install(&k, grant, plan, now()).into_iter().collect(),
                _ => refused(&k, false),
            },
            // The key was revoked (or the org is gone): stop spending now. Its closings would
            // be refused too, so the unspent units stay counted.
            Ok(r) if r.status == 401 || r.status == 404 => {
                drop(refused(&k, false));
                Vec::new()
            }
            Ok(r) => {
                worker::console_error!(
                    "{}",
                    json!({"msg": "lease renewal refused", "org": k.org.as_str(), "status": r.status})
                );
                refused(&k, true)
            }
            Err(e) => {
                worker::console_error!(
                    "{}",
                    json!({"msg": "lease renewal failed", "org": k.org.as_str(), "error": e.to_string()})
                );
                refused(&k, true)
            }
        };
        close_now(&env, &k, leftover).await;
    });
}

/// Closes leases this isolate stopped spending, off the client's path.
pub fn send_closings(env: &Env, ctx: &Context, k: ClassKey, closings: Vec<LeaseClosing>) {
    let env = env.clone();
    ctx.wait_until(async move { close_now(&env, &k, closings).await });
}

async fn close_now(env: &Env, k: &ClassKey, closings: Vec<LeaseClosing>) {
    for closing in closings {
        // Cost 0: close only. A lost close strands its units; it never admits past a limit.
        let op =
            OrgOp::Lease { meter: k.meter.clone(), cost: 0, want: 0, id: closing.id.clone(), closing: Some(closing) };
        let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(k.key_hash.clone())), op };
        if let Err(e) = call_do(env, &k.org, &msg).await {
            worker::console_error!(
                "{}",
                json!({"msg": "lease close failed", "org": k.org.as_str(), "error": e.to_string()})
            );
        }
    }
}
