//! Lease mode through the org machine: holders that spend pre-debited leases locally, renew,
//! give back failed requests, die, and a DO that restarts, against an oracle of what the
//! origin served. The hard cap must hold at every step, whatever interleaving.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::json;

use super::{at, config, eid, key, m, Org};
use crate::org::msg::LeaseClosing;
use crate::org::{AdminOp, Caller, DecideKind, OrgOp, OrgReply};
use crate::policy::lease::LocalLease;
use crate::policy::Timestamp;
use crate::telemetry::Outcome;
use crate::wire::UsageEvent;

/// A month's hard limit whose stranded bound (1%) is 100 units.
const LIMIT: u64 = 10_000;

/// Leases from a key's first request (`min_requests` 1): the lease mechanics without the
/// adaptive switch, which `adaptive_org` keeps.
fn leased_org(limits: serde_json::Value) -> Org {
    Org::with_config(config(json!({"limits": limits, "lease": {"max_units": 60, "ttl_secs": 5, "min_requests": 1}})))
}

/// The default rules' switch (4 requests within 2 s before a lease), with small leases.
fn adaptive_org(limits: serde_json::Value) -> Org {
    Org::with_config(config(json!({"limits": limits, "lease": {"max_units": 60, "ttl_secs": 2}})))
}

/// Where a served request's units were taken from.
#[derive(Debug, Clone)]
enum From {
    /// The holder's lease (by hold token).
    Lease { token: u64, id: String },
    /// A strict decision (its own hold).
    Strict { token: u64, id: String },
}

#[derive(Default)]
struct Holder {
    lease: Option<LocalLease>,
    /// Requests served and not yet settled (their origin may still fail).
    open: Vec<(From, u64)>,
}

#[derive(Debug, Clone)]
enum Act {
    Request { h: u8 },
    Fail { h: u8 },
    Renew { h: u8 },
    Die { h: u8 },
    Restart,
    Flush,
    Wait { ms: u32 },
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        12 => (0u8..4).prop_map(|h| Act::Request { h }),
        2 => (0u8..4).prop_map(|h| Act::Fail { h }),
        2 => (0u8..4).prop_map(|h| Act::Renew { h }),
        1 => (0u8..4).prop_map(|h| Act::Die { h }),
        1 => Just(Act::Restart),
        1 => Just(Act::Flush),
        2 => (0u32..8_000).prop_map(|ms| Act::Wait { ms }),
    ]
}

/// A fresh lease id, as a holder makes one.
fn next_id() -> crate::policy::EventId {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    eid(&format!("lease_{}", N.fetch_add(1, Ordering::Relaxed)))
}

fn strict(o: &mut Org, n: u64, now: Timestamp) -> OrgReply {
    let op = OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Proxy,
        id: eid(&format!("req_{n}")),
        ttl_ms: 120_000,
        idempotency: None,
        lease: true,
        recalled: 0,
    };
    o.org(&key(), op, now).unwrap().reply
}

fn closing(l: &LocalLease) -> LeaseClosing {
    l.close()
}

fn renew(o: &mut Org, hd: &mut Holder, now: Timestamp) {
    let closing = hd.lease.take().map(|l| closing(&l));
    let op = OrgOp::Lease { meter: m("requests"), cost: 1, want: 1000, id: next_id(), closing };
    let r = o.org(&key(), op, now).unwrap().reply;
    hd.lease = r.lease.map(|g| LocalLease::new(g, 1, now));
}

