//! Billing arithmetic over the ledger's daily rollups: totals and overage per (org, meter) for a
//! date range, as the export reports them.
//!
//! Owns how overage is attributed to period windows: daily usage is grouped into each soft
//! limit's windows (UTC day, calendar or anniversary month, lifetime), and every window's usage
//! over the limit is priced. Only the days inside the requested range count, so export whole
//! billing periods for invoicing. Must never do I/O.

use std::collections::BTreeMap;

use time::Date;

use super::clock::Timestamp;
use super::ids::MeterId;
use super::plan::{Aggregation, Cap, Policy};

/// One UTC day of one meter, as the ledger's rollup holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyUsage {
    pub day: Date,
    pub quantity: u64,
    pub events: u64,
    pub max_value: u64,
    pub last_value: u64,
}

/// What an (org, meter) used over a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeTotals {
    pub quantity: u64,
    pub events: u64,
    pub overage: u64,
    pub overage_cost_cents: u64,
}

/// Totals and priced overage of `meter` over `days` (any order) under `policy`.
pub fn range_totals(policy: &Policy, meter: &MeterId, days: &[DailyUsage]) -> RangeTotals {
    let agg = policy.meter(meter).map_or(Aggregation::Sum, |m| m.aggregation);
    let mut sorted = days.to_vec();
    sorted.sort_by_key(|d| d.day);
    let mut totals = RangeTotals {
        quantity: sorted.iter().fold(0u64, |a, d| a.saturating_add(d.quantity)),
        events: sorted.iter().fold(0u64, |a, d| a.saturating_add(d.events)),
        ..RangeTotals::default()
    };
    for limit in policy.limits_for(meter) {
        let Cap::Soft { limit: cap, price } = limit.cap else { continue };
        // Usage per window of this limit's period, aggregated as the meter aggregates.
        let mut windows: BTreeMap<Timestamp, u64> = BTreeMap::new();
        for d in &sorted {
            let start = limit.period().window(Timestamp::from_date(d.day), policy.billing_anchor).start;
            let w = windows.entry(start).or_insert(0);
            *w = match agg {
                Aggregation::Sum => w.saturating_add(d.quantity),
                Aggregation::Max => (*w).max(d.max_value),
                Aggregation::Latest => d.last_value,
            };
        }
        for used in windows.values() {
            let over = used.saturating_sub(cap);
            totals.overage = totals.overage.saturating_add(over);
            totals.overage_cost_cents =
                totals.overage_cost_cents.saturating_add(price.map_or(0, |p| p.cost_cents(over)));
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::plan::{OrgTerms, Plan};
    use crate::policy::PlanId;
    use serde_json::json;
    use time::macros::date;

    fn policy(anchor: Option<&str>) -> Policy {
        let plan = Plan::parse(
            &PlanId::parse("p").unwrap(),
            &json!({"meters": [{"id": "disk", "aggregation": "latest"}], "limits": [
                {"meter": "tokens", "limit": 100, "period": "month", "mode": "soft", "overage_price": {"per_units": 10, "cents": 1}},
                {"meter": "tokens", "limit": 1000, "period": "day", "mode": "hard"},
                {"meter": "disk", "limit": 50, "period": "month", "mode": "soft", "overage_price": {"per_units": 1, "cents": 2}}]}),
        )
        .unwrap();
        let terms = OrgTerms::parse(anchor.map(|a| json!(a)).as_ref(), None, &plan).unwrap();
        Policy::new(&plan, &terms)
    }

    fn day(day: Date, quantity: u64) -> DailyUsage {
        DailyUsage { day, quantity, events: 1, max_value: quantity, last_value: quantity }
    }

    #[test]
    fn overage_is_per_window() {
        let p = policy(None);
        let tokens = MeterId::parse("tokens").unwrap();
        // 80 in January (under), 150 in February (50 over → 5 cents).
        let days = [day(date!(2026 - 01 - 31), 80), day(date!(2026 - 02 - 01), 100), day(date!(2026 - 02 - 28), 50)];
        let t = range_totals(&p, &tokens, &days);
        assert_eq!(t, RangeTotals { quantity: 230, events: 3, overage: 50, overage_cost_cents: 5 });
    }

    #[test]
    fn anniversary_windows_group_differently() {
        // Anchored on the 15th: Jan 31 and Feb 1 fall in the same window (Jan 15 – Feb 15).
        let p = policy(Some("2025-03-15"));
        let tokens = MeterId::parse("tokens").unwrap();
        let days = [day(date!(2026 - 01 - 31), 80), day(date!(2026 - 02 - 01), 100), day(date!(2026 - 02 - 28), 50)];
        let t = range_totals(&p, &tokens, &days);
        assert_eq!((t.overage, t.overage_cost_cents), (80, 8));
    }

    #[test]
    fn gauges_price_their_last_value() {
        let p = policy(None);
        let disk = MeterId::parse("disk").unwrap();
        let days = [day(date!(2026 - 03 - 02), 70), day(date!(2026 - 03 - 01), 90), day(date!(2026 - 03 - 03), 60)];
        // Sorted by day, the month's last value is 60: 10 over at 2 cents.
        assert_eq!(range_totals(&p, &disk, &days).overage_cost_cents, 20);
        let none = MeterId::parse("other").unwrap();
        assert_eq!(range_totals(&p, &none, &days).overage, 0);
    }
}
