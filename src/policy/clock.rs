//! Instants as the core sees them: whole milliseconds since the Unix epoch, UTC.
//!
//! The core never reads a clock; every function that needs the time takes a `Timestamp`. This
//! module owns the conversions to calendar dates and RFC 3339 text and must never call
//! `SystemTime::now` or any platform time source.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, Date, OffsetDateTime, PrimitiveDateTime, Time};

/// Milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

/// Upper bound on instants the core accepts: 9999-12-31T23:59:59.999Z. Keeps calendar math total.
pub const MAX_MS: u64 = 253_402_300_799_999;

impl Timestamp {
    pub const EPOCH: Self = Self(0);

    /// Clamps to `MAX_MS`, so every `Timestamp` maps to a calendar date.
    pub const fn from_millis(ms: u64) -> Self {
        if ms > MAX_MS {
            Self(MAX_MS)
        } else {
            Self(ms)
        }
    }

    pub const fn from_secs(s: u64) -> Self {
        Self::from_millis(s.saturating_mul(1000))
    }

    pub const fn millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch, rounded down.
    pub const fn secs(self) -> u64 {
        self.0 / 1000
    }

    #[must_use]
    pub const fn saturating_add_ms(self, ms: u64) -> Self {
        Self::from_millis(self.0.saturating_add(ms))
    }

    #[must_use]
    pub const fn saturating_sub_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn to_datetime(self) -> OffsetDateTime {
        let nanos = i128::from(self.0).saturating_mul(1_000_000);
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The instant of a UTC calendar date at midnight; dates before the epoch clamp to it.
    pub fn from_date(date: Date) -> Self {
        let odt = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc();
        Self::from_millis(u64::try_from(odt.unix_timestamp()).unwrap_or(0).saturating_mul(1000))
    }

    /// The UTC calendar date this instant falls on.
    pub fn date(self) -> Date {
        self.to_datetime().date()
    }

    /// RFC 3339 in UTC, e.g. `2026-11-23T00:00:00Z`.
    pub fn rfc3339(self) -> String {
        self.to_datetime().format(&Rfc3339).unwrap_or_default()
    }

    /// An RFC 3339 date-time, in ms (an instant before the epoch clamps to it); `None` if it
    /// does not parse.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        Some(Self(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// Parses a `YYYY-MM-DD` date strictly.
pub fn parse_date(s: &str) -> Result<Date, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if s.len() != 10 {
        return Err(format!("'{s}' is not a date in the form YYYY-MM-DD"));
    }
    Date::parse(s, &fmt).map_err(|_| format!("'{s}' is not a valid date in the form YYYY-MM-DD"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn rfc3339_is_utc_z() {
        assert_eq!(Timestamp::from_secs(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp::from_millis(1_500).rfc3339(), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn clamps_far_future() {
        assert_eq!(Timestamp::from_millis(u64::MAX).millis(), MAX_MS);
        assert_eq!(Timestamp::from_millis(u64::MAX).date(), date!(9999 - 12 - 31));
    }

    #[test]
    fn dates_round_trip() {
        let d = date!(2024 - 02 - 29);
        assert_eq!(Timestamp::from_date(d).date(), d);
        assert_eq!(Timestamp::from_date(d).secs(), 1_709_164_800);
    }

    #[test]
    fn parse_date_is_strict() {
        assert_eq!(parse_date("2026-01-31"), Ok(date!(2026 - 01 - 31)));
        for bad in ["2026-02-30", "2026-1-31", "26-01-31", "2026-01-31T00:00", "", "2026/01/31"] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }
}
