use std::num::NonZeroU64;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn rules(max: u64) -> LeaseRules {
    LeaseRules { max_units: NonZeroU64::new(max).unwrap_or(NonZeroU64::MIN), ttl_ms: 5000, min_requests: ONE }
}

const ONE: NonZeroU64 = NonZeroU64::MIN;

#[test]
fn parse_has_one_wording() {
    let ok = LeaseRules::parse("lease", &json!({"max_units": 500, "ttl_secs": 2}));
    let four = NonZeroU64::new(4).unwrap_or(ONE);
    assert_eq!(
        ok.ok(),
        Some(LeaseRules { max_units: NonZeroU64::new(500).unwrap_or(ONE), ttl_ms: 2000, min_requests: four })
    );
    let e = LeaseRules::parse("lease", &json!({"min_requests": 0})).err().map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("lease.min_requests: must be from 1 to 1000 (got 0)"));
    // On by default; `false` turns leases off; an object tunes them.
    assert_eq!(LeaseRules::of_plan("lease", None).ok(), Some(Some(LeaseRules::DEFAULT)));
    assert_eq!(LeaseRules::of_plan("lease", Some(&json!(null))).ok(), Some(Some(LeaseRules::DEFAULT)));
    assert_eq!(LeaseRules::of_plan("lease", Some(&json!(false))).ok(), Some(None));
    let tuned = LeaseRules::of_plan("lease", Some(&json!({"min_requests": 1}))).ok().flatten();
    assert_eq!(tuned.map(|r| (r.min_requests.get(), r.max_units.get(), r.ttl_ms)), Some((1, 1000, 2000)));
    assert_eq!(
        LeaseRules::of_plan("lease", Some(&json!("on"))).err().map(|e| e.to_string()).as_deref(),
        Some("lease: must be an object, got a string")
    );
    let e = LeaseRules::parse("lease", &json!({"ttl_secs": 11})).err().map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("lease.ttl_secs: must be from 1 to 10 (got 11)"));
    let e = LeaseRules::parse("lease", &json!({"max_units": 0})).err().map(|e| e.to_string());
    assert_eq!(e.as_deref(), Some("lease.max_units: must be at least 1"));
    assert!(LeaseRules::parse("lease", &json!({"size": 1})).is_err());
}

#[test]
fn sizes_shrink_towards_the_limit_and_stop_at_the_bound() {
    let r = rules(1000);
    let room = |remaining| [Room { limit: 1_000_000, remaining }];
    // Far from the limit: the largest lease.
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(900_000), 0, 0), 1000);
    // No more than the holder wants.
    assert_eq!(grant_size(&r, ONE, 300, room(900_000), 0, 0), 300);
    // Many holders share what is left, and leases shrink as the limit nears.
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(10_000), 0, 9), 10_000 / 40);
    // And each holder gets no more than its fair share of the bound (10,000 / (2 × 100)).
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(900_000), 0, 99), 50);
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(2_000), 0, 9), 50);
    // Below two requests a holder: strict.
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(79), 0, 9), 0);
    // Leases at risk already hold the whole bound.
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(400_000), 10_000, 0), 0);
    assert_eq!(grant_size(&r, ONE, u64::MAX, room(400_000), 9_500, 0), 500);
    // 1% of the limit, with no floor: 50 units of 5,000, none of 99.
    assert_eq!((stranded_bound(5_000), stranded_bound(99), stranded_bound(100)), (50, 0, 1));
    assert_eq!(grant_size(&r, ONE, u64::MAX, [Room { limit: 5_000, remaining: 150 }], 0, 0), 25);
    assert_eq!(grant_size(&r, ONE, u64::MAX, [Room { limit: 100, remaining: 100 }], 0, 0), 0, "strict");
    // A lease is whole requests, and never one request alone.
    let three = NonZeroU64::new(3).unwrap_or(ONE);
    assert_eq!(grant_size(&r, three, u64::MAX, room(900_000), 0, 0), 999);
    assert_eq!(grant_size(&r, ONE, u64::MAX, [Room { limit: 5_000, remaining: 7 }], 0, 0), 0);
    // No hard limit: the lease only batches counting.
    assert_eq!(grant_size(&r, ONE, u64::MAX, [], 0, 1000), 1000);
}

fn grant(units: u64, ttl_ms: u64) -> Grant {
    Grant {
        token: 7,
        id: EventId::parse("lease_1").unwrap_or_else(|e| unreachable!("{e}")),
        units,
        ttl_ms,
        limits: vec![LeaseLimit {
            policy: "requests-month".into(),
            limit: 100,
            remaining: 40,
            window_secs: None,
            reset_ms: None,
        }],
    }
}

