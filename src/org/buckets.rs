//! The org's usage on its way to the ledger, aggregated: one bucket per (meter, segment), where
//! a segment is a UTC hour, cut short where a reset or a plan change falls inside it. Admitted
//! usage adds to its bucket, a release takes back from it, and a flush moves every open bucket
//! into one sealed batch with the next sequence number, which D1 applies exactly once.
//!
//! The exactly-once invariant: a sealed batch never changes and is the only one in flight; D1
//! applies batch `seq` of this org only while its stored mark for the org is below `seq` (same
//! ledger epoch), and raises the mark in the same transaction. So a batch sent twice (D1
//! committed, the answer was lost) counts once, and the dedup state in D1 is one row per org,
//! whatever the traffic. It owns this bookkeeping and nothing else: it must never do I/O or read
//! a clock.

use std::collections::BTreeMap;

use super::rules::LedgerAgg;
use crate::policy::plan::MAX_SAFE_INTEGER;

/// A UTC hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// Where a bucket lives: its meter and the start of its segment (ms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketKey {
    pub meter: String,
    pub start: u64,
}

impl BucketKey {
    /// The bucket of usage at `ts`: its hour, or the latest mark (reset, plan change) inside that
    /// hour at or before `ts`, so that no bucket spans a reset or two plans.
    pub fn at(meter: &str, ts: u64, marks: impl IntoIterator<Item = u64>) -> Self {
        let hour = ts - ts % HOUR_MS;
        let start = marks.into_iter().filter(|m| *m > hour && *m <= ts).max().unwrap_or(hour);
        Self { meter: meter.to_owned(), start }
    }
}

/// What the ledger keeps with a bucket: the plan, the Stripe event name and the Stripe customer
/// in force when its usage was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Terms {
    pub plan: String,
    pub event_name: String,
    pub customer: Option<String>,
}

/// A bucket's delta for the ledger. Quantities are signed: a release after its usage was
/// flushed is a negative delta. Counts stay below 2^53 (checked where they enter).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bucket {
    pub quantity: i64,
    pub events: i64,
    /// The largest single quantity, and the latest one with its time (0: none yet).
    pub max_value: u64,
    pub last_value: u64,
    pub last_ts: u64,
    /// The earliest usage time (0: none yet).
    pub first_ts: u64,
    pub terms: Terms,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Bucket {
    fn add(&mut self, quantity: u64, ts: u64) {
        self.quantity = self.quantity.saturating_add(signed(quantity));
        self.events = self.events.saturating_add(1);
        self.max_value = self.max_value.max(quantity);
        if ts >= self.last_ts {
            self.last_value = quantity;
            self.last_ts = ts;
        }
        self.first_ts = if self.first_ts == 0 { ts } else { self.first_ts.min(ts) };
    }

    fn take_back(&mut self, quantity: u64) {
        self.quantity = self.quantity.saturating_sub(signed(quantity));
        self.events = self.events.saturating_sub(1);
    }
}

/// The batch in flight to D1: sealed, immutable, resent as it is until D1 confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub buckets: Vec<(BucketKey, Bucket)>,
}

impl Sealed {
    /// Usage events it carries (admitted minus released).
    pub fn events(&self) -> i64 {
        self.buckets.iter().map(|(_, b)| b.events).fold(0, i64::saturating_add)
    }
}

/// The org's pending ledger: open buckets, at most one sealed batch, and the last sequence
/// number handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    open: BTreeMap<BucketKey, Bucket>,
    sealed: Option<Sealed>,
    last_seq: u64,
    /// At least the largest open bucket's quantity (a take-back does not lower it; a seal
    /// does): while it leaves room, usage needs no bucket lookup to know it fits.
    peak: i64,
}