/// Runs `acts` on an org whose month already holds `prefill` units (recorded as events, so the
/// run crosses the alert levels near them).
fn run(acts: &[Act], prefill: u64, adaptive: bool) -> Result<(), TestCaseError> {
    let limits = json!([
        {"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"},
        {"meter": "requests", "limit": 400, "period": "minute", "mode": "hard"}
    ]);
    let mut o = if adaptive { adaptive_org(limits) } else { leased_org(limits) };
    let mut holders: BTreeMap<u8, Holder> = BTreeMap::new();
    let mut now = at(0);
    if prefill > 0 {
        let ev =
            UsageEvent { id: eid("prefill"), meter: m("requests"), quantity: prefill, timestamp: None, metadata: None };
        o.org(&key(), OrgOp::Events { events: vec![ev], enforce: false }, now).unwrap();
        // Past the minute limit's backlog of those units (400 a minute).
        now = now.saturating_add_ms(prefill.div_ceil(400) * 60_000);
    }
    let (mut served, mut n, mut lost, mut leased) = (prefill, 0u64, false, 0u64);
    let mut restarted = false;
    for a in acts {
        let fired_before = o.mem.alerts.len();
        now = now.saturating_add_ms(1);
        match *a {
            Act::Request { h } => {
                let hd = holders.entry(h).or_default();
                let from_lease =
                    hd.lease.as_mut().and_then(|l| l.take(now).then(|| (l.grant.token, l.grant.id.clone())));
                if let Some((token, id)) = from_lease {
                    leased += 1;
                    hd.open.push((From::Lease { token, id: id.to_string() }, 1));
                    served += 1;
                } else {
                    n += 1;
                    // The exhausted lease is closed by the strict path's own renewal later.
                    let r = strict(&mut o, n, now);
                    if r.status == 200 {
                        served += 1;
                        let token = r.held.unwrap();
                        hd.open.push((From::Strict { token, id: format!("req_{n}") }, 1));
                        if let Some(g) = r.lease {
                            if let Some(old) = hd.lease.take() {
                                let c = closing(&old);
                                let op = OrgOp::Lease {
                                    meter: m("requests"),
                                    cost: 0,
                                    want: 1000,
                                    id: eid("close"),
                                    closing: Some(c),
                                };
                                o.org(&key(), op, now).unwrap();
                            }
                            hd.lease = Some(LocalLease::new(g, 1, now));
                        }
                    }
                }
            }
            Act::Fail { h } => {
                let hd = holders.entry(h).or_default();
                if let Some((from, q)) = hd.open.pop() {
                    served -= q;
                    match from {
                        From::Lease { token, .. } if hd.lease.as_ref().is_some_and(|l| l.grant.token == token) => {
                            if let Some(l) = hd.lease.as_mut() {
                                l.give_back(q);
                            }
                        }
                        From::Lease { token, id } => {
                            // After a restart the hold is gone: the units stay counted, never lost.
                            let op = OrgOp::Release { id: eid(&id), held: token, quantity: Some(q) };
                            let _ = o.org(&Caller::Gateway, op, now);
                        }
                        From::Strict { token, id } => {
                            let op = OrgOp::Release { id: eid(&id), held: token, quantity: None };
                            let _ = o.org(&Caller::Gateway, op, now);
                        }
                    }
                }
            }
            Act::Renew { h } => renew(&mut o, holders.entry(h).or_default(), now),
            Act::Die { h } => {
                // An evicted isolate: its lease and its unsettled requests are gone.
                holders.remove(&h);
                lost = true;
            }
            Act::Restart => {
                o.restart();
                lost = true;
                restarted = true;
            }
            Act::Flush => {
                o.flush(false, false, now);
            }
            Act::Wait { ms } => now = now.saturating_add_ms(u64::from(ms)),
        }
        // Never over the cap: what the origin served (and may still serve from open leases)
        // is within the limit, and the counter covers it.
        let used = o.used("requests-month", now);
        prop_assert!(used <= LIMIT, "the counter passed the hard limit");
        prop_assert!(served <= used, "served {} but counted {}", served, used);
        // An alert fires only once what was served reaches its level: never on units a lease
        // holds unspent. (A restarted DO no longer knows its predecessor's leases: their units
        // then count as spent, which the stranded bound keeps within 1 point.)
        if !restarted && o.mem.alerts.len() > fired_before {
            for (policy, _, level) in o.mem.alerts.keys() {
                if policy == "requests-month" {
                    let floor = LIMIT * u64::from(level.threshold_pct()) / 100;
                    prop_assert!(
                        served >= floor,
                        "{} fired with {} served (level at {})",
                        level.as_str(),
                        served,
                        floor
                    );
                }
            }
        }
    }
    // Every live holder closes its lease; the ledger then matches the counter.
    for hd in holders.values_mut() {
        if let Some(l) = hd.lease.take() {
            // Cost 0: close only, no next lease.
            let op = OrgOp::Lease {
                meter: m("requests"),
                cost: 0,
                want: 1000,
                id: eid("close"),
                closing: Some(closing(&l)),
            };
            prop_assert!(o.org(&key(), op, now).unwrap().reply.lease.is_none());
        }
    }
    let used = o.used("requests-month", now);
    // The ledger holds what the counter holds (a lease is in both from its grant on).
    prop_assert_eq!(u64::try_from(o.mem.ledgered("requests")).unwrap(), used);
    prop_assert!(leased <= served + 1_000, "leased decisions are served decisions");
    if !lost {
        prop_assert_eq!(used, served, "with no holder lost, nothing is stranded");
    }
    Ok(())
}

