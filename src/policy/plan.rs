//! The plan catalogue: raw plan JSON in, validated `Plan` out, and the effective `Policy` of an org.
//!
//! Owns every rule about what a plan may say and the exact message for each refusal, naming the
//! field (`limits[2].period: …`). Validation walks a `serde_json::Value` by hand rather than
//! deriving, because serde's messages cannot name the path. Must never decide on usage.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde_json::Value;
use time::Date;

use super::clock::parse_date;
use super::ids::{MeterId, PlanId};
use super::json::{err, kind, Obj};
pub use super::json::{whole_number, FieldError, MAX_SAFE_INTEGER};
use super::period::{Period, RateUnit};

/// How a meter's reports combine within a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Usage adds up (requests, tokens, rows).
    Sum,
    /// The peak within the period (entity instances); never goes down within a period.
    Max,
    /// The last reported value (a gauge such as storage bytes).
    Latest,
}

impl Aggregation {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Max => "max",
            Self::Latest => "latest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterSpec {
    pub id: MeterId,
    pub unit: String,
    pub aggregation: Aggregation,
    /// Stripe Billing Meter `event_name`; the meter id unless the config names another.
    pub event_name: String,
    /// Also keep one ledger row per usage event (with its metadata), for an audit trail. Off by
    /// default: the ledger aggregates usage into hourly and daily buckets.
    pub audit: bool,
    /// A composite meter is the sum of these (`sum_of`): usage is recorded on the parts, and a
    /// limit on the composite is enforced on their sum in the same step. Empty for a plain meter.
    pub parts: Vec<MeterId>,
}

impl MeterSpec {
    /// A meter that a limit names without declaring it: a `sum` counted in "units"
    /// (`requests` is counted in requests).
    pub fn implicit(id: MeterId) -> Self {
        let unit = if id.as_str() == "requests" { "requests" } else { "units" };
        Self {
            unit: unit.to_owned(),
            aggregation: Aggregation::Sum,
            event_name: id.to_string(),
            audit: false,
            parts: Vec::new(),
            id,
        }
    }
}

/// Integer overage price: `cents` for every `per_units` units over the limit, prorated and
/// rounded up to a whole cent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OveragePrice {
    pub per_units: NonZeroU64,
    pub cents: u64,
}

impl OveragePrice {
    /// `ceil(units × cents / per_units)`, exact in u128 and saturating at `u64::MAX`.
    pub fn cost_cents(self, units: u64) -> u64 {
        let num = u128::from(units) * u128::from(self.cents);
        let cents = num.div_ceil(u128::from(self.per_units.get()));
        u64::try_from(cents).unwrap_or(u64::MAX)
    }
}

/// What a limit does when usage would pass it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `"limit": null`: never refuses, only reports.
    Unlimited,
    /// Refuses what would pass the limit.
    Hard { limit: u64 },
    /// Allows, and marks and prices the overage.
    Soft { limit: u64, price: Option<OveragePrice> },
}

impl Cap {
    pub const fn limit(self) -> Option<u64> {
        match self {
            Self::Unlimited => None,
            Self::Hard { limit } | Self::Soft { limit, .. } => Some(limit),
        }
    }

    pub const fn mode_name(self) -> &'static str {
        match self {
            Self::Unlimited => "unlimited",
            Self::Hard { .. } => "hard",
            Self::Soft { .. } => "soft",
        }
    }
}

/// Whether a refusal is temporary (429, wait for the reset) or needs a plan change (402).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExceed {
    Retry,
    Upgrade,
}

/// One limit of a plan. The (meter, period) pair is unique within a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub meter: MeterId,
    pub period: Period,
    pub cap: Cap,
    pub on_exceed: OnExceed,
}

impl Limit {
    /// The policy name used in `RateLimit` headers and problem bodies, e.g. `requests-minute`.
    pub fn policy_name(&self) -> String {
        format!("{}-{}", self.meter, self.period)
    }

