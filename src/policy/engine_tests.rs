//! Unit and property tests of the engine, with injected time.
#![allow(clippy::many_single_char_names, clippy::similar_names, clippy::needless_pass_by_value)]

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::policy::counter::in_use;
use crate::policy::headers::{decision_headers, refusal_problem};
use crate::policy::plan::{OrgTerms, Plan};
use crate::policy::{Level, Period, PlanId};

pub(super) fn policy(limits: serde_json::Value) -> Policy {
    let body = json!({"meters": [{"id": "peak", "aggregation": "max"}, {"id": "disk", "aggregation": "latest", "unit": "bytes"}],
                      "limits": limits, "upgrade_url": "https://example.test/upgrade"});
    let plan = Plan::parse(&PlanId::parse("p").unwrap_or_else(|e| unreachable!("{e}")), &body)
        .unwrap_or_else(|e| unreachable!("{e}"));
    Policy::new(&plan, &OrgTerms::default())
}

pub(super) fn m(s: &str) -> MeterId {
    MeterId::parse(s).unwrap_or_else(|e| unreachable!("{e}"))
}

fn eid(s: &str) -> EventId {
    EventId::parse(s).unwrap_or_else(|e| unreachable!("{e}"))
}

/// 2026-11-23T10:00:00Z
const T0: u64 = 1_795_428_000_000;

pub(super) fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn design() -> Policy {
    policy(json!([
        {"meter": "requests", "limit": 10, "period": "minute", "mode": "hard"},
        {"meter": "requests", "limit": 1000, "period": "month", "mode": "hard"},
        {"meter": "ai_tokens", "limit": 100_000, "period": "month", "mode": "soft", "overage_price": {"per_units": 1000, "cents": 2}},
        {"meter": "mapping_profiles", "limit": 3, "period": "lifetime", "mode": "hard"}]))
}

