//! The native cost of one policy decision, as the org's Durable Object makes it for a proxied
//! request: decode the meter's counter row, admit (count) the request, encode the row, and take
//! the decision's view (the numbers the Worker renders the headers from; before, the DO rendered
//! the header text here).
//! Beside it: rendering that view's headers (the Worker's part), checking a presented key (the
//! Worker's part before any decision, which an isolate cache of verified keys would save), and the
//! JSON of the DO round trip (which a structured-clone message would replace).
//! The floor beside it is the least any counter does: one map lookup and one increment.
//! `make bench` reads target/criterion/*/new/estimates.json and reports the ratio.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use quotagate::org::rules::{decode_counters, encode_counters};
use quotagate::org::{Caller, DecideKind, KeyHash, OrgMsg, OrgOp, OrgReply};
use quotagate::policy::headers::View;
use quotagate::policy::keys::{mint, verify};
use quotagate::policy::secret::{KeySecrets, KeyVersion, Secret};
use quotagate::policy::{Book, MeterId, OrgTerms, Plan, PlanId, Policy, Timestamp};
use quotagate::policy::{EventId, OrgId};
use quotagate::wire::parse_json;

fn policy() -> Policy {
    let body = parse_json(
        br#"{"limits": [
            {"meter": "requests", "limit": 1000000000, "period": "minute", "mode": "hard"},
            {"meter": "requests", "limit": 1000000000000, "period": "month", "mode": "hard"}]}"#,
    )
    .unwrap();
    let plan = Plan::parse(&PlanId::parse("bench").unwrap(), &body).unwrap();
    Policy::new(&plan, &OrgTerms::default())
}

fn decide(c: &mut Criterion) {
    let policy = policy();
    let meter = MeterId::parse("requests").unwrap();
    // The meter's counter row as the org's DO holds it after some traffic.
    let mut book = Book::default();
    let t0 = 1_795_428_000_000;
    for i in 0..100u64 {
        book.record(&policy, &meter, 1, true, Timestamp::from_millis(t0 + i)).unwrap();
    }
    let row = encode_counters(book.counters.iter());
    let mut n = 0u64;
    c.bench_function("decision_reserve", |b| {
        b.iter(|| {
            n += 1;
            let mut book = Book { counters: decode_counters(black_box(&row)).unwrap(), ..Book::default() };
            let d = book.record(&policy, &meter, 1, true, Timestamp::from_millis(t0 + 1_000 + n)).unwrap();
            let encoded = encode_counters(book.counters.iter());
            black_box((View::of(&d), encoded))
        });
    });
    let d = book.record(&policy, &meter, 1, true, Timestamp::from_millis(t0 + 500)).unwrap();
    let view = View::of(&d);
    c.bench_function("render_view", |b| b.iter(|| black_box(black_box(&view).headers(d.now))));
    // The DO round trip's JSON, both ways, as a strict proxied request sends and reads it: the
    // most a structured-clone message could save (it would cross the boundary field by field).
    let msg = OrgMsg::Org {
        caller: Caller::Key(KeyHash("9f".repeat(32))),
        op: OrgOp::Decide {
            meter: meter.clone(),
            quantity: 1,
            kind: DecideKind::Proxy,
            id: EventId::parse("req_0123456789abcdef01234567").unwrap(),
            ttl_ms: 120_000,
            idempotency: None,
            lease: false,
            recalled: 0,
        },
    };
    let reply =
        OrgReply { view: Some(Box::new(View::of(&d))), plan: Some("bench".into()), held: Some(7), ..OrgReply::EMPTY };
    c.bench_function("do_message_json", |b| {
        b.iter(|| {
            let sent: OrgMsg = serde_json::from_str(&serde_json::to_string(black_box(&msg)).unwrap()).unwrap();
            let back: OrgReply = serde_json::from_str(&serde_json::to_string(black_box(&reply)).unwrap()).unwrap();
            black_box((sent, back))
        });
    });
    let secrets = KeySecrets::of(vec![(KeyVersion::FIRST, Secret::new("a key secret of some length"))]).unwrap();
    let key = mint(&OrgId::parse("org-1").unwrap(), &[7; 16], &secrets).plaintext;
    c.bench_function("key_verify", |b| b.iter(|| black_box(verify(black_box(&key), &secrets).unwrap())));
    let mut floor: HashMap<String, u64> = HashMap::from([("org-1:requests".to_owned(), 0)]);
    let key = "org-1:requests".to_owned();
    c.bench_function("floor_increment", |b| {
        b.iter(|| {
            *floor.get_mut(black_box(&key)).unwrap() += 1;
        });
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
