//! Unit tests of plan parsing and the policy it builds.
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
        plan.meters.get(&MeterId::parse("requests").unwrap_or_else(|e| unreachable!("{e}"))).map(|m| m.unit.as_str()),
        Some("requests")
    );
}

#[test]
fn refusals_name_the_field_exactly() {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"limits": [], "colour": "red"}), "colour: unknown field (expected one of: id, name, on_failure, upgrade_url, meters, limits, lease)"),
        (json!({"limits": [{"meter": "requests", "limit": 5, "period": "day", "perod": 1}]}),
         "limits[0].perod: unknown field (expected one of: meter, limit, period, mode, window, overage_price, on_exceed, counts)"),
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
    assert_eq!(plan.limits.first().map(Limit::policy_name), Some("requests-5minute"));
    assert_eq!(plan.limits.get(1).map(|l| l.cap), Some(Cap::Unlimited));
}

#[test]
fn overrides_replace_and_add() {
    let plan = parse(&design_plan()).unwrap_or_else(|e| unreachable!("{e}"));
    let ov = json!([{"meter": "requests", "limit": 50, "period": "minute"}, {"meter": "csv_rows", "limit": 7, "period": "day"}]);
    let terms = OrgTerms::parse(Some(&json!("2025-01-31")), Some(&ov), &plan).unwrap_or_else(|e| unreachable!("{e}"));
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
