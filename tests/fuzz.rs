//! Fuzzing with a fixed budget (proptest): every parser of outside input and the header rendering
//! must never panic, and what they accept must render as valid output. `FUZZ_CASES` sets the
//! budget per target (256 by default; `make reliability` runs 20,000); each target prints its
//! count so the reliability summary reports what ran.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

use quotagate::policy::classify::Routes;
use quotagate::policy::headers::{decision_headers, refusal_problem};
use quotagate::policy::{Book, MeterId, OrgTerms, Plan, PlanId, Policy, Timestamp};
use quotagate::wire::{parse_json, CheckRequest, EventsRequest, OrgUpsert};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

fn report(target: &str) {
    println!("fuzz: target={target} cases={}", cases());
}

/// Words a plan or request uses, so generated objects hit real fields, not only noise.
const WORDS: &[&str] = &[
    "limits",
    "meter",
    "limit",
    "period",
    "mode",
    "window",
    "overage_price",
    "per_units",
    "cents",
    "on_exceed",
    "meters",
    "id",
    "aggregation",
    "unit",
    "name",
    "upgrade_url",
    "on_failure",
    "requests",
    "rows",
    "ai_tokens",
    "month",
    "day",
    "minute",
    "second",
    "hour",
    "lifetime",
    "anniversary",
    "hard",
    "soft",
    "sum",
    "max",
    "latest",
    "open",
    "closed",
    "events",
    "quantity",
    "timestamp",
    "metadata",
    "enforce",
    "reserve",
    "ttl_seconds",
    "plan",
    "billing_anchor",
    "overrides",
    "webhook_url",
    "stripe_customer_id",
    "2026-02-29",
    "https://x.test",
    "",
    "-1",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![proptest::sample::select(WORDS).prop_map(str::to_owned), ".{0,12}"]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..2000).prop_map(Value::from),
        Just(json!(9_007_199_254_740_991_u64)),
        Just(json!(9_007_199_254_740_992_u64)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), word().prop_map(Value::String)];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plan that is mostly well-formed: real fields with values that are sometimes wrong.
fn plan_like() -> impl Strategy<Value = Value> {
    let limit = (
        proptest::sample::select(&["requests", "rows", "ai_tokens", "Bad Meter", ""][..]),
        prop_oneof![number(), Just(Value::Null), word().prop_map(Value::String)],
        proptest::sample::select(
            &["second", "minute", "hour", "day", "month", "lifetime", "fortnight", "0s", "5 minutes"][..],
        ),
        proptest::sample::select(&["hard", "soft", "medium"][..]),
        proptest::option::of(number()),
        proptest::option::of((number(), number())),
    )
        .prop_map(|(meter, limit, period, mode, window, price)| {
            let mut o = json!({"meter": meter, "limit": limit, "period": period, "mode": mode});
            if let Some(w) = window {
                o["window"] = w;
            }
            if let Some((per, cents)) = price {
                o["overage_price"] = json!({"per_units": per, "cents": cents});
            }
            o
        });
    (proptest::collection::vec(limit, 0..5), proptest::option::of(value())).prop_map(|(limits, extra)| {
        let mut p = json!({"limits": limits});
        if let Some(x) = extra {
            p["extra"] = x;
        }
        p
    })
}

fn printable(s: &str) -> bool {
    s.chars().all(|c| (' '..='~').contains(&c))
}

/// Whatever a plan parse accepts decides and renders: printable headers, a serialisable problem.
fn exercise(plan: &Plan, used: u64, now: u64) {
    let policy = Policy::new(plan, &OrgTerms::default());
    for meter in ["requests", "rows", "ai_tokens"] {
        let Ok(m) = MeterId::parse(meter) else { continue };
        let mut book = Book::default();
        if let Ok(d) = book.record(&policy, &m, used, true, Timestamp::from_millis(now)) {
            for (name, v) in decision_headers(&d) {
                assert!(printable(&v), "{name}: {v:?}");
            }
            if let Some(p) = refusal_problem(&d, "plan", Some("https://x.test/upgrade")) {
                serde_json::to_string(&p).unwrap();
            }
        }
    }
}

#[test]
fn fuzz_plan_parse_arbitrary_json() {
    report("plan parse, arbitrary JSON");
    runner()
        .run(&(value(), any::<u64>(), 0u64..253_402_300_799_999), |(v, used, now)| {
            match Plan::parse(&PlanId::parse("p").unwrap(), &v) {
                Ok(plan) => exercise(&plan, used % (1 << 53), now),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_plan_parse_near_valid_and_render_headers() {
    report("plan parse near-valid + header rendering");
    let accepted = std::cell::Cell::new(0u32);
    runner()
        .run(&(plan_like(), any::<u64>(), 0u64..253_402_300_799_999), |(v, used, now)| {
            match Plan::parse(&PlanId::parse("p").unwrap(), &v) {
                Ok(plan) => {
                    accepted.set(accepted.get() + 1);
                    exercise(&plan, used % (1 << 53), now);
                }
                // Every refusal names the field it is about.
                Err(e) => prop_assert!(e.to_string().contains(':'), "{e}"),
            }
            Ok(())
        })
        .unwrap();
    // The generator must reach the rendering path, or this target tests only refusals.
    println!("fuzz: near-valid plans accepted={} of {}", accepted.get(), cases());
    assert!(accepted.get() * 20 >= cases(), "only {} plans accepted", accepted.get());
}

#[test]
fn fuzz_json_bytes() {
    report("request bodies, arbitrary bytes");
    runner()
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            if let Ok(v) = parse_json(&bytes) {
                let _ = CheckRequest::parse(&v);
                let _ = EventsRequest::parse(&v, Timestamp::from_millis(1_795_428_000_000));
                let _ = OrgUpsert::parse(&v);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_request_bodies() {
    report("check, events and org bodies, arbitrary JSON");
    runner()
        .run(&value(), |v| {
            let _ = CheckRequest::parse(&v);
            if let Ok(e) = EventsRequest::parse(&v, Timestamp::from_millis(1_795_428_000_000)) {
                prop_assert!(!e.events.is_empty() && e.events.len() <= 100);
            }
            let _ = OrgUpsert::parse(&v);
            let _ = Routes::parse(&v.to_string());
            Ok(())
        })
        .unwrap();
}