#[test]
fn burst_limit_refuses_the_eleventh_with_exact_headers() {
    let p = design();
    let mut b = Book::default();
    let req = m("requests");
    for i in 0..10 {
        let d = b.record(&p, &req, 1, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(d.allowed(), "request {i}");
    }
    let d = b.record(&p, &req, 1, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(d.status(), 429);
    // GCRA: one unit of a 10/minute limit comes back every 6 s.
    assert_eq!(d.retry_after(), Some(6));
    assert_eq!(d.violated_policies(), vec!["requests-minute"]);
    let h = decision_headers(&d);
    let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    // November 2026 has 30 days.
    assert_eq!(
        get("RateLimit-Policy").as_deref(),
        Some("\"requests-minute\";q=10;w=60, \"requests-month\";q=1000;w=2592000")
    );
    // Month resets 2026-12-01T00:00Z: 7 days 14 hours after T0. The spent minute window gets
    // its next unit back in 6 s: `t` says when more quota is available, as Retry-After does.
    assert_eq!(get("RateLimit").as_deref(), Some("\"requests-minute\";r=0;t=6, \"requests-month\";r=990;t=655200"));
    assert_eq!(get("X-RateLimit-Limit").as_deref(), Some("10"));
    assert_eq!(get("X-RateLimit-Remaining").as_deref(), Some("0"));
    assert_eq!(get("X-RateLimit-Reset").as_deref(), Some(((T0 + 6_000) / 1000).to_string().as_str()));
    assert_eq!(get("X-Quota-Status").as_deref(), Some("over"));
    assert_eq!(get("Retry-After").as_deref(), Some("6"));
    let problem = refusal_problem(&d, "free", None).unwrap_or_default();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["detail"], "Quota exceeded for requests");
    assert_eq!((problem["limit"].as_u64(), problem["used"].as_u64()), (Some(10), Some(10)));
    assert_eq!(problem["reset"], "2026-11-23T10:00:06Z");
    assert_eq!(problem["violated-policies"], json!(["requests-minute"]));
    assert!(problem.get("upgrade_url").is_none());
    // The refusal counted nothing; 6 s later exactly one more fits.
    assert_eq!(b.record(&p, &req, 1, true, at(5_999)).map(|d| d.allowed()), Ok(false));
    assert_eq!(b.record(&p, &req, 1, true, at(6_000)).map(|d| d.allowed()), Ok(true));
    assert_eq!(b.record(&p, &req, 1, true, at(6_000)).map(|d| d.allowed()), Ok(false));
    let month = b.overview(&p, at(6_000)).into_iter().find(|l| &*l.policy == "requests-month");
    assert_eq!(month.map(|l| l.used), Some(11));
}

#[test]
fn a_limit_counting_attempts_keeps_a_failed_request() {
    let p = policy(json!([
        {"meter": "rows", "limit": 100, "period": "month"},
        {"meter": "rows", "limit": 10, "period": "minute"},
        {"meter": "rows", "limit": 100, "period": "day", "counts": "attempts"}]));
    let counts: BTreeMap<&str, &str> = p.limits.iter().map(|l| (l.policy_name(), l.counts.as_str())).collect();
    let want = [("rows-day", "attempts"), ("rows-minute", "attempts"), ("rows-month", "successes")];
    assert_eq!(counts, want.into_iter().collect(), "defaults: periods successes, rate windows attempts");
    let rows = m("rows");
    let mut b = Book::default();
    b.record(&p, &rows, 3, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    b.release_admitted(&p, &rows, 3, at(0), at(1));
    let used: BTreeMap<String, u64> =
        b.overview(&p, at(1)).into_iter().map(|l| (l.policy.to_string(), l.used)).collect();
    let want = [("rows-day", 3), ("rows-minute", 3), ("rows-month", 0)];
    assert_eq!(used, want.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
}

#[test]
fn lifetime_refuses_with_402_and_upgrade_url() {
    let p = design();
    let mut b = Book::default();
    let mp = m("mapping_profiles");
    assert_eq!(b.record(&p, &mp, 3, true, at(0)).map(|d| d.allowed()), Ok(true));
    let d = b.record(&p, &mp, 1, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!((d.status(), d.retry_after()), (402, None));
    let problem = refusal_problem(&d, "free", Some("https://example.test/up")).unwrap_or_default();
    assert_eq!(problem["upgrade_url"], "https://example.test/up");
    assert_eq!(problem["reset"], serde_json::Value::Null);
    assert!(!decision_headers(&d).iter().any(|(k, _)| *k == "Retry-After" || *k == "X-RateLimit-Reset"));
}

#[test]
fn request_larger_than_the_limit_needs_an_upgrade() {
    let p = policy(json!([{"meter": "rows", "limit": 100, "period": "day"}]));
    let d = Book::default().check(&p, &m("rows"), 101, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(d.status(), 402);
}

#[test]
fn soft_limit_allows_and_prices_overage() {
    let p = design();
    let mut b = Book::default();
    let t = m("ai_tokens");
    let d = b.record(&p, &t, 100_500, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    assert!(d.allowed());
    let l = d.limits.first().cloned().unwrap_or_else(|| unreachable!());
    assert_eq!((l.overage, l.overage_cost_cents, l.level, l.mode), (500, 1, Level::Over, "soft"));
    assert_eq!(d.overage_cost_cents(), 1);
}

#[test]
fn provisional_reservation_commit_and_release_once() {
    let p = policy(json!([{"meter": "rows", "limit": 10, "period": "day"}]));
    let mut b = Book::default();
    let rows = m("rows");
    let d =
        b.reserve(&p, &rows, 6, ReserveAs { id: eid("r1"), kind: ReservationKind::Provisional, ttl_ms: 60_000 }, at(0));
    assert_eq!(d.map(|d| d.limits.first().map(|l| (l.used, l.remaining))), Ok(Some((6, Some(4)))));
    // The held units count against the limit.
    assert_eq!(b.check(&p, &rows, 5, at(1)).map(|d| d.status()), Ok(429));
    assert_eq!(
        b.reserve(&p, &rows, 1, ReserveAs { id: eid("r1"), kind: ReservationKind::Provisional, ttl_ms: 1 }, at(1)),
        Err(UsageError::DuplicateReservation(eid("r1")))
    );
    // Commit with less than reserved: the difference comes back.
    let s = b.commit(&p, &eid("r1"), 2, at(2)).map(|s| s.settlement);
    assert_eq!(s, Ok(Settlement::Committed { quantity: 2 }));
    assert_eq!(
        b.counters.get("rows-day"),
        Some(&Counter::Window { start: Timestamp::from_millis(1_795_392_000_000), used: 2, reserved: 0 })
    );
    assert_eq!(b.release(&p, &eid("r1"), at(3)).map(|s| s.settlement), Err(UsageError::UnknownReservation(eid("r1"))));
    assert_eq!(b.counters.get("rows-day").map(|c| in_use(&p.limits[0], *c)), Some(2));
}

/// No counter passes `MAX_SAFE_INTEGER` (the largest count JSON, D1 and the DO's storage keep exactly):
/// usage that would take one past it is refused whole, and changes nothing.
#[test]
fn no_counter_passes_the_largest_exact_count() {
    let p = policy(json!([
        {"meter": "rows", "limit": null, "period": "month"},
        {"meter": "ai_tokens", "limit": 0, "period": "day", "mode": "soft"}]));
    let mut b = Book::default();
    let (rows, ai) = (m("rows"), m("ai_tokens"));
    assert!(b.record(&p, &rows, MAX_SAFE_INTEGER, false, at(0)).is_ok_and(|d| d.allowed()));
    let before = b.clone();
    let ceiling = Err(UsageError::CountCeiling { policy: "rows-month".into() });
    assert_eq!(b.record(&p, &rows, 1, false, at(1)).map(|d| d.allowed()), ceiling);
    assert_eq!(b.record(&p, &rows, 1, true, at(1)).map(|d| d.allowed()), ceiling);
    let how = |id: &str| ReserveAs { id: eid(id), kind: ReservationKind::Optimistic, ttl_ms: 60_000 };
    assert_eq!(b.reserve(&p, &rows, 1, how("r1"), at(1)).map(|d| d.allowed()), ceiling);
    assert_eq!(b, before, "a refused count changes nothing");

    // A commit of more than was reserved is held to the same ceiling, and stays open.
    assert!(b.reserve(&p, &ai, MAX_SAFE_INTEGER - 1, how("r2"), at(2)).is_ok_and(|d| d.allowed()));
    assert_eq!(
        b.commit(&p, &eid("r2"), MAX_SAFE_INTEGER, at(3)).map(|s| s.settlement),
        Ok(Settlement::Committed { quantity: MAX_SAFE_INTEGER })
    );
    assert!(b.reserve(&p, &ai, 0, how("r3"), at(4)).is_ok_and(|d| d.allowed()));
    assert_eq!(
        b.commit(&p, &eid("r3"), 1, at(5)).map(|s| s.settlement),
        Err(UsageError::CountCeiling { policy: "ai_tokens-day".into() })
    );
    assert!(b.reservations.contains_key(&eid("r3")), "the refused commit leaves the reservation open");
    // A soft limit of 0: the percentage stays a number JSON carries exactly.
    let d = b.check(&p, &ai, 0, at(6)).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(d.limits.first().and_then(LimitStatus::percentage), Some(MAX_SAFE_INTEGER));
}

#[test]
fn optimistic_reservation_counts_at_once_and_releases() {
    let p = design();
    let mut b = Book::default();
    let req = m("requests");
    assert!(b
        .reserve(&p, &req, 1, ReserveAs { id: eid("a"), kind: ReservationKind::Optimistic, ttl_ms: 30_000 }, at(0))
        .is_ok_and(|d| d.allowed()));
    assert!(b
        .reserve(&p, &req, 1, ReserveAs { id: eid("b"), kind: ReservationKind::Optimistic, ttl_ms: 30_000 }, at(0))
        .is_ok_and(|d| d.allowed()));
    let used = |b: &Book| b.overview(&p, at(0)).iter().map(|l| l.used).collect::<Vec<_>>();
    assert_eq!(used(&b), vec![0, 0, 2, 2]);
    assert!(b.release(&p, &eid("a"), at(0)).is_ok());
    assert_eq!(used(&b), vec![0, 0, 1, 1]);
    // Expiry keeps an optimistic reservation as committed.
    let settled = b.expire(&p, at(30_000));
    assert_eq!(settled.iter().map(|s| s.settlement).collect::<Vec<_>>(), vec![Settlement::Committed { quantity: 1 }]);
    assert_eq!(b.overview(&p, at(30_000)).iter().find(|l| &*l.policy == "requests-month").map(|l| l.used), Some(1));
    assert!(b.reservations.is_empty());
}

#[test]
fn provisional_expiry_gives_back() {
    let p = policy(json!([{"meter": "rows", "limit": 10, "period": "month"}]));
    let mut b = Book::default();
    assert!(b
        .reserve(
            &p,
            &m("rows"),
            10,
            ReserveAs { id: eid("x"), kind: ReservationKind::Provisional, ttl_ms: 1_000 },
            at(0)
        )
        .is_ok_and(|d| d.allowed()));
    assert!(b.expire(&p, at(999)).is_empty());
    assert_eq!(b.expire(&p, at(1_000)).len(), 1);
    assert_eq!(b.check(&p, &m("rows"), 10, at(1_000)).map(|d| d.allowed()), Ok(true));
}

#[test]
fn gauges_take_peak_and_latest() {
    let p = policy(
        json!([{"meter": "peak", "limit": 100, "period": "month"}, {"meter": "disk", "limit": 1000, "period": "month", "mode": "soft"}]),
    );
    let mut b = Book::default();
    for (q, want) in [(40, 40), (90, 90), (10, 90)] {
        let d = b.record(&p, &m("peak"), q, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(d.limits.first().map(|l| l.used), Some(want));
    }
    assert_eq!(b.record(&p, &m("peak"), 101, true, at(0)).map(|d| d.status()), Ok(402));
    for (q, want) in [(500u64, 500u64), (1200, 1200), (300, 300)] {
        let d = b.record(&p, &m("disk"), q, true, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(d.limits.first().map(|l| (l.used, l.overage)), Some((want, want.saturating_sub(1000))));
    }
    assert_eq!(
        b.reserve(&p, &m("disk"), 1, ReserveAs { id: eid("g"), kind: ReservationKind::Provisional, ttl_ms: 1 }, at(0)),
        Err(UsageError::NotReservable { meter: m("disk"), aggregation: Aggregation::Latest })
    );
}

#[test]
fn unknown_meter_and_unenforced_record() {
    let p = design();
    let mut b = Book::default();
    assert_eq!(b.check(&p, &m("nope"), 1, at(0)), Err(UsageError::UnknownMeter(m("nope"))));
    // Without enforce, usage that happened is counted even past a hard limit.
    let d = b.record(&p, &m("mapping_profiles"), 5, false, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
    assert!(d.allowed());
    assert_eq!(d.limits.first().map(|l| (l.used, l.remaining, l.level)), Some((5, Some(0), Level::Over)));
}

#[test]
fn windows_roll_over_at_the_boundary_and_reset_clears() {
    let p = policy(json!([{"meter": "rows", "limit": 5, "period": "day"}]));
    let mut b = Book::default();
    let midnight = 1_795_478_400_000; // 2026-11-24T00:00Z
    assert!(b.record(&p, &m("rows"), 5, true, Timestamp::from_millis(midnight - 1)).is_ok_and(|d| d.allowed()));
    assert_eq!(b.check(&p, &m("rows"), 1, Timestamp::from_millis(midnight - 1)).map(|d| d.retry_after()), Ok(Some(1)));
    assert_eq!(b.check(&p, &m("rows"), 5, Timestamp::from_millis(midnight)).map(|d| d.allowed()), Ok(true));
    b.record(&p, &m("rows"), 3, true, Timestamp::from_millis(midnight)).ok();
    b.reset(&p, Some(&m("rows")), Timestamp::from_millis(midnight + 5));
    assert_eq!(b.overview(&p, Timestamp::from_millis(midnight + 5)).first().map(|l| l.used), Some(0));
}

#[test]
fn window_usage_and_repair_for_reconciliation() {
    let p = design();
    let mut b = Book::default();
    b.record(&p, &m("requests"), 4, true, at(0)).ok();
    let how = ReserveAs { id: eid("h"), kind: ReservationKind::Provisional, ttl_ms: 60_000 };
    assert!(b.reserve(&p, &m("requests"), 2, how, at(0)).is_ok_and(|d| d.allowed()));
    let w = b.window_usage(&p, at(0));
    // Rate windows are not reconcilable; month and lifetime limits are.
    let keys: Vec<&str> = w.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys, vec!["ai_tokens-month", "mapping_profiles-lifetime", "requests-month"]);
    let req = w.iter().find(|x| x.key == "requests-month").unwrap();
    assert_eq!((req.used, req.reserved, req.start.rfc3339()), (4, 2, "2026-11-01T00:00:00Z".to_owned()));
    assert_eq!(req.end.map(Timestamp::rfc3339).as_deref(), Some("2026-12-01T00:00:00Z"));
    b.repair(&p, "requests-month", 9, at(0));
    let after = b.window_usage(&p, at(0));
    let req = after.iter().find(|x| x.key == "requests-month").unwrap();
    assert_eq!((req.used, req.reserved), (9, 2));
    // Repairing a rate window or an unknown key changes nothing.
    let before = b.clone();
    b.repair(&p, "requests-minute", 0, at(0));
    b.repair(&p, "nope-day", 0, at(0));
    assert_eq!(b, before);
}

#[test]
fn state_round_trips_and_refuses_other_versions() {
    let c = Counter::Gcra { at: at(5), backlog: u64::MAX };
    assert_eq!(Counter::decode(&c.encode()), Ok(c));
    assert_eq!(c.encode(), format!("{{\"v\":1,\"k\":\"gcra\",\"at\":{},\"backlog\":18446744073709551615}}", T0 + 5));
    assert!(Counter::decode("{\"v\":2,\"k\":\"gcra\",\"at\":1,\"backlog\":0}").is_err());
    let r = Reservation {
        id: eid("r"),
        meter: m("rows"),
        quantity: 3,
        kind: ReservationKind::Provisional,
        created: at(0),
        expires: at(1),
        holds: vec![],
    };
    assert_eq!(Reservation::decode(&r.encode()), Ok(r));
}

// ---------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Reserve { q: u64, optimistic: bool, ttl: u64 },
    Record(u64),
    Commit { pick: usize, less: u64 },
    Release { pick: usize },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..20_000).prop_map(Op::Advance),
        (0u64..8, any::<bool>(), 1u64..60_000).prop_map(|(q, optimistic, ttl)| Op::Reserve { q, optimistic, ttl }),
        (0u64..8).prop_map(Op::Record),
        (any::<usize>(), 0u64..8).prop_map(|(pick, less)| Op::Commit { pick, less }),
        any::<usize>().prop_map(|pick| Op::Release { pick }),
        Just(Op::Expire),
    ]
}

fn nth_id(b: &Book, pick: usize) -> Option<EventId> {
    let n = b.reservations.len();
    (n > 0).then(|| b.reservations.keys().nth(pick % n).cloned()).flatten()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// No interleaving of reserve, record, commit (≤ reserved), release and expiry lets the
    /// units held in a window pass a hard limit, and every admission is accounted for.
    #[test]
    fn hard_limits_never_overshoot(ops in prop::collection::vec(op(), 1..120), day_limit in 0u64..30, rate in 1u64..12) {
        let p = policy(json!([
            {"meter": "rows", "limit": day_limit, "period": "day"},
            {"meter": "rows", "limit": rate, "period": "second", "window": 10}]));
        let rows = m("rows");
        let mut b = Book::default();
        let mut now = 0u64;
        let mut next = 0u32;
        let day = p.limits.iter().find(|l| l.period() == Period::Day).cloned().unwrap_or_else(|| unreachable!());
        let gcra = p.limits.iter().find(|l| l.period().is_rate()).cloned().unwrap_or_else(|| unreachable!());
        for op in ops {
            let t = at(now);
            match op {
                Op::Advance(ms) => now = now.saturating_add(ms).min(12 * 3_600_000),
                Op::Reserve { q, optimistic, ttl } => {
                    next = next.saturating_add(1);
                    let kind = if optimistic { ReservationKind::Optimistic } else { ReservationKind::Provisional };
                    let how = ReserveAs { id: eid(&format!("r{next}")), kind, ttl_ms: ttl };
                    let _ = b.reserve(&p, &rows, q, how, t);
                }
                Op::Record(q) => { let _ = b.record(&p, &rows, q, true, t); }
                Op::Commit { pick, less } => {
                    if let Some(id) = nth_id(&b, pick) {
                        let q = b.reservations.get(&id).map_or(0, |r| r.quantity.saturating_sub(less));
                        prop_assert!(b.commit(&p, &id, q, t).is_ok());
                    }
                }
                Op::Release { pick } => {
                    if let Some(id) = nth_id(&b, pick) { prop_assert!(b.release(&p, &id, t).is_ok()); }
                }
                Op::Expire => { b.expire(&p, t); }
            }
            let t = at(now);
            let dc = current(&day, b.counters.get("rows-day"), &p, t);
            prop_assert!(in_use(&day, dc) <= day_limit, "day window holds {} > {day_limit}", in_use(&day, dc));
            let gc = current(&gcra, b.counters.get("rows-10second"), &p, t);
            if let Counter::Gcra { backlog, .. } = gc {
                prop_assert!(u128::from(backlog) <= capacity(&gcra, rate), "gcra backlog {backlog} over capacity");
            }
        }
    }

    /// GCRA conformance: admissions in any span of `d` ms never exceed `n + ⌊d·n/W⌋`.
    #[test]
    fn gcra_bounds_every_span(gaps in prop::collection::vec((0u64..3_000, 1u64..4), 1..150), n in 1u64..20) {
        let p = policy(json!([{"meter": "requests", "limit": n, "period": "second", "window": 5}]));
        let req = m("requests");
        let mut b = Book::default();
        let mut now = 0u64;
        let mut admitted: Vec<(u64, u64)> = Vec::new();
        for (gap, q) in gaps {
            now += gap;
            if b.record(&p, &req, q, true, at(now)).is_ok_and(|d| d.allowed()) {
                admitted.push((now, q));
            }
        }
        for (i, &(ti, _)) in admitted.iter().enumerate() {
            let mut sum = 0u64;
            for &(tj, q) in admitted.iter().skip(i) {
                sum += q;
                let bound = n + (tj - ti) * n / 5_000;
                prop_assert!(sum <= bound, "{sum} units in {} ms, bound {bound}", tj - ti);
            }
        }
    }

    /// A soft limit never refuses, and prices its overage exactly (ceil to the cent).
    #[test]
    fn soft_limits_never_refuse(qs in prop::collection::vec(0u64..5_000, 1..40), cap in 0u64..10_000, per in 1u64..2_000, cents in 0u64..500) {
        let p = policy(json!([{"meter": "tokens", "limit": cap, "period": "month", "mode": "soft", "overage_price": {"per_units": per, "cents": cents}}]));
        let mut b = Book::default();
        let mut total = 0u64;
        for q in qs {
            let d = b.record(&p, &m("tokens"), q, true, at(0));
            prop_assert!(d.as_ref().is_ok_and(Decision::allowed));
            total += q;
            let l = d.ok().and_then(|d| d.limits.first().cloned()).unwrap_or_else(|| unreachable!());
            let over = total.saturating_sub(cap);
            prop_assert_eq!(l.overage, over);
            let exact = u128::from(over) * u128::from(cents);
            let cost = u128::from(l.overage_cost_cents);
            prop_assert!(cost * u128::from(per) >= exact && exact + u128::from(per) > cost * u128::from(per));
        }
    }

    /// A released or expired reservation gives its units back exactly once.
    #[test]
    fn give_back_exactly_once(q in 0u64..10, pre in 0u64..10, optimistic in any::<bool>(), expire_first in any::<bool>(), ttl in 1u64..10_000) {
        let p = policy(json!([{"meter": "rows", "limit": 20, "period": "day"}, {"meter": "rows", "limit": 30, "period": "minute"}]));
        let rows = m("rows");
        let mut b = Book::default();
        b.record(&p, &rows, pre, true, at(0)).ok();
        // Usage is compared at the instant of settlement: a rate window drains meanwhile.
        let settle_at = if expire_first { at(ttl) } else { at(0) };
        let usage = |b: &Book| b.overview(&p, settle_at).iter().map(|l| (l.policy.to_string(), l.used)).collect::<BTreeMap<_, _>>();
        let before = usage(&b);
        let kind = if optimistic { ReservationKind::Optimistic } else { ReservationKind::Provisional };
        let how = ReserveAs { id: eid("r"), kind, ttl_ms: ttl };
        prop_assert!(b.reserve(&p, &rows, q, how, at(0)).is_ok_and(|d| d.allowed()));
        if expire_first {
            prop_assert_eq!(b.expire(&p, settle_at).len(), 1);
        } else {
            prop_assert!(b.release(&p, &eid("r"), settle_at).is_ok());
        }
        let after_first = usage(&b);
        if optimistic && expire_first {
            // Expiry keeps an optimistic reservation: its units stay counted in the day.
            prop_assert_eq!(after_first.get("rows-day").copied(), before.get("rows-day").map(|u| u + q));
        } else {
            prop_assert_eq!(&after_first, &before);
        }
        // Every later attempt is refused and changes nothing.
        prop_assert!(b.release(&p, &eid("r"), settle_at).is_err());
        prop_assert!(b.commit(&p, &eid("r"), q, settle_at).is_err());
        prop_assert!(b.expire(&p, settle_at).is_empty());
        prop_assert_eq!(usage(&b), after_first);
    }

    /// Header rendering never panics and always yields printable ASCII, for any count the book
    /// keeps (none passes `MAX_SAFE_INTEGER`).
    #[test]
    fn headers_render_printable(used in 0u64..=MAX_SAFE_INTEGER, limit in 1u64..=MAX_SAFE_INTEGER, now in 0u64..253_402_300_799_999) {
        let p = policy(json!([{"meter": "rows", "limit": limit, "period": "month"}, {"meter": "rows", "limit": null, "period": "day"}]));
        let mut b = Book::default();
        let d = b.record(&p, &m("rows"), used, false, Timestamp::from_millis(now)).unwrap_or_else(|e| unreachable!("{e}"));
        for (_, v) in decision_headers(&d) {
            prop_assert!(v.chars().all(|c| (' '..='~').contains(&c)), "{v}");
        }
    }

    /// For a refused one-unit request, whatever the period, the violated limit's `t`, the
    /// `Retry-After`, `X-RateLimit-Reset` and the problem's `reset` say the same instant
    /// (draft-ietf-httpapi-ratelimit-headers-11: `t` is the effective window, until more quota
    /// is available, and Retry-After is not earlier than its end).
    #[test]
    fn reset_fields_agree_for_every_period(
        period in prop::sample::select(vec!["second", "minute", "hour", "day", "month"]),
        limit in 1u64..20, used in 0u64..40, now in 0u64..400_000_000, window in 1u64..5,
    ) {
        let rate = matches!(period, "second" | "minute" | "hour");
        let l = if rate {
            json!([{"meter": "rows", "limit": limit, "period": period, "window": window}])
        } else {
            json!([{"meter": "rows", "limit": limit, "period": period}])
        };
        let p = policy(l);
        let rows = m("rows");
        let mut b = Book::default();
        b.record(&p, &rows, used, false, at(0)).unwrap_or_else(|e| unreachable!("{e}"));
        let t = at(now % 3_600_000);
        let d = b.record(&p, &rows, 1, true, t).unwrap_or_else(|e| unreachable!("{e}"));
        if d.allowed() {
            return Ok(());
        }
        let h = decision_headers(&d);
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let retry: u64 = get("Retry-After").and_then(|v| v.parse().ok()).unwrap_or_else(|| unreachable!());
        let rl = get("RateLimit").unwrap_or_default();
        let t_param: u64 = rl.rsplit(";t=").next().and_then(|v| v.parse().ok()).unwrap_or_else(|| unreachable!("{rl}"));
        prop_assert_eq!(retry, t_param.max(1), "{}", rl);
        let reset: u64 = get("X-RateLimit-Reset").and_then(|v| v.parse().ok()).unwrap_or_else(|| unreachable!());
        let violated_ms = d.violated().and_then(|l| l.reset).map_or(0, Timestamp::millis);
        prop_assert_eq!(reset, violated_ms.div_ceil(1000));
        let problem = refusal_problem(&d, "p", None).unwrap_or_default();
        let body_reset = problem["reset"].as_str().unwrap_or_default().to_owned();
        let violated = d.violated().and_then(|l| l.reset).unwrap_or_else(|| unreachable!());
        prop_assert_eq!(body_reset, violated.rfc3339());
        prop_assert_eq!(violated.since(t).div_ceil(1000), t_param);
    }

    /// Releasing units admitted at any instant gives back exactly those units to the windows
    /// they were counted in, and never takes from a later window.
    #[test]
    fn release_admitted_gives_back_exactly_once(q in 1u64..5, before in 0u64..20, admitted in 0u64..200_000_000, later in 0u64..200_000_000) {
        // Both limits count successes here (a rate window counts attempts by default, and keeps
        // them: `a_limit_counting_attempts_keeps_a_failed_request`).
        let p = policy(json!([
            {"meter": "rows", "limit": 1000, "period": "day"},
            {"meter": "rows", "limit": 1000, "period": "minute", "counts": "successes"}]));
        let rows = m("rows");
        let mut b = Book::default();
        let t1 = at(admitted);
        b.record(&p, &rows, before, false, t1).unwrap_or_else(|e| unreachable!("{e}"));
        let usage_before = b.overview(&p, t1);
        b.record(&p, &rows, q, true, t1).unwrap_or_else(|e| unreachable!("{e}"));
        b.release_admitted(&p, &rows, q, t1, t1);
        prop_assert_eq!(b.overview(&p, t1), usage_before, "released at once: back to where it was");
        // Admitted, then released later: a day that rolled over keeps its own count.
        b.record(&p, &rows, q, true, t1).unwrap_or_else(|e| unreachable!("{e}"));
        let t2 = at(admitted + later);
        let day_at_t2_before = b.overview(&p, t2).into_iter().find(|l| &*l.policy == "rows-day").map(|l| l.used);
        b.release_admitted(&p, &rows, q, t1, t2);
        let day_at_t2 = b.overview(&p, t2).into_iter().find(|l| &*l.policy == "rows-day").map(|l| l.used);
        let same_day = t1.date() == t2.date();
        prop_assert_eq!(day_at_t2, day_at_t2_before.map(|u| if same_day { u - q } else { u }));
    }
}