    /// A refusal by this limit needs an upgrade: lifetime limits never reset.
    pub fn needs_upgrade(&self) -> bool {
        self.on_exceed == OnExceed::Upgrade || self.period == Period::Lifetime
    }
}

/// What the gateway does when the org's Durable Object cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// 503 with Retry-After.
    #[default]
    Closed,
    /// Forward, flagged in a header and a log line.
    Open,
}

impl FailMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
        }
    }
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    pub on_failure: FailMode,
    pub upgrade_url: Option<String>,
    pub meters: BTreeMap<MeterId, MeterSpec>,
    pub limits: Vec<Limit>,
}

/// A refusal of a plan or override document: the field path and the reason (the one
/// validator's error, `json::FieldError`).
pub type PlanError = FieldError;

const PERIODS: &[(&str, Period)] = &[
    ("second", Period::rate(RateUnit::Second)),
    ("minute", Period::rate(RateUnit::Minute)),
    ("hour", Period::rate(RateUnit::Hour)),
    ("day", Period::Day),
    ("month", Period::Month),
    ("lifetime", Period::Lifetime),
];

#[derive(Clone, Copy)]
enum ModeName {
    Hard,
    Soft,
}

const LIMIT_KEYS: &[&str] = &["meter", "limit", "period", "mode", "window", "overage_price", "on_exceed"];

fn parse_price(path: &str, v: &Value) -> Result<OveragePrice, PlanError> {
    let po = Obj::new(path, v, &["per_units", "cents"])?;
    let per = po.uint_opt("per_units")?.map_or_else(|| err(po.at("per_units"), "is required"), Ok)?;
    let Some(per_units) = NonZeroU64::new(per) else {
        return err(po.at("per_units"), "must be at least 1");
    };
    let cents = po.uint_opt("cents")?.map_or_else(|| err(po.at("cents"), "is required"), Ok)?;
    Ok(OveragePrice { per_units, cents })
}

fn parse_limit(path: &str, v: &Value, meters: &BTreeMap<MeterId, MeterSpec>) -> Result<Limit, PlanError> {
    let o = Obj::new(path, v, LIMIT_KEYS)?;
    let meter_text = o.str_req("meter")?;
    let meter = MeterId::parse(meter_text).map_or_else(|e| err(o.at("meter"), format!("'{meter_text}' {e}")), Ok)?;
    let mut period = o.choice("period", PERIODS)?.map_or_else(|| err(o.at("period"), "is required"), Ok)?;
    if let Some(window) = o.uint_opt("window")? {
        let Period::Rate { unit, .. } = period else {
            return err(o.at("window"), "only rate periods (second, minute, hour) take a window multiplier");
        };
        let count = u32::try_from(window).ok().and_then(NonZeroU32::new);
        let Some(count) = count else {
            return err(o.at("window"), format!("must be from 1 to {} (got {window})", u32::MAX));
        };
        period = Period::Rate { unit, count };
    }
    let mode = o.choice("mode", &[("hard", ModeName::Hard), ("soft", ModeName::Soft)])?.unwrap_or(ModeName::Hard);
    let limit = match o.raw("limit") {
        None => return err(o.at("limit"), "is required (use null for unlimited)"),
        Some(Value::Null) => None,
        Some(v) => Some(
            whole_number(v)
                .map_err(|r| FieldError { field: o.at("limit"), reason: format!("{r}; use null for unlimited") })?,
        ),
    };
    let price = o.get("overage_price").map(|pv| parse_price(&o.at("overage_price"), pv)).transpose()?;
    let cap = match (limit, mode) {
        (None, _) => Cap::Unlimited,
        (Some(limit), ModeName::Hard) => Cap::Hard { limit },
        (Some(limit), ModeName::Soft) => Cap::Soft { limit, price },
    };
    if price.is_some() && !matches!(cap, Cap::Soft { .. }) {
        return err(o.at("overage_price"), "only a soft limit with a number as its limit has an overage price");
    }
    if period.is_rate() {
        if matches!(cap, Cap::Soft { .. }) {
            return err(
                o.at("mode"),
                "a rate window (second, minute, hour) can only be hard; use a day or month period for a soft limit",
            );
        }
        let tolerance = period.rate_millis().map(|w| u128::from(w) * u128::from(cap.limit().unwrap_or(0)));
        if tolerance.is_some_and(|t| t > u128::from(u64::MAX)) {
            return err(
                o.at("limit"),
                "is too large for a rate window of this length (limit × window in ms must stay below 2^64)",
            );
        }
        if cap.limit() == Some(0) {
            return err(o.at("limit"), "a rate window needs a limit of at least 1 (a zero rate is a zero window); use a month or lifetime limit of 0 to withhold a meter");
        }
    }
    let aggregation = meters.get(&meter).map_or(Aggregation::Sum, |m| m.aggregation);
    if period.is_rate() && aggregation != Aggregation::Sum {
        return err(
            o.at("period"),
            format!(
                "meter '{meter}' aggregates by {}, which needs a day, month or lifetime period",
                aggregation.as_str()
            ),
        );
    }
    let on_exceed = o.choice("on_exceed", &[("retry", OnExceed::Retry), ("upgrade", OnExceed::Upgrade)])?;
    let on_exceed = match (on_exceed, period) {
        (_, Period::Lifetime) | (Some(OnExceed::Upgrade), _) => OnExceed::Upgrade,
        (Some(OnExceed::Retry) | None, _) => OnExceed::Retry,
    };
    Ok(Limit { meter, period, cap, on_exceed })
}

