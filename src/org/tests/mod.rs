//! Native tests of the org machine, with injected time and an in-memory store that applies
//! `Writes` the way the Durable Object's `SQLite` store does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::needless_pass_by_value,
    clippy::as_conversions,
    clippy::too_many_lines
)]

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::buckets::{self, Bucket, BucketKey};
use super::rules::{self, decode_counters};
use super::*;
use crate::policy::keys::Fingerprint;
use crate::policy::{EventId, Level, MeterId, OrgId, PlanId, Reservation, Timestamp};
use crate::wire::UsageEvent;

/// 2026-11-23T10:00:00Z
const T0: u64 = 1_795_428_000_000;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn hash() -> KeyHash {
    KeyHash("ab".repeat(32))
}

fn key() -> Caller {
    Caller::Key(hash())
}

fn eid(s: &str) -> EventId {
    EventId::parse(s).unwrap()
}

fn m(s: &str) -> MeterId {
    MeterId::parse(s).unwrap()
}

/// A request fingerprint, different for each `path`.
fn fp(path: &str) -> Fingerprint {
    Fingerprint::of("GET", path, "requests", "1", b"")
}

/// The storage a `Writes` lands in: what the DO's tables hold, as maps.
#[derive(Debug, Default, Clone)]
struct Mem {
    config: Option<StoredConfig>,
    counters: BTreeMap<String, String>,
    outbox: BTreeMap<u64, OutboxRow>,
    reservations: BTreeMap<EventId, Reservation>,
    seen: BTreeMap<SeenKey, Seen>,
    alerts: BTreeMap<(String, u64, Level), String>,
    alert_writes: u64,
    meta: BTreeMap<String, String>,
    keys: BTreeMap<String, StoredKey>,
    counts: BTreeMap<(String, String), u64>,
    rows_written: u64,
    /// Ledger buckets by (batch, key); batch 0 is open.
    buckets: BTreeMap<(u64, BucketKey), Bucket>,
    /// D1 as the flush sees it: net quantity per bucket, and the org's exactly-once mark.
    d1: BTreeMap<BucketKey, i64>,
    d1_mark: u64,
    /// The usage API's limits the machine boots with (reads, calls per minute; 0 = off).
    api: (u64, u64),
}

impl Mem {
    fn load(&self, need: &Need, now: Timestamp) -> Snapshot {
        let mut s = Snapshot::default();
        for (k, v) in &self.counters {
            if need.all_counters || need.meters.iter().any(|m| m.as_str() == k) {
                s.rows.insert(k.clone(), v.clone());
            }
        }
        for k in &need.seen {
            if let Some(v) = self.seen.get(k) {
                s.seen.insert(k.clone(), v.clone());
            }
        }
        if let Some(id) = &need.reservation {
            s.reservations.extend(self.reservations.get(id).cloned());
        }
        if need.expired {
            s.reservations.extend(self.reservations.values().filter(|r| r.expires <= now).cloned());
            s.next_expiry = self.reservations.values().filter(|r| r.expires > now).map(|r| r.expires).min();
        }
        s.tallies = Tallies {
            open_reservations: self.reservations.len() as u64,
            outbox_pending: self.outbox.len() as u64,
            ..Tallies::default()
        };
        s
    }

