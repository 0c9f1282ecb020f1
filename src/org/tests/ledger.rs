//! Native tests of the machine's ledger side: buckets and their exactly-once batches, audit
//! rows, releases as negative deltas, flush timing, plan refresh, the org's own report and its
//! repairs, composite meters' buckets, and the usage API's own limit.

use serde_json::{json, Value};

use super::{at, eid, key, m, month_and_minute, plan, Org, T0};
use crate::org::buckets::Bucket;
use crate::org::rules::{self, decode_counters, flush_backoff_ms, LedgerAgg};
use crate::org::*;
use crate::policy::{Aggregation, Timestamp, UsageError};
use crate::wire::UsageEvent;

#[test]
fn an_audit_meter_also_keeps_one_row_per_event() {
    let mut o = Org::new(json!([{"meter": "requests", "limit": 10, "period": "month", "mode": "hard"}]));
    let mut cfg = plan(json!([{"meter": "requests", "limit": 10, "period": "month", "mode": "hard"}]));
    cfg.plan["meters"] = json!([{"id": "requests", "audit": true}]);
    o.admin(AdminOp::Configure(cfg), at(0));
    let r = o.proxy("req_1", 2, false, at(1_000));
    assert_eq!(o.mem.outbox.len(), 1);
    let row = o.mem.outbox.values().next().unwrap().clone();
    assert_eq!((row.audit, row.ready_at), (1, at(1_000).millis() + 120_000), "it waits for its release window");
    // A release takes back the bucket's units and the audit row.
    o.org(&Caller::Gateway, OrgOp::Release { id: eid("req_1"), held: r.held.unwrap(), quantity: None }, at(2_000))
        .unwrap();
    assert!(o.mem.outbox.is_empty());
    assert_eq!(o.mem.queued("requests"), 0);
}

#[test]
fn a_release_after_the_flush_is_a_negative_delta_and_the_ledger_nets_out() {
    let mut o = month_and_minute();
    let r = o.proxy("req_1", 3, false, at(0));
    o.proxy("req_2", 2, false, at(1));
    assert!(o.flush(false, false, at(2)));
    assert_eq!(o.mem.d1.values().sum::<i64>(), 5);
    o.org(&Caller::Gateway, OrgOp::Release { id: eid("req_1"), held: r.held.unwrap(), quantity: None }, at(3)).unwrap();
    let open: Vec<&Bucket> = o.mem.buckets.values().collect();
    assert_eq!((open[0].quantity, open[0].events), (-3, -1));
    assert!(o.flush(false, false, at(30_003)));
    assert_eq!(o.mem.d1.values().sum::<i64>(), 2);
    assert_eq!(o.used("requests-month", at(30_004)), 2);
}

#[test]
fn a_forced_flush_drains_everything_at_once_and_a_resent_batch_counts_once() {
    let mut o = month_and_minute();
    for i in 0..8 {
        o.proxy(&format!("r{i}"), 1, false, at(i));
    }
    // D1 applied it but the answer was lost: the batch stays sealed, and new usage waits.
    assert!(o.flush(true, false, at(10)));
    o.proxy("late", 1, false, at(11));
    o.restart();
    // Sent again: D1's mark says it has it, so it applies nothing, and the batch leaves.
    assert!(!o.flush(false, false, at(12)));
    assert_eq!(o.mem.d1.values().sum::<i64>(), 8);
    // The next flush takes what came meanwhile: everything is in D1, nothing pending.
    assert!(o.flush(false, false, at(13)));
    assert_eq!(o.mem.d1.values().sum::<i64>(), 9);
    assert!(o.mem.buckets.is_empty());
    assert_eq!(o.m.ledger_pending(), 0);
}