fn parse_limits(
    path: &str,
    v: &Value,
    meters: &BTreeMap<MeterId, MeterSpec>,
    max: usize,
) -> Result<Vec<Limit>, PlanError> {
    let Value::Array(items) = v else {
        return err(path, format!("must be an array, got {}", kind(v)));
    };
    if items.len() > max {
        return err(path, format!("has {} limits; at most {max} are allowed", items.len()));
    }
    let mut out: Vec<Limit> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let limit = parse_limit(&at, item, meters)?;
        if let Some(j) = out.iter().position(|l| l.meter == limit.meter && l.period == limit.period) {
            return err(
                at,
                format!(
                    "duplicate limit for meter '{}' and period '{}' (first at {path}[{j}])",
                    limit.meter, limit.period
                ),
            );
        }
        out.push(limit);
    }
    Ok(out)
}

/// How many limits a plan or an override list may hold: keeps one decision's work bounded.
pub const MAX_LIMITS: usize = 64;

impl Plan {
    /// Parses and validates a plan document. `path_id` is the id from the URL; the body's `id`,
    /// when present, must match it.
    pub fn parse(path_id: &PlanId, body: &Value) -> Result<Self, PlanError> {
        let o = Obj::new("", body, &["id", "name", "on_failure", "upgrade_url", "meters", "limits"])?;
        if let Some(id) = o.str_opt("id")? {
            if id != path_id.as_str() {
                return err("id", format!("'{id}' does not match the plan id in the path ('{path_id}')"));
            }
        }
        let name = o.str_opt("name")?.unwrap_or(path_id.as_str()).to_owned();
        if name.len() > 200 {
            return err("name", "must be at most 200 characters");
        }
        let on_failure =
            o.choice("on_failure", &[("closed", FailMode::Closed), ("open", FailMode::Open)])?.unwrap_or_default();
        let upgrade_url = o.str_opt("upgrade_url")?.map(str::to_owned);
        if let Some(u) = &upgrade_url {
            if !(u.starts_with("https://") || u.starts_with("http://")) {
                return err("upgrade_url", "must be an http(s) URL");
            }
        }
        let meters = match o.get("meters") {
            None => BTreeMap::new(),
            Some(v) => parse_meters(v)?,
        };
        let mut limits = parse_limits("limits", o.required("limits")?, &meters, MAX_LIMITS)?;
        limits.sort_by(|a, b| (&a.meter, a.period).cmp(&(&b.meter, b.period)));
        let mut meters = meters;
        for l in &limits {
            meters.entry(l.meter.clone()).or_insert_with(|| MeterSpec::implicit(l.meter.clone()));
        }
        check_composites(&meters, o.get("meters"))?;
        Ok(Self { id: path_id.clone(), name, on_failure, upgrade_url, meters, limits })
    }
}