impl Buckets {
    /// From stored rows: batch 0 is open, any other is the sealed batch of that number.
    pub fn from_rows(rows: Vec<(u64, BucketKey, Bucket)>, last_seq: u64) -> Self {
        let mut out = Self { last_seq, ..Self::default() };
        for (batch, key, bucket) in rows {
            if batch == 0 {
                out.peak = out.peak.max(bucket.quantity);
                out.open.insert(key, bucket);
            } else {
                out.last_seq = out.last_seq.max(batch);
                out.sealed
                    .get_or_insert_with(|| Sealed { seq: batch, buckets: Vec::new() })
                    .buckets
                    .push((key, bucket));
            }
        }
        out
    }

    /// Applies `f` to `key`'s open bucket. A new bucket takes `terms()`, called only then: the
    /// hot path clones neither the key nor the terms for a bucket that exists.
    fn update(&mut self, key: &BucketKey, terms: impl FnOnce() -> Terms, f: impl FnOnce(&mut Bucket)) {
        if let Some(b) = self.open.get_mut(key) {
            f(b);
            self.peak = self.peak.max(b.quantity);
            return;
        }
        let mut b = Bucket { terms: terms(), ..Bucket::default() };
        f(&mut b);
        self.peak = self.peak.max(b.quantity);
        self.open.insert(key.clone(), b);
    }

    /// Whether `quantity` more fits in every one of `keys`' open buckets without passing
    /// 2^53 − 1, the largest count the DO's storage and D1 keep exactly. `keys` is called only
    /// when some open bucket is near that bound.
    pub fn fits(&self, quantity: u64, keys: impl FnOnce() -> Vec<BucketKey>) -> bool {
        let max = i128::from(MAX_SAFE_INTEGER);
        if i128::from(self.peak) + i128::from(quantity) <= max {
            return true;
        }
        keys().iter().all(|k| i128::from(self.open.get(k).map_or(0, |b| b.quantity)) + i128::from(quantity) <= max)
    }

    /// Counts `quantity` at `ts` into `key`'s bucket.
    pub fn add(&mut self, key: &BucketKey, terms: impl FnOnce() -> Terms, quantity: u64, ts: u64) {
        self.update(key, terms, |b| b.add(quantity, ts));
    }

    /// Takes `quantity` back from `key`'s bucket (negative if that usage was already sealed).
    pub fn take_back(&mut self, key: &BucketKey, terms: impl FnOnce() -> Terms, quantity: u64) {
        self.update(key, terms, |b| b.take_back(quantity));
    }

    /// Seals every open bucket into the next batch, unless a batch is already in flight or
    /// nothing is open. Returns the new batch's number.
    pub fn seal(&mut self) -> Option<u64> {
        if self.sealed.is_some() || self.open.is_empty() {
            return None;
        }
        self.last_seq = self.last_seq.saturating_add(1);
        let buckets = std::mem::take(&mut self.open).into_iter().collect();
        self.peak = 0;
        self.sealed = Some(Sealed { seq: self.last_seq, buckets });
        Some(self.last_seq)
    }

    /// An open bucket as it stands, to store.
    pub fn open_row(&self, key: &BucketKey) -> Option<(BucketKey, Bucket)> {
        self.open.get(key).map(|b| (key.clone(), b.clone()))
    }

    pub const fn sealed(&self) -> Option<&Sealed> {
        self.sealed.as_ref()
    }

    /// D1 confirmed batch `seq`: it leaves. `false` if that is not the batch in flight.
    pub fn confirm(&mut self, seq: u64) -> bool {
        if self.sealed.as_ref().is_some_and(|s| s.seq == seq) {
            self.sealed = None;
            true
        } else {
            false
        }
    }

    pub fn has_open(&self) -> bool {
        !self.open.is_empty()
    }

    pub const fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Buckets not yet in D1 (open and sealed).
    pub fn pending(&self) -> usize {
        self.open.len().saturating_add(self.sealed.as_ref().map_or(0, |s| s.buckets.len()))
    }

    /// Usage events not yet in D1.
    pub fn pending_events(&self) -> i64 {
        let open = self.open.values().map(|b| b.events).fold(0, i64::saturating_add);
        open.saturating_add(self.sealed.as_ref().map_or(0, Sealed::events))
    }