#[test]
fn a_reset_or_a_plan_change_inside_an_hour_starts_a_new_bucket() {
    let mut o = month_and_minute();
    o.proxy("a", 1, false, at(0));
    o.admin(AdminOp::Reset { meter: None }, at(10));
    o.proxy("b", 1, false, at(20));
    o.admin(
        AdminOp::Configure(plan(json!([{"meter": "requests", "limit": 50, "period": "month", "mode": "hard"}]))),
        at(30),
    );
    o.proxy("c", 1, false, at(40));
    let starts: Vec<u64> = o.mem.buckets.keys().map(|(_, k)| k.start).collect();
    assert_eq!(starts, [T0, T0 + 10, T0 + 30]);
}

#[test]
fn a_plan_is_looked_up_again_once_it_is_older_than_the_refresh_period() {
    let mut o = month_and_minute();
    assert_eq!(o.m.plan_check(at(59_999), None), None, "configured at 0: fresh for a minute");
    let (plan, version) = o.m.plan_check(at(60_000), None).unwrap();
    assert_eq!((plan.as_str(), version), ("p", 1));
    o.m.plan_checked(at(60_000));
    assert_eq!(o.m.plan_check(at(61_000), None), None);
    // A newer version is adopted through Configure, keeping the org's own terms and counters.
    o.proxy("a", 2, false, at(61_000));
    let cfg = o
        .m
        .config_with_plan(json!({"limits": [{"meter": "requests", "limit": 5, "period": "month", "mode": "hard"}]}), 2)
        .unwrap();
    o.admin(AdminOp::Configure(cfg), at(62_000));
    let state = o.admin(AdminOp::State, at(62_001));
    assert_eq!(state.body["plan_version"], 2);
    assert_eq!(o.used("requests-month", at(62_002)), 2);
    assert_eq!(o.m.plan_check(at(62_003), None), None);
    // After a restart the instance does not know how fresh its copy is: it asks.
    o.restart();
    assert!(o.m.plan_check(at(62_004), None).is_some());
}

#[test]
fn an_active_org_reports_once_per_interval_and_an_idle_one_never() {
    let mut o = month_and_minute();
    assert!(!o.m.report_due(at(1_000_000)), "no usage, no report");
    o.proxy("a", 1, false, at(0));
    assert!(!o.m.report_due(at(299_999)) && o.m.report_due(at(300_000)));
    o.m.reported(at(300_000));
    o.proxy("b", 1, false, at(310_000));
    assert!(!o.m.report_due(at(599_999)) && o.m.report_due(at(600_000)), "one interval after the last report");
    o.m.reported(at(600_000));
    o.proxy("c", 1, false, at(2_000_000));
    assert!(
        o.m.report_due(at(2_300_000)) && !o.m.report_due(at(2_299_999)),
        "after a quiet spell, one interval after the usage"
    );
}

#[test]
fn a_composite_is_counted_in_the_parts_step_and_its_bucket_is_written_beside_theirs() {
    let mut o = Org::new(json!([]));
    let mut cfg = plan(json!([{"meter": "tokens", "limit": 10, "period": "month", "mode": "hard"}]));
    cfg.plan["meters"] = json!([{"id": "tin"}, {"id": "tout"}, {"id": "tokens", "sum_of": ["tin", "tout"]}]);
    o.admin(AdminOp::Configure(cfg), at(0));
    let ev = |id: &str, meter: &str, q: u64| UsageEvent {
        id: eid(id),
        meter: m(meter),
        quantity: q,
        timestamp: None,
        metadata: None,
    };
    let r = o
        .org(&key(), OrgOp::Events { events: vec![ev("a", "tin", 6), ev("b", "tout", 3)], enforce: true }, at(1))
        .unwrap();
    assert_eq!(r.reply.body["results"][1]["status"], "accepted");
    assert!(o.mem.counters.contains_key("tokens"), "the composite's row is written in the parts' step");
    let over = o.org(&key(), OrgOp::Events { events: vec![ev("c", "tout", 2)], enforce: true }, at(2)).unwrap();
    assert_eq!(over.reply.body["results"][0]["status"], "rejected");
    // After a restart (rows reloaded, not cached), the sum still holds.
    o.restart();
    let again = o.org(&key(), OrgOp::Events { events: vec![ev("d", "tin", 2)], enforce: true }, at(3)).unwrap();
    assert_eq!(again.reply.body["results"][0]["status"], "rejected");
    assert_eq!(o.used("tokens-month", at(4)), 9);
    assert_eq!((o.mem.queued("tin"), o.mem.queued("tout"), o.mem.queued("tokens")), (6, 3, 9), "the ledger gets both");
}

