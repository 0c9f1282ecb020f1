//! The org's small rules, each a pure function of its inputs: how counters are stored, when an
//! alert fires and retries, how a failed flush backs off, when the machine next needs to run,
//! and what reconciliation expects the ledger to say.
//!
//! It owns these numbers and formulas so that the Durable Object glue holds none of them. It
//! must never do I/O or read a clock.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::policy::{Aggregation, Counter, Level, LimitStatus, OrgId, Timestamp};

/// A first flush waits this long so that a burst goes to D1 in one batch.
pub const FLUSH_DELAY_MS: u64 = 1_000;
/// The longest a failed flush waits before it tries again.
pub const MAX_FLUSH_BACKOFF_MS: u64 = 300_000;
/// Idempotency records (Idempotency-Key, event ids, origin reports) are kept at least 24 hours;
/// 48 here, so a client retrying for a day and a half still sees its first answer.
pub const IDEMPOTENCY_MS: u64 = 48 * 3_600_000;
/// The most proxied requests' holds an org keeps in memory for their release window. Past it
/// the oldest hold goes early: its units stay counted (a failed origin call it covered is then
/// charged), so eviction never loses counted usage.
pub const MAX_HELD: usize = 50_000;
/// The most provisional reservations one org may have open; the next is refused with 429
/// until one is committed, released or expires.
pub const MAX_OPEN_RESERVATIONS: u64 = 10_000;
/// The most idempotency records one org keeps: past it the oldest settled ones go before their
/// window ends, at the next ledger flush (a retry of one is then counted as new, never free).
pub const MAX_IDEMPOTENCY_RECORDS: u64 = 1_000_000;
/// In-memory decision counts reach storage at most this long after they were counted.
pub const COUNTS_EVERY_MS: u64 = 10_000;
/// Alert deliveries: at most this many attempts unless `ALERT_MAX_ATTEMPTS` says otherwise.
pub const DEFAULT_ALERT_ATTEMPTS: u32 = 8;

/// How long the `failures`-th consecutive failed flush waits: 1 s, 2 s, 4 s, … up to 5 minutes.
pub fn flush_backoff_ms(failures: u32) -> u64 {
    1_000u64.saturating_mul(1u64 << failures.saturating_sub(1).min(20)).min(MAX_FLUSH_BACKOFF_MS)
}

/// When an alert delivery that failed on `attempt` (1-based) is tried again: 1 s, 2 s, 4 s, …
/// doubling up to about 68 minutes.
pub fn alert_retry_at(attempt: u32, now: Timestamp) -> Timestamp {
    now.saturating_add_ms(1_000u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(12)))
}

/// What one delivery attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertOutcome {
    Delivered,
    Retry,
    Dead,
}

impl AlertOutcome {
    /// A 2xx delivers; otherwise retry until `max_attempts`, then give up.
    pub fn of(code: Option<u16>, attempt: u32, max_attempts: u32) -> Self {
        if code.is_some_and(|c| (200..300).contains(&c)) {
            Self::Delivered
        } else if attempt >= max_attempts {
            Self::Dead
        } else {
            Self::Retry
        }
    }

    /// As recorded in D1's `alert_deliveries.outcome`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Dead => "dead",
        }
    }

    /// The alert row's status afterwards.
    pub const fn status(self) -> &'static str {
        match self {
            Self::Retry => "pending",
            other => other.as_str(),
        }
    }
}

/// A threshold alert as its webhook carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertPayload {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub org_id: String,
    pub meter: String,
    pub policy: String,
    pub period: String,
    pub level: &'static str,
    pub threshold_pct: u8,
    pub used: u64,
    pub limit: Option<u64>,
    pub window_start: String,
    pub reset_at: Option<String>,
    pub timestamp: String,
}

/// An alert to record: its unique key (policy, window, level) keeps it once per window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub id: String,
    pub policy: String,
    pub window_start: Timestamp,
    pub level: Level,
    pub payload: String,
}

/// The alerts a change from `before` to `after` crosses: every level in (before, after] of each
/// day, month or lifetime limit with a cap. A change that crosses nothing costs nothing, which
/// is why the hot path below 80% never touches the alerts table.
pub fn crossings(org: &OrgId, before: &[LimitStatus], after: &[LimitStatus], now: Timestamp) -> Vec<NewAlert> {
    let mut out = Vec::new();
    for l in after.iter().filter(|l| !l.period.is_rate() && l.limit.is_some() && l.level > Level::Ok) {
        // A limit the step did not have before (a rolled window shows as fresh) starts at ok.
        let was = before
            .iter()
            .find(|b| b.policy == l.policy && b.window_start == l.window_start)
            .map_or(Level::Ok, |b| b.level);
        for level in l.level.reached().filter(|lv| *lv > was) {
            let id = format!("alrt_{org}_{}_{}_{}", l.policy, l.window_start.millis(), level.as_str());
            let payload = AlertPayload {
                id: id.clone(),
                kind: "quota.threshold",
                org_id: org.to_string(),
                meter: l.meter.to_string(),
                policy: l.policy.to_string(),
                period: l.period.to_string(),
                level: level.as_str(),
                threshold_pct: level.threshold_pct(),
                used: l.used,
                limit: l.limit,
                window_start: l.window_start.rfc3339(),
                reset_at: l.reset.map(Timestamp::rfc3339),
                timestamp: now.rfc3339(),
            };
            let payload = serde_json::to_string(&payload).unwrap_or_default();
            out.push(NewAlert { id, policy: l.policy.to_string(), window_start: l.window_start, level, payload });
        }
    }
    out
}

