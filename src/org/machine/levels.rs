//! How near each of its quotas an org stands, for the operator's org list: one level per limit
//! of a day, month, billing or lifetime period with a limit (unlimited ones have no level; rate
//! windows refill within the hour, faster than a report could follow), and until when it holds
//! (the window's reset).
//!
//! The org's report publishes these to D1 when they say something new (a whole percentage moved,
//! a window rolled over), so the catalogue sees at most about a hundred writes per limit and
//! window, however busy the org. A level whose window has reset reads as 0 there, so a quiet org
//! never stays listed at yesterday's level. Pure: it reads counters and never writes them.

use super::{book_of, OrgError, OrgMachine};
use crate::org::io::Snapshot;
use crate::policy::{MeterId, Timestamp};

/// One limit's level as of its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitLevel {
    /// The limit's policy name, e.g. `requests-month`.
    pub policy: String,
    pub meter: MeterId,
    /// `used / limit` as a whole percentage, rounded down.
    pub percentage: u64,
    /// When the window resets, and the level with it (`None` for lifetime).
    pub until: Option<Timestamp>,
}

impl OrgMachine {
    /// Every limited limit's level at `now`, from the counters in `snap` (load every counter).
    pub fn levels(&self, snap: &Snapshot, now: Timestamp) -> Result<Vec<LimitLevel>, OrgError> {
        let loaded = self.loaded()?;
        let book = book_of(&snap.rows)?;
        Ok(book
            .overview(&loaded.policy, now)
            .iter()
            .filter(|s| !s.period.is_rate())
            .filter_map(|s| {
                Some(LimitLevel {
                    policy: s.policy.to_string(),
                    meter: s.meter.clone(),
                    percentage: s.percentage()?,
                    until: s.reset,
                })
            })
            .collect())
    }

    /// `levels` if they differ from what the last report published, else `None`.
    pub fn levels_to_publish(&self, levels: Vec<LimitLevel>) -> Option<Vec<LimitLevel>> {
        (self.published_levels.as_ref() != Some(&levels)).then_some(levels)
    }

    /// The report wrote `levels` to D1.
    pub fn levels_published(&mut self, levels: Vec<LimitLevel>) {
        self.published_levels = Some(levels);
    }
}
