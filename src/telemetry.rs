//! Latency of Durable Object calls as a Prometheus histogram: the per-isolate recorder, the
//! rows it hands to the ledger, and the text exposition of the summed rows.
//!
//! Worker isolates share no memory, so each isolate records into its own `Recorder` and hands
//! its buckets to D1 at most every flush interval (off the client's path); `/admin/metrics`
//! renders the sum over every isolate. It is pure: time comes in as an argument, and it must
//! never do I/O or make a quota decision.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::policy::Timestamp;

/// Which decisions write a JSON log line (`DECISION_LOG`): every one by default, only those
/// that were not plainly allowed, or none. Volume is the reason to turn it down: a busy gateway
/// writes one line per request, and log pipelines are billed per line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DecisionLog {
    #[default]
    All,
    Refusals,
    Off,
}

impl DecisionLog {
    /// `all`, `refusals` or `off` (`DECISION_LOG`; `config` reports any other value).
    #[must_use]
    pub fn named(value: &str) -> Option<Self> {
        match value {
            "all" => Some(Self::All),
            "refusals" => Some(Self::Refusals),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// Whether a decision with this outcome is logged; `allowed` and `accepted` are the plain
    /// outcomes.
    #[must_use]
    pub fn wants(self, outcome: Outcome) -> bool {
        match self {
            Self::All => true,
            Self::Refusals => !matches!(outcome, Outcome::Allowed | Outcome::Accepted | Outcome::Leased),
            Self::Off => false,
        }
    }
}

/// What became of a request, as logs and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Allowed,
    Refused,
    /// A usage event that was counted.
    Accepted,
    Unauthorized,
    /// No decision could be had (the org's DO was unreachable and the plan fails closed).
    Unavailable,
    /// Admitted by a Worker isolate from its lease, with no DO call (lease mode).
    Leased,
}

impl Outcome {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Accepted => "accepted",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::Leased => "leased",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Allowed, Self::Refused, Self::Accepted, Self::Unauthorized, Self::Unavailable, Self::Leased]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// The one shape of a decision log line, wherever the decision was made: the Worker (proxied
/// requests, with the round trip's latency) or the org's Durable Object (checks, reservations,
/// events; a DO cannot time itself, its clock stands still while it computes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionLine {
    pub org: String,
    pub meter: String,
    pub quantity: u64,
    pub outcome: Outcome,
    pub status: u16,
    /// `proxy`, `check`, `reserve`, `events`, `fail-open` or `fail-closed`.
    pub source: &'static str,
    pub latency_ms: Option<u64>,
}

impl DecisionLine {
    /// The line as JSON, written straight into one string: org and meter are ids
    /// (`[a-z0-9_-]`) and the rest are numbers and fixed words, so nothing needs escaping and no
    /// JSON tree is built per request.
    #[must_use]
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(160);
        let _ = write!(
            s,
            r#"{{"msg":"decision","org":"{}","meter":"{}","quantity":{},"outcome":"{}","status":{},"source":"{}""#,
            self.org,
            self.meter,
            self.quantity,
            self.outcome.as_str(),
            self.status,
            self.source
        );
        if let Some(ms) = self.latency_ms {
            let _ = write!(s, r#","latency_ms":{ms}"#);
        }
        s.push('}');
        s
    }
}

/// Upper bounds of the buckets in milliseconds; the last bucket (`+Inf`) is stored as `INF`.
pub const BOUNDS_MS: [i64; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];
/// The `le` of the `+Inf` bucket in a stored row.
pub const INF: i64 = -1;

/// One stored row: samples of one operation that fell in one bucket (not cumulative).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BucketRow {
    pub op: String,
    pub le_ms: i64,
    pub n: u64,
    pub sum_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    n: u64,
    sum_ms: u64,
}