    fn apply(&mut self, w: &Writes) {
        if let Some(c) = &w.config {
            self.config = Some(c.clone());
        }
        for (k, v) in &w.counters {
            self.counters.insert(k.clone(), v.clone());
            self.rows_written += 1;
        }
        for k in &w.drop_counters {
            self.counters.remove(k);
        }
        for r in &w.outbox {
            assert!(self.outbox.insert(r.seq, r.clone()).is_none(), "outbox seq reused");
            self.rows_written += 1;
        }
        for s in &w.outbox_delete {
            self.outbox.remove(s);
        }
        for r in &w.reservation_put {
            self.reservations.insert(r.id.clone(), r.clone());
            self.rows_written += 1;
        }
        for id in &w.reservation_delete {
            self.reservations.remove(id);
        }
        for (k, seen) in &w.remember {
            self.seen.entry(k.clone()).or_insert_with(|| seen.clone());
            self.rows_written += 1;
        }
        for k in &w.settled {
            if let Some(s) = self.seen.get_mut(k) {
                s.busy_until = None;
                self.rows_written += 1;
            }
        }
        for k in &w.forget {
            self.seen.remove(k);
        }
        for a in &w.alerts {
            // The table's unique key is the backstop; count the attempts to see it is not needed.
            self.alert_writes += 1;
            self.alerts
                .entry((a.policy.clone(), a.window_start.millis(), a.level))
                .or_insert_with(|| a.payload.clone());
        }
        for (k, v) in &w.meta {
            self.meta.insert(k.clone(), v.clone());
        }
        for k in &w.key_put {
            self.keys.insert(k.key_id.clone(), k.clone());
        }
        if let Some(u) = &w.key_used {
            if let Some(k) = self.keys.get_mut(&u.key_id) {
                k.used_day = Some(u.day);
            }
        }
        if let Some(id) = &w.key_delete {
            self.keys.remove(id);
        }
        for (meter, o, n) in &w.counts {
            *self.counts.entry((meter.clone(), (*o).to_owned())).or_insert(0) += n;
        }
        for (k, b) in &w.buckets {
            self.buckets.insert((0, k.clone()), b.clone());
            self.rows_written += 1;
        }
        if let Some(seq) = w.seal {
            assert!(self.buckets.keys().all(|(batch, _)| *batch == 0), "a second batch sealed while one is in flight");
            let open = std::mem::take(&mut self.buckets);
            self.buckets = open.into_iter().map(|((_, k), b)| ((seq, k), b)).collect();
            self.meta.insert("flush_seq".into(), seq.to_string());
        }
        if let Some(seq) = w.sealed_done {
            self.buckets.retain(|(batch, _), _| *batch != seq);
        }
    }

    /// D1's side of a flush: applies the batch only while the mark is below it, and raises the
    /// mark in the same transaction. Returns whether it applied.
    fn d1_apply(&mut self, sealed: &buckets::Sealed) -> bool {
        if self.d1_mark >= sealed.seq {
            return false;
        }
        for (k, b) in &sealed.buckets {
            *self.d1.entry(k.clone()).or_insert(0) += b.quantity;
        }
        self.d1_mark = sealed.seq;
        true
    }

    /// Net units of `meter` in D1 and still in the DO's buckets (a sealed batch D1 already
    /// applied counts once).
    fn ledgered(&self, meter: &str) -> i64 {
        let d1: i64 = self.d1.iter().filter(|(k, _)| k.meter == meter).map(|(_, q)| q).sum();
        let pending: i64 = self
            .buckets
            .iter()
            .filter(|((batch, k), _)| k.meter == meter && (*batch == 0 || *batch > self.d1_mark))
            .map(|(_, b)| b.quantity)
            .sum();
        d1 + pending
    }

    fn boot(&self) -> OrgMachine {
        OrgMachine::boot(Boot {
            config: self.config.clone(),
            keys: self.keys.values().cloned().collect(),
            resets: self
                .meta
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.strip_prefix("reset:")?.to_owned(), Timestamp::from_millis(v.parse().ok()?)))
                })
                .collect(),
            // The drain records the highest sequence it flushed, so none is ever reused.
            max_seq: self
                .outbox
                .keys()
                .max()
                .copied()
                .unwrap_or(0)
                .max(self.meta.get("outbox_seq").map_or(0, |v| v.parse().unwrap())),
            seq_mark: self.meta.get("outbox_seq").map_or(0, |v| v.parse().unwrap()),
            outbox_ready: self.outbox.values().map(|r| Timestamp::from_millis(r.ready_at)).min(),
            alert_due: None,
            reservation_expires: self.reservations.values().map(|r| r.expires).min(),
            open_reservations: self.reservations.len() as u64,
            flush_failures: 0,
            buckets: self.buckets.iter().map(|((batch, k), b)| (*batch, k.clone(), b.clone())).collect(),
            flush_seq: self.meta.get("flush_seq").map_or(0, |v| v.parse().unwrap()),
            epoch: 1,
            config_at: self.meta.get("config_at").map(|v| Timestamp::from_millis(v.parse().unwrap())),
            flush_every_ms: 30_000,
            plan_refresh_ms: 60_000,
            report_every_ms: 300_000,
            api_reads_per_minute: self.api.0,
            api_calls_per_minute: self.api.1,
        })
    }

    /// Total units of `meter` counted for the ledger and not given back.
    fn queued(&self, meter: &str) -> u64 {
        u64::try_from(self.ledgered(meter)).unwrap()
    }
}