#[test]
fn the_usage_api_has_its_own_limit_and_proxied_requests_do_not_spend_it() {
    let mut o = month_and_minute();
    o.mem.api = (2, 3);
    o.restart();
    let gate = || OrgOp::Gate;
    assert_eq!(o.org(&key(), gate(), at(0)).unwrap().reply.status, 200);
    assert_eq!(o.org(&key(), gate(), at(1)).unwrap().reply.status, 200);
    let refused = o.org(&key(), gate(), at(2)).unwrap().reply;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["violated-policies"], json!(["usage_api_reads-minute"]));
    assert!(refused.headers.iter().any(|(k, v)| k == "RateLimit" && v.starts_with("\"usage_api_reads-minute\";r=0")));
    for i in 0..3 {
        assert_eq!(o.org(&key(), OrgOp::Usage { short: true }, at(10 + i)).unwrap().reply.status, 200);
    }
    assert_eq!(o.org(&key(), OrgOp::Usage { short: true }, at(20)).unwrap().reply.status, 429);
    assert_eq!(
        o.org(&Caller::Admin, OrgOp::Usage { short: true }, at(20)).unwrap().reply.status,
        200,
        "the admin API is not limited"
    );
    assert_eq!(o.proxy("p", 1, false, at(21)).status, 200, "proxied requests spend their plan's limits only");
    // A wrong key is refused before the limit is consulted.
    let stranger = Caller::Key(KeyHash("cd".repeat(32)));
    assert_eq!(o.org(&stranger, gate(), at(22)).unwrap_err(), OrgError::Unauthorized);
    // Refusals write nothing.
    assert!(o.org(&key(), gate(), at(23)).unwrap().writes == Writes::default());
}

#[test]
fn the_ledger_flushes_one_interval_after_the_last_flush() {
    let mut o = month_and_minute();
    o.proxy("a", 1, false, at(0));
    o.tick(at(rules::COUNTS_EVERY_MS));
    assert_eq!(o.m.wake(), Some(at(1_000)), "the first usage after a quiet spell goes after a moment");
    assert!(!o.m.flush_due(at(999)) && o.m.flush_due(at(1_000)));
    o.flush(false, false, at(1_000));
    o.proxy("b", 1, false, at(1_500));
    o.tick(at(rules::COUNTS_EVERY_MS + 2_000));
    assert!(!o.m.flush_due(at(rules::COUNTS_EVERY_MS + 2_000)), "an alarm for the counts does not flush");
    assert_eq!(o.m.wake(), Some(at(31_000)), "then once per interval");
}

#[test]
fn after_a_restart_the_batch_sequence_and_keys_carry_on() {
    let mut o = month_and_minute();
    o.proxy("a", 1, false, at(0));
    o.flush(false, false, at(1));
    o.restart();
    o.proxy("b", 1, false, at(2));
    let seq = o.m.seal_ledger().and_then(|w| w.seal).unwrap();
    assert_eq!(seq, 2, "a batch number is never handed out twice");
    assert_eq!(o.used("requests-month", at(3)), 2);
}

