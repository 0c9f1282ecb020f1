//! The native cost of one policy decision, as the org's Durable Object makes it for a proxied
//! request: decode the counters it loaded, reserve, encode what changed, render the headers.
//! The floor beside it is the least any counter does: one map lookup and one increment.
//! `make bench` reads target/criterion/*/new/estimates.json and reports the ratio.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use quotagate::policy::headers::decision_headers;
use quotagate::policy::{
    Book, Counter, EventId, MeterId, OrgTerms, Plan, PlanId, Policy, ReservationKind, ReserveAs, Timestamp,
};
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
    // Counters as SQLite holds them after some traffic.
    let mut book = Book::default();
    let t0 = 1_795_428_000_000;
    for i in 0..100u64 {
        let how = ReserveAs {
            id: EventId::parse(&format!("warm-{i}")).unwrap(),
            kind: ReservationKind::Optimistic,
            ttl_ms: 120_000,
        };
        book.reserve(&policy, &meter, 1, how, Timestamp::from_millis(t0 + i)).unwrap();
    }
    let stored: Vec<(String, String)> = book.counters.iter().map(|(k, v)| (k.clone(), v.encode())).collect();
    let id = EventId::parse("req-1").unwrap();
    let mut n = 0u64;
    c.bench_function("decision_reserve", |b| {
        b.iter(|| {
            n += 1;
            let mut book = Book::default();
            for (k, v) in &stored {
                book.counters.insert(k.clone(), Counter::decode(v).unwrap());
            }
            let how = ReserveAs { id: id.clone(), kind: ReservationKind::Optimistic, ttl_ms: 120_000 };
            let d = book.reserve(&policy, &meter, 1, how, Timestamp::from_millis(t0 + 1_000 + n)).unwrap();
            let encoded: Vec<String> = book.counters.values().map(Counter::encode).collect();
            black_box((decision_headers(&d), encoded))
        });
    });
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