/// A machine and its storage, driven like the DO drives them.
struct Org {
    m: OrgMachine,
    mem: Mem,
}

fn plan(limits: Value) -> StoredConfig {
    config(json!({"meters": [{"id": "peak", "aggregation": "max"}], "limits": limits}))
}

/// The stored config of org `acme` on plan `p` with this plan document.
fn config(plan: Value) -> StoredConfig {
    StoredConfig {
        org: OrgId::parse("acme").unwrap(),
        plan_id: PlanId::parse("p").unwrap(),
        plan,
        billing_anchor: None,
        overrides: None,
        webhook_url: None,
        stripe_customer: None,
        plan_version: 1,
        shard: 0,
    }
}

impl Org {
    fn new(limits: Value) -> Self {
        Self::with_config(plan(limits))
    }

    /// An org configured with `cfg` and one key (`key()`).
    fn with_config(cfg: StoredConfig) -> Self {
        let mut o = Self { m: Mem::default().boot(), mem: Mem::default() };
        o.admin(AdminOp::Configure(cfg), at(0));
        o.admin(AdminOp::AddKey(NewKey { key_id: "k1".into(), hash: hash(), expires_at: None }), at(0));
        o
    }

    fn admin(&mut self, op: AdminOp, now: Timestamp) -> OrgReply {
        let snap = self.mem.load(&OrgMachine::needs_admin(&op), now);
        let step = self.m.step_admin(op, &snap, now).unwrap();
        self.mem.apply(&step.writes);
        step.reply
    }

    fn org(&mut self, caller: &Caller, op: OrgOp, now: Timestamp) -> Result<Step, OrgError> {
        let snap = self.mem.load(&self.m.needs_org(caller, &op, now), now);
        let step = self.m.step_org(caller, op, snap, now)?;
        self.mem.apply(&step.writes);
        Ok(Step { reply: step.reply.rendered(now), ..step }) // headers from the view, as the Worker does
    }

    /// A proxied request; a replayable one carries an Idempotency-Key, bound to one fingerprint
    /// per key, and is served (the gateway reports its 2xx) as soon as it is admitted.
    fn proxy(&mut self, id: &str, q: u64, replayable: bool, now: Timestamp) -> OrgReply {
        let reply = self.proxy_as(id, q, replayable.then(|| fp(id)), now).unwrap();
        if replayable && reply.held.is_some() {
            self.served(id, now);
        }
        reply
    }

    fn proxy_as(
        &mut self,
        id: &str,
        q: u64,
        idempotency: Option<Fingerprint>,
        now: Timestamp,
    ) -> Result<OrgReply, OrgError> {
        let op = OrgOp::Decide {
            meter: m("requests"),
            quantity: q,
            kind: DecideKind::Proxy,
            id: eid(id),
            ttl_ms: 120_000,
            idempotency,
            lease: false,
            recalled: 0,
        };
        self.org(&key(), op, now).map(|s| s.reply)
    }

    /// The origin answered 2xx and reported no usage: what the gateway tells the org then.
    fn served(&mut self, id: &str, now: Timestamp) {
        self.org(&Caller::Gateway, OrgOp::Report { id: eid(id), usage: vec![] }, now).unwrap();
    }

    fn used(&mut self, policy: &str, now: Timestamp) -> u64 {
        let r = self.admin(AdminOp::State, now);
        let limits = r.body["limits"].as_array().unwrap().clone();
        limits.iter().find(|l| l["policy"] == policy).map_or(0, |l| l["used"].as_u64().unwrap())
    }

    fn tick(&mut self, now: Timestamp) {
        let snap = self.mem.load(&self.m.needs_tick(now), now);
        let w = self.m.tick(snap, now).unwrap();
        self.mem.apply(&w);
    }

    /// A DO restart: memory is gone, storage stays.
    fn restart(&mut self) {
        self.m = self.mem.boot();
    }

