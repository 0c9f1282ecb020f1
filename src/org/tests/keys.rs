//! An org's keys through the machine: expiry (at the step and under a lease), a roll's grace,
//! and the last-used day written once per key and day.

use serde_json::json;

use super::*;

const DAY: u64 = 86_400_000;

fn other() -> KeyHash {
    KeyHash("cd".repeat(32))
}

fn new_key(id: &str, hash: KeyHash, expires: Option<u64>) -> NewKey {
    NewKey { key_id: id.into(), hash, expires_at: expires.map(at) }
}

fn usage(o: &mut Org, caller: &Caller, now: Timestamp) -> Result<Step, OrgError> {
    o.org(caller, OrgOp::Usage { short: true }, now)
}

#[test]
fn an_expired_key_is_an_unknown_key_and_loads_nothing() {
    let mut o = Org::new(json!([{"meter": "requests", "limit": 10, "period": "month"}]));
    o.admin(AdminOp::AddKey(new_key("k2", other(), Some(5_000))), at(0));
    let k2 = Caller::Key(other());
    assert!(usage(&mut o, &k2, at(4_999)).is_ok());
    assert_eq!(usage(&mut o, &k2, at(5_000)).unwrap_err(), OrgError::Unauthorized);
    let decide = OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Proxy,
        id: eid("r1"),
        ttl_ms: 120_000,
        idempotency: None,
        lease: false,
        recalled: 0,
    };
    assert_eq!(o.m.needs_org(&k2, &decide, at(5_000)), Need::default(), "nothing is loaded for an expired key");
    // It stays expired after a restart: the expiry is stored with the key.
    o.m = o.mem.boot();
    assert_eq!(usage(&mut o, &k2, at(5_001)).unwrap_err(), OrgError::Unauthorized);
    assert!(usage(&mut o, &key(), at(5_001)).is_ok(), "the org's other key is untouched");
}

#[test]
fn a_roll_keeps_the_old_key_for_its_grace_and_the_new_one_for_good() {
    let mut o = Org::new(json!([{"meter": "requests", "limit": 10, "period": "month"}]));
    let reply = o.admin(
        AdminOp::RollKey { old: "k1".into(), old_expires_at: at(60_000), new: new_key("k2", other(), None) },
        at(1_000),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["old_expires_at"], json!(at(60_000).rfc3339()));
    let (old, new) = (key(), Caller::Key(other()));
    for t in [1_000, 59_999] {
        assert!(usage(&mut o, &old, at(t)).is_ok() && usage(&mut o, &new, at(t)).is_ok(), "both work at {t}");
    }
    assert_eq!(usage(&mut o, &old, at(60_000)).unwrap_err(), OrgError::Unauthorized);
    assert!(usage(&mut o, &new, at(10 * DAY)).is_ok());
    // A second roll of the same key cannot bring its end later.
    o.admin(
        AdminOp::RollKey {
            old: "k1".into(),
            old_expires_at: at(DAY),
            new: new_key("k3", KeyHash("ef".repeat(32)), None),
        },
        at(2_000),
    );
    assert_eq!(o.mem.keys["k1"].expires_at, Some(at(60_000)));
    // Rolling a key the org does not have changes nothing.
    let snap = o.mem.load(&Need::default(), at(3_000));
    let step = o.m.step_admin(
        AdminOp::RollKey {
            old: "nope".into(),
            old_expires_at: at(DAY),
            new: new_key("k9", KeyHash("99".repeat(32)), None),
        },
        &snap,
        at(3_000),
    );
    assert_eq!(step.unwrap_err(), OrgError::UnknownKey("nope".into()));
    assert!(!o.mem.keys.contains_key("k9"));
}

#[test]
fn the_last_used_day_is_written_once_per_key_and_day() {
    let mut o = Org::new(json!([{"meter": "requests", "limit": 1000, "period": "month"}]));
    let first = usage(&mut o, &key(), at(0)).unwrap();
    assert_eq!(first.writes.key_used.map(|u| u.key_id), Some("k1".into()), "the first use of a day writes it");
    for i in 1..50 {
        assert_eq!(usage(&mut o, &key(), at(i * 1_000)).unwrap().writes.key_used, None, "later uses write nothing");
    }
    let today = o.mem.keys["k1"].used_day;
    assert_eq!(today, Some((T0) / DAY));
    let next_day = (T0 / DAY + 1) * DAY - T0;
    assert_eq!(usage(&mut o, &key(), at(next_day)).unwrap().writes.key_used.map(|u| u.day), Some(T0 / DAY + 1));
    let view = o.admin(AdminOp::Keys, at(next_day));
    assert_eq!(view.body, json!({"keys": {"k1": {"last_used": at(next_day).date().to_string()}}}));
    // A refused caller is not a use.
    assert!(usage(&mut o, &Caller::Key(other()), at(next_day + DAY)).is_err());
}

#[test]
fn no_lease_outlives_its_key() {
    let mut o = Org::with_config(config(json!({
        "limits": [{"meter": "requests", "limit": 1_000_000, "period": "month"}],
        "lease": {"max_units": 60, "ttl_secs": 5, "min_requests": 1}
    })));
    o.admin(AdminOp::AddKey(new_key("k2", other(), Some(1_500))), at(0));
    let decide = |id: &str| OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Proxy,
        id: eid(id),
        ttl_ms: 120_000,
        idempotency: None,
        lease: true,
        recalled: 0,
    };
    let k2 = Caller::Key(other());
    let long = o.org(&key(), decide("a"), at(0)).unwrap().reply.lease.expect("a lease for the key with no expiry");
    assert_eq!(long.ttl_ms, crate::policy::lease::RECALL_MS, "a grant lasts at most 2 s");
    let short = o.org(&k2, decide("b"), at(0)).unwrap().reply.lease.expect("a lease, cut to the key's expiry");
    assert_eq!(short.ttl_ms, 1_500, "the lease ends when the key does");
    assert!(o.org(&k2, decide("c"), at(1_100)).unwrap().reply.lease.is_none(), "too little life left to lease");
}
