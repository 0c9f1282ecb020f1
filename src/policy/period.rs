//! Periods: which window of time a limit counts in, and when it resets.
//!
//! Owns the calendar: UTC days, calendar months, billing-anniversary months (the anchor day is
//! clamped to the month's end, so Jan 31 → Feb 28/29 → Mar 31) and rate windows. It only maps an
//! instant to its window and must never hold counts or decide anything.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};
use time::{Date, Month};

use super::clock::Timestamp;

/// The unit of a rate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    const fn millis(self) -> u64 {
        match self {
            Self::Second => 1_000,
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }
}

/// How a limit's usage is windowed.
///
/// Rate windows are enforced by GCRA (a smooth limiter, no fixed boundaries); the calendar periods
/// are fixed windows that reset at an exact instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// `count` × `unit`, e.g. 10 per minute, or 100 per 5 minutes.
    Rate { unit: RateUnit, count: NonZeroU32 },
    /// The UTC calendar day.
    Day,
    /// The calendar month in UTC, or the billing-anniversary month when the org has an anchor.
    Month,
    /// Never resets.
    Lifetime,
}

/// A fixed window `[start, end)`; `end` is `None` for lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

impl Window {
    /// Whole seconds until the reset, rounded up so a client that waits this long is past it.
    pub fn seconds_until_reset(&self, now: Timestamp) -> Option<u64> {
        self.end.map(|end| end.since(now).div_ceil(1000))
    }

    /// The window's length in whole seconds (`None` for lifetime).
    pub fn length_secs(&self) -> Option<u64> {
        self.end.map(|end| end.since(self.start) / 1000)
    }
}

impl Period {
    pub const fn rate(unit: RateUnit) -> Self {
        Self::Rate { unit, count: NonZeroU32::MIN }
    }

    /// The window length of a rate period in milliseconds; `None` for calendar periods.
    pub fn rate_millis(self) -> Option<u64> {
        match self {
            Self::Rate { unit, count } => Some(unit.millis().saturating_mul(u64::from(count.get()))),
            Self::Day | Self::Month | Self::Lifetime => None,
        }
    }

    pub const fn is_rate(self) -> bool {
        matches!(self, Self::Rate { .. })
    }

    /// The unit name as plans spell it: `second`, `minute`, `hour`, `day`, `month`, `lifetime`.
    pub const fn unit_name(self) -> &'static str {
        match self {
            Self::Rate { unit, .. } => unit.as_str(),
            Self::Day => "day",
            Self::Month => "month",
            Self::Lifetime => "lifetime",
        }
    }

    /// The multiplier of a rate window (1 for every other period).
    pub const fn count(self) -> u32 {
        match self {
            Self::Rate { count, .. } => count.get(),
            Self::Day | Self::Month | Self::Lifetime => 1,
        }
    }

    /// The fixed window containing `now`. A rate period has no fixed window (GCRA is continuous),
    /// so it gets the aligned window of its length, which is what reports use.
    pub fn window(self, now: Timestamp, anchor: Option<Date>) -> Window {
        match self {
            Self::Rate { .. } => {
                let len = self.rate_millis().unwrap_or(1000).max(1);
                let start = Timestamp::from_millis(now.millis() - now.millis() % len);
                Window { start, end: Some(start.saturating_add_ms(len)) }
            }
            Self::Day => {
                let d = now.date();
                Window {
                    start: Timestamp::from_date(d),
                    end: Some(d.next_day().map_or(Timestamp::from_millis(u64::MAX), Timestamp::from_date)),
                }
            }
            Self::Month => month_window(now.date(), anchor),
            Self::Lifetime => Window { start: Timestamp::EPOCH, end: None },
        }
    }
}

impl fmt::Display for Period {
    /// `minute`, or `5minute` for a multi-unit rate window: also the policy-name suffix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count() {
            1 => f.write_str(self.unit_name()),
            n => write!(f, "{n}{}", self.unit_name()),
        }
    }
}