/// The samples of one isolate since its last hand-over.
#[derive(Debug, Default)]
pub struct Recorder {
    ops: BTreeMap<String, [Bucket; BOUNDS_MS.len() + 1]>,
    since: Option<Timestamp>,
}

fn bucket_of(ms: u64) -> usize {
    BOUNDS_MS.iter().position(|&b| u64::try_from(b).is_ok_and(|b| ms <= b)).unwrap_or(BOUNDS_MS.len())
}

fn le_of(index: usize) -> i64 {
    BOUNDS_MS.get(index).copied().unwrap_or(INF)
}

impl Recorder {
    /// Records one call of `op` that took `ms`. The first sample starts the flush interval.
    pub fn observe(&mut self, op: &str, ms: u64, now: Timestamp) {
        self.add(op, bucket_of(ms), 1, ms, now);
    }

    fn add(&mut self, op: &str, index: usize, n: u64, sum_ms: u64, now: Timestamp) {
        self.since.get_or_insert(now);
        // Look up before inserting: an op's name is allocated once, not per sample.
        if !self.ops.contains_key(op) {
            self.ops.insert(op.to_owned(), Default::default());
        }
        if let Some(b) = self.ops.get_mut(op).and_then(|buckets| buckets.get_mut(index)) {
            b.n = b.n.saturating_add(n);
            b.sum_ms = b.sum_ms.saturating_add(sum_ms);
        }
    }

    /// The rows to hand over when the oldest unsent sample is at least `every_ms` old, emptying
    /// the recorder; `None` when nothing is due.
    pub fn take_due(&mut self, now: Timestamp, every_ms: u64) -> Option<Vec<BucketRow>> {
        let since = self.since?;
        if now.since(since) < every_ms {
            return None;
        }
        self.since = None;
        let rows = std::mem::take(&mut self.ops)
            .into_iter()
            .flat_map(|(op, buckets)| {
                buckets.into_iter().enumerate().filter(|(_, b)| b.n > 0).map(move |(i, b)| BucketRow {
                    op: op.clone(),
                    le_ms: le_of(i),
                    n: b.n,
                    sum_ms: b.sum_ms,
                })
            })
            .collect::<Vec<_>>();
        (!rows.is_empty()).then_some(rows)
    }

    /// Puts back rows whose hand-over failed, so they go with the next one.
    pub fn restore(&mut self, rows: Vec<BucketRow>, now: Timestamp) {
        for row in rows {
            self.add(&row.op, index_of(row.le_ms), row.n, row.sum_ms, now);
        }
    }
}

/// The bucket a stored row's `le_ms` names (`INF` and unknown bounds: the last).
fn index_of(le_ms: i64) -> usize {
    BOUNDS_MS.iter().position(|&b| b == le_ms).unwrap_or(BOUNDS_MS.len())
}

