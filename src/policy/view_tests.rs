//! Properties of a decision's `View` (what the org's DO sends, and what a refusal's memo keeps):
//! rendered in the Worker, its headers carry the decision's own numbers (read from the decision,
//! not from the view), it survives the wire, and later only its countdowns move.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::json;

use super::tests::{at, m, policy};
use super::Book;
use crate::policy::headers::{decision_headers, View};
use crate::policy::recall::DEFAULT_MEMORY_MS;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A refusal an isolate remembers answers with the decision's own headers when recalled at
    /// once, and later only with `t` and `Retry-After` counted down; it stands no longer than
    /// the refusal's `Retry-After` nor the memory span.
    #[test]
    fn a_remembered_refusal_reads_like_the_decision(
        minute in 1u64..20, month in 1u64..60, cost in 1u64..8, lifetime in any::<bool>(), later in 0u64..3_000,
    ) {
        let third = if lifetime { json!({"meter": "requests", "limit": 50, "period": "lifetime"}) }
                    else { json!({"meter": "requests", "limit": 5, "period": "day", "mode": "soft"}) };
        let p = policy(json!([
            {"meter": "requests", "limit": minute, "period": "minute"},
            {"meter": "requests", "limit": month, "period": "month"},
            {"meter": "requests", "limit": null, "period": "hour"},
            third]));
        let req = m("requests");
        let mut b = Book::default();
        let mut refused = None;
        for i in 0..200u64 {
            let d = b.record(&p, &req, cost, true, at(i * 50)).unwrap_or_else(|e| unreachable!("{e}"));
            if !d.allowed() { refused = Some(d); break; }
        }
        let d = refused.unwrap_or_else(|| unreachable!("a limit of at most 60 refuses within 200 requests"));
        let r = View::of(&d);
        let retry = r.headers(d.now).into_iter().find(|(k, _)| k == "Retry-After").map(|(_, v)| v);
        prop_assert_eq!(retry, d.retry_after().map(|s| s.to_string()), "the decision's own Retry-After");
        let until = r.until(d.now, DEFAULT_MEMORY_MS).since(d.now);
        prop_assert!(until <= DEFAULT_MEMORY_MS);
        if let Some(s) = d.retry_after() { prop_assert!(until <= s * 1000); }
        // Later, only the countdowns move.
        let t = d.now.saturating_add_ms(later);
        let (h0, h1) = (decision_headers(&d), r.headers(t));
        prop_assert_eq!(h0.len(), h1.len());
        for ((n0, v0), (n1, v1)) in h0.iter().zip(&h1) {
            prop_assert_eq!(n0, n1);
            if n0 != "RateLimit" && n0 != "Retry-After" { prop_assert_eq!(v0, v1); }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What the org's DO sends (a decision's `View`, numbers) renders in the Worker to headers
    /// that carry the decision's own figures (its level, its most constrained limit, its
    /// `Retry-After`, one item per limited limit), admitted or refused, whatever its limits; and
    /// the view renders the same after its JSON round trip.
    #[test]
    fn every_decisions_view_renders_its_own_figures(
        minute in 1u64..20, day in 1u64..80, cost in 1u64..8, soft in any::<bool>(), unlimited in any::<bool>(),
        lifetime in any::<bool>(), steps in 1u64..120, gap_ms in 1u64..2_000,
    ) {
        let mode = if soft { "soft" } else { "hard" };
        let mut limits = vec![
            json!({"meter": "requests", "limit": minute, "period": "minute"}),
            json!({"meter": "requests", "limit": day, "period": "day", "mode": mode}),
        ];
        if unlimited { limits.push(json!({"meter": "requests", "limit": null, "period": "hour"})); }
        if lifetime { limits.push(json!({"meter": "requests", "limit": 500, "period": "lifetime"})); }
        let p = policy(serde_json::Value::Array(limits));
        let req = m("requests");
        let mut b = Book::default();
        let mut refused = 0;
        // Spread requests, then a burst at one instant past the minute's allowance: every run
        // sees admissions and refusals (the minute limit is hard).
        let end = steps * gap_ms;
        let burst = usize::try_from(minute / cost + 2).unwrap_or(2);
        let times = (0..steps).map(|i| i * gap_ms).chain(std::iter::repeat_n(end, burst));
        for t in times {
            let d = b.record(&p, &req, cost, true, at(t)).unwrap_or_else(|e| unreachable!("{e}"));
            refused += u64::from(!d.allowed());
            let view = View::of(&d);
            let h = view.headers(d.now);
            let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            prop_assert_eq!(get("X-Quota-Status"), Some(d.level().as_str().to_owned()));
            prop_assert_eq!(get("Retry-After"), d.retry_after().map(|s| s.to_string()));
            let most = d.most_constrained();
            prop_assert_eq!(get("X-RateLimit-Limit"), most.and_then(|l| l.limit).map(|n| n.to_string()));
            prop_assert_eq!(get("X-RateLimit-Remaining"), most.and_then(|l| l.remaining).map(|n| n.to_string()));
            let items = d.limits.iter().filter(|l| l.limit.is_some()).count();
            prop_assert_eq!(get("RateLimit").map_or(0, |v| v.split(", ").count()), items);
            // Through the wire: the view the Worker decodes renders the same.
            let text = serde_json::to_string(&view).unwrap_or_default();
            let back: View = serde_json::from_str(&text).unwrap_or_else(|e| unreachable!("{e}"));
            prop_assert_eq!(back.headers(d.now), h);
        }
        prop_assert!(refused > 0, "the burst was refused");
    }
}
