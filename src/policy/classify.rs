//! Classification: which (meter, cost) a proxied request spends, and which meter an origin's
//! `X-Usage-<Meter>` header reports.
//!
//! Owns the route-rule format and its matching. Rules come from the `ROUTES` variable as JSON:
//! `[{"method": "POST", "path": "/v1/ai/**", "meter": "ai_tokens", "cost": "reported"}]`.
//! The first rule that matches wins; with none, a request costs 1 `requests`. It must never look
//! at anything but the method and the path, and the path it is given is the normalized one the
//! origin receives (`path::normalize`).

use serde_json::Value;

use super::ids::MeterId;
use super::json::{err, whole_number, FieldError, Obj};

/// What a matched request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Known up front: reserved before the origin is called.
    Fixed(u64),
    /// Known only from the origin's `X-Usage-<Meter>` header: admitted while at least one unit
    /// remains, so the overshoot is bounded by one request's reported cost.
    Reported,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**` (last only): any number of segments, including none.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    method: Option<String>,
    pattern: Vec<Segment>,
    pub meter: MeterId,
    pub cost: Cost,
}

/// The classification of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub meter: MeterId,
    pub cost: Cost,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    rules: Vec<Rule>,
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl Routes {
    /// Parses the `ROUTES` JSON; an empty or absent value means no rules.
    pub fn parse(json: &str) -> Result<Self, String> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: Value = serde_json::from_str(json).map_err(|e| format!("ROUTES is not JSON: {e}"))?;
        let Value::Array(items) = v else {
            return Err("ROUTES must be a JSON array of rules".into());
        };
        let rules = items
            .iter()
            .enumerate()
            .map(|(i, r)| parse_rule(&format!("ROUTES[{i}]"), r).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The (meter, cost) of a request; `requests` × 1 when no rule matches.
    pub fn classify(&self, method: &str, path: &str) -> Classified {
        self.rules
            .iter()
            .find(|r| r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method)) && matches(&r.pattern, path))
            .map_or_else(
                || Classified { meter: MeterId::requests(), cost: Cost::Fixed(1) },
                |r| Classified { meter: r.meter.clone(), cost: r.cost },
            )
    }
}

fn matches(pattern: &[Segment], path: &str) -> bool {
    let mut parts = segments(path);
    for (i, seg) in pattern.iter().enumerate() {
        match seg {
            Segment::Rest => return i.saturating_add(1) == pattern.len(),
            Segment::One => {
                if parts.next().is_none() {
                    return false;
                }
            }
            // Matched on the normalized path (`path::normalize`), without regard to ASCII case
            // (many frameworks route case-insensitively) and without a `;param` suffix (servlet
            // containers route without it): neither can reach a costly route at a cheaper price.
            Segment::Literal(l) => {
                let Some(part) = parts.next() else { return false };
                if !part.split(';').next().unwrap_or_default().eq_ignore_ascii_case(l) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

/// One rule, walked by the one JSON validator: its mistakes read like every other field's.
fn parse_rule(path: &str, v: &Value) -> Result<Rule, FieldError> {
    let o = Obj::new(path, v, &["method", "path", "meter", "cost"])?;
    let method = match o.str_opt("method")? {
        None => None,
        Some(m) if !m.is_empty() && m.chars().all(|c| c.is_ascii_alphabetic()) => Some(m.to_ascii_uppercase()),
        Some(_) => return err(o.at("method"), "must be an HTTP method name such as \"POST\""),
    };
    let path = o.str_opt("path")?.map_or_else(|| err(o.at("path"), "is required, e.g. \"/v1/ai/**\""), Ok)?;
    if !path.starts_with('/') {
        return err(o.at("path"), "must start with '/'");
    }
    let pattern: Vec<Segment> = segments(path)
        .map(|s| match s {
            "*" => Segment::One,
            "**" => Segment::Rest,
            l => Segment::Literal(l.to_owned()),
        })
        .collect();
    if pattern.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
        return err(o.at("path"), "'**' may only be the last segment");
    }
    let meter = o.id_req("meter", MeterId::parse)?;
    let cost = match o.get("cost") {
        None => Cost::Fixed(1),
        Some(Value::String(s)) if s == "reported" => Cost::Reported,
        Some(c) => Cost::Fixed(
            whole_number(c).map_err(|e| FieldError { field: o.at("cost"), reason: format!("{e}, or \"reported\"") })?,
        ),
    };
    Ok(Rule { method, pattern, meter, cost })
}

/// The prefix of the origin's usage headers (lower case, as the runtime gives header names).
pub const USAGE_HEADER_PREFIX: &str = "x-usage-";

/// The meter an `X-Usage-<Meter>` header reports, case-insensitively with `-` read as `_`
/// (`X-Usage-Ai-Tokens` → `ai_tokens`); `None` for any other header or an invalid meter name.
pub fn usage_header_meter(name: &str) -> Option<MeterId> {
    let lower = name.to_ascii_lowercase();
    let rest = lower.strip_prefix(USAGE_HEADER_PREFIX)?;
    MeterId::parse(&rest.replace('-', "_")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::parse(
            r#"[{"method": "POST", "path": "/v1/ai/**", "meter": "ai_tokens", "cost": "reported"},
                {"path": "/v1/export/*/csv", "meter": "csv_rows", "cost": 10},
                {"method": "get", "path": "/v1/profiles", "meter": "mapping_profiles"}]"#,
        )
        .unwrap()
    }

    fn c(method: &str, path: &str) -> (String, Cost) {
        let k = routes().classify(method, path);
        (k.meter.to_string(), k.cost)
    }

    #[test]
    fn default_is_one_request() {
        assert_eq!(
            Routes::default().classify("GET", "/anything"),
            Classified { meter: MeterId::parse("requests").unwrap(), cost: Cost::Fixed(1) }
        );
    }

    #[test]
    fn rules_match_method_and_pattern_in_order() {
        assert_eq!(c("POST", "/v1/ai/chat/completions"), ("ai_tokens".into(), Cost::Reported));
        assert_eq!(c("POST", "/v1/ai"), ("ai_tokens".into(), Cost::Reported));
        assert_eq!(c("GET", "/v1/ai/chat"), ("requests".into(), Cost::Fixed(1)));
        assert_eq!(c("PUT", "/v1/export/42/csv"), ("csv_rows".into(), Cost::Fixed(10)));
        assert_eq!(c("PUT", "/v1/export/42/43/csv"), ("requests".into(), Cost::Fixed(1)));
        assert_eq!(c("GET", "/v1/profiles/"), ("mapping_profiles".into(), Cost::Fixed(1)));
        assert_eq!(c("GET", "/v1/profiles/x"), ("requests".into(), Cost::Fixed(1)));
    }

    #[test]
    fn case_and_path_parameters_cannot_make_a_route_cheaper() {
        assert_eq!(c("GET", "/V1/Export/42/CSV"), ("csv_rows".into(), Cost::Fixed(10)));
        assert_eq!(c("GET", "/v1/export;jsessionid=1/42/csv;x"), ("csv_rows".into(), Cost::Fixed(10)));
        assert_eq!(c("post", "/v1/AI/chat"), ("ai_tokens".into(), Cost::Reported));
        // Through the normalization the proxy applies first.
        let path = crate::policy::path::normalize("/v1/%65xport/./42/csv").unwrap();
        assert_eq!(c("GET", &path), ("csv_rows".into(), Cost::Fixed(10)));
    }

    #[test]
    fn bad_rules_are_named() {
        let e = |s: &str| Routes::parse(s).unwrap_err();
        assert_eq!(e("{}"), "ROUTES must be a JSON array of rules");
        assert_eq!(e(r#"[{"path": "/a/**/b", "meter": "m"}]"#), "ROUTES[0].path: '**' may only be the last segment");
        assert_eq!(
            e(r#"[{"path": "/a", "meter": "m", "cost": -1}]"#),
            "ROUTES[0].cost: must not be negative (got -1), or \"reported\""
        );
        assert_eq!(e(r#"[{"path": "a", "meter": "m"}]"#), "ROUTES[0].path: must start with '/'");
        assert_eq!(
            e(r#"[{"path": "/a", "meter": "M"}]"#),
            "ROUTES[0].meter: 'M' may contain only a-z, 0-9, '_' and '-', and must start with a letter or digit"
        );
        assert_eq!(
            e(r#"[{"path": "/a", "meter": "m", "x": 1}]"#),
            "ROUTES[0].x: unknown field (expected one of: method, path, meter, cost)"
        );
        assert!(Routes::parse("").is_ok());
    }

    #[test]
    fn usage_headers_map_to_meters() {
        assert_eq!(usage_header_meter("X-Usage-Ai-Tokens").map(|m| m.to_string()), Some("ai_tokens".into()));
        assert_eq!(usage_header_meter("x-usage-csv_rows").map(|m| m.to_string()), Some("csv_rows".into()));
        assert_eq!(usage_header_meter("X-Usage-"), None);
        assert_eq!(usage_header_meter("X-Used-Tokens"), None);
        assert_eq!(usage_header_meter("X-Usage-Bad Name"), None);
    }
}