#[test]
fn auto_repair_takes_small_drift_and_only_reports_large_drift() {
    // 5%: 5 of 100 is repaired, 6 of 100 is not; any drift from nothing expected is large.
    let small = Repair::Small { pct: 5 };
    assert_eq!(small.decide(5, 100), (true, false));
    assert_eq!(small.decide(-5, 100), (true, false));
    assert_eq!(small.decide(6, 100), (false, true));
    assert_eq!(small.decide(1, 0), (false, true));
    assert_eq!(small.decide(0, 0), (false, false));
    assert_eq!(Repair::Small { pct: 0 }.decide(1, 1_000_000), (false, true), "0 turns auto-repair off");
    assert_eq!(Repair::Nothing.decide(9, 10), (false, false));
    let mut o = Org::new(json!([{"meter": "requests", "limit": 1000, "period": "month", "mode": "hard"}]));
    o.proxy("a", 100, false, at(0));
    let snap = o.mem.load(&Need { all_counters: true, ..Need::default() }, at(1));
    let windows = o.m.reconcile_windows(&snap, at(1)).unwrap();
    let run = |o: &mut Org, ledger: i64| {
        let snap = o.mem.load(&Need { all_counters: true, ..Need::default() }, at(2));
        let agg: Vec<_> = windows
            .iter()
            .cloned()
            .map(|w| (w, LedgerAgg { total: ledger, ..LedgerAgg::default() }, LedgerAgg::default()))
            .collect();
        let step = o.m.reconcile(&agg, &snap, small, Tallies::default(), &[], at(2)).unwrap();
        o.mem.apply(&step.writes);
        step.reply.body
    };
    let large = run(&mut o, 90);
    assert_eq!((large["large_drift"].as_bool(), large["repaired_units"].as_u64()), (Some(true), Some(0)));
    assert_eq!(o.used("requests-month", at(3)), 100, "large drift is only reported");
    let fixed = run(&mut o, 97);
    assert_eq!((fixed["large_drift"].as_bool(), fixed["repaired_units"].as_u64()), (Some(false), Some(3)));
    assert_eq!(o.used("requests-month", at(3)), 97);
}

#[test]
fn a_proxied_request_writes_one_counter_row_and_one_bucket_row_and_nothing_grows() {
    let mut o = month_and_minute();
    let before = o.mem.rows_written;
    let r = o.proxy("req_1", 1, false, at(1_000));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, Value::Null, "an allowed proxied decision carries headers only");
    assert_eq!(o.mem.rows_written - before, 2);
    assert!(r.held.is_some());
    assert!(o.mem.outbox.is_empty() && o.mem.reservations.is_empty(), "nothing per request is stored");
    // One row holds both of the meter's limits.
    let row = decode_counters(&o.mem.counters["requests"]).unwrap();
    assert_eq!(row.len(), 2);
    // More requests in the same hour rewrite the same two rows.
    for i in 0..5 {
        o.proxy(&format!("req_{}", i + 2), 1, false, at(2_000 + i));
    }
    assert_eq!(o.mem.buckets.len(), 1);
    let b = o.mem.buckets.values().next().unwrap();
    assert_eq!((b.quantity, b.events), (6, 6));
    assert_eq!(o.mem.rows_written - before, 12);
}

