//! Fuzzing with a fixed budget (proptest): every parser of outside input and the header rendering
//! must never panic; what they accept must keep the invariants the rest of the code relies on and
//! render as valid output; what they refuse must say so in a message naming a real field.
//! `FUZZ_CASES` sets the budget per target (256 by default; `make reliability` runs 100,000);
//! each target prints its count so the reliability summary reports what ran. A failing case's
//! seed is persisted in `proptest-regressions/fuzz.txt` and replayed first on every later run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{json, Map, Value};

use quotagate::policy::classify::{Cost, Routes};
use quotagate::policy::headers::{decision_headers, refusal_problem};
use quotagate::policy::{Book, MeterId, OrgTerms, Plan, PlanId, Policy, Timestamp};
use quotagate::wire::{
    parse_json, CheckRequest, EventsRequest, InputError, OrgUpsert, MAX_EVENTS, MAX_RESERVATION_SECS, MAX_SAFE_INTEGER,
};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        // Relative to the package root, where cargo runs tests; committed like the other
        // regression files, so a failure found once is replayed everywhere.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/fuzz.txt"))),
        ..Config::default()
    })
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

/// A meter or event id as a client sends it: mostly valid, sometimes not, sometimes not a string.
fn id_like() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => "[a-z][a-z0-9_]{0,12}".prop_map(Value::String),
        1 => ".{0,10}".prop_map(Value::String),
        1 => number(),
        1 => Just(Value::Null),
    ]
}

/// A quantity: mostly a small whole number, sometimes any JSON number.
fn quantity_like() -> BoxedStrategy<Value> {
    prop_oneof![6 => (0u64..10_000).prop_map(Value::from), 1 => number()].boxed()
}