#[test]
fn a_holder_spends_gives_back_and_renews_ahead() {
    let t0 = Timestamp::from_millis(1_000_000);
    let mut l = LocalLease::new(grant(10, 4000), 2, t0);
    assert!(!l.wants_renewal(t0));
    assert!(l.take(t0) && l.take(t0));
    let h = crate::policy::headers::lease_headers(&l.grant.limits, l.left, t0);
    let ratelimit = h.iter().find(|(n, _)| *n == "RateLimit").map(|(_, v)| v.as_str());
    assert_eq!(ratelimit, Some("\"requests-month\";r=46"), "the org's remaining counts what is left here");
    l.give_back(2);
    assert_eq!(l.left, 8);
    assert!(l.take(t0) && l.take(t0) && l.take(t0));
    assert!(l.wants_renewal(t0), "more than half spent");
    assert!(l.take(t0) && !l.take(t0), "one request's units short");
    assert_eq!(l.close(), LeaseClosing { id: l.grant.id.clone(), token: 7, unused: 0, spent: 5 });
    let mut late = LocalLease::new(grant(10, 4000), 1, t0);
    assert!(late.wants_renewal(t0.saturating_add_ms(2000)), "half the time passed");
    assert!(!late.take(t0.saturating_add_ms(4000)), "expired");
    late.renewing = true;
    assert!(!late.wants_renewal(t0.saturating_add_ms(3000)), "one renewal at a time");
}

#[test]
fn a_slot_asks_once_swaps_and_closes() {
    let t0 = Timestamp::from_millis(1_000_000);
    let mut s = Slot::default();
    assert_eq!(s.spend(t0), Spend::Ask);
    assert!(s.ask(t0) && !s.ask(t0), "one ask at a time");
    s.asked();
    assert_eq!(s.install(grant(4, 4000), 1, "p".into(), t0), None);
    assert!(!s.is_idle());
    let Spend::Taken { token: 7, renew: false, .. } = s.spend(t0) else { panic!("taken") };
    let Spend::Taken { renew: false, .. } = s.spend(t0) else { panic!("taken") };
    let Spend::Taken { renew: true, to_close: None, .. } = s.spend(t0) else { panic!("renew at half") };
    assert!(!s.ask(t0), "no ask while a renewal is on its way");
    // The renewal's grant replaces the lease; the old one's closing waits for the next renewal.
    let mut g = grant(10, 4000);
    g.token = 8;
    assert_eq!(s.install(g, 1, "p".into(), t0), None);
    assert!(!s.give_back(7, 1), "the replaced lease's request goes back through the DO");
    assert!(s.give_back(8, 1));
    for _ in 0..5 {
        let _ = s.spend(t0);
    }
    let Spend::Taken { renew: true, to_close: Some(c), .. } = s.spend(t0) else { panic!("renew with the old closing") };
    assert_eq!((c.token, c.unused, c.spent), (7, 1, 3), "the old lease: 3 of 4 spent");
    // No lease on offer: the current one closes too.
    let closings = s.refused(false);
    assert_eq!(closings.len(), 1);
    assert_eq!(closings[0].token, 8);
    assert!(s.is_idle());
    // An expired lease is closed by the next request.
    s.install(grant(10, 1000), 1, "p".into(), t0);
    let Spend::AskAndClose(c) = s.spend(t0.saturating_add_ms(1000)) else { panic!("expired") };
    assert_eq!(c[0].unused, 10);
    // A plan without lease mode: no asking for a while, then asking again.
    let mut q = Slot::default();
    assert!(q.ask(t0));
    q.asked();
    q.no_lease(t0);
    assert!(!q.ask(t0.saturating_add_ms(NO_LEASE_MS - 1)) && !q.is_idle());
    assert!(q.ask(t0.saturating_add_ms(NO_LEASE_MS)));
}

proptest! {
    /// Whatever the holders and the room, a grant fits in the room left above the bound and the
    /// open leases stay within `max(B, remaining / k)`.
    #[test]
    fn grants_fit(limit in 1u64..10_000_000, used_pct in 0u64..=100, outstanding in 0u64..100_000,
                  holders in 0u64..2000, max in 1u64..100_000, cost in 1u64..50) {
        let remaining = limit - limit * used_pct / 100;
        let cost = NonZeroU64::new(cost).unwrap_or(ONE);
        let size = grant_size(&rules(max), cost, u64::MAX, [Room { limit, remaining }], outstanding, holders);
        let bound = stranded_bound(limit);
        prop_assert_eq!(size % cost.get(), 0);
        prop_assert!(size <= max);
        if size > 0 {
            prop_assert!(size <= remaining / (SHARE * (holders + 1)));
            prop_assert!(outstanding + size <= bound, "everything at risk within the bound");
            prop_assert!(size <= bound / (2 * (holders + 1)), "a fair share of the bound");
            prop_assert!(size / cost.get() >= 2);
            prop_assert!(outstanding + size <= limit / 100, "1% of the limit, with no floor");
        }
    }
}