    /// The drain's ledger flush, as the DO runs it: seal, send, confirm. `lose` drops D1's
    /// answer after it applied; `fail` has D1 refuse. Returns whether D1 applied a batch.
    fn flush(&mut self, lose: bool, fail: bool, now: Timestamp) -> bool {
        if let Some(w) = self.m.seal_ledger() {
            self.mem.apply(&w);
        }
        let Some(sealed) = self.m.sealed().cloned() else {
            let meta = self.m.after_flush(FlushResult::Done { pending: 0, next_ready: None }, now);
            self.mem.apply(&Writes { meta, ..Writes::default() });
            return false;
        };
        if fail {
            let meta = self.m.after_flush(FlushResult::Failed, now);
            self.mem.apply(&Writes { meta, ..Writes::default() });
            return false;
        }
        let applied = self.mem.d1_apply(&sealed);
        if lose {
            // The answer was lost: the batch stays sealed and is sent again later.
            let meta = self.m.after_flush(FlushResult::Failed, now);
            self.mem.apply(&Writes { meta, ..Writes::default() });
            return applied;
        }
        let w = self.m.ledger_confirmed(sealed.seq);
        self.mem.apply(&w);
        let meta = self.m.after_flush(FlushResult::Done { pending: 0, next_ready: None }, now);
        self.mem.apply(&Writes { meta, ..Writes::default() });
        applied
    }
}

/// `/v1/check` with reserve, as a key sends it.
fn reserve(id: &str, q: u64, ttl_ms: u64) -> OrgOp {
    OrgOp::Decide {
        meter: m("requests"),
        quantity: q,
        kind: DecideKind::Reserve,
        id: eid(id),
        ttl_ms,
        idempotency: None,
        lease: false,
        recalled: 0,
    }
}

fn month_and_minute() -> Org {
    Org::new(json!([
        {"meter": "requests", "limit": 100, "period": "minute", "mode": "hard"},
        {"meter": "requests", "limit": 10, "period": "month", "mode": "hard"}
    ]))
}

#[test]
fn unknown_and_wrong_callers_are_refused_before_anything_else() {
    let mut o = month_and_minute();
    let stranger = Caller::Key(KeyHash("cd".repeat(32)));
    // Nothing is loaded for a key the org does not know.
    let decide = reserve("x", 1, 1_000);
    assert_eq!(o.m.needs_org(&stranger, &decide, at(0)), Need::default());
    assert!(o.m.needs_org(&key(), &decide, at(0)).meters.contains(&m("requests")));
    let op = OrgOp::Usage { short: true };
    assert_eq!(o.org(&stranger, op.clone(), at(0)).unwrap_err(), OrgError::Unauthorized);
    assert_eq!(o.org(&Caller::Gateway, op, at(0)).unwrap_err(), OrgError::Unauthorized);
    let rel = OrgOp::Release { id: eid("x"), held: 1, quantity: None };
    assert_eq!(o.org(&key(), rel, at(0)).unwrap_err(), OrgError::Unauthorized);
    o.admin(AdminOp::RevokeKey { key_id: "k1".into() }, at(0));
    assert_eq!(o.org(&key(), OrgOp::Usage { short: true }, at(0)).unwrap_err(), OrgError::Unauthorized);
}

#[test]
fn a_release_after_a_month_rollover_or_a_reset_keeps_the_new_window_untouched() {
    let mut o = month_and_minute();
    // Admitted in the last second of November, released in December.
    let nov_end = Timestamp::from_millis(1_796_083_199_000); // 2026-11-30T23:59:59Z
    let r = o.proxy("req_1", 2, false, nov_end);
    o.proxy("req_2", 1, false, nov_end.saturating_add_ms(2_000));
    let rel = OrgOp::Release { id: eid("req_1"), held: r.held.unwrap(), quantity: None };
    o.org(&Caller::Gateway, rel, nov_end.saturating_add_ms(3_000)).unwrap();
    assert_eq!(o.used("requests-month", nov_end.saturating_add_ms(4_000)), 1, "December keeps its own usage");
    // A reset after the admission already gave everything back.
    let r3 = o.proxy("req_3", 4, false, at(0));
    o.admin(AdminOp::Reset { meter: None }, at(10));
    o.proxy("req_4", 1, false, at(20));
    o.org(&Caller::Gateway, OrgOp::Release { id: eid("req_3"), held: r3.held.unwrap(), quantity: None }, at(30))
        .unwrap();
    assert_eq!(o.used("requests-month", at(40)), 1);
}

