//! The machine's ledger side: the buckets its usage goes to, sealing and confirming the batch
//! in flight, when the ledger flush is due and how a flush ended (backoff), when the org's own
//! report is due, and how stale its plan copy may grow before D1 is asked. Pure, like the rest
//! of the machine: the Durable Object's drain does the I/O these decide.

use serde_json::Value;

use super::ops::Cx;
use super::{Loaded, OrgMachine};
use crate::org::buckets::{BucketKey, Sealed, Terms};
use crate::org::io::{FlushResult, Writes};
use crate::org::msg::StoredConfig;
use crate::org::rules::{flush_backoff_ms, FLUSH_DELAY_MS};
use crate::policy::{MeterId, Timestamp, UsageError};

impl OrgMachine {
    /// Whether the org's status report (reconciliation, depths, counts, levels) is due: it
    /// reports one interval after the change that follows its last report (usage, a reset, a new
    /// plan: anything that moves its levels), and not again until another change comes, so an
    /// idle org costs nothing and the cron never visits orgs.
    pub fn report_due(&self, now: Timestamp) -> bool {
        self.wake.report_due.is_some_and(|t| t <= now)
    }

    /// The report went out (or failed: it is tried again with the next usage).
    pub fn reported(&mut self, now: Timestamp) {
        self.last_report = Some(now);
        self.wake.report_due = None;
    }

    /// A change that moves the org's levels: a report follows within one interval.
    pub(super) fn report_after_change(&mut self, now: Timestamp) {
        if self.wake.report_due.is_none() {
            let every = self.report_every_ms;
            let from = self.last_report.filter(|t| now.since(*t) < every).unwrap_or(now);
            self.wake.report_due = Some(from.saturating_add_ms(every));
        }
    }

    /// The plan to look up in D1 (id and the version this org runs) when this instance's
    /// knowledge of it is `within` ms old or older; `None` when it is fresh (or there is no
    /// config). The bound on a plan change reaching an org is `PLAN_REFRESH_SECS`.
    pub fn plan_check(&self, now: Timestamp, within: Option<u64>) -> Option<(crate::policy::PlanId, u64)> {
        let within = within.unwrap_or(self.plan_refresh_ms);
        let cfg = self.cfg.as_ref()?;
        let stale = self.plan_checked.is_none_or(|t| now.since(t) >= within);
        stale.then(|| (cfg.config.plan_id.clone(), cfg.plan_version))
    }

    /// D1 said the plan is current (or could not say: it is asked again one period later).
    pub fn plan_checked(&mut self, now: Timestamp) {
        self.plan_checked = Some(now);
    }

    /// The org's config with a newer version of its plan, to `Configure` with.
    pub fn config_with_plan(&self, plan: Value, version: u64) -> Option<StoredConfig> {
        let cfg = self.cfg.as_ref()?;
        Some(StoredConfig { plan, plan_version: version, ..cfg.config.clone() })
    }

    /// The ledger shard of this org.
    pub fn shard(&self) -> u32 {
        self.cfg.as_ref().map_or(0, |c| c.shard)
    }

    /// The plan version this org runs.
    pub fn plan_version(&self) -> Option<(&crate::policy::PlanId, u64)> {
        self.cfg.as_ref().map(|c| (&c.policy.plan, c.plan_version))
    }

    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The bucket `ts`'s usage of `meter` goes to: its hour, cut at a reset or a plan change.
    pub(super) fn bucket_key(&self, meter: &MeterId, ts: u64) -> BucketKey {
        let marks = [self.resets.get(meter.as_str()), self.resets.get("*"), self.config_at.as_ref()];
        BucketKey::at(meter.as_str(), ts, marks.into_iter().flatten().map(|t| t.millis()))
    }

    /// Refuses usage that would take an open ledger bucket (the meter's, or a composite's it
    /// is part of) past 2^53 − 1, the largest count storage and D1 keep exactly: nothing is
    /// counted, and the client is answered 422. Checked before anything changes.
    pub(super) fn bucket_room(
        &self,
        loaded: &Loaded,
        meter: &MeterId,
        quantity: u64,
        ts: u64,
    ) -> Result<(), UsageError> {
        let keys = || {
            std::iter::once(meter).chain(loaded.policy.composites_of(meter)).map(|m| self.bucket_key(m, ts)).collect()
        };
        if self.ledger.fits(quantity, keys) {
            Ok(())
        } else {
            Err(UsageError::CountCeiling { policy: format!("{meter} (its ledger bucket for this hour)") })
        }
    }

    pub(super) fn terms(loaded: &Loaded, meter: &MeterId) -> Terms {
        Terms {
            plan: loaded.policy.plan.to_string(),
            event_name: loaded.policy.meter(meter).map_or_else(|| meter.to_string(), |m| m.event_name.clone()),
            customer: loaded.customer.clone(),
        }
    }

    /// Counts admitted usage into its bucket, and into the bucket of every composite the meter
    /// is part of (so the ledger knows both); the ledger flush is due one interval after the
    /// last one (and at least a moment after the first usage, so that a burst goes together).
    /// Returns the buckets, the meter's first.
    pub(super) fn count_usage(&mut self, cx: &mut Cx<'_>, meter: &MeterId, quantity: u64, ts: u64) -> Vec<BucketKey> {
        let loaded = cx.loaded;
        let meters = std::iter::once(meter).chain(loaded.policy.composites_of(meter));
        let mut keys = Vec::with_capacity(1);
        for m in meters {
            let key = self.bucket_key(m, ts);
            self.ledger.add(&key, || Self::terms(loaded, m), quantity, ts);
            cx.buckets.insert(key.clone());
            keys.push(key);
        }
        self.ledger_due(cx.now);
        self.report_after_change(cx.now);
        keys
    }

