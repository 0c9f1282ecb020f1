//! The response vocabulary: IETF `RateLimit` structured fields, the legacy `X-RateLimit-*` values,
//! and the RFC 9457 problem body of a refusal.
//!
//! Owns the exact text of every header value and problem field the gateway emits, so that the
//! edge only copies strings. Must never decide anything: it renders a `Decision`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::clock::Timestamp;
use super::decision::{Decision, Level, LimitStatus};
use super::lease::LeaseLimit;

/// A policy name as an sf-string: the names are validated ids plus a period, so they never need
/// escaping, but a stray quote or backslash is escaped all the same.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        if (' '..='~').contains(&c) {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn limited(statuses: &[LimitStatus]) -> impl Iterator<Item = &LimitStatus> {
    statuses.iter().filter(|l| l.limit.is_some())
}

/// One `RateLimit-Policy` item: `"requests-minute";q=10;w=60` (no `w` for lifetime).
fn policy_item(policy: &str, q: u64, w: Option<u64>) -> String {
    let mut item = format!("{};q={q}", sf_string(policy));
    if let Some(w) = w {
        let _ = write!(item, ";w={w}");
    }
    item
}

/// One `RateLimit` item: `"requests-minute";r=3;t=42` (no `t` for lifetime).
fn limit_item(policy: &str, r: u64, t: Option<u64>) -> String {
    let mut item = format!("{};r={r}", sf_string(policy));
    if let Some(t) = t {
        let _ = write!(item, ";t={t}");
    }
    item
}

fn joined(items: impl Iterator<Item = String>) -> Option<String> {
    let items: Vec<String> = items.collect();
    (!items.is_empty()).then(|| items.join(", "))
}

/// `RateLimit-Policy`: `"requests-minute";q=10;w=60, "requests-month";q=1000;w=2592000`.
/// Lifetime limits have no window and carry no `w`. `None` when nothing is limited.
pub fn ratelimit_policy(statuses: &[LimitStatus]) -> Option<String> {
    joined(limited(statuses).map(|l| policy_item(&l.policy, l.limit.unwrap_or(0), l.window_secs)))
}

/// `RateLimit`: `"requests-minute";r=3;t=42, …`: remaining units and seconds to reset.
pub fn ratelimit(statuses: &[LimitStatus], now: Timestamp) -> Option<String> {
    joined(limited(statuses).map(|l| limit_item(&l.policy, l.remaining.unwrap_or(0), l.reset_secs(now))))
}

/// The headers of a request admitted from a lease, in the same order and wording as
/// `decision_headers`: the limits are the lease's view (the org's remaining as the DO last
/// said, plus `unspent`, what this holder has not spent yet).
pub fn lease_headers(grant: &[LeaseLimit], unspent: u64, now: Timestamp) -> Vec<(&'static str, String)> {
    let remaining = |l: &LeaseLimit| l.remaining.saturating_add(unspent).min(l.limit);
    let limits = grant;
    let mut h = Vec::with_capacity(6);
    let secs = |l: &LeaseLimit| l.reset_ms.map(|r| r.saturating_sub(now.millis()).div_ceil(1000));
    if let Some(v) = joined(limits.iter().map(|l| policy_item(&l.policy, l.limit, l.window_secs))) {
        h.push(("RateLimit-Policy", v));
    }
    if let Some(v) = joined(limits.iter().map(|l| limit_item(&l.policy, remaining(l), secs(l)))) {
        h.push(("RateLimit", v));
    }
    if let Some(l) = limits.iter().min_by_key(|l| (remaining(l), l.reset_ms.unwrap_or(u64::MAX))) {
        h.push(("X-RateLimit-Limit", l.limit.to_string()));
        h.push(("X-RateLimit-Remaining", remaining(l).to_string()));
        if let Some(reset) = l.reset_ms {
            h.push(("X-RateLimit-Reset", reset.div_ceil(1000).to_string()));
        }
    }
    let level = limits
        .iter()
        .map(|l| Level::of(l.limit.saturating_sub(remaining(l)), Some(l.limit)))
        .max()
        .unwrap_or(Level::Ok);
    h.push(("X-Quota-Status", level.as_str().to_owned()));
    h
}

/// The headers of a decision, in order: `RateLimit-Policy`, `RateLimit`, the legacy trio for the
/// most constrained limit (`X-RateLimit-Reset` in epoch seconds of its reset; absent for
/// lifetime), `X-Quota-Status`, and `Retry-After` on a 429.
pub fn decision_headers(d: &Decision) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some(v) = ratelimit_policy(&d.limits) {
        h.push(("RateLimit-Policy", v));
    }
    if let Some(v) = ratelimit(&d.limits, d.now) {
        h.push(("RateLimit", v));
    }
    if let Some(l) = d.most_constrained() {
        h.push(("X-RateLimit-Limit", l.limit.unwrap_or(0).to_string()));
        h.push(("X-RateLimit-Remaining", l.remaining.unwrap_or(0).to_string()));
        if let Some(reset) = l.reset {
            h.push(("X-RateLimit-Reset", reset.millis().div_ceil(1000).to_string()));
        }
    }
    h.push(("X-Quota-Status", d.level().as_str().to_owned()));
    if let Some(s) = d.retry_after() {
        h.push(("Retry-After", s.to_string()));
    }
    h
}

/// The RFC 9457 body of a refusal; `None` when the decision allowed the request.
pub fn refusal_problem(d: &Decision, plan: &str, upgrade_url: Option<&str>) -> Option<Value> {
    let refusal = d.refusal.as_ref()?;
    let l = d.violated()?;
    let status = refusal.kind.status();
    let (kind, title) =
        if status == 402 { ("upgrade-required", "Upgrade required") } else { ("quota-exceeded", "Quota exceeded") };
    let mut body = json!({
        "type": format!("urn:quotagate:problem:{kind}"),
        "title": title,
        "status": status,
        "detail": format!("Quota exceeded for {}", d.meter),
        "meter": d.meter.as_str(),
        "limit": l.limit,
        "used": l.used,
        "requested": d.quantity,
        "reset": l.reset.map(Timestamp::rfc3339),
        "plan": plan,
        "violated-policies": d.violated_policies(),
    });
    if status == 402 {
        if let Some(obj) = body.as_object_mut() {
            obj.insert("upgrade_url".into(), upgrade_url.map_or(Value::Null, |u| Value::String(u.to_owned())));
        }
    }
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_headers_read_like_decision_headers() {
        let now = Timestamp::from_millis(1_000_000);
        let limits = [
            LeaseLimit {
                policy: "requests-minute".into(),
                limit: 100,
                remaining: 90,
                window_secs: Some(60),
                reset_ms: Some(1_001_500),
            },
            LeaseLimit {
                policy: "requests-month".into(),
                limit: 1000,
                remaining: 40,
                window_secs: None,
                reset_ms: None,
            },
        ];
        let h = lease_headers(&limits, 0, now);
        let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("RateLimit-Policy"), Some("\"requests-minute\";q=100;w=60, \"requests-month\";q=1000"));
        assert_eq!(get("RateLimit"), Some("\"requests-minute\";r=90;t=2, \"requests-month\";r=40"));
        assert_eq!(get("X-RateLimit-Remaining"), Some("40"));
        assert_eq!(get("X-RateLimit-Reset"), None);
        assert_eq!(get("X-Quota-Status"), Some("critical"), "960 of 1,000 used");
    }

    #[test]
    fn sf_strings_escape() {
        assert_eq!(sf_string("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