/// Milliseconds as Prometheus seconds, exactly (three decimals).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The Prometheus text of the summed rows (any order, any number of isolates' hand-overs).
#[must_use]
pub fn render(rows: &[BucketRow]) -> String {
    let mut out = String::from(
        "# HELP quotagate_do_call_duration_seconds Durable Object call latency as the Worker saw it, by operation.\n\
         # TYPE quotagate_do_call_duration_seconds histogram\n",
    );
    let mut by_op: BTreeMap<&str, [Bucket; BOUNDS_MS.len() + 1]> = BTreeMap::new();
    for r in rows {
        if let Some(b) = by_op.entry(r.op.as_str()).or_default().get_mut(index_of(r.le_ms)) {
            b.n = b.n.saturating_add(r.n);
            b.sum_ms = b.sum_ms.saturating_add(r.sum_ms);
        }
    }
    for (op, buckets) in by_op {
        let mut cumulative = 0u64;
        for (i, b) in buckets.iter().enumerate() {
            cumulative = cumulative.saturating_add(b.n);
            let le = match u64::try_from(le_of(i)) {
                Ok(ms) => seconds(ms),
                Err(_) => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "quotagate_do_call_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}");
        }
        let sum = buckets.iter().fold(0u64, |acc, b| acc.saturating_add(b.sum_ms));
        let _ = writeln!(out, "quotagate_do_call_duration_seconds_sum{{op=\"{op}\"}} {}", seconds(sum));
        let _ = writeln!(out, "quotagate_do_call_duration_seconds_count{{op=\"{op}\"}} {cumulative}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(2500), 10);
        assert_eq!(bucket_of(2501), 11);
        assert_eq!(bucket_of(u64::MAX), 11);
    }

    #[test]
    fn nothing_is_due_before_the_interval_nor_when_empty() {
        let mut r = Recorder::default();
        assert_eq!(r.take_due(at(0), 0), None);
        r.observe("decide", 3, at(1_000));
        assert_eq!(r.take_due(at(10_999), 10_000), None);
        let rows = r.take_due(at(11_000), 10_000).unwrap();
        assert_eq!(rows, vec![BucketRow { op: "decide".into(), le_ms: 5, n: 1, sum_ms: 3 }]);
        assert_eq!(r.take_due(at(99_000), 10_000), None, "taken rows are not handed over twice");
    }

    #[test]
    fn restored_rows_go_with_the_next_hand_over() {
        let mut r = Recorder::default();
        r.observe("decide", 1, at(0));
        r.observe("decide", 4000, at(0));
        let rows = r.take_due(at(0), 0).unwrap();
        r.restore(rows.clone(), at(5));
        r.observe("decide", 1, at(6));
        let again = r.take_due(at(6), 0).unwrap();
        assert_eq!(
            again,
            vec![
                BucketRow { op: "decide".into(), le_ms: 1, n: 2, sum_ms: 2 },
                BucketRow { op: "decide".into(), le_ms: INF, n: 1, sum_ms: 4000 },
            ]
        );
    }

    #[test]
    fn rendering_is_cumulative_and_sums_isolates() {
        let rows = vec![
            BucketRow { op: "decide".into(), le_ms: 1, n: 3, sum_ms: 2 },
            BucketRow { op: "decide".into(), le_ms: 1, n: 1, sum_ms: 1 },
            BucketRow { op: "decide".into(), le_ms: 10, n: 2, sum_ms: 15 },
            BucketRow { op: "decide".into(), le_ms: INF, n: 1, sum_ms: 3001 },
            BucketRow { op: "settle".into(), le_ms: 2, n: 5, sum_ms: 10 },
        ];
        let text = render(&rows);
        assert!(text.contains("# TYPE quotagate_do_call_duration_seconds histogram\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"decide\",le=\"0.001\"} 4\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"decide\",le=\"0.005\"} 4\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"decide\",le=\"0.010\"} 6\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"decide\",le=\"2.500\"} 6\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"decide\",le=\"+Inf\"} 7\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_sum{op=\"decide\"} 3.019\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_count{op=\"decide\"} 7\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_bucket{op=\"settle\",le=\"0.001\"} 0\n"));
        assert!(text.contains("quotagate_do_call_duration_seconds_count{op=\"settle\"} 5\n"));
    }

    #[test]
    fn decision_log_levels() {
        assert_eq!(DecisionLog::named("all"), Some(DecisionLog::All));
        assert_eq!(DecisionLog::named("typo"), None, "config reports an unknown value");
        assert_eq!(DecisionLog::named("refusals"), Some(DecisionLog::Refusals));
        assert!(DecisionLog::All.wants(Outcome::Allowed));
        assert!(!DecisionLog::Refusals.wants(Outcome::Allowed));
        assert!(!DecisionLog::Refusals.wants(Outcome::Accepted));
        assert!(DecisionLog::Refusals.wants(Outcome::Refused));
        assert!(DecisionLog::Refusals.wants(Outcome::Unavailable));
        assert!(!DecisionLog::Off.wants(Outcome::Refused));
    }
}