#[test]
fn refusals_and_checks_write_nothing() {
    let mut o = month_and_minute();
    for i in 0..10 {
        assert_eq!(o.proxy(&format!("r{i}"), 1, false, at(i)).status, 200);
    }
    let before = o.mem.rows_written;
    let refused = o.proxy("r10", 1, false, at(20));
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["violated-policies"], json!(["requests-month"]));
    let check = OrgOp::Decide {
        meter: m("requests"),
        quantity: 1,
        kind: DecideKind::Check,
        id: eid("c"),
        ttl_ms: 0,
        idempotency: None,
        lease: false,
        recalled: 0,
    };
    assert_eq!(o.org(&key(), check, at(21)).unwrap().reply.body["allowed"], json!(false));
    assert_eq!(o.mem.rows_written, before);
    assert_eq!(o.used("requests-month", at(22)), 10);
}

#[test]
fn decision_counts_are_kept_in_memory_and_saved_by_the_tick() {
    let mut o = month_and_minute();
    o.proxy("a", 1, false, at(0));
    o.proxy("b", 1, false, at(1));
    assert!(o.mem.counts.is_empty());
    assert_eq!(o.m.wake(), Some(at(1_000)), "the ledger flush comes first");
    o.flush(false, false, at(1_000));
    assert_eq!(o.m.wake(), Some(at(rules::COUNTS_EVERY_MS)), "then the counts");
    o.tick(at(rules::COUNTS_EVERY_MS));
    assert_eq!(o.mem.counts[&("requests".to_owned(), "allowed".to_owned())], 2);
    assert_eq!(o.m.wake(), Some(at(300_000)), "then the org's own report, one interval after its usage");
    o.m.reported(at(300_000));
    assert_eq!(o.m.wake(), None);
}

#[test]
fn provisional_reservations_expire_back_to_the_org_on_the_tick() {
    let mut o = month_and_minute();
    let op = reserve("rsv_1", 4, 5_000);
    let r = o.org(&key(), op, at(0)).unwrap().reply;
    assert_eq!(r.body["reservation"]["id"], "rsv_1");
    assert_eq!(o.m.wake(), Some(at(5_000)));
    o.tick(at(5_000));
    assert!(o.mem.reservations.is_empty());
    assert_eq!(o.used("requests-month", at(5_001)), 0);
    // Settling it afterwards finds nothing.
    let late = OrgOp::Settle { id: eid("rsv_1"), action: SettleAction::Commit { quantity: None } };
    assert!(o.org(&key(), late, at(5_002)).is_err());
}

#[test]
fn an_expired_but_unswept_reservation_cannot_be_committed() {
    let mut o = month_and_minute();
    let op = reserve("rsv_1", 4, 5_000);
    o.org(&key(), op, at(0)).unwrap();
    let late = OrgOp::Settle { id: eid("rsv_1"), action: SettleAction::Commit { quantity: None } };
    assert_eq!(o.org(&key(), late, at(6_000)).unwrap().reply.status, 404);
    assert_eq!(o.used("requests-month", at(6_001)), 0);
    assert!(o.mem.reservations.is_empty());
}