fn parse_meters(v: &Value) -> Result<BTreeMap<MeterId, MeterSpec>, PlanError> {
    let Value::Array(items) = v else {
        return err("meters", format!("must be an array, got {}", kind(v)));
    };
    let mut out = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let o =
            Obj::new(&format!("meters[{i}]"), item, &["id", "unit", "aggregation", "event_name", "audit", "sum_of"])?;
        let id_s = o.str_req("id")?;
        let id = MeterId::parse(id_s).map_or_else(|e| err(o.at("id"), format!("'{id_s}' {e}")), Ok)?;
        let aggregation = o
            .choice(
                "aggregation",
                &[("sum", Aggregation::Sum), ("max", Aggregation::Max), ("latest", Aggregation::Latest)],
            )?
            .unwrap_or(Aggregation::Sum);
        let unit = o.str_opt("unit")?.unwrap_or("units").to_owned();
        let event_name = o.str_opt("event_name")?.unwrap_or(id_s).to_owned();
        if event_name.is_empty() || event_name.len() > 100 {
            return err(o.at("event_name"), "must be 1 to 100 characters");
        }
        let audit = o.flag("audit")?;
        let parts = match o.get("sum_of") {
            None => Vec::new(),
            Some(v) => parse_parts(&o.at("sum_of"), v)?,
        };
        if !parts.is_empty() && aggregation != Aggregation::Sum {
            return err(o.at("aggregation"), "a composite meter ('sum_of') is a sum: its aggregation must be sum");
        }
        if out.contains_key(&id) {
            return err(o.at("id"), format!("duplicate meter '{id}'"));
        }
        out.insert(id.clone(), MeterSpec { id, unit, aggregation, event_name, audit, parts });
    }
    Ok(out)
}

/// The meters a composite sums: at least two distinct ids.
fn parse_parts(at: &str, v: &Value) -> Result<Vec<MeterId>, PlanError> {
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
fn check_composites(meters: &BTreeMap<MeterId, MeterSpec>, raw: Option<&Value>) -> Result<(), PlanError> {
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

/// An org's own settings that shape its policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrgTerms {
    /// The billing anniversary; monthly limits reset on its day of month.
    pub billing_anchor: Option<Date>,
    /// Limits that replace the plan's limit of the same (meter, period), or add to them.
    pub overrides: Vec<Limit>,
}

impl OrgTerms {
    /// Parses `billing_anchor` and `overrides` as the org admin API takes them.
    pub fn parse(anchor: Option<&Value>, overrides: Option<&Value>, plan: &Plan) -> Result<Self, PlanError> {
        let billing_anchor = match anchor.filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(s)) => {
                Some(parse_date(s).map_err(|r| FieldError { field: "billing_anchor".into(), reason: r })?)
            }
            Some(v) => return err("billing_anchor", format!("must be a date string YYYY-MM-DD, got {}", kind(v))),
        };
        let overrides = match overrides.filter(|v| !v.is_null()) {
            None => Vec::new(),
            Some(v) => parse_limits("overrides", v, &plan.meters, MAX_LIMITS)?,
        };
        Ok(Self { billing_anchor, overrides })
    }
}

/// The effective policy of one org: its plan with overrides applied, and its anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub plan: PlanId,
    pub on_failure: FailMode,
    pub upgrade_url: Option<String>,
    pub billing_anchor: Option<Date>,
    pub meters: BTreeMap<MeterId, MeterSpec>,
    /// Sorted by (meter, period), unique on that pair.
    pub limits: Vec<Limit>,
    /// Meter → the composites it is part of (nested ones included).
    pub rollup: BTreeMap<MeterId, Vec<MeterId>>,
}