#[test]
fn a_request_takes_a_lease_and_a_close_gives_back_the_rest() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    let r = strict(&mut o, 1, at(1));
    let g = r.lease.clone().expect("lease mode grants with the first admitted request");
    // A first lease is what a holder with no history asks for (32 requests); 10,000 − 1
    // remaining and a bound of 100 (1%) would allow 50, max_units 60.
    assert_eq!(g.units, 32);
    assert_eq!(o.used("requests-month", at(1)), 33, "the lease is counted as used the moment it is granted");
    assert_eq!(g.limits[0].remaining, 9_967);
    let mut l = LocalLease::new(g, 1, at(1));
    for _ in 0..10 {
        assert!(l.take(at(2)));
    }
    let op = OrgOp::Lease { meter: m("requests"), cost: 1, want: 1000, id: next_id(), closing: Some(closing(&l)) };
    let step = o.org(&key(), op, at(3)).unwrap();
    assert_eq!(step.reply.body["closed"], true);
    let leased: u64 = o.m.unsaved_counts().filter(|(_, out, _)| *out == Outcome::Leased).map(|(_, _, n)| n).sum();
    assert_eq!(leased, 10, "the lease's 10 requests are counted as leased decisions");
    let next = step.reply.lease.expect("room for another lease");
    assert_eq!(next.units, 50, "what the holder wants, up to its fair share of the bound (100 / 2)");
    assert_eq!(o.used("requests-month", at(3)), 11 + next.units);
    // Closing the same lease twice gives nothing back twice.
    let op = OrgOp::Lease { meter: m("requests"), cost: 0, want: 0, id: eid("close"), closing: Some(closing(&l)) };
    let again = o.org(&key(), op, at(4)).unwrap().reply;
    assert_eq!(again.body["closed"], false);
    // Leases stop at the stranded bound: strict decisions take the last 100 units.
    let mut now = at(5);
    let mut grants = 0;
    for i in 0..20_000u64 {
        now = now.saturating_add_ms(1);
        let r = strict(&mut o, 100 + i, now);
        if r.status != 200 {
            break;
        }
        if let Some(g) = r.lease {
            grants += 1;
            assert!(o.used("requests-month", now) <= LIMIT - 100 + g.units);
        }
    }
    assert!(grants > 0);
    assert_eq!(o.used("requests-month", now), LIMIT, "strict decisions fill the limit exactly");
    // Everything at risk (leases never closed, here all of them) stayed within the bound.
    let state = o.admin(AdminOp::State, now).body;
    assert!(state["open_leases"]["units"].as_u64().unwrap() <= 100, "{}", state["open_leases"]);
    // A replayable request never takes a lease.
    let op = OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Proxy,
        id: eid("idem"),
        ttl_ms: 1000,
        idempotency: Some(super::fp("/idem")),
        lease: true,
        recalled: 0,
    };
    assert!(o.org(&key(), op, now).unwrap().reply.lease.is_none());
}

#[test]
fn a_small_limit_is_decided_strictly_and_strands_nothing() {
    // 1% of 399 is 3 units: no holder's fair share of it is two requests.
    let mut small = leased_org(json!([{"meter": "requests", "limit": 399, "period": "month", "mode": "hard"}]));
    for i in 0..399 {
        let r = strict(&mut small, i, at(i + 1));
        assert_eq!((r.status, r.lease.is_none()), (200, true), "request {i} decided strictly, no lease");
    }
    assert_eq!(strict(&mut small, 399, at(400)).status, 429);
    assert_eq!(small.used("requests-month", at(401)), 399);
    // 1% of 400 is 4: a lone holder may hold two requests, never more.
    let mut four = leased_org(json!([{"meter": "requests", "limit": 400, "period": "month", "mode": "hard"}]));
    assert_eq!(strict(&mut four, 1, at(1)).lease.map(|g| g.units), Some(2));
}

#[test]
fn a_grant_lasts_at_most_two_seconds_whatever_the_plan_says() {
    let mut o = Org::with_config(config(json!({
        "limits": [{"meter": "requests", "limit": 1_000_000, "period": "month", "mode": "hard"}],
        "lease": {"max_units": 60, "ttl_secs": 10, "min_requests": 1}
    })));
    let g = strict(&mut o, 1, at(1)).lease.expect("a lease");
    assert_eq!(g.ttl_ms, crate::policy::lease::RECALL_MS, "revocation and resets reach the holder within 2 s");
}