/// The day of month `anchor_day` falls on in (`year`, `month`), clamped to the month's end.
/// Past the calendar's last year (the month after December 9999) it is the last date, which
/// `Timestamp` clamps to its own end: the window never ends before it starts.
fn boundary(year: i32, month: Month, anchor_day: u8) -> Date {
    let day = anchor_day.min(month.length(year));
    Date::from_calendar_date(year, month, day).unwrap_or(Date::MAX)
}

fn next_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::December => (year.saturating_add(1), Month::January),
        m => (year, m.next()),
    }
}

fn prev_month(year: i32, month: Month) -> (i32, Month) {
    match month {
        Month::January => (year.saturating_sub(1), Month::December),
        m => (year, m.previous()),
    }
}

/// The month window containing `today`. `Timestamp` starts at the Unix epoch, so a window that
/// would start before it (January 1970 before an anniversary day) starts at the epoch: it is
/// clipped to the representable range, and its end is unchanged.
fn month_window(today: Date, anchor: Option<Date>) -> Window {
    let anchor_day = anchor.map_or(1, Date::day);
    let (y, m) = (today.year(), today.month());
    let this = boundary(y, m, anchor_day);
    let (start, end) = if today >= this {
        let (ny, nm) = next_month(y, m);
        (this, boundary(ny, nm, anchor_day))
    } else {
        let (py, pm) = prev_month(y, m);
        (boundary(py, pm, anchor_day), this)
    };
    Window { start: Timestamp::from_date(start), end: Some(Timestamp::from_date(end)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::macros::{date, datetime};

    fn ts(dt: time::OffsetDateTime) -> Timestamp {
        Timestamp::from_millis(u64::try_from(dt.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    }

    fn d(ts: Timestamp) -> Date {
        ts.date()
    }

    #[test]
    fn calendar_month_and_day() {
        let now = ts(datetime!(2024-02-29 23:59:59.999 UTC));
        let m = Period::Month.window(now, None);
        assert_eq!((d(m.start), m.end.map(d)), (date!(2024 - 02 - 01), Some(date!(2024 - 03 - 01))));
        let day = Period::Day.window(now, None);
        assert_eq!(day.start, ts(datetime!(2024-02-29 0:00 UTC)));
        assert_eq!(day.end, Some(ts(datetime!(2024-03-01 0:00 UTC))));
        assert_eq!(day.seconds_until_reset(now), Some(1));
        let dec = Period::Month.window(ts(datetime!(2025-12-31 12:00 UTC)), None);
        assert_eq!(dec.end.map(d), Some(date!(2026 - 01 - 01)));
    }

    #[test]
    fn anniversary_clamps_to_month_end() {
        let anchor = Some(date!(2025 - 01 - 31));
        let w = |dt| {
            let w = Period::Month.window(ts(dt), anchor);
            (d(w.start), w.end.map(d))
        };
        // Jan 31 → Feb 28 (2025) → Mar 31.
        assert_eq!(w(datetime!(2025-02-10 0:00 UTC)), (date!(2025 - 01 - 31), Some(date!(2025 - 02 - 28))));
        assert_eq!(w(datetime!(2025-02-28 0:00 UTC)), (date!(2025 - 02 - 28), Some(date!(2025 - 03 - 31))));
        assert_eq!(w(datetime!(2025-03-30 23:00 UTC)), (date!(2025 - 02 - 28), Some(date!(2025 - 03 - 31))));
        assert_eq!(w(datetime!(2025-04-30 0:00 UTC)), (date!(2025 - 04 - 30), Some(date!(2025 - 05 - 31))));
        // Leap year: Feb 29.
        assert_eq!(w(datetime!(2024-03-01 0:00 UTC)), (date!(2024 - 02 - 29), Some(date!(2024 - 03 - 31))));
        // Year wrap.
        assert_eq!(w(datetime!(2026-01-05 0:00 UTC)), (date!(2025 - 12 - 31), Some(date!(2026 - 01 - 31))));
    }

    #[test]
    fn rate_windows_and_lifetime() {
        let now = Timestamp::from_millis(125_500);
        let w = Period::rate(RateUnit::Minute).window(now, None);
        assert_eq!((w.start.millis(), w.end.map(Timestamp::millis)), (120_000, Some(180_000)));
        assert_eq!(w.seconds_until_reset(now), Some(55));
        assert_eq!(w.length_secs(), Some(60));
        let five = Period::Rate { unit: RateUnit::Minute, count: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN) };
        assert_eq!(five.rate_millis(), Some(300_000));
        assert_eq!(five.to_string(), "5minute");
        let life = Period::Lifetime.window(now, None);
        assert_eq!((life.start, life.end, life.seconds_until_reset(now)), (Timestamp::EPOCH, None, None));
    }

    // Any instant from 1970 to 2200.
    fn any_now() -> impl Strategy<Value = Timestamp> {
        (0u64..7_258_118_400_000).prop_map(Timestamp::from_millis)
    }

    /// Regression: `now = 0, anchor_day = 2` (found by re-running the suite; 5 failures in 200
    /// runs). The window starts at the epoch, not in 1969, and ends on the anchor day.
    #[test]
    fn an_anniversary_month_before_the_epoch_is_clipped_to_it() {
        let anchor = Date::from_calendar_date(2020, Month::January, 2).ok();
        let w = Period::Month.window(Timestamp::EPOCH, anchor);
        assert_eq!(w.start, Timestamp::EPOCH);
        assert_eq!(w.end.map(d), Some(date!(1970 - 01 - 02)));
    }

    /// The far end of the domain: December 9999 ends at the last instant, never at the epoch.
    #[test]
    fn the_last_month_ends_at_the_end_of_time() {
        let w = Period::Month.window(Timestamp::from_millis(crate::policy::clock::MAX_MS), None);
        assert_eq!(d(w.start), date!(9999 - 12 - 01));
        assert!(w.end.is_some_and(|e| e > w.start));
    }

    proptest! {
        #[test]
        fn windows_contain_now_and_tile(now in any_now(), anchor_day in 1u8..=31, anchored in any::<bool>()) {
            let anchor = anchored.then(|| Date::from_calendar_date(2020, Month::January, anchor_day).ok()).flatten();
            for p in [Period::Day, Period::Month, Period::rate(RateUnit::Second), Period::rate(RateUnit::Hour)] {
                let w = p.window(now, anchor);
                let end = w.end.unwrap_or(Timestamp::EPOCH);
                prop_assert!(w.start <= now && now < end, "{p}: {w:?} vs {now}");
                // Windows tile: the next window starts exactly at this one's end.
                prop_assert_eq!(p.window(end, anchor).start, end);
                // The last instant of the window is still in it.
                prop_assert_eq!(p.window(end.saturating_sub_ms(1), anchor).start, w.start);
            }
        }

        #[test]
        fn day_starts_at_utc_midnight(now in any_now()) {
            let w = Period::Day.window(now, None);
            prop_assert_eq!(w.start.millis() % 86_400_000, 0);
            prop_assert_eq!(w.end.map(|e| e.since(w.start)), Some(86_400_000));
        }

        #[test]
        fn month_starts_on_clamped_anchor_day(now in any_now(), anchor_day in 1u8..=31) {
            let anchor = Date::from_calendar_date(2020, Month::January, anchor_day).ok();
            let w = Period::Month.window(now, anchor);
            let start = w.start.date();
            prop_assert_eq!(w.start.millis() % 86_400_000, 0);
            if w.start == Timestamp::EPOCH && now.date().day() < anchor_day && now.date().month() == Month::January && now.date().year() == 1970 {
                // The anniversary month would start in December 1969: clipped to the epoch.
                prop_assert!(w.end.is_some_and(|e| e.date().day() == anchor_day.min(31)));
            } else {
                prop_assert_eq!(start.day(), anchor_day.min(start.month().length(start.year())));
            }
            let calendar = Period::Month.window(now, None);
            prop_assert_eq!(calendar.start.date().day(), 1);
            let days = calendar.end.map_or(0, |e| e.since(calendar.start) / 86_400_000);
            prop_assert!((28..=31).contains(&days));
        }
    }
}
