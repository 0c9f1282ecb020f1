//! Property tests of the org machine: any interleaving of proxied requests, releases, origin
//! reports, provisional reservations, ticks, restarts and ledger flushes (including D1 failing
//! and D1 applying a batch whose answer is lost) against an oracle.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{at, eid, key, m, Org};
use crate::org::rules::{decode_counters, encode_counters};
use crate::org::{Caller, DecideKind, OrgOp, SettleAction};
use crate::policy::{Counter, Timestamp};

#[derive(Debug, Clone)]
enum Act {
    Proxy { id: u8, q: u8, replayable: bool },
    Release { id: u8 },
    Report { id: u8, q: u8 },
    Reserve { id: u8, q: u8 },
    Settle { id: u8, commit: bool },
    Tick,
    Restart,
    Flush { lose: bool, fail: bool },
    Wait { ms: u32 },
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0u8..12, 1u8..4, any::<bool>()).prop_map(|(id, q, replayable)| Act::Proxy { id, q, replayable }),
        2 => (0u8..12).prop_map(|id| Act::Release { id }),
        1 => (0u8..12, 1u8..50).prop_map(|(id, q)| Act::Report { id, q }),
        1 => (0u8..6, 1u8..4).prop_map(|(id, q)| Act::Reserve { id, q }),
        1 => (0u8..6, any::<bool>()).prop_map(|(id, commit)| Act::Settle { id, commit }),
        1 => Just(Act::Tick),
        1 => Just(Act::Restart),
        2 => (any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(lose, fail)| Act::Flush { lose, fail }),
        2 => (0u32..200_000).prop_map(|ms| Act::Wait { ms }),
    ]
}

/// Runs a sequence against the machine and an oracle of what must have been counted.
fn run(acts: &[Act]) -> Result<(), TestCaseError> {
    let mut o = Org::new(json!([
        {"meter": "requests", "limit": 40, "period": "month", "mode": "hard"},
        {"meter": "ai_tokens", "limit": 1000, "period": "month", "mode": "soft"}
    ]));
    let mut now = at(0);
    // What the oracle says: proxied requests held (id → (token, name, quantity, instance)).
    let mut held: BTreeMap<u8, (u64, String, u64, u32)> = BTreeMap::new();
    let mut counted_ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut instance = 0u32;
    let mut releases = 0u64;
    for a in acts {
        now = now.saturating_add_ms(1);
        match *a {
            Act::Proxy { id, q, replayable } => {
                let name = if replayable { format!("idem-{id}") } else { format!("req-{id}-{}", now.millis()) };
                let r = o.proxy(&name, u64::from(q), replayable, now);
                if let Some(token) = r.held {
                    prop_assert!(!counted_ids.contains_key(&name) || !replayable, "a replay was counted twice");
                    counted_ids.insert(name.clone(), u64::from(q));
                    held.insert(id, (token, name, u64::from(q), instance));
                }
            }
            Act::Release { id } => {
                if let Some((token, name, _, from)) = held.remove(&id) {
                    let res =
                        o.org(&Caller::Gateway, OrgOp::Release { id: eid(&name), held: token, quantity: None }, now);
                    if res.is_ok() {
                        prop_assert_eq!(from, instance, "a token of an earlier instance released units");
                        releases += 1;
                        counted_ids.remove(&name);
                    }
                }
            }
            Act::Report { id, q } => {
                o.org(
                    &Caller::Gateway,
                    OrgOp::Report { id: eid(&format!("idem-{id}")), usage: vec![(m("ai_tokens"), u64::from(q))] },
                    now,
                )
                .unwrap();
            }
            Act::Reserve { id, q } => {
                let op = OrgOp::Decide {
                    meter: m("requests"),
                    quantity: u64::from(q),
                    kind: DecideKind::Reserve,
                    id: eid(&format!("rsv-{id}")),
                    ttl_ms: 60_000,
                    idempotency: None,
                    lease: false,
                    recalled: 0,
                };
                let _ = o.org(&key(), op, now);
            }
            Act::Settle { id, commit } => {
                let action = if commit { SettleAction::Commit { quantity: None } } else { SettleAction::Release };
                if o.org(&key(), OrgOp::Settle { id: eid(&format!("rsv-{id}")), action }, now).is_ok() {
                    releases += 1;
                }
            }
            Act::Tick => {
                o.tick(now);
                releases += 1;
            }
            Act::Restart => {
                o.restart();
                instance += 1;
            }
            Act::Flush { lose, fail } => {
                o.flush(lose, fail, now);
            }
            Act::Wait { ms } => now = now.saturating_add_ms(u64::from(ms)),
        }
        // Alerts are attempted on crossings only: once per (limit, window, level), plus at most
        // once per level again after usage went back down (a release), where the table's unique
        // key is the backstop. Never once per request.
        prop_assert!(
            o.mem.alert_writes <= o.mem.alerts.len() as u64 + 3 * releases,
            "an alert was attempted without a crossing"
        );
        for payload in o.mem.alerts.values() {
            let p: Value = serde_json::from_str(payload).unwrap();
            let (used, limit, pct) =
                (p["used"].as_u64().unwrap(), p["limit"].as_u64().unwrap(), p["threshold_pct"].as_u64().unwrap());
            prop_assert!(used * 100 >= pct * limit, "an alert fired below its level");
        }
    }
    // The month counter (same month throughout) equals what D1 and the DO's buckets hold for
    // proxied and committed requests: released units came back exactly once, and a batch D1
    // applied whose answer was lost did not count twice.
    let state_month = o.used("requests-month", now);
    let open_reserved: u64 = o.mem.reservations.values().filter(|r| r.expires > now).map(|r| r.quantity).sum();
    let expired_unswept: u64 = o.mem.reservations.values().filter(|r| r.expires <= now).map(|r| r.quantity).sum();
    prop_assert_eq!(state_month, o.mem.queued("requests") + open_reserved + expired_unswept);
    prop_assert!(state_month <= 40, "the hard cap held");
    // Draining (D1 reachable again) leaves everything in D1 exactly once and nothing pending.
    let before = o.mem.ledgered("requests") + o.mem.ledgered("ai_tokens");
    for i in 0..3 {
        o.flush(false, false, now.saturating_add_ms(i));
    }
    prop_assert!(o.mem.buckets.is_empty(), "a forced flush drains everything");
    let d1: i64 = o.mem.d1.values().sum();
    prop_assert_eq!(d1, before);
    prop_assert!(o.mem.d1.values().all(|q| *q >= 0), "no bucket nets below zero");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn replays_releases_outbox_and_alerts_hold_under_any_interleaving(acts in prop::collection::vec(act(), 1..80)) {
        run(&acts)?;
    }

    #[test]
    fn counter_rows_round_trip(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), d in 0u64..253_402_300_799_999) {
        let mut map = BTreeMap::new();
        map.insert("m-minute".to_owned(), Counter::Gcra { at: Timestamp::from_millis(d), backlog: a });
        map.insert("m-month".to_owned(), Counter::Window { start: Timestamp::from_millis(d), used: b, reserved: c });
        prop_assert_eq!(decode_counters(&encode_counters(map.iter())), Some(map));
    }
}