#[test]
fn a_release_gives_units_back_once_from_the_counter_and_the_ledger() {
    let mut o = month_and_minute();
    let r = o.proxy("req_1", 3, false, at(0));
    let held = r.held.unwrap();
    assert_eq!(o.used("requests-month", at(1)), 3);
    let rel = OrgOp::Release { id: eid("req_1"), held, quantity: None };
    assert_eq!(o.org(&Caller::Gateway, rel.clone(), at(10)).unwrap().reply.status, 200);
    assert_eq!(o.used("requests-month", at(11)), 0);
    // The minute window counts attempts (a rate window's default): the request reached the origin.
    assert_eq!(o.used("requests-minute", at(11)), 3);
    assert_eq!(o.mem.queued("requests"), 0);
    // A second release finds nothing to give back.
    assert_eq!(
        o.org(&Caller::Gateway, rel, at(12)).unwrap_err(),
        OrgError::Usage(UsageError::UnknownReservation(eid("req_1")))
    );
    // Past its window, or after a restart, a token holds nothing: the request stays counted.
    let r2 = o.proxy("req_2", 1, false, at(20));
    let late = OrgOp::Release { id: eid("req_2"), held: r2.held.unwrap(), quantity: None };
    assert!(o.org(&Caller::Gateway, late, at(20 + 120_000)).is_err());
    let r3 = o.proxy("req_3", 1, false, at(130_000));
    o.restart();
    assert!(o
        .org(&Caller::Gateway, OrgOp::Release { id: eid("req_3"), held: r3.held.unwrap(), quantity: None }, at(130_001))
        .is_err());
    assert_eq!(o.used("requests-month", at(130_002)), 2);
    assert_eq!(o.mem.queued("requests"), 2);
}

#[test]
fn flush_backoff_doubles_from_one_second_and_writes_only_on_change() {
    assert_eq!([1, 2, 3, 4].map(flush_backoff_ms), [1_000, 2_000, 4_000, 8_000]);
    assert_eq!(flush_backoff_ms(40), rules::MAX_FLUSH_BACKOFF_MS);
    let mut o = month_and_minute();
    o.proxy("a", 1, false, at(0));
    o.flush(false, false, at(1_000));
    let meta = o.m.after_flush(FlushResult::Failed, at(200_000));
    assert_eq!(meta, [("flush_failures".into(), "1".into())]);
    assert_eq!(o.m.wake(), Some(at(10_000)), "the counts are still due first");
    o.tick(at(10_000));
    assert_eq!(o.m.wake(), Some(at(201_000)));
    assert_eq!(o.m.after_flush(FlushResult::Failed, at(201_000)), [("flush_failures".into(), "2".into())]);
    assert_eq!(o.m.wake(), Some(at(203_000)));
    let done = FlushResult::Done { pending: 0, next_ready: None };
    assert_eq!(o.m.after_flush(done, at(203_000)), [("flush_failures".into(), "0".into())]);
    assert!(o.m.after_flush(done, at(204_000)).is_empty(), "unchanged rows are not written");
    assert_eq!(o.m.wake(), Some(at(300_000)), "only the report is left");
    o.m.reported(at(300_000));
    assert_eq!(o.m.wake(), None);
    // Rows left over wait for the next batch, even when one is ready already.
    let left = FlushResult::Done { pending: 3, next_ready: Some(at(204_010)) };
    o.m.after_flush(left, at(205_000));
    assert_eq!(o.m.wake(), Some(at(206_000)));
}

#[test]
fn reconciliation_expects_ledger_plus_outbox_by_aggregation() {
    let l = LedgerAgg { total: 10, peak: 7, last: Some(3), last_ts: Some(100) };
    let q = LedgerAgg { total: 2, peak: 9, last: Some(5), last_ts: Some(200) };
    assert_eq!(rules::expected(Aggregation::Sum, &l, &q), 12);
    assert_eq!(rules::expected(Aggregation::Max, &l, &q), 9);
    assert_eq!(rules::expected(Aggregation::Latest, &l, &q), 5);
    let older = LedgerAgg { last_ts: Some(50), ..q };
    assert_eq!(rules::expected(Aggregation::Latest, &l, &older), 3);
    assert_eq!(rules::expected(Aggregation::Latest, &l, &LedgerAgg::default()), 3);
}

