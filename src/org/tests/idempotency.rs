//! The org machine's idempotency rules: a replay counts once, a key is bound to its request's
//! fingerprint and busy while that request is in flight, event ids and request keys live apart,
//! and an origin's report of a replay counts once; and names a client makes up (unknown
//! meters) create no state.

use super::*;

#[test]
fn a_replayed_idempotency_key_counts_once_and_a_release_does_not_undo_the_original() {
    let mut o = month_and_minute();
    let first = o.proxy("idem-1", 1, true, at(0));
    assert!(first.held.is_some());
    assert!(!first.replayed);
    let replay = o.proxy("idem-1", 1, true, at(5));
    assert_eq!(replay.status, 200);
    assert!(replay.replayed, "the gateway flags a replay to the origin");
    assert!(replay.held.is_none(), "a replay holds nothing the Worker could release");
    assert!(replay.headers.iter().any(|(k, v)| k == "Idempotent-Replayed" && v == "true"));
    assert_eq!(o.used("requests-month", at(6)), 1);
    assert_eq!(o.mem.queued("requests"), 1);
    // After the original is released (its origin failed), a replay counts afresh.
    o.org(&Caller::Gateway, OrgOp::Release { id: eid("idem-1"), held: first.held.unwrap(), quantity: None }, at(7))
        .unwrap();
    let again = o.proxy("idem-1", 1, true, at(8));
    assert!(again.held.is_some());
    assert_eq!(o.used("requests-month", at(9)), 1);
}

#[test]
fn an_idempotency_key_is_bound_to_its_request_and_busy_while_in_flight() {
    let mut o = month_and_minute();
    let first = o.proxy_as("idem-2", 1, Some(fp("/a")), at(0)).unwrap();
    assert!(first.held.is_some());
    // The origin has not answered yet: the same request again is a 409, another one a 422.
    let busy = o.proxy_as("idem-2", 1, Some(fp("/a")), at(1)).unwrap_err();
    assert_eq!(busy, OrgError::KeyInFlight(eid("idem-2")));
    assert_eq!(busy.into_reply().status, 409);
    let other = o.proxy_as("idem-2", 1, Some(fp("/b")), at(2)).unwrap_err();
    assert_eq!(other, OrgError::KeyReused(eid("idem-2")));
    assert_eq!(other.into_reply().status, 422);
    assert_eq!(o.used("requests-month", at(3)), 1, "neither refusal counted");
    // Served: the same request is a replay now, another one still a 422.
    o.served("idem-2", at(4));
    assert!(o.proxy_as("idem-2", 1, Some(fp("/a")), at(5)).unwrap().replayed);
    assert_eq!(o.proxy_as("idem-2", 1, Some(fp("/b")), at(6)).unwrap_err(), OrgError::KeyReused(eid("idem-2")));
    // A gateway that died before reporting: the flight ends with the release window.
    o.proxy_as("idem-3", 1, Some(fp("/c")), at(10_000)).unwrap();
    assert!(o.proxy_as("idem-3", 1, Some(fp("/c")), at(10_000 + 119_000)).is_err());
    assert!(o.proxy_as("idem-3", 1, Some(fp("/c")), at(10_000 + 121_000)).unwrap().replayed);
    assert_eq!(o.used("requests-month", at(200_000)), 2);
}

#[test]
fn event_ids_and_idempotency_keys_live_apart() {
    let mut o = month_and_minute();
    // An event named like the request's key does not make the request a replay.
    let ev = UsageEvent { id: eid("idem-4"), meter: m("requests"), quantity: 1, timestamp: None, metadata: None };
    o.org(&key(), OrgOp::Events { events: vec![ev], enforce: false }, at(0)).unwrap();
    let r = o.proxy_as("idem-4", 1, Some(fp("/d")), at(1)).unwrap();
    assert!(r.held.is_some() && !r.replayed);
    assert_eq!(o.used("requests-month", at(2)), 2);
}

#[test]
fn a_replayed_origin_report_counts_once() {
    let mut o = Org::new(json!([{"meter": "ai_tokens", "limit": 1000, "period": "month", "mode": "soft"}]));
    let decide = |id: &str| OrgOp::Decide {
        meter: m("ai_tokens"),
        quantity: 0,
        kind: DecideKind::ProxyReported,
        id: eid(id),
        ttl_ms: 120_000,
        idempotency: Some(fp("/v1/ai/chat")),
        lease: false,
        recalled: 0,
    };
    let report = OrgOp::Report { id: eid("idem-9"), usage: vec![(m("ai_tokens"), 40), (m("nope"), 1)] };
    assert!(!o.org(&key(), decide("idem-9"), at(0)).unwrap().reply.replayed);
    let r = o.org(&Caller::Gateway, report.clone(), at(1)).unwrap().reply;
    assert_eq!(r.body["ignored"], json!(["nope"]));
    // The replay is admitted and flagged, and its origin reports again: counted once.
    assert!(o.org(&key(), decide("idem-9"), at(2)).unwrap().reply.replayed);
    o.org(&Caller::Gateway, report, at(3)).unwrap();
    assert_eq!(o.used("ai_tokens-month", at(4)), 40);
    assert_eq!(o.mem.queued("ai_tokens"), 40);
    // A request without an Idempotency-Key reports once and leaves no record behind.
    let before = o.mem.seen.len();
    o.org(&Caller::Gateway, OrgOp::Report { id: eid("req_1"), usage: vec![(m("ai_tokens"), 2)] }, at(5)).unwrap();
    assert_eq!(o.mem.seen.len(), before);
    assert_eq!(o.used("ai_tokens-month", at(6)), 42);
}

#[test]
fn unknown_meters_create_no_state() {
    let mut o = month_and_minute();
    let junk = |i: usize| UsageEvent {
        id: eid(&format!("e{i}")),
        meter: m(&format!("junk{i}")),
        quantity: 1,
        timestamp: None,
        metadata: None,
    };
    let op = OrgOp::Events { events: (0..100).map(junk).collect(), enforce: false };
    assert!(
        o.m.needs_org(&key(), &op, at(0)).meters.is_empty(),
        "no counter row is read (or its absence cached) for an unknown meter"
    );
    let seen = o.mem.seen.len();
    let step = o.org(&key(), op, at(0)).unwrap();
    let results = step.reply.body["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["status"] == "rejected" && r["reason"].as_str().unwrap().contains("junk")));
    assert!(step.writes.remember.is_empty(), "no idempotency record");
    assert!(step.writes.counters.is_empty() && step.writes.counts.is_empty() && step.writes.buckets.is_empty());
    assert_eq!(o.mem.seen.len(), seen);
    // A known meter in the same org still counts.
    let ok = UsageEvent { id: eid("ok-1"), meter: m("requests"), quantity: 1, timestamp: None, metadata: None };
    o.org(&key(), OrgOp::Events { events: vec![ok], enforce: false }, at(1)).unwrap();
    assert_eq!(o.used("requests-month", at(2)), 1);
}
