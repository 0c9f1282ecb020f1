//! Reconciliation: which fixed windows are compared with the ledger, over which range of ledger
//! time (a reset moves the start), and what each counter should hold: the ledger plus what the
//! outbox still holds, by the meter's aggregation. The D1 and outbox reads are the drain's.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::{json, Value};

use super::{book_of, meter_row, OrgError, OrgMachine, Step};
use crate::org::io::{Snapshot, Tallies, Writes};
use crate::org::msg::OrgReply;
use crate::org::rules::{expected, ledger_figure, LedgerAgg};
use crate::policy::{Aggregation, MeterId, Timestamp};

/// What reconciliation may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Report only (the admin's GET).
    Nothing,
    /// Every drifted counter takes the ledger's value (the admin's POST).
    All,
    /// Only drift of at most `pct` percent of what the ledger expects (the org's own report,
    /// `RECONCILE_AUTOFIX_PCT`): larger drift means something is broken, and is only reported.
    Small { pct: u64 },
}

impl Repair {
    /// Whether a window whose counter drifted by `drift` from `want` is repaired, and whether
    /// the drift is large (over the auto-repair threshold).
    pub fn decide(self, drift: i128, want: u64) -> (bool, bool) {
        if drift == 0 {
            return (false, false);
        }
        match self {
            Self::Nothing => (false, false),
            Self::All => (true, false),
            Self::Small { pct } => {
                let small =
                    drift.unsigned_abs().saturating_mul(100) <= u128::from(pct).saturating_mul(u128::from(want));
                (small, !small)
            }
        }
    }
}

/// One fixed window, as reconciliation compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileWindow {
    pub key: String,
    pub meter: MeterId,
    pub aggregation: Aggregation,
    /// Counted from here: the window start, or a later reset.
    pub from: u64,
    pub to: u64,
    pub start: Timestamp,
}

impl OrgMachine {
    /// The fixed windows reconciliation compares, with the range of ledger time each covers.
    pub fn reconcile_windows(&self, snap: &Snapshot, now: Timestamp) -> Result<Vec<ReconcileWindow>, OrgError> {
        let loaded = self.loaded()?;
        let book = book_of(&snap.rows)?;
        // A window that counts attempts holds failed requests the ledger (which bills what the
        // origin served) never had: there is nothing to compare it with.
        let attempts = |key: &str| {
            loaded.policy.limits.iter().any(|l| l.policy_name() == key && l.counts == crate::policy::Counts::Attempts)
        };
        Ok(book
            .window_usage(&loaded.policy, now)
            .into_iter()
            .filter(|w| !attempts(&w.key))
            .map(|w| {
                let reset = self.resets.get(w.meter.as_str()).or_else(|| self.resets.get("*"));
                let from = reset.map_or(0, |t| t.millis()).max(w.start.millis());
                let aggregation = loaded.policy.meter(&w.meter).map_or(Aggregation::Sum, |m| m.aggregation);
                ReconcileWindow {
                    key: w.key,
                    meter: w.meter,
                    aggregation,
                    from,
                    to: w.end.map_or(u64::MAX >> 11, Timestamp::millis),
                    start: w.start,
                }
            })
            .collect())
    }

    /// Compares each window's counter with the ledger plus what is pending; a window `repair`
    /// allows takes that value (the ledger is the truth for committed usage). The answer says,
    /// per window, whether it was repaired and whether its drift is over the threshold.
    pub fn reconcile(
        &mut self,
        windows: &[(ReconcileWindow, LedgerAgg, LedgerAgg)],
        snap: &Snapshot,
        repair: Repair,
        tallies: Tallies,
        saved: &[(String, String, u64)],
        now: Timestamp,
    ) -> Result<Step, OrgError> {
        let loaded = Rc::clone(self.loaded()?);
        let mut book = book_of(&snap.rows)?;
        let current = book.window_usage(&loaded.policy, now);
        let mut limits = Vec::new();
        let mut total_drift: u128 = 0;
        let (mut repaired_units, mut large) = (0u128, false);
        let mut touched = BTreeSet::new();
        for (w, ledger, queued) in windows {
            // A window that rolled over during the D1 reads is compared next time.
            let Some(now_w) = current.iter().find(|c| c.key == w.key && c.start == w.start) else { continue };
            let want = expected(w.aggregation, ledger, queued);
            let drift = i128::from(now_w.used) - i128::from(want);
            total_drift = total_drift.saturating_add(drift.unsigned_abs());
            let (fix, too_large) = repair.decide(drift, want);
            large |= too_large;
            if fix {
                book.repair(&loaded.policy, &w.key, want, now);
                touched.insert(w.meter.clone());
                repaired_units = repaired_units.saturating_add(drift.unsigned_abs());
            }
            limits.push(json!({
                "policy": w.key, "meter": w.meter.as_str(), "window_start": w.start.rfc3339(),
                "window_end": (w.to != u64::MAX >> 11).then(|| Timestamp::from_millis(w.to).rfc3339()),
                "counter": now_w.used, "ledger": ledger_figure(w.aggregation, ledger), "outbox": queued.total,
                "expected": want, "drift": i64::try_from(drift).unwrap_or(i64::MAX), "repaired": fix, "large": too_large,
            }));
        }
        let mut writes = Writes::default();
        for m in &touched {
            writes.counters.push((m.to_string(), meter_row(&loaded.policy, &book, m)));
        }
        // Saved counts plus those still in memory: the cron publishes the sum.
        let mut all: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (m, o, n) in saved {
            let c = all.entry((m.clone(), o.clone())).or_insert(0);
            *c = c.saturating_add(*n);
        }
        for (m, o, n) in self.unsaved_counts() {
            let c = all.entry((m.to_string(), o.as_str().to_owned())).or_insert(0);
            *c = c.saturating_add(n);
        }
        let decisions: Vec<Value> =
            all.into_iter().map(|((m, o), n)| json!({"meter": m, "outcome": o, "n": n})).collect();
        let body = json!({
            "org_id": loaded.org.as_str(), "checked_at": now.rfc3339(), "repair": repair != Repair::Nothing,
            "total_drift": u64::try_from(total_drift).unwrap_or(u64::MAX), "limits": limits,
            "repaired_units": u64::try_from(repaired_units).unwrap_or(u64::MAX), "large_drift": large,
            "outbox_pending": tallies.outbox_pending, "ledger_pending": self.ledger_pending().max(0),
            "flush_failures": self.flush_failures,
            "decisions": decisions,
        });
        Ok(Step { reply: OrgReply::ok(body, Some(loaded.policy.plan.to_string())), writes, log: Vec::new() })
    }
}
