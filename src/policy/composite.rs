//! Composite meters (`"sum_of"`): parsing a composite's parts, and checking every composite
//! against the plan's whole set of meters (each part exists, is a sum, is not the composite
//! itself, and no chain of composites leads back). How a composite is enforced lives in
//! `Policy::enforced_for`; this module only validates, with the plan's one error type.

use std::collections::BTreeMap;

use serde_json::Value;

use super::json::{err, kind};
use super::plan::{Aggregation, MeterSpec, PlanError};
use super::MeterId;

/// The meters a composite sums: at least two distinct ids.
pub(super) fn parse_parts(at: &str, v: &Value) -> Result<Vec<MeterId>, PlanError> {
    let Value::Array(items) = v else {
        return err(at, format!("must be an array of meter ids, got {}", kind(v)));
    };
    if items.len() < 2 {
        return err(at, "must list at least two meters");
    }
    let mut out: Vec<MeterId> = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let here = format!("{at}[{j}]");
        let Value::String(raw) = item else {
            return err(here, format!("must be a meter id, got {}", kind(item)));
        };
        let id = MeterId::parse(raw).map_or_else(|e| err(&here, format!("'{raw}' {e}")), Ok)?;
        if out.contains(&id) {
            return err(here, format!("'{id}' is listed twice"));
        }
        out.push(id);
    }
    Ok(out)
}

/// Checks every composite against the plan's whole set of meters: each part exists, is a sum,
/// is not the composite itself, and no chain of composites leads back to where it started.
pub(super) fn check(meters: &BTreeMap<MeterId, MeterSpec>, raw: Option<&Value>) -> Result<(), PlanError> {
    // Where each meter was declared, to name the field as the client wrote it.
    let index = |id: &MeterId| {
        raw.and_then(Value::as_array)
            .and_then(|items| items.iter().position(|m| m.get("id").and_then(Value::as_str) == Some(id.as_str())))
    };
    for spec in meters.values().filter(|m| !m.parts.is_empty()) {
        let i = index(&spec.id).unwrap_or(0);
        let at = |j: usize| format!("meters[{i}].sum_of[{j}]");
        for (j, part) in spec.parts.iter().enumerate() {
            if part == &spec.id {
                return err(at(j), format!("'{part}': a composite meter cannot include itself"));
            }
            let Some(p) = meters.get(part) else {
                return err(at(j), format!("unknown meter '{part}' (declare it in meters, or give it a limit)"));
            };
            if p.aggregation != Aggregation::Sum {
                return err(at(j), format!("'{part}' aggregates by {}; a composite sums sum meters", p.aggregation));
            }
            // Depth-first through nested composites, looking for the way back.
            let mut path = vec![spec.id.clone(), part.clone()];
            if let Some(cycle) = cycle_from(meters, &spec.id, &mut path) {
                return err(
                    at(j),
                    format!("'{part}' leads back to '{}': composites cannot form a cycle ({cycle})", spec.id),
                );
            }
        }
    }
    Ok(())
}