#[test]
fn events_dedupe_within_a_batch_and_across_batches() {
    let mut o = Org::new(json!([{"meter": "rows", "limit": 100, "period": "month", "mode": "hard"}]));
    let ev = |id: &str, q| UsageEvent { id: eid(id), meter: m("rows"), quantity: q, timestamp: None, metadata: None };
    let op = OrgOp::Events { events: vec![ev("e1", 5), ev("e1", 5), ev("e2", 200)], enforce: true };
    let r = o.org(&key(), op, at(0)).unwrap().reply;
    let st: Vec<&str> = r.body["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["accepted", "duplicate", "rejected"]);
    let again = o.org(&key(), OrgOp::Events { events: vec![ev("e1", 5)], enforce: true }, at(1)).unwrap().reply;
    assert_eq!(again.body["results"][0]["original_status"], "accepted");
    assert_eq!(o.used("rows-month", at(2)), 5);
    assert_eq!(o.mem.queued("rows"), 5);
}

#[test]
fn a_batch_of_events_crosses_each_level_once() {
    let mut o = Org::new(json!([{"meter": "rows", "limit": 100, "period": "month", "mode": "hard"}]));
    let ev = |id: String| UsageEvent { id: eid(&id), meter: m("rows"), quantity: 10, timestamp: None, metadata: None };
    let batch: Vec<UsageEvent> = (0..10).map(|i| ev(format!("b{i}"))).collect();
    o.org(&key(), OrgOp::Events { events: batch, enforce: true }, at(0)).unwrap();
    let levels: Vec<Level> = o.mem.alerts.keys().map(|k| k.2).collect();
    assert_eq!(levels, [Level::Warning, Level::Critical, Level::Over]);
    assert_eq!(o.mem.alert_writes, 3, "one attempt per level crossed in the step");
    // Far below 80%, a batch attempts nothing.
    let mut low = Org::new(json!([{"meter": "rows", "limit": 1000, "period": "month", "mode": "hard"}]));
    low.org(&key(), OrgOp::Events { events: vec![ev("x".into())], enforce: true }, at(0)).unwrap();
    assert_eq!(low.mem.alert_writes, 0);
}

#[test]
fn a_plan_change_keeps_counters_of_limits_it_keeps() {
    let mut o = month_and_minute();
    o.proxy("a", 2, false, at(0));
    o.admin(
        AdminOp::Configure(plan(json!([{"meter": "requests", "limit": 50, "period": "month", "mode": "hard"}]))),
        at(1),
    );
    assert_eq!(o.used("requests-month", at(2)), 2);
    let row = decode_counters(&o.mem.counters["requests"]).unwrap();
    assert_eq!(row.keys().collect::<Vec<_>>(), ["requests-month"]);
    o.admin(
        AdminOp::Configure(plan(json!([{"meter": "rows", "limit": 50, "period": "month", "mode": "hard"}]))),
        at(3),
    );
    assert!(!o.mem.counters.contains_key("requests"));
}

#[test]
fn a_bad_plan_is_refused_and_nothing_is_stored() {
    let mut o = month_and_minute();
    let snap = o.mem.load(&Need::default(), at(0));
    let bad = plan(json!([{"meter": "requests", "limit": -1, "period": "month", "mode": "hard"}]));
    let err = o.m.step_admin(AdminOp::Configure(bad), &snap, at(0)).unwrap_err();
    assert!(matches!(err, OrgError::Plan(_)));
    assert_eq!(err.into_reply().status, 400);
}

#[test]
fn alerts_fire_on_crossings_only() {
    let mut o = Org::new(json!([{"meter": "requests", "limit": 10, "period": "month", "mode": "hard"}]));
    for i in 0..7 {
        o.proxy(&format!("r{i}"), 1, false, at(i));
    }
    assert_eq!(o.mem.alert_writes, 0, "below 80% nothing is attempted");
    o.proxy("r7", 1, false, at(10));
    assert_eq!(o.mem.alert_writes, 1);
    o.proxy("r8", 1, false, at(11));
    assert_eq!(o.mem.alert_writes, 1, "staying at warning fires nothing");
    o.proxy("r9", 1, false, at(12));
    let levels: Vec<Level> = o.mem.alerts.keys().map(|k| k.2).collect();
    assert_eq!(levels, [Level::Warning, Level::Critical, Level::Over], "90% → 100% crosses critical and over");
    assert_eq!(o.m.wake(), Some(at(12)), "delivery runs now");
    let over = &o.mem.alerts[&("requests-month".to_owned(), 1_793_491_200_000, Level::Over)];
    let payload: Value = serde_json::from_str(over).unwrap();
    assert_eq!(
        (
            payload["type"].as_str(),
            payload["level"].as_str(),
            payload["threshold_pct"].as_u64(),
            payload["used"].as_u64()
        ),
        (Some("quota.threshold"), Some("over"), Some(100), Some(10))
    );
    assert_eq!(payload["id"], "alrt_acme_requests-month_1793491200000_over");
}

mod bounds;
mod idempotency;
mod keys;
mod lease;
mod ledger;
mod props;
mod rows_and_wake;
pub mod sim;