    /// What the buckets not yet in D1 hold of one meter over segments starting in `[from, to)`,
    /// as reconciliation adds it to the ledger's figure.
    pub fn agg(&self, meter: &str, from: u64, to: u64) -> LedgerAgg {
        let sealed = self.sealed.iter().flat_map(|s| s.buckets.iter().map(|(k, b)| (k, b)));
        let mut out = LedgerAgg::default();
        let mut total: i64 = 0;
        for (k, b) in self.open.iter().chain(sealed) {
            if k.meter != meter || k.start < from || k.start >= to {
                continue;
            }
            total = total.saturating_add(b.quantity);
            out.peak = out.peak.max(b.max_value);
            if b.last_ts > 0 && out.last_ts.is_none_or(|t| b.last_ts >= t) {
                out.last = Some(b.last_value);
                out.last_ts = Some(b.last_ts);
            }
        }
        // Net: a release of usage D1 already has is negative here, and lowers the ledger's sum.
        out.total = total;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Aggregation;

    fn terms() -> Terms {
        Terms { plan: "pro".into(), event_name: "api_requests".into(), customer: None }
    }

    #[test]
    fn a_segment_is_the_hour_cut_at_marks_inside_it() {
        let h = 10 * HOUR_MS;
        assert_eq!(BucketKey::at("m", h + 5, []).start, h);
        // A reset inside the hour, before the usage, starts a segment; one after it does not.
        assert_eq!(BucketKey::at("m", h + 500, [h + 100, h + 900]).start, h + 100);
        // A mark in an earlier hour does not move a later hour's bucket.
        assert_eq!(BucketKey::at("m", h + 500, [h - 1]).start, h);
    }

    #[test]
    fn sealing_moves_every_open_bucket_into_one_batch_at_a_time() {
        let mut b = Buckets::default();
        b.add(&BucketKey::at("m", 5, []), terms, 3, 5);
        b.add(&BucketKey::at("m", 6, []), terms, 4, 6);
        assert_eq!(b.seal(), Some(1));
        b.add(&BucketKey::at("m", 7, []), terms, 1, 7);
        assert_eq!(b.seal(), None, "one batch in flight");
        assert!(!b.confirm(2));
        assert!(b.confirm(1));
        assert_eq!(b.seal(), Some(2));
        let s = b.sealed().cloned().unwrap_or_else(|| unreachable!());
        assert_eq!(s.buckets.len(), 1);
        assert_eq!(s.buckets[0].1.quantity, 1);
    }

    #[test]
    fn a_release_after_the_seal_is_a_negative_delta() {
        let mut b = Buckets::default();
        let k = BucketKey::at("m", 5, []);
        b.add(&k, terms, 3, 5);
        b.seal();
        b.take_back(&k, terms, 3);
        let (_, row) = b.open_row(&k).unwrap_or_else(|| unreachable!());
        assert_eq!((row.quantity, row.events), (-3, -1));
        let agg = b.agg("m", 0, HOUR_MS);
        assert_eq!(agg.total, 0);
        let flushed = LedgerAgg { total: 3, ..LedgerAgg::default() };
        assert_eq!(crate::org::rules::expected(Aggregation::Sum, &flushed, &agg), 3);
        b.confirm(1);
        assert_eq!(crate::org::rules::expected(Aggregation::Sum, &flushed, &b.agg("m", 0, HOUR_MS)), 0);
    }

    #[test]
    fn rows_round_trip_through_storage() {
        let mut b = Buckets::default();
        b.add(&BucketKey::at("m", 5, []), terms, 3, 5);
        b.seal();
        b.add(&BucketKey::at("n", 6, []), terms, 2, 6);
        let mut rows = Vec::new();
        for (k, v) in &b.open {
            rows.push((0, k.clone(), v.clone()));
        }
        if let Some(s) = &b.sealed {
            for (k, v) in &s.buckets {
                rows.push((s.seq, k.clone(), v.clone()));
            }
        }
        assert_eq!(Buckets::from_rows(rows, 0), b);
    }
}