impl Policy {
    pub fn new(plan: &Plan, terms: &OrgTerms) -> Self {
        let mut limits = plan.limits.clone();
        for o in &terms.overrides {
            match limits.iter_mut().find(|l| l.meter == o.meter && l.period == o.period) {
                Some(l) => *l = o.clone(),
                None => limits.push(o.clone()),
            }
        }
        let mut meters = plan.meters.clone();
        for l in &limits {
            meters.entry(l.meter.clone()).or_insert_with(|| MeterSpec::implicit(l.meter.clone()));
        }
        // Each part of a composite with a limit gets an unlimited limit of the same period (if it
        // has none), so that the composite's breakdown by part is counted in the same window.
        let mut implicit = Vec::new();
        for l in &limits {
            for part in meters.get(&l.meter).map(|m| m.parts.as_slice()).unwrap_or_default() {
                let known = |x: &Limit| &x.meter == part && x.period == l.period;
                if !limits.iter().any(known) && !implicit.iter().any(known) {
                    implicit.push(Limit {
                        meter: part.clone(),
                        period: l.period,
                        cap: Cap::Unlimited,
                        on_exceed: OnExceed::Retry,
                    });
                }
            }
        }
        limits.extend(implicit);
        limits.sort_by(|a, b| (&a.meter, a.period).cmp(&(&b.meter, b.period)));
        // Composites containing each meter, nested ones included (acyclic: the plan checked).
        let mut rollup: BTreeMap<MeterId, Vec<MeterId>> = BTreeMap::new();
        for c in meters.values().filter(|m| !m.parts.is_empty()) {
            let mut stack = c.parts.clone();
            let mut seen = Vec::new();
            while let Some(p) = stack.pop() {
                if seen.contains(&p) {
                    continue;
                }
                rollup.entry(p.clone()).or_default().push(c.id.clone());
                stack.extend(meters.get(&p).map(|m| m.parts.clone()).unwrap_or_default());
                seen.push(p);
            }
        }
        for list in rollup.values_mut() {
            list.sort();
        }
        Self {
            plan: plan.id.clone(),
            on_failure: plan.on_failure,
            upgrade_url: plan.upgrade_url.clone(),
            billing_anchor: terms.billing_anchor,
            meters,
            limits,
            rollup,
        }
    }

    /// A policy with no plan and no limits: what usage of an org without a plan is priced by.
    pub fn unpriced() -> Self {
        Self {
            plan: PlanId::unassigned(),
            on_failure: FailMode::Closed,
            upgrade_url: None,
            billing_anchor: None,
            meters: BTreeMap::new(),
            limits: Vec::new(),
            rollup: BTreeMap::new(),
        }
    }

    pub fn meter(&self, id: &MeterId) -> Option<&MeterSpec> {
        self.meters.get(id)
    }