fn cycle_from(meters: &BTreeMap<MeterId, MeterSpec>, start: &MeterId, path: &mut Vec<MeterId>) -> Option<String> {
    let last = path.last()?.clone();
    for next in meters.get(&last).map(|m| m.parts.clone()).unwrap_or_default() {
        if &next == start {
            path.push(next);
            return Some(path.iter().map(MeterId::as_str).collect::<Vec<_>>().join(" → "));
        }
        // Bounded: a plan has at most a few dozen meters, and a path never repeats a meter.
        if path.contains(&next) {
            continue;
        }
        path.push(next);
        if let Some(c) = cycle_from(meters, start, path) {
            return Some(c);
        }
        path.pop();
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use crate::policy::plan::{Cap, OrgTerms, Plan, Policy};
    use crate::policy::{Book, Counter, MeterId, Period, PlanId, Timestamp};

    fn m(s: &str) -> MeterId {
        MeterId::parse(s).unwrap_or_else(|e| unreachable!("{e}"))
    }

    /// 2026-11-23T10:00:00Z
    const T0: u64 = 1_795_428_000_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(T0 + ms)
    }

    fn composite_policy() -> Policy {
        let body = json!({
            "meters": [{"id": "tin"}, {"id": "tout"}, {"id": "tokens", "sum_of": ["tin", "tout"]},
                       {"id": "all", "sum_of": ["tokens", "extra"]}, {"id": "extra"}],
            "limits": [{"meter": "tokens", "limit": 100, "period": "month", "mode": "hard"},
                       {"meter": "all", "limit": 150, "period": "day", "mode": "hard"},
                       {"meter": "tout", "limit": 60, "period": "month", "mode": "soft"}]});
        let plan = Plan::parse(&PlanId::parse("c").unwrap_or_else(|e| unreachable!("{e}")), &body)
            .unwrap_or_else(|e| unreachable!("{e}"));
        Policy::new(&plan, &OrgTerms::default())
    }

    #[test]
    fn a_composite_limit_is_enforced_on_the_sum_of_its_parts_and_usage_is_recorded_on_the_parts() {
        let p = composite_policy();
        assert_eq!(p.composites_of(&m("tin")), [m("all"), m("tokens")], "nested composites included");
        assert_eq!(p.composites_of(&m("extra")), [m("all")]);
        // Parts get an unlimited limit of their composite's period, for the breakdown.
        assert!(p
            .limits
            .iter()
            .any(|l| *l.meter() == m("tin") && l.period() == Period::Month && l.cap == Cap::Unlimited));
        let mut b = Book::default();
        assert!(b.record(&p, &m("tin"), 70, true, at(0)).unwrap_or_else(|e| unreachable!("{e}")).allowed());
        let refused = b.record(&p, &m("tout"), 31, true, at(1)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(refused.violated_policies(), ["tokens-month"]);
        assert!(b.record(&p, &m("tout"), 30, true, at(2)).unwrap_or_else(|e| unreachable!("{e}")).allowed());
        // The nested composite: 100 tokens + 50 extra is its day's 150; one more is refused there.
        assert!(b.record(&p, &m("extra"), 50, true, at(3)).unwrap_or_else(|e| unreachable!("{e}")).allowed());
        let nested = b.record(&p, &m("extra"), 1, true, at(4)).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(nested.violated_policies(), ["all-day"]);
        assert_eq!(
            b.record(&p, &m("tokens"), 1, false, at(5)).err().map(|e| e.to_string()).as_deref(),
            Some("meter 'tokens' is the sum of tin, tout: record usage on those meters")
        );
        // A check on the composite sees the sum.
        assert!(!b.check(&p, &m("tokens"), 1, at(6)).unwrap_or_else(|e| unreachable!("{e}")).allowed());
        // Giving back a part's units gives them back to its composites too.
        b.release_admitted(&p, &m("tin"), 10, at(0), at(7));
        let used = |b: &Book, k: &str| match b.counters.get(k) {
            Some(Counter::Window { used, .. }) => *used,
            _ => 0,
        };
        assert_eq!((used(&b, "tin-month"), used(&b, "tokens-month"), used(&b, "all-day")), (60, 90, 140));
    }

    #[test]
    fn composites_that_name_an_unknown_meter_themselves_or_a_cycle_are_refused_with_the_field() {
        let parse = |meters: serde_json::Value| {
            let body = json!({"meters": meters, "limits": []});
            Plan::parse(&PlanId::parse("c").unwrap_or_else(|e| unreachable!("{e}")), &body).err().map(|e| e.to_string())
        };
        assert_eq!(
            parse(json!([{"id": "a"}, {"id": "s", "sum_of": ["a", "b"]}])).as_deref(),
            Some("meters[1].sum_of[1]: unknown meter 'b' (declare it in meters, or give it a limit)")
        );
        assert_eq!(
            parse(json!([{"id": "a"}, {"id": "s", "sum_of": ["s", "a"]}])).as_deref(),
            Some("meters[1].sum_of[0]: 's': a composite meter cannot include itself")
        );
        assert_eq!(
            parse(json!([{"id": "a"}, {"id": "x", "sum_of": ["a", "y"]}, {"id": "y", "sum_of": ["z", "a"]}, {"id": "z", "sum_of": ["a", "x"]}]))
                .as_deref(),
            Some("meters[1].sum_of[1]: 'y' leads back to 'x': composites cannot form a cycle (x → y → z → x)")
        );
        assert_eq!(
            parse(json!([{"id": "a"}, {"id": "s", "sum_of": ["a", "a"]}])).as_deref(),
            Some("meters[1].sum_of[1]: 'a' is listed twice")
        );
        assert_eq!(
            parse(json!([{"id": "a"}, {"id": "b"}, {"id": "s", "aggregation": "max", "sum_of": ["a", "b"]}]))
                .as_deref(),
            Some("meters[2].aggregation: a composite meter ('sum_of') is a sum: its aggregation must be sum")
        );
        assert_eq!(parse(json!([{"id": "a"}, {"id": "b"}, {"id": "s", "sum_of": ["a", "b"]}])), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any sequence of enforced usage on the parts keeps every composite at or under its hard
        /// limit, and each composite's counter equals the sum of its parts' counters.
        #[test]
        fn composites_hold_their_cap_and_equal_the_sum_of_their_parts(
            ops in prop::collection::vec((0usize..3, 1u64..40, any::<bool>()), 1..60)
        ) {
            let p = composite_policy();
            let parts = [m("tin"), m("tout"), m("extra")];
            let mut b = Book::default();
            let all_enforced = ops.iter().all(|(_, _, e)| *e);
            for (i, (part, q, enforce)) in ops.into_iter().enumerate() {
                let _ = b.record(&p, &parts[part], q, enforce, at(u64::try_from(i).unwrap_or(0)));
            }
            let used = |k: &str| match b.counters.get(k) {
                Some(Counter::Window { used, .. }) => *used,
                _ => 0,
            };
            prop_assert_eq!(used("tokens-month"), used("tin-month") + used("tout-month"));
            // `all` sums `tokens` (itself a composite) and `extra`.
            prop_assert_eq!(used("all-day"), used("tokens-day") + used("extra-day"));
            // Enforced usage never passes a cap (usage recorded without enforcement may: it happened).
            if all_enforced {
                prop_assert!(used("tokens-month") <= 100 && used("all-day") <= 150);
            }
        }
    }
}