    pub(super) fn take_back_usage(&mut self, cx: &mut Cx<'_>, key: BucketKey, quantity: u64) {
        let loaded = cx.loaded;
        let terms = || MeterId::parse(&key.meter).map(|m| Self::terms(loaded, &m)).unwrap_or_default();
        self.ledger.take_back(&key, terms, quantity);
        cx.buckets.insert(key);
        self.ledger_due(cx.now);
    }

    pub(super) fn ledger_due(&mut self, now: Timestamp) {
        if self.wake.ledger_due.is_none() {
            let soon = now.saturating_add_ms(FLUSH_DELAY_MS);
            let next = self.last_flush.map_or(soon, |t| t.saturating_add_ms(self.flush_every_ms).max(soon));
            self.wake.ledger_due = Some(next);
        }
    }

    /// The flush's first step: seals the open buckets into the next batch unless one is already
    /// in flight. Returns what to write (the seal), if anything changed.
    pub fn seal_ledger(&mut self) -> Option<Writes> {
        self.ledger.seal().map(|seq| Writes { seal: Some(seq), ..Writes::default() })
    }

    /// The batch to send to D1, if any.
    pub const fn sealed(&self) -> Option<&Sealed> {
        self.ledger.sealed()
    }

    /// D1 applied batch `seq` (or had already): its rows go.
    pub fn ledger_confirmed(&mut self, seq: u64) -> Writes {
        let done = self.ledger.confirm(seq);
        Writes { sealed_done: done.then_some(seq), ..Writes::default() }
    }

    /// The aggregated usage not yet in D1, for reconciliation.
    pub fn pending_usage(&self, meter: &str, from: u64, to: u64) -> crate::org::rules::LedgerAgg {
        self.ledger.agg(meter, from, to)
    }

    /// Usage events not yet in D1 (net of releases).
    pub fn ledger_pending(&self) -> i64 {
        self.ledger.pending_events()
    }

    /// The usage events a sealed batch carries, a composite's buckets not counted a second time
    /// (their events are their parts').
    pub fn batch_events(&self, sealed: &Sealed) -> u64 {
        let composite = |m: &str| {
            self.policy()
                .is_some_and(|p| MeterId::parse(m).is_ok_and(|id| p.meter(&id).is_some_and(|s| !s.parts.is_empty())))
        };
        let n = sealed
            .buckets
            .iter()
            .filter(|(k, _)| !composite(&k.meter))
            .map(|(_, b)| b.events)
            .fold(0, i64::saturating_add);
        u64::try_from(n).unwrap_or(0)
    }

    /// How a flush ended: when to run next, and the meta rows to write: the failure count when
    /// it changed, and the highest outbox sequence handed out (so that a restarted instance,
    /// whose outbox D1 may have emptied, never hands the same number out again).
    pub fn after_flush(&mut self, result: FlushResult, now: Timestamp) -> Vec<(String, String)> {
        let before = self.flush_failures;
        let mut meta = Vec::new();
        let high = self.next_seq.saturating_sub(1);
        if high != self.seq_saved {
            self.seq_saved = high;
            meta.push(("outbox_seq".to_owned(), high.to_string()));
        }
        match result {
            FlushResult::Done { pending, next_ready } => {
                self.flush_failures = 0;
                self.wake.flush_retry = None;
                self.last_flush = Some(now);
                // Usage that came during the flush goes one interval later: at most one D1
                // batch per org per interval.
                self.wake.ledger_due = (self.ledger.pending() > 0).then(|| now.saturating_add_ms(self.flush_every_ms));
                // What is left flushes when it is ready, but not before another batching delay:
                // under continuous traffic a row becomes ready every few ms, and flushing each
                // as it comes would make one D1 batch per row instead of one per second.
                let batch = now.saturating_add_ms(FLUSH_DELAY_MS);
                self.wake.outbox_ready = (pending > 0).then(|| next_ready.unwrap_or(now).max(batch));
            }
            FlushResult::Failed => {
                self.flush_failures = self.flush_failures.saturating_add(1);
                self.wake.flush_retry = Some(now.saturating_add_ms(flush_backoff_ms(self.flush_failures)));
            }
        }
        if self.flush_failures != before {
            meta.push(("flush_failures".to_owned(), self.flush_failures.to_string()));
        }
        meta
    }

    /// Whether the ledger flush is due now (the alarm also runs for alerts, expiries and counts,
    /// and must not flush early then: at most one D1 batch per org per interval).
    pub fn flush_due(&self, now: Timestamp) -> bool {
        let w = &self.wake;
        w.flush_retry.or_else(|| crate::org::rules::earliest(w.outbox_ready, w.ledger_due)).is_some_and(|t| t <= now)
    }

    /// The flush is busy: try again shortly.
    pub fn flush_busy(&mut self, now: Timestamp) {
        self.wake.flush_retry = Some(now.saturating_add_ms(500));
    }

    /// When alert delivery next needs to run.
    pub fn alerts_due(&mut self, at: Option<Timestamp>) {
        self.wake.alert_due = at;
    }
}