/// An object with these fields, each present with its probability, and sometimes one the schema
/// does not have.
fn object_of(fields: Vec<(&'static str, f64, BoxedStrategy<Value>)>) -> impl Strategy<Value = Value> {
    let parts: Vec<_> =
        fields.into_iter().map(|(k, p, v)| proptest::option::weighted(p, v).prop_map(move |v| (k, v))).collect();
    (parts, proptest::option::weighted(0.1, (word(), value()))).prop_map(|(parts, extra)| {
        let mut m: Map<String, Value> = parts.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect();
        if let Some((k, v)) = extra {
            m.insert(k, v);
        }
        Value::Object(m)
    })
}

fn check_like() -> impl Strategy<Value = Value> {
    object_of(vec![
        ("meter", 0.95, id_like().boxed()),
        ("quantity", 0.8, quantity_like()),
        ("reserve", 0.5, prop_oneof![9 => any::<bool>().prop_map(Value::Bool), 1 => number()].boxed()),
        ("ttl_seconds", 0.2, prop_oneof![(0u64..100_000).prop_map(Value::from), number()].boxed()),
    ])
}

fn event_like() -> impl Strategy<Value = Value> {
    object_of(vec![
        ("id", 0.97, id_like().boxed()),
        ("meter", 0.97, id_like().boxed()),
        ("quantity", 0.97, quantity_like()),
        (
            "timestamp",
            0.2,
            prop_oneof![
                Just(json!("2026-11-10T12:00:00Z")),
                Just(json!("2020-01-01T00:00:00Z")),
                word().prop_map(Value::String),
                number()
            ]
            .boxed(),
        ),
        ("metadata", 0.2, prop_oneof![Just(json!({"k": "v"})), value()].boxed()),
    ])
}

fn events_like() -> impl Strategy<Value = Value> {
    let events = prop_oneof![
        8 => proptest::collection::vec(event_like(), 1..4),
        1 => proptest::collection::vec(event_like(), 0..1),
        1 => proptest::collection::vec(event_like(), 99..103),
    ];
    object_of(vec![
        ("events", 0.97, events.prop_map(Value::Array).boxed()),
        ("enforce", 0.5, prop_oneof![9 => any::<bool>().prop_map(Value::Bool), 1 => number()].boxed()),
    ])
}

fn org_like() -> impl Strategy<Value = Value> {
    object_of(vec![
        ("plan", 0.95, id_like().boxed()),
        (
            "name",
            0.5,
            prop_oneof![".{0,8}".prop_map(Value::String), "x{190,210}".prop_map(Value::String), number()].boxed(),
        ),
        ("billing_anchor", 0.3, prop_oneof![Just(json!("2025-01-31")), word().prop_map(Value::String)].boxed()),
        ("stripe_customer_id", 0.3, prop_oneof![Just(json!("cus_123")), word().prop_map(Value::String)].boxed()),
        ("webhook_url", 0.3, prop_oneof![Just(json!("https://x.test/hook")), word().prop_map(Value::String)].boxed()),
        ("overrides", 0.3, value().boxed()),
    ])
}

fn routes_like() -> impl Strategy<Value = Value> {
    let rule = object_of(vec![
        ("method", 0.5, prop_oneof![Just(json!("POST")), Just(json!("get")), word().prop_map(Value::String)].boxed()),
        (
            "path",
            0.95,
            prop_oneof![
                Just(json!("/v1/ai/**")),
                Just(json!("/v1/*/csv")),
                Just(json!("/**/x")),
                ".{0,10}".prop_map(Value::String)
            ]
            .boxed(),
        ),
        ("meter", 0.95, id_like().boxed()),
        ("cost", 0.5, prop_oneof![Just(json!("reported")), quantity_like()].boxed()),
    ]);
    prop_oneof![4 => proptest::collection::vec(rule, 0..4).prop_map(Value::Array), 1 => value()]
}

/// A request body: one of the API's shapes, near-valid, or any JSON at all.
fn body_like() -> impl Strategy<Value = Value> {
    prop_oneof![check_like(), events_like(), org_like(), routes_like(), value()]
}

/// A refusal names a field the client sent, or one the schema has, or the body itself.
fn names_a_field(e: &InputError, input: &Value, schema: &[&str]) -> Result<(), TestCaseError> {
    match e {
        InputError::Json(m) => prop_assert!(!m.is_empty()),
        InputError::Field { field, reason } => {
            prop_assert!(!reason.is_empty(), "{field}: empty reason");
            let root = field.split(['.', '[']).next().unwrap_or_default();
            let sent = input.as_object().is_some_and(|m| m.contains_key(field.as_str()) || m.contains_key(root));
            prop_assert!(field == "(body)" || sent || schema.contains(&root), "{field}: {reason} (input {input})");
        }
    }
    Ok(())
}

/// What every parser of a request body promises, on accepting and on refusing.
fn body_properties(v: &Value) -> Result<(), TestCaseError> {
    let now = Timestamp::from_millis(1_795_428_000_000);
    match CheckRequest::parse(v) {
        Ok(c) => {
            prop_assert!(c.quantity <= MAX_SAFE_INTEGER);
            prop_assert!((1..=MAX_RESERVATION_SECS).contains(&c.ttl_secs));
            prop_assert_eq!(Some(c.meter.as_str()), v["meter"].as_str());
        }
        Err(e) => names_a_field(&e, v, &["meter", "quantity", "reserve", "ttl_seconds"])?,
    }
    match EventsRequest::parse(v, now) {
        Ok(r) => {
            let sent = v["events"].as_array().map_or(0, Vec::len);
            prop_assert!((1..=MAX_EVENTS).contains(&r.events.len()) && r.events.len() == sent);
            for (i, e) in r.events.iter().enumerate() {
                prop_assert!(e.quantity <= MAX_SAFE_INTEGER);
                prop_assert_eq!(Some(e.id.as_str()), v["events"][i]["id"].as_str());
                prop_assert!(r.events[..i].iter().all(|x| x.id != e.id), "duplicate id accepted");
            }
        }
        Err(e) => names_a_field(&e, v, &["events", "enforce"])?,
    }
    match OrgUpsert::parse(v) {
        Ok(o) => {
            prop_assert_eq!(Some(o.plan.as_str()), v["plan"].as_str());
            prop_assert!(o.name.as_ref().is_none_or(|n| n.chars().count() <= 200));
            prop_assert!(o.stripe_customer_id.as_ref().is_none_or(|c| c.starts_with("cus_")));
            prop_assert!(o.webhook_url.as_ref().is_none_or(|u| u.starts_with("https://") || u.starts_with("http://")));
        }
        Err(e) => {
            names_a_field(
                &e,
                v,
                &["plan", "name", "billing_anchor", "stripe_customer_id", "webhook_url", "overrides"],
            )?;
        }
    }
    match Routes::parse(&v.to_string()) {
        Ok(routes) => {
            // Every accepted rule set classifies any request, to a real meter and a safe cost.
            for path in ["/", "/v1/ai/chat", "/v1/x/csv", "/a/b/c/x"] {
                let c = routes.classify("POST", path);
                prop_assert!(MeterId::parse(c.meter.as_str()).is_ok());
                prop_assert!(
                    matches!(c.cost, Cost::Reported) || matches!(c.cost, Cost::Fixed(n) if n <= MAX_SAFE_INTEGER)
                );
            }
        }
        Err(e) => prop_assert!(e.starts_with("ROUTES"), "{e}"),
    }
    Ok(())
}

/// Equal values, with floats equal to their last bits (`serde_json`'s float parser is not
/// correctly rounded: 17 significant digits may come back one unit off).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            // JSON has no NaN or infinity: the relative gap is always defined.
            (x - y).abs() <= x.abs().max(y.abs()) * 1e-15
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(usize),
    Replace(usize, u8),
    Insert(usize, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    let byte = prop_oneof![proptest::sample::select(&b"{}[]\",:0-.e\\ntf"[..]), any::<u8>()];
    prop_oneof![
        Just(Damage::None),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Damage::Replace(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

#[test]
fn fuzz_json_bytes() {
    report("request bodies as bytes, whole and damaged");
    runner()
        .run(&(body_like(), damage()), |(v, d)| {
            let mut bytes = serde_json::to_vec(&v).unwrap();
            let n = bytes.len();
            match d {
                Damage::None => {}
                Damage::Truncate(i) => bytes.truncate(i % n),
                Damage::Replace(i, b) => bytes[i % n] = b,
                Damage::Insert(i, b) => bytes.insert(i % (n + 1), b),
            }
            match parse_json(&bytes) {
                Ok(parsed) => {
                    if matches!(d, Damage::None) {
                        prop_assert!(same(&parsed, &v), "what the gateway reads is what was sent: {parsed} vs {v}");
                    }
                    body_properties(&parsed)?;
                }
                Err(e) => {
                    prop_assert!(!matches!(d, Damage::None), "valid JSON refused: {e}");
                    prop_assert!(matches!(e, InputError::Json(ref m) if !m.is_empty()), "{e}");
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_request_bodies() {
    report("check, events, org and route bodies, near-valid and arbitrary JSON");
    let accepted = std::cell::Cell::new([0u32; 3]);
    runner()
        .run(&body_like(), |v| {
            let mut a = accepted.get();
            a[0] += u32::from(CheckRequest::parse(&v).is_ok());
            a[1] += u32::from(EventsRequest::parse(&v, Timestamp::from_millis(1_795_428_000_000)).is_ok());
            a[2] += u32::from(OrgUpsert::parse(&v).is_ok());
            accepted.set(a);
            body_properties(&v)
        })
        .unwrap();
    // The generators must reach the accepting paths too, or this target tests only refusals.
    let [check, events, org] = accepted.get();
    println!("fuzz: bodies accepted check={check} events={events} org={org} of {}", cases());
    assert!(check > 0 && events > 0 && org > 0, "accepted: check {check}, events {events}, org {org}");
}