#[test]
fn reconcile_repairs_drift_to_the_ledger() {
    let mut o = month_and_minute();
    o.proxy("a", 3, false, at(0));
    let snap = o.mem.load(&Need { all_counters: true, ..Need::default() }, at(1));
    let windows = o.m.reconcile_windows(&snap, at(1)).unwrap();
    assert_eq!(windows.len(), 1, "rate windows are not reconciled");
    let agg: Vec<_> = windows
        .into_iter()
        .map(|w| (w, LedgerAgg { total: 1, ..LedgerAgg::default() }, LedgerAgg::default()))
        .collect();
    let step = o.m.reconcile(&agg, &snap, Repair::All, Tallies::default(), &[], at(2)).unwrap();
    assert_eq!(step.reply.body["total_drift"], 2);
    o.mem.apply(&step.writes);
    assert_eq!(o.used("requests-month", at(3)), 1);
}

#[test]
fn levels_name_each_limited_quota_and_are_published_when_they_say_something_new() {
    let mut o = Org::new(json!([
        {"meter": "requests", "limit": 100, "period": "minute", "mode": "hard"},
        {"meter": "requests", "limit": 10, "period": "month", "mode": "hard"},
        {"meter": "requests", "limit": 1000, "period": "day", "mode": "soft"},
        {"meter": "tokens", "limit": null, "period": "month"}
    ]));
    o.proxy("a", 3, false, at(0));
    let all = Need { all_counters: true, ..Need::default() };
    let levels = o.m.levels(&o.mem.load(&all, at(1)), at(1)).unwrap();
    let seen: Vec<(&str, u64, Option<String>)> =
        levels.iter().map(|l| (l.policy.as_str(), l.percentage, l.until.map(Timestamp::rfc3339))).collect();
    // Rate windows and unlimited limits have no level.
    assert_eq!(
        seen,
        vec![
            ("requests-day", 0, Some("2026-11-24T00:00:00Z".to_owned())),
            ("requests-month", 30, Some("2026-12-01T00:00:00Z".to_owned())),
        ]
    );
    // Published once; the same levels again are not news.
    let first = o.m.levels_to_publish(levels.clone()).unwrap();
    o.m.levels_published(first);
    assert_eq!(o.m.levels_to_publish(levels), None);
    // A unit that moves a whole percentage is news.
    o.proxy("b", 1, false, at(2));
    let moved = o.m.levels(&o.mem.load(&all, at(3)), at(3)).unwrap();
    assert_eq!(moved.iter().map(|l| l.percentage).collect::<Vec<_>>(), vec![0, 40]);
    assert!(o.m.levels_to_publish(moved).is_some());
    // A restarted object does not know what it published: it publishes again.
    o.restart();
    let again = o.m.levels(&o.mem.load(&all, at(4)), at(4)).unwrap();
    assert!(o.m.levels_to_publish(again).is_some());
    // One that leaves every whole percentage where it was is not.
    let mut big = Org::new(json!([{"meter": "requests", "limit": 1000, "period": "month", "mode": "hard"}]));
    big.proxy("a", 1, false, at(0));
    let one = big.m.levels(&big.mem.load(&all, at(1)), at(1)).unwrap();
    big.m.levels_published(one);
    big.proxy("b", 1, false, at(2));
    assert_eq!(big.m.levels_to_publish(big.m.levels(&big.mem.load(&all, at(3)), at(3)).unwrap()), None);
}

#[test]
fn a_reset_or_a_new_plan_is_reported_like_usage_so_the_levels_follow() {
    let mut o = month_and_minute();
    o.proxy("a", 3, false, at(0));
    assert!(o.m.report_due(at(300_000)), "usage is reported one interval on");
    o.m.reported(at(300_000));
    assert!(!o.m.report_due(at(900_000)), "an idle org reports nothing");
    o.admin(AdminOp::Reset { meter: None }, at(900_000));
    assert!(!o.m.report_due(at(1_199_999)));
    assert!(o.m.report_due(at(1_200_000)), "a reset moved the levels: a report follows");
    o.m.reported(at(1_200_000));
    o.admin(AdminOp::Configure(plan(json!([{"meter": "requests", "limit": 5, "period": "month"}]))), at(1_300_000));
    assert!(o.m.report_due(at(1_500_000)), "so does a new plan");
}
