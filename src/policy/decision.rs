//! Outcomes of the engine: `Decision`, `LimitStatus`, `Refusal` and `Level`.
//!
//! Owns how a refusal is classified (429 to wait for a reset, 402 to upgrade) and the derived
//! values callers need (retry-after, the most constrained limit). Must never mutate counters.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::ids::MeterId;
use super::period::Period;
use super::plan::MAX_SAFE_INTEGER;

/// How close a limit is to its cap: ok below 80%, warning from 80%, critical from 95%, over
/// at or beyond 100%.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
    Over,
}

impl Level {
    /// Exact integer thresholds: `used × 100 ≥ pct × limit`. Unlimited is always ok.
    pub fn of(used: u64, limit: Option<u64>) -> Self {
        let Some(limit) = limit else { return Self::Ok };
        let used = u128::from(used) * 100;
        let limit = u128::from(limit);
        if used >= 100 * limit {
            Self::Over
        } else if used >= 95 * limit {
            Self::Critical
        } else if used >= 80 * limit {
            Self::Warning
        } else {
            Self::Ok
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Over => "over",
        }
    }

    /// The alert levels reached at this level: warning, then critical, then over (none for ok).
    /// An alert fires once per level per window, so a jump from 70% to 100% fires all three.
    pub fn reached(self) -> impl Iterator<Item = Self> {
        [Self::Warning, Self::Critical, Self::Over].into_iter().filter(move |l| *l <= self)
    }

    /// The threshold percentage that starts this level (0 for ok).
    pub const fn threshold_pct(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::Warning => 80,
            Self::Critical => 95,
            Self::Over => 100,
        }
    }
}

/// The state of one limit at one instant, as every report and header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    /// `meter-period`, the IETF policy name (shared with the plan's limit).
    pub policy: Arc<str>,
    pub meter: MeterId,
    pub period: Period,
    /// `hard`, `soft` or `unlimited`.
    pub mode: &'static str,
    pub limit: Option<u64>,
    /// Committed plus held units in this window (for a rate window: units not yet replenished).
    pub used: u64,
    /// `None` for unlimited; zero when at or over the limit.
    pub remaining: Option<u64>,
    /// Start of the current window (for a rate window, the aligned window of its length).
    pub window_start: Timestamp,
    /// Window length in seconds (`None` for lifetime): the IETF `w`.
    pub window_secs: Option<u64>,
    /// When the limit next resets: the window end, or when a rate window is fully replenished.
    pub reset: Option<Timestamp>,
    pub level: Level,
    /// Units over a soft limit, and their price.
    pub overage: u64,
    pub overage_cost_cents: u64,
    /// A refusal by this limit needs an upgrade (402), not a wait (429).
    pub needs_upgrade: bool,
}

impl LimitStatus {
    /// Seconds until `reset`, rounded up (`None` for lifetime).
    pub fn reset_secs(&self, now: Timestamp) -> Option<u64> {
        self.reset.map(|r| r.since(now).div_ceil(1000))
    }

    /// `used / limit` as a whole percentage, rounded down (`None` for unlimited), and at most
    /// `MAX_SAFE_INTEGER`, which it reads for any use of a limit of 0: JSON carries it exactly.
    pub fn percentage(&self) -> Option<u64> {
        let limit = self.limit?;
        if limit == 0 {
            return Some(if self.used == 0 { 100 } else { MAX_SAFE_INTEGER });
        }
        let pct = u128::from(self.used) * 100 / u128::from(limit);
        Some(u64::try_from(pct).map_or(MAX_SAFE_INTEGER, |p| p.min(MAX_SAFE_INTEGER)))
    }
}

/// The HTTP status class of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RefusalKind {
    /// 429: the limit resets; `Retry-After` says when.
    RetryLater,
    /// 402: a lifetime limit, an `"on_exceed": "upgrade"` cap, or a request larger than the
    /// limit itself; waiting does not help.
    UpgradeRequired,
}

impl RefusalKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::RetryLater => 429,
            Self::UpgradeRequired => 402,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// Indices into `Decision::limits` of every limit this request would pass.
    pub violated: Vec<usize>,
    /// The limit reported as *the* reason: the one needing an upgrade, else the one that
    /// frees up last.
    pub primary: usize,
    /// Seconds until every violated limit admits the request (`None` for a 402).
    pub retry_after: Option<u64>,
}

/// The answer to one check, reservation or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub meter: MeterId,
    pub quantity: u64,
    pub now: Timestamp,
    /// Every limit on the meter, after the decision took effect.
    pub limits: Vec<LimitStatus>,
    pub refusal: Option<Refusal>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.refusal.is_none()
    }

    /// 200 when allowed, else 429 or 402.
    pub fn status(&self) -> u16 {
        self.refusal.as_ref().map_or(200, |r| r.kind.status())
    }

    pub fn retry_after(&self) -> Option<u64> {
        self.refusal.as_ref().and_then(|r| r.retry_after)
    }

    /// The limit a refusal is reported against.
    pub fn violated(&self) -> Option<&LimitStatus> {
        self.refusal.as_ref().and_then(|r| self.limits.get(r.primary))
    }

    pub fn violated_policies(&self) -> Vec<&str> {
        self.refusal
            .as_ref()
            .map(|r| r.violated.iter().filter_map(|&i| self.limits.get(i)).map(|l| &*l.policy).collect())
            .unwrap_or_default()
    }

    /// The worst level across the meter's limits.
    pub fn level(&self) -> Level {
        self.limits.iter().map(|l| l.level).max().unwrap_or(Level::Ok)
    }

    /// The limit with the least room left (ties: the one that resets first), for the legacy
    /// `X-RateLimit-*` headers. Unlimited limits are never the most constrained.
    pub fn most_constrained(&self) -> Option<&LimitStatus> {
        self.limits
            .iter()
            .filter(|l| l.remaining.is_some())
            .min_by_key(|l| (l.remaining, l.reset.map_or(u64::MAX, Timestamp::millis)))
    }

    pub fn overage_cost_cents(&self) -> u64 {
        self.limits.iter().fold(0u64, |acc, l| acc.saturating_add(l.overage_cost_cents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_at_exact_thresholds() {
        let l = |u| Level::of(u, Some(1000));
        assert_eq!(
            [l(0), l(799), l(800), l(949), l(950), l(999), l(1000), l(5000)],
            [
                Level::Ok,
                Level::Ok,
                Level::Warning,
                Level::Warning,
                Level::Critical,
                Level::Critical,
                Level::Over,
                Level::Over
            ]
        );
        assert_eq!(Level::of(u64::MAX, None), Level::Ok);
        assert_eq!(Level::of(0, Some(0)), Level::Over);
        assert_eq!(Level::of(u64::MAX, Some(u64::MAX)), Level::Over);
        // 80% of 3 is 2.4: 2 is still ok, 3 is over.
        assert_eq!((Level::of(2, Some(3)), Level::of(3, Some(3))), (Level::Ok, Level::Over));
    }

    #[test]
    fn reached_levels_are_cumulative() {
        assert_eq!(Level::Ok.reached().count(), 0);
        assert_eq!(Level::Warning.reached().collect::<Vec<_>>(), vec![Level::Warning]);
        assert_eq!(Level::Over.reached().collect::<Vec<_>>(), vec![Level::Warning, Level::Critical, Level::Over]);
    }
}
