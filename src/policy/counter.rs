//! One limit's counter and its arithmetic: bringing a counter up to `now` (a rolled window, a
//! drained GCRA backlog), what it would hold after admitting units, how long a refused request
//! must wait, and the limit's status. Rate windows run GCRA in exact integer math; day, month
//! and lifetime limits are fixed windows that roll over at their exact boundary.
//!
//! Pure functions of a limit, a counter and `now`: it owns no state, never reads a clock and
//! never decides across limits (that is `engine::Book`).

use serde::{Deserialize, Serialize};

use super::clock::Timestamp;
use super::decision::{Level, LimitStatus};
use super::period::Window;
use super::plan::{Aggregation, Cap, Limit, Policy};

/// The persisted state of one limit: the smallest thing that decides the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub enum Counter {
    /// GCRA for a rate window of `W` ms and limit `n`: `backlog` is the not-yet-replenished
    /// usage at instant `at`, in units of ms × n (one unit of usage is `W`). It drains by `n`
    /// per ms. A request of `q` fits when `backlog + q·W ≤ W·n`.
    Gcra { at: Timestamp, backlog: u64 },
    /// A fixed window starting at `start`: committed `used` and provisionally `reserved` units.
    /// For `max` and `latest` meters `used` is the peak or the last value.
    Window { start: Timestamp, used: u64, reserved: u64 },
}

pub(super) fn scaled(q: u64, w: u64) -> u128 {
    u128::from(q) * u128::from(w)
}

pub(super) fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// A limit's counter, brought up to `now`: a rolled window, a drained GCRA backlog.
pub(super) fn current(limit: &Limit, counter: Option<&Counter>, policy: &Policy, now: Timestamp) -> Counter {
    current_in(limit, counter, limit.period().window(now, policy.billing_anchor), now)
}

/// `current`, given the limit's window at `now` (a month's bounds are calendar arithmetic: a
/// decision works them out once per limit).
pub(super) fn current_in(limit: &Limit, counter: Option<&Counter>, window: Window, now: Timestamp) -> Counter {
    if limit.period().is_rate() {
        let n = limit.cap.limit().unwrap_or(0);
        return match counter {
            Some(&Counter::Gcra { at, backlog }) if at < now => {
                let drained = u128::from(now.since(at)) * u128::from(n);
                Counter::Gcra { at: now, backlog: sat(u128::from(backlog).saturating_sub(drained)) }
            }
            Some(&c @ Counter::Gcra { .. }) => c,
            _ => Counter::Gcra { at: now, backlog: 0 },
        };
    }
    let start = window.start;
    match counter {
        // A window never goes back: a clock that steps backwards keeps the later window.
        Some(&c @ Counter::Window { start: s, .. }) if s >= start => c,
        _ => Counter::Window { start, used: 0, reserved: 0 },
    }
}

/// Units a counter holds: committed plus reserved, or (GCRA) not yet replenished.
pub(super) fn in_use(limit: &Limit, c: Counter) -> u64 {
    match c {
        Counter::Gcra { backlog, .. } => {
            let w = limit.period().rate_millis().unwrap_or(1).max(1);
            backlog.div_ceil(w)
        }
        Counter::Window { used, reserved, .. } => used.saturating_add(reserved),
    }
}

/// What the counter would hold after admitting `q`.
pub(super) fn proposed(limit: &Limit, agg: Aggregation, c: Counter, q: u64) -> u128 {
    match (c, agg) {
        (Counter::Gcra { backlog, .. }, _) => {
            u128::from(backlog) + scaled(q, limit.period().rate_millis().unwrap_or(1))
        }
        (Counter::Window { used, reserved, .. }, Aggregation::Sum) => {
            u128::from(used) + u128::from(reserved) + u128::from(q)
        }
        (Counter::Window { used, .. }, Aggregation::Max) => u128::from(used.max(q)),
        (Counter::Window { .. }, Aggregation::Latest) => u128::from(q),
    }
}

/// The cap `proposed` is compared with: `limit`, or `W·n` for GCRA.
pub(super) fn capacity(limit: &Limit, n: u64) -> u128 {
    match limit.period().rate_millis() {
        Some(w) => scaled(n, w),
        None => u128::from(n),
    }
}