/// When the machine next needs its alarm: the earliest of the ledger buckets or the audit outbox
/// falling due, an alert falling due, a provisional reservation expiring, and unsaved decision
/// counts. A failed flush replaces the ledger's times with its retry time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    pub outbox_ready: Option<Timestamp>,
    pub flush_retry: Option<Timestamp>,
    pub alert_due: Option<Timestamp>,
    pub reservation_expires: Option<Timestamp>,
    pub counts_due: Option<Timestamp>,
    /// When the open ledger buckets go to D1.
    pub ledger_due: Option<Timestamp>,
    /// When the org next reports its status (drift, depths, counts) to its ledger shard.
    pub report_due: Option<Timestamp>,
}

impl Wake {
    /// The one time to arm the alarm for, if any.
    pub fn next(&self) -> Option<Timestamp> {
        let ledger = self.flush_retry.or_else(|| earliest(self.outbox_ready, self.ledger_due));
        [ledger, self.alert_due, self.reservation_expires, self.counts_due, self.report_due].into_iter().flatten().min()
    }
}

/// Keeps the earlier of two optional instants.
pub fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Sums of the ledger (or the unflushed outbox) over one window, as reconciliation reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct LedgerAgg {
    /// Net sum: pending buckets may hold a release of usage the ledger already has.
    pub total: i64,
    pub peak: u64,
    pub last: Option<u64>,
    pub last_ts: Option<u64>,
}

impl LedgerAgg {
    /// Both sums together: totals add, peaks take the larger, the latest value is the later one.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        let later = match (self.last_ts, other.last_ts) {
            (_, None) => self,
            (None, Some(_)) => other,
            (Some(a), Some(b)) => {
                if b >= a {
                    other
                } else {
                    self
                }
            }
        };
        Self {
            total: self.total.saturating_add(other.total),
            peak: self.peak.max(other.peak),
            last: later.last,
            last_ts: later.last_ts,
        }
    }
}

/// What a fixed-window counter should hold, given what D1 has and what is still pending.
pub fn expected(agg: Aggregation, ledger: &LedgerAgg, queued: &LedgerAgg) -> u64 {
    match agg {
        Aggregation::Sum => u64::try_from(ledger.total.saturating_add(queued.total).max(0)).unwrap_or(0),
        Aggregation::Max => ledger.peak.max(queued.peak),
        Aggregation::Latest => match queued.last {
            Some(q) if queued.last_ts.unwrap_or(0) >= ledger.last_ts.unwrap_or(0) => q,
            _ => ledger.last.unwrap_or(0),
        },
    }
}

/// The ledger's own figure for a window, as the reconcile report shows it.
pub const fn ledger_figure(agg: Aggregation, ledger: &LedgerAgg) -> u64 {
    match (agg, ledger.last) {
        (Aggregation::Sum, _) if ledger.total < 0 => 0,
        (Aggregation::Sum, _) => ledger.total.unsigned_abs(),
        (Aggregation::Max, _) => ledger.peak,
        (Aggregation::Latest, Some(l)) => l,
        (Aggregation::Latest, None) => 0,
    }
}

/// A meter's counters as one storage row: `policy=g,at,backlog;policy=w,start,used,reserved`.
/// Policy names are ids and periods (`[a-z0-9_-]`), so the separators never occur in them.
/// Integers, not JSON: the row is read and written on every decision.
pub fn encode_counters<'a>(counters: impl Iterator<Item = (&'a String, &'a Counter)>) -> String {
    // One row per proxied request: integers go through `itoa`, not `fmt`.
    let mut out = String::with_capacity(64);
    let mut num = itoa::Buffer::new();
    for (i, (k, c)) in counters.enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(k);
        let (kind, numbers) = match *c {
            Counter::Gcra { at, backlog } => ("=g", [Some(at.millis()), Some(backlog), None]),
            Counter::Window { start, used, reserved } => ("=w", [Some(start.millis()), Some(used), Some(reserved)]),
        };
        out.push_str(kind);
        for n in numbers.into_iter().flatten() {
            out.push(',');
            out.push_str(num.format(n));
        }
    }
    out
}

/// The counters of one stored row; `None` if the row is damaged. One pass over the bytes: this
/// runs on every decision, and `str::split` plus `parse` per number was a quarter of its cost.
pub fn decode_counters(row: &str) -> Option<BTreeMap<String, Counter>> {
    let mut out = BTreeMap::new();
    for item in row.split(';').filter(|s| !s.is_empty()) {
        let (key, rest) = item.split_once('=')?;
        let (&kind, mut rest) = rest.as_bytes().split_first()?;
        let mut nums = [0u64; 3];
        let mut count = 0;
        while let Some((&b',', tail)) = rest.split_first() {
            let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return None;
            }
            let (number, after) = tail.split_at(digits);
            let value = number
                .iter()
                .try_fold(0u64, |v, &d| v.checked_mul(10)?.checked_add(u64::from(d.wrapping_sub(b'0'))))?;
            *nums.get_mut(count)? = value;
            count += 1;
            rest = after;
        }
        let c = match (kind, count, nums, rest.is_empty()) {
            (b'g', 2, [at, backlog, _], true) => Counter::Gcra { at: Timestamp::from_millis(at), backlog },
            (b'w', 3, [start, used, reserved], true) => {
                Counter::Window { start: Timestamp::from_millis(start), used, reserved }
            }
            _ => return None,
        };
        out.insert(key.to_owned(), c);
    }
    Some(out)
}