#[test]
fn a_lease_of_an_earlier_instance_never_closes_one_of_this_instance() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    let old = strict(&mut o, 1, at(1)).lease.expect("a lease");
    o.restart();
    let new = strict(&mut o, 2, at(2)).lease.expect("a lease from the new instance");
    assert_eq!(old.token, new.token, "tokens start again after a restart");
    let used = o.used("requests-month", at(3));
    // The old holder closes its lease, all of it unspent: it names another lease, so nothing
    // comes back (its units stay counted: stranded, never over-admitted).
    let stale = LeaseClosing { id: old.id.clone(), token: old.token, unused: old.units, spent: 0 };
    let op = OrgOp::Lease { meter: m("requests"), cost: 0, want: 0, id: eid("close"), closing: Some(stale) };
    assert_eq!(o.org(&key(), op, at(3)).unwrap().reply.body["closed"], false);
    assert_eq!(o.used("requests-month", at(3)), used);
}

#[test]
fn a_plan_with_leases_off_says_so_and_grants_nothing() {
    let limits = json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]);
    let mut plain = Org::with_config(config(json!({"limits": limits, "lease": false})));
    let r = strict(&mut plain, 1, at(1));
    assert_eq!((r.status, r.lease.is_none(), r.no_lease), (200, true, true));
    assert!(serde_json::to_string(&r).unwrap().contains(r#""no_lease":true"#));
    let mut leased = leased_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    let r = strict(&mut leased, 1, at(1));
    assert!(r.lease.is_some() && !r.no_lease);
    assert!(!serde_json::to_string(&r).unwrap().contains("no_lease"), "sent only when true");
}

#[test]
fn a_soft_or_unlimited_meter_leases_only_to_batch_counting() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": 100, "period": "month", "mode": "soft"}]));
    // Past the soft limit a lease is still what the holder wants (no hard room to share).
    let mut now = at(1);
    for i in 0..150 {
        now = now.saturating_add_ms(1);
        strict(&mut o, i, now);
    }
    let op = OrgOp::Lease { meter: m("requests"), cost: 1, want: 40, id: next_id(), closing: None };
    let g = o.org(&key(), op, now).unwrap().reply.lease.expect("a soft meter always leases");
    assert_eq!(g.units, 40);
    // Closing it unspent takes its units back out of the counter and the ledger.
    let before = o.used("requests-month", now);
    let c = LeaseClosing { id: g.id.clone(), token: g.token, unused: 40, spent: 0 };
    let op = OrgOp::Lease { meter: m("requests"), cost: 0, want: 0, id: eid("close"), closing: Some(c) };
    o.org(&key(), op, now).unwrap();
    assert_eq!(o.used("requests-month", now), before - 40);
    assert_eq!(u64::try_from(o.mem.ledgered("requests")).unwrap(), before - 40);
}

#[test]
fn a_lease_ends_with_its_fixed_window() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": 100_000, "period": "day", "mode": "hard"}]));
    // 2 s before midnight UTC: the lease may be spent for 2 s only.
    let day_end = at(14 * 3_600_000);
    let r = strict(&mut o, 1, day_end.saturating_sub_ms(2_000));
    assert_eq!(r.lease.map(|g| g.ttl_ms), Some(2_000));
    let r = strict(&mut o, 2, day_end.saturating_sub_ms(300));
    assert!(r.lease.is_none(), "too little of the window left to lease");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn leases_never_pass_the_hard_cap(acts in prop::collection::vec(act(), 1..300)) {
        run(&acts, 0, false)?;
    }

    /// The adaptive switch: holders go from strict decisions to leases once busy (4 requests in
    /// 2 s), back to strict when a renewal shows they spent less, and leased again: the cap, the
    /// ledger and the alerts hold across every move.
    #[test]
    fn the_adaptive_switch_keeps_every_property(
        acts in prop::collection::vec(act(), 1..300),
        prefill in prop_oneof![Just(0u64), Just(7_990u64)],
    ) {
        run(&acts, prefill, true)?;
    }

    /// Near the alert levels: 80% (8,000) and 95% (9,500) are within reach of the run.
    #[test]
    fn no_alert_fires_on_units_a_lease_holds_unspent(
        acts in prop::collection::vec(act(), 1..300),
        prefill in prop_oneof![Just(7_960u64), Just(7_999u64), Just(9_480u64)],
    ) {
        run(&acts, prefill, false)?;
    }
}