/// Seconds until a violated limit would admit `q`, or `None` if it never will without a change
/// of plan.
pub(super) fn wait_secs(limit: &Limit, c: Counter, q: u64, n: u64, policy: &Policy, now: Timestamp) -> Option<u64> {
    if q > n || limit.needs_upgrade() {
        return None;
    }
    match (c, limit.period().rate_millis()) {
        (Counter::Gcra { backlog, .. }, Some(w)) => {
            let excess = (u128::from(backlog) + scaled(q, w)).saturating_sub(scaled(n, w));
            let ms = excess.div_ceil(u128::from(n.max(1)));
            Some(sat(ms).div_ceil(1000).max(1))
        }
        _ => limit.period().window(now, policy.billing_anchor).seconds_until_reset(now).map(|s| s.max(1)),
    }
}

pub(super) fn status(limit: &Limit, c: Counter, window: Window, now: Timestamp) -> LimitStatus {
    let used = in_use(limit, c);
    let n = limit.cap.limit();
    let reset = match c {
        // A rate window's `reset` is when the next unit comes back (draft-ietf-httpapi-
        // ratelimit-headers-11: `t` is the effective window, within which no more than `r` can be
        // used, i.e. until more quota is available), which is also
        // what `Retry-After` says for one unit. An untouched window has nothing to wait for.
        Counter::Gcra { backlog, .. } => {
            let w = limit.period().rate_millis().unwrap_or(1).max(1);
            let per_ms = n.unwrap_or(1).max(1);
            // Overdrawn (usage recorded past the cap) counts from the cap: the wait is for
            // `remaining` to become one again.
            let keep = used.min(n.unwrap_or(0)).saturating_sub(1).saturating_mul(w);
            Some(now.saturating_add_ms(backlog.saturating_sub(keep).div_ceil(per_ms)))
        }
        Counter::Window { .. } => window.end,
    };
    let (overage, overage_cost_cents) = match limit.cap {
        Cap::Soft { limit: cap, price } => {
            let over = used.saturating_sub(cap);
            (over, price.map_or(0, |p| p.cost_cents(over)))
        }
        Cap::Hard { .. } | Cap::Unlimited => (0, 0),
    };
    LimitStatus {
        policy: limit.shared_name(),
        meter: limit.meter().clone(),
        period: limit.period(),
        mode: limit.cap.mode_name(),
        limit: n,
        used,
        remaining: n.map(|n| n.saturating_sub(used)),
        window_start: window.start,
        window_secs: limit.period().rate_millis().map_or_else(|| window.length_secs(), |w| Some(w / 1000)),
        reset,
        level: Level::of(used, n),
        overage,
        overage_cost_cents,
        needs_upgrade: limit.needs_upgrade(),
    }
}

/// How admitted usage lands in the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Apply {
    /// Counted as used: a record, or (`reservation`) an optimistic reservation, which also
    /// returns its holds so that a release can give the units back.
    Use { reservation: bool },
    /// Held apart as reserved (provisional reservation).
    Hold,
    /// Not applied (check only).
    Nothing,
}

/// The counter after admitting `q` units.
pub(super) fn admit(limit: &Limit, agg: Aggregation, c: Counter, q: u64, apply: Apply) -> Counter {
    match (c, apply) {
        (_, Apply::Nothing) => c,
        // An unlimited rate window never drains, so it must never fill either.
        (Counter::Gcra { .. }, _) if limit.cap.limit().is_none() => c,
        (Counter::Gcra { at, backlog }, _) => {
            let w = limit.period().rate_millis().unwrap_or(1);
            Counter::Gcra { at, backlog: sat(u128::from(backlog) + scaled(q, w)) }
        }
        (Counter::Window { start, used, reserved }, Apply::Hold) => {
            Counter::Window { start, used, reserved: reserved.saturating_add(q) }
        }
        (Counter::Window { start, used, reserved }, Apply::Use { .. }) => {
            let used = match agg {
                Aggregation::Sum => used.saturating_add(q),
                Aggregation::Max => used.max(q),
                Aggregation::Latest => q,
            };
            Counter::Window { start, used, reserved }
        }
    }
}
