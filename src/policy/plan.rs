//! The plan catalogue: raw plan JSON in, validated `Plan` out, and the effective `Policy` of an org.
//!
//! Owns every rule about what a plan may say and the exact message for each refusal, naming the
//! field (`limits[2].period: …`). Validation walks a `serde_json::Value` by hand rather than
//! deriving, because serde's messages cannot name the path. Must never decide on usage.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use serde_json::Value;
use time::Date;

use super::clock::parse_date;
use super::ids::{MeterId, PlanId};
use super::json::{err, kind, Obj};
pub use super::json::{whole_number, FieldError, MAX_SAFE_INTEGER};
use super::lease::LeaseRules;
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

/// What a limit counts of proxied requests of known cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counts {
    /// Requests the origin answered 2xx: a failed one gives its units back. The default of quota
    /// periods (day, month, lifetime), which bill what the origin served.
    Successes,
    /// Every request forwarded to the origin, whatever it answered. The default of rate windows
    /// (second, minute, hour), which protect the origin: a scan of 404s or a retry storm spends
    /// them like any traffic.
    Attempts,
}

impl Counts {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Successes => "successes",
            Self::Attempts => "attempts",
        }
    }

    pub const fn default_for(period: Period) -> Self {
        if period.is_rate() {
            Self::Attempts
        } else {
            Self::Successes
        }
    }
}

/// One limit of a plan. The (meter, period) pair is unique within a plan. Meter and period are
/// read through methods: they make the policy name, which is kept beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    meter: MeterId,
    period: Period,
    pub cap: Cap,
    pub on_exceed: OnExceed,
    pub counts: Counts,
    /// `meter-period`, made once here: every decision looks its counter up by it and hands it to
    /// the limit's status, and a `format!` per limit per decision was the largest cost of the
    /// native decision.
    name: Arc<str>,
}

impl Limit {
    pub fn new(meter: MeterId, period: Period, cap: Cap, on_exceed: OnExceed) -> Self {
        let name = Arc::from(format!("{meter}-{period}"));
        Self { meter, period, cap, on_exceed, counts: Counts::default_for(period), name }
    }

    pub const fn meter(&self) -> &MeterId {
        &self.meter
    }

    pub const fn period(&self) -> Period {
        self.period
    }

    /// The policy name used in `RateLimit` headers and problem bodies, e.g. `requests-minute`.
    pub fn policy_name(&self) -> &str {
        &self.name
    }

    /// The policy name, shared (a limit status carries it without copying it).
    pub fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.name)
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
    /// Lease rules for proxied requests of fixed cost: on by default, adaptive (a key busy
    /// enough on a meter gets a lease); `None` (`"lease": false`): every request asks the DO.
    pub lease: Option<LeaseRules>,
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

const LIMIT_KEYS: &[&str] = &["meter", "limit", "period", "mode", "window", "overage_price", "on_exceed", "counts"];

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
    let counts = o.choice("counts", &[("successes", Counts::Successes), ("attempts", Counts::Attempts)])?;
    let mut limit = Limit::new(meter, period, cap, on_exceed);
    limit.counts = counts.unwrap_or(limit.counts);
    Ok(limit)
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
        let o = Obj::new("", body, &["id", "name", "on_failure", "upgrade_url", "meters", "limits", "lease"])?;
        if let Some(id) = o.str_opt("id")? {
            if id != path_id.as_str() {
                return err("id", format!("'{id}' does not match the plan id in the path ('{path_id}')"));
            }
        }
        let name = o.str_opt("name")?.unwrap_or(path_id.as_str()).to_owned();
        if name.chars().count() > 200 {
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
        super::composite::check(&meters, o.get("meters"))?;
        let lease = LeaseRules::of_plan("lease", o.get("lease"))?;
        Ok(Self { id: path_id.clone(), name, on_failure, upgrade_url, meters, limits, lease })
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
        if event_name.is_empty() || event_name.chars().count() > 100 {
            return err(o.at("event_name"), "must be 1 to 100 characters");
        }
        let audit = o.flag("audit")?;
        let parts = match o.get("sum_of") {
            None => Vec::new(),
            Some(v) => super::composite::parse_parts(&o.at("sum_of"), v)?,
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
    /// The plan's lease mode, if any.
    pub lease: Option<LeaseRules>,
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
                    implicit.push(Limit::new(part.clone(), l.period, Cap::Unlimited, OnExceed::Retry));
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
            lease: plan.lease,
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
            lease: None,
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
#[path = "plan_tests.rs"]
mod tests;