    pub fn limits_for<'a>(&'a self, meter: &'a MeterId) -> impl Iterator<Item = &'a Limit> + 'a {
        self.limits.iter().filter(move |l| &l.meter == meter)
    }

    /// The composites `meter` is part of, nested ones included.
    pub fn composites_of(&self, meter: &MeterId) -> &[MeterId] {
        self.rollup.get(meter).map_or(&[], Vec::as_slice)
    }

    /// Every limit usage of `meter` spends: its own, and those of each composite it is part of.
    pub fn enforced_for<'a>(&'a self, meter: &'a MeterId) -> impl Iterator<Item = &'a Limit> + 'a {
        let composites = self.composites_of(meter);
        self.limits.iter().filter(move |l| &l.meter == meter || composites.contains(&l.meter))
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pid(s: &str) -> PlanId {
        PlanId::parse(s).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn parse(v: &Value) -> Result<Plan, String> {
        Plan::parse(&pid("free"), v).map_err(|e| e.to_string())
    }

    fn design_plan() -> Value {
        json!({ "id": "free", "name": "Free", "on_failure": "closed",
          "limits": [
            {"meter": "requests", "limit": 10,   "period": "minute", "mode": "hard"},
            {"meter": "requests", "limit": 1000, "period": "month",  "mode": "hard"},
            {"meter": "ai_tokens", "limit": 100_000, "period": "month", "mode": "soft",
             "overage_price": {"per_units": 1000, "cents": 2}},
            {"meter": "mapping_profiles", "limit": 3, "period": "lifetime", "mode": "hard"} ] })
    }

    #[test]
    fn parses_the_design_plan() {
        let plan = parse(&design_plan()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(plan.limits.len(), 4);
        assert_eq!(plan.on_failure, FailMode::Closed);
        let tokens = plan.limits.iter().find(|l| l.meter.as_str() == "ai_tokens");
        let price = OveragePrice { per_units: NonZeroU64::MIN.saturating_add(999), cents: 2 };
        assert_eq!(tokens.map(|l| l.cap), Some(Cap::Soft { limit: 100_000, price: Some(price) }));
        let profiles = plan.limits.iter().find(|l| l.meter.as_str() == "mapping_profiles");
        assert_eq!(profiles.map(|l| (l.period, l.on_exceed)), Some((Period::Lifetime, OnExceed::Upgrade)));
        assert_eq!(plan.meters.len(), 3);
        assert_eq!(
            plan.meters
                .get(&MeterId::parse("requests").unwrap_or_else(|e| unreachable!("{e}")))
                .map(|m| m.unit.as_str()),
            Some("requests")
        );
    }

    #[test]
    fn refusals_name_the_field_exactly() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"limits": [], "colour": "red"}), "colour: unknown field (expected one of: id, name, on_failure, upgrade_url, meters, limits)"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "perod": 1}]}),
             "limits[0].perod: unknown field (expected one of: meter, limit, period, mode, window, overage_price, on_exceed)"),
            (json!({"limits": [{"meter": "requests", "limit": -5, "period": "day"}]}),
             "limits[0].limit: must not be negative (got -5); use null for unlimited"),
            (json!({"limits": [{"meter": "requests", "limit": 1.5, "period": "day"}]}),
             "limits[0].limit: must be a whole number (got 1.5); use null for unlimited"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "fortnight"}]}),
             "limits[0].period: unknown period 'fortnight' (expected one of: second, minute, hour, day, month, lifetime)"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "mode": "strict"}]}),
             "limits[0].mode: unknown mode 'strict' (expected one of: hard, soft)"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day"}, {"meter": "requests", "limit": 9, "period": "day"}]}),
             "limits[1]: duplicate limit for meter 'requests' and period 'day' (first at limits[0])"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "minute", "window": 0}]}),
             "limits[0].window: must be from 1 to 4294967295 (got 0)"),
            (json!({"limits": [{"meter": "requests", "limit": 0, "period": "second"}]}),
             "limits[0].limit: a rate window needs a limit of at least 1 (a zero rate is a zero window); use a month or lifetime limit of 0 to withhold a meter"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "window": 2}]}),
             "limits[0].window: only rate periods (second, minute, hour) take a window multiplier"),
            (json!({"limits": [{"meter": "Requests", "limit": 5, "period": "day"}]}),
             "limits[0].meter: 'Requests' may contain only a-z, 0-9, '_' and '-', and must start with a letter or digit"),
            (json!({"limits": [{"meter": "requests", "period": "day"}]}), "limits[0].limit: is required (use null for unlimited)"),
            (json!({"limits": [{"meter": "requests", "limit": "5", "period": "day"}]}),
             "limits[0].limit: must be a whole number, got a string; use null for unlimited"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "minute", "mode": "soft"}]}),
             "limits[0].mode: a rate window (second, minute, hour) can only be hard; use a day or month period for a soft limit"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "overage_price": {"per_units": 0, "cents": 1}, "mode": "soft"}]}),
             "limits[0].overage_price.per_units: must be at least 1"),
            (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "overage_price": {"per_units": 10, "cents": 1}}]}),
             "limits[0].overage_price: only a soft limit with a number as its limit has an overage price"),
            (json!({"id": "pro", "limits": []}), "id: 'pro' does not match the plan id in the path ('free')"),
            (json!({"limits": {}}), "limits: must be an array, got an object"),
            (json!({"name": "x"}), "limits: is required"),
            (json!([1]), "(body): must be an object, got an array"),
            (json!({"limits": [], "on_failure": "maybe"}), "on_failure: unknown on_failure 'maybe' (expected one of: closed, open)"),
            (json!({"meters": [{"id": "disk", "aggregation": "latest"}], "limits": [{"meter": "disk", "limit": 5, "period": "hour"}]}),
             "limits[0].period: meter 'disk' aggregates by latest, which needs a day, month or lifetime period"),
            (json!({"meters": [{"id": "disk"}, {"id": "disk"}], "limits": []}), "meters[1].id: duplicate meter 'disk'"),
        ];
        for (body, want) in cases {
            assert_eq!(parse(&body), Err(want.to_owned()), "{body}");
        }
    }

    #[test]
    fn unlimited_and_windows() {
        let plan = parse(&json!({"limits": [
            {"meter": "requests", "limit": null, "period": "month"},
            {"meter": "requests", "limit": 100, "period": "minute", "window": 5}]}));
        let plan = plan.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(plan.limits.first().map(|l| l.cap), Some(Cap::Hard { limit: 100 }));
        assert_eq!(plan.limits.first().map(Limit::policy_name), Some("requests-5minute".to_owned()));
        assert_eq!(plan.limits.get(1).map(|l| l.cap), Some(Cap::Unlimited));
    }

    #[test]
    fn overrides_replace_and_add() {
        let plan = parse(&design_plan()).unwrap_or_else(|e| unreachable!("{e}"));
        let ov = json!([{"meter": "requests", "limit": 50, "period": "minute"}, {"meter": "csv_rows", "limit": 7, "period": "day"}]);
        let terms =
            OrgTerms::parse(Some(&json!("2025-01-31")), Some(&ov), &plan).unwrap_or_else(|e| unreachable!("{e}"));
        let policy = Policy::new(&plan, &terms);
        assert_eq!(policy.limits.len(), 5);
        let minute = policy.limits.iter().find(|l| l.meter.as_str() == "requests" && l.period.is_rate());
        assert_eq!(minute.map(|l| l.cap), Some(Cap::Hard { limit: 50 }));
        assert!(policy.meters.keys().any(|m| m.as_str() == "csv_rows"));
        assert_eq!(policy.billing_anchor.map(Date::day), Some(31));
        let bad = OrgTerms::parse(Some(&json!("2025-02-30")), None, &plan);
        assert_eq!(
            bad.map_err(|e| e.to_string()),
            Err("billing_anchor: '2025-02-30' is not a valid date in the form YYYY-MM-DD".to_owned())
        );
    }

    #[test]
    fn overage_rounds_up_to_the_cent() {
        let p = OveragePrice { per_units: NonZeroU64::MIN.saturating_add(999), cents: 2 };
        assert_eq!(
            (p.cost_cents(0), p.cost_cents(1), p.cost_cents(500), p.cost_cents(501), p.cost_cents(1000)),
            (0, 1, 1, 2, 2)
        );
        assert_eq!(p.cost_cents(u64::MAX), u64::MAX / 500 + 1);
    }
    #[test]
    fn counts_stop_at_the_javascript_safe_integer() {
        assert_eq!(whole_number(&json!(9_007_199_254_740_991_u64)), Ok(MAX_SAFE_INTEGER));
        assert_eq!(
            whole_number(&json!(9_007_199_254_740_992_u64)),
            Err("must be at most 9007199254740991 (got 9007199254740992)".to_owned())
        );
        let e = Plan::parse(
            &PlanId::parse("p").unwrap(),
            &json!({"limits": [{"meter": "requests", "limit": 9_007_199_254_740_992_u64, "period": "month"}]}),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "limits[0].limit: must be at most 9007199254740991 (got 9007199254740992); use null for unlimited"
        );
    }
}
