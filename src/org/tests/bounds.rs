//! Bounds on what one org keeps and counts, whatever its clients send: remembered refusals,
//! open reservations, proxy holds and ledger buckets.

use serde_json::json;

use super::*;
use crate::wire::UsageEvent;

#[test]
fn a_hard_refusal_may_be_remembered_and_what_it_refused_is_counted_later() {
    let mut o = month_and_minute();
    for i in 0..10 {
        assert!(!o.proxy(&format!("r{i}"), 1, false, at(i)).rememberable, "an admission is not remembered");
    }
    let refused = o.proxy("r10", 1, false, at(20));
    assert_eq!(refused.status, 429);
    assert!(refused.rememberable, "a hard refusal without an Idempotency-Key is rememberable");
    let recall = refused.view.expect("a decision carries its view");
    // The month's refusal: its own `t` is the month's end, far past any memory span.
    assert_eq!(recall.until(at(20), 1_000), at(1_020));
    assert_eq!(recall.headers(at(20)), refused.headers, "the memo renders the refusal's own headers");
    // With an Idempotency-Key the refusal is the key's, not the class's: nothing to remember.
    let keyed = o.proxy_as("k1", 1, Some(fp("k1")), at(30)).unwrap();
    assert_eq!((keyed.status, keyed.rememberable), (429, false));
    // The isolate answered 7 more from memory; its next ask tells the DO, which counts them.
    let op = OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Proxy,
        id: eid("r11"),
        ttl_ms: 120_000,
        idempotency: None,
        lease: false,
        recalled: 7,
    };
    assert_eq!(o.org(&key(), op, at(1_100)).unwrap().reply.status, 429);
    o.flush(false, false, at(1_000));
    o.tick(at(rules::COUNTS_EVERY_MS));
    assert_eq!(o.mem.counts[&("requests".to_owned(), "refused".to_owned())], 1 + 1 + 7 + 1);
    assert_eq!(o.used("requests-month", at(rules::COUNTS_EVERY_MS)), 10, "refusals count no usage");
}

#[test]
fn usage_that_would_take_a_ledger_bucket_past_2_53_is_refused_and_nothing_is_counted() {
    // `bytes` has no limit, so no counter bounds it: its hour's ledger bucket must.
    let doc = json!({"meters": [{"id": "bytes"}], "limits": [{"meter": "requests", "limit": 10, "period": "month"}]});
    let mut o = Org::with_config(config(doc));
    let max = crate::policy::plan::MAX_SAFE_INTEGER;
    let ev = |id: &str, q| UsageEvent { id: eid(id), meter: m("bytes"), quantity: q, timestamp: None, metadata: None };
    let op = OrgOp::Events { events: vec![ev("a", max - 1), ev("b", 2), ev("c", 1)], enforce: true };
    let r = o.org(&key(), op, at(0)).unwrap().reply;
    let results = r.body["results"].as_array().unwrap();
    let st: Vec<&str> = results.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["accepted", "rejected", "accepted"]);
    assert_eq!(
        results[1]["reason"],
        "'bytes (its ledger bucket for this hour)' would pass 9007199254740991, the largest count the gateway keeps"
    );
    assert_eq!(o.mem.queued("bytes"), max, "exactly 2^53 − 1 is kept; the refused 2 never entered");
    // The next hour's bucket has room again.
    let later = OrgOp::Events { events: vec![ev("d", 5)], enforce: true };
    assert_eq!(o.org(&key(), later, at(3_600_000)).unwrap().reply.body["results"][0]["status"], "accepted");
}

#[test]
fn open_reservations_and_holds_have_caps_and_eviction_keeps_usage_counted() {
    use crate::org::rules::{MAX_HELD, MAX_OPEN_RESERVATIONS};
    let mut o = Org::new(json!([{"meter": "requests", "limit": 1_000_000_000, "period": "month", "mode": "hard"}]));
    for i in 0..MAX_OPEN_RESERVATIONS {
        let r = o.org(&key(), reserve(&format!("r{i}"), 1, 3_600_000), at(i)).unwrap().reply;
        assert_eq!(r.status, 200, "reservation {i}");
    }
    let full = o.org(&key(), reserve("one-more", 1, 60_000), at(20_000)).unwrap_err().into_reply();
    assert_eq!(full.status, 429);
    assert_eq!(full.body["type"], "urn:quotagate:problem:too-many-reservations");
    let retry: u64 = full.headers.iter().find(|(k, _)| k == "Retry-After").unwrap().1.parse().unwrap();
    assert_eq!(retry, 3_580, "the first reservation expires an hour after it was made");
    // Settling one makes room for one.
    let release = OrgOp::Settle { id: eid("r0"), action: SettleAction::Release };
    assert_eq!(o.org(&key(), release, at(20_001)).unwrap().reply.status, 200);
    assert_eq!(o.org(&key(), reserve("one-more", 1, 60_000), at(20_002)).unwrap().reply.status, 200);
    assert_eq!(o.org(&key(), reserve("two-more", 1, 60_000), at(20_003)).unwrap_err().into_reply().status, 429);

    // Holds: past the cap the oldest goes, and the usage it held stays counted.
    let mut p = Org::new(json!([{"meter": "requests", "limit": 1_000_000_000, "period": "month", "mode": "hard"}]));
    let n = u64::try_from(MAX_HELD).unwrap() + 10;
    let mut first = None;
    for i in 0..n {
        let r = p.proxy(&format!("q{i}"), 1, false, at(i));
        first.get_or_insert(r.held.unwrap());
    }
    let state = p.admin(AdminOp::State, at(n));
    assert_eq!(state.body["held_requests"], json!(MAX_HELD));
    // The evicted hold cannot give its units back: they stay counted.
    let release = OrgOp::Release { id: eid("q0"), held: first.unwrap(), quantity: None };
    assert!(matches!(
        p.org(&Caller::Gateway, release, at(n + 1)),
        Err(OrgError::Usage(crate::policy::UsageError::UnknownReservation(_)))
    ));
    assert_eq!(p.used("requests-month", at(n + 2)), n);
    // A hold still kept gives its units back.
    let last = p.proxy("last", 1, false, at(n + 3)).held.unwrap();
    p.org(&Caller::Gateway, OrgOp::Release { id: eid("last"), held: last, quantity: None }, at(n + 4)).unwrap();
    assert_eq!(p.used("requests-month", at(n + 5)), n, "n + 1 admitted, 1 released");
}
