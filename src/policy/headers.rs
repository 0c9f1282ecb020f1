//! The response vocabulary: IETF `RateLimit` structured fields, the legacy `X-RateLimit-*` values,
//! and the RFC 9457 problem body of a refusal.
//!
//! Owns the exact text of every header value and problem field the gateway emits, so that the
//! edge only copies strings. Must never decide anything: it renders a `Decision`.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::clock::Timestamp;
use super::decision::{Decision, LimitStatus};

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

/// `RateLimit-Policy`: `"requests-minute";q=10;w=60, "requests-month";q=1000;w=2592000`.
/// Lifetime limits have no window and carry no `w`. `None` when nothing is limited.
pub fn ratelimit_policy(statuses: &[LimitStatus]) -> Option<String> {
    let items: Vec<String> = limited(statuses)
        .map(|l| {
            let mut item = format!("{};q={}", sf_string(&l.policy), l.limit.unwrap_or(0));
            if let Some(w) = l.window_secs {
                let _ = write!(item, ";w={w}");
            }
            item
        })
        .collect();
    (!items.is_empty()).then(|| items.join(", "))
}

/// `RateLimit`: `"requests-minute";r=3;t=42, …`: remaining units and seconds to reset.
pub fn ratelimit(statuses: &[LimitStatus], now: Timestamp) -> Option<String> {
    let items: Vec<String> = limited(statuses)
        .map(|l| {
            let mut item = format!("{};r={}", sf_string(&l.policy), l.remaining.unwrap_or(0));
            if let Some(t) = l.reset_secs(now) {
                let _ = write!(item, ";t={t}");
            }
            item
        })
        .collect();
    (!items.is_empty()).then(|| items.join(", "))
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
    fn sf_strings_escape() {
        assert_eq!(sf_string("a\"b\\c\n"), "\"a\\\"b\\\\c\"");
    }
}