#[test]
fn an_alert_waits_for_the_lease_units_to_be_spent() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    let ev = UsageEvent { id: eid("prefill"), meter: m("requests"), quantity: 7_990, timestamp: None, metadata: None };
    o.org(&key(), OrgOp::Events { events: vec![ev], enforce: false }, at(0)).unwrap();
    let mut hd = Holder::default();
    renew(&mut o, &mut hd, at(1));
    let units = hd.lease.as_ref().map_or(0, |l| l.grant.units);
    assert!(units > 10, "a lease of {units} takes the counter past 80%");
    assert!(o.used("requests-month", at(2)) >= 8_000);
    assert!(o.mem.alerts.is_empty(), "counted, not spent: no alert yet");
    // Nine spent of it: still under 80% spent.
    let l = hd.lease.as_mut().unwrap();
    for _ in 0..9 {
        assert!(l.take(at(3)));
    }
    renew(&mut o, &mut hd, at(4));
    assert!(o.mem.alerts.is_empty(), "7,999 spent");
    // One more spent, reported by the next close: 8,000 spent, the warning fires.
    assert!(hd.lease.as_mut().unwrap().take(at(5)));
    renew(&mut o, &mut hd, at(6));
    let fired: Vec<_> = o.mem.alerts.keys().map(|k| (k.0.as_str(), k.2.as_str())).collect();
    assert_eq!(fired, vec![("requests-month", "warning")]);
    let payload: serde_json::Value = serde_json::from_str(o.mem.alerts.values().next().unwrap()).unwrap();
    assert_eq!(payload["used"], 8_000, "the alert says what was spent");
}

#[test]
fn a_key_gets_a_lease_once_busy_loses_it_when_quiet_and_gets_one_again() {
    let mut o = adaptive_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    // Three requests in 2 s: decided strictly, no lease yet (and no "no lease mode" either).
    for n in 1..=3 {
        let r = strict(&mut o, n, at(n * 100));
        assert_eq!((r.status, r.lease.is_some(), r.no_lease), (200, false, false), "request {n}");
    }
    // The fourth within 2 s takes one.
    let r = strict(&mut o, 4, at(400));
    let grant = r.lease.expect("a busy key gets a lease");
    // A quiet key is counted afresh: three requests spread over more than 2 s get none.
    let mut quiet = adaptive_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    for n in 1..=6 {
        assert!(strict(&mut quiet, n, at(n * 1_100)).lease.is_none(), "request {n} of a quiet key");
    }
    // A renewal that shows little spending (one request a period) gets none: back to strict.
    let mut hd = Holder { lease: Some(LocalLease::new(grant, 1, at(400))), open: Vec::new() };
    assert!(hd.lease.as_mut().unwrap().take(at(500)));
    let closing = hd.lease.take().map(|l| l.close());
    let op = OrgOp::Lease { meter: m("requests"), cost: 1, want: 2, id: next_id(), closing };
    let r = o.org(&key(), op, at(2_500)).unwrap().reply;
    assert!(r.lease.is_none(), "a holder spending 1 request a period goes back to strict");
    assert_eq!(r.body["closed"], true, "its lease was closed all the same");
    // A renewal of a busy holder (8 a period) is granted.
    let op = OrgOp::Lease { meter: m("requests"), cost: 1, want: 16, id: next_id(), closing: None };
    assert!(o.org(&key(), op, at(2_600)).unwrap().reply.lease.is_some());
    // Busy again on strict decisions: leased again.
    let mut p = adaptive_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    let leased: Vec<bool> = (1..=12).map(|n| strict(&mut p, n, at(10_000 * (n / 5) + n)).lease.is_some()).collect();
    // Bursts of 4, 5 and 3 requests, 10 s apart: from the 4th of a burst on, each takes one.
    let expected: Vec<bool> = (1..=12).map(|n| n == 4 || n == 8 || n == 9).collect();
    assert_eq!(leased, expected);
}

#[test]
fn a_lease_of_last_month_never_holds_back_this_months_alerts() {
    let mut o = leased_org(json!([{"meter": "requests", "limit": LIMIT, "period": "month", "mode": "hard"}]));
    // A lease granted in November, whose holder then dies: its units stay unspent for good.
    let r = strict(&mut o, 1, at(0));
    assert!(r.lease.is_some_and(|g| g.units > 10));
    // December: usage reaches the whole limit, with no lease granted since.
    let december = Timestamp::parse_rfc3339("2026-12-01T01:00:00Z").unwrap();
    let ev = UsageEvent { id: eid("dec"), meter: m("requests"), quantity: LIMIT, timestamp: None, metadata: None };
    let r = o.org(&key(), OrgOp::Events { events: vec![ev], enforce: true }, december).unwrap().reply;
    assert_eq!(r.body["results"][0]["status"], "accepted");
    let fired: Vec<&str> = o.mem.alerts.keys().map(|k| k.2.as_str()).collect();
    assert_eq!(fired, vec!["warning", "critical", "over"], "November's lease counts in November only");
}
