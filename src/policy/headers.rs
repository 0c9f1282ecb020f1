//! The response vocabulary: IETF `RateLimit` structured fields, the legacy `X-RateLimit-*` values,
//! and the RFC 9457 problem body of a refusal.
//!
//! Owns the exact text of every header value and problem field the gateway emits. A decision
//! travels from the org's DO as a `View` (numbers), which the Worker renders here. Must never
//! decide anything: it renders a `Decision` or its `View`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::clock::Timestamp;
use super::decision::{Decision, Level, LimitStatus};
use super::lease::LeaseLimit;

/// Appends a policy name as an sf-string: the names are validated ids plus a period, so they
/// never need escaping, but a stray quote or backslash is escaped all the same.
fn push_sf_string(out: &mut String, s: &str) {
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
}

/// Appends a number with no `fmt` machinery (this runs for every limit of every decision).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn limited(statuses: &[LimitStatus]) -> impl Iterator<Item = &LimitStatus> {
    statuses.iter().filter(|l| l.limit.is_some())
}

/// Appends one structured-field item: `"requests-minute";q=10;w=60` (`RateLimit-Policy`) or
/// `"requests-minute";r=3;t=42` (`RateLimit`); the second parameter is left out when `None`
/// (lifetime limits have no window and no reset).
fn push_item(out: &mut String, policy: &str, first: (&str, u64), second: (&str, Option<u64>)) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    push_sf_string(out, policy);
    out.push(';');
    out.push_str(first.0);
    out.push('=');
    push_u64(out, first.1);
    if let (key, Some(v)) = second {
        out.push(';');
        out.push_str(key);
        out.push('=');
        push_u64(out, v);
    }
}

/// The items joined by `, `; `None` when there are none.
fn joined<T>(items: impl Iterator<Item = T>, mut item: impl FnMut(&mut String, T)) -> Option<String> {
    // Two limits' items fit without growing.
    let mut out = String::with_capacity(128);
    for i in items {
        item(&mut out, i);
    }
    (!out.is_empty()).then_some(out)
}

fn number(n: u64) -> String {
    itoa::Buffer::new().format(n).to_owned()
}

/// Header names and values as an answer carries them. The gateway's own names are static, so
/// they are borrowed, not copied per decision; a name read back from a DO reply is owned.
pub type HeaderList = Vec<(Cow<'static, str>, String)>;

/// The headers of a request admitted from a lease, in the same order and wording as
/// `decision_headers`: the limits are the lease's view (the org's remaining as the DO last
/// said, plus `unspent`, what this holder has not spent yet).
pub fn lease_headers(grant: &[LeaseLimit], unspent: u64, now: Timestamp) -> HeaderList {
    let remaining = |l: &LeaseLimit| l.remaining.saturating_add(unspent).min(l.limit);
    let legacy = grant.iter().min_by_key(|l| (remaining(l), l.reset_ms.unwrap_or(u64::MAX)));
    let level =
        grant.iter().map(|l| Level::of(l.limit.saturating_sub(remaining(l)), Some(l.limit))).max().unwrap_or(Level::Ok);
    view_headers(grant, unspent, legacy, level, None, now)
}

/// The headers of a decision seen through its limits (the DO's `View` of it, a lease's, or a
/// remembered refusal's), in `decision_headers`' order: `unspent` is added to each limit's
/// remaining, `legacy` is the limit the `X-RateLimit-*` trio names, and `retry_at` what
/// `Retry-After` counts down to. `RateLimit-Policy` items are `"requests-minute";q=10;w=60`
/// (lifetime limits have no window and carry no `w`); `RateLimit` items `"requests-minute";r=3;t=42`,
/// the available quota and the effective window (draft-ietf-httpapi-ratelimit-headers-11: seconds
/// within which no more than `r` can be used).
pub fn view_headers(
    limits: &[LeaseLimit],
    unspent: u64,
    legacy: Option<&LeaseLimit>,
    level: Level,
    retry_at: Option<Timestamp>,
    now: Timestamp,
) -> HeaderList {
    let remaining = |l: &LeaseLimit| l.remaining.saturating_add(unspent).min(l.limit);
    let mut h = Vec::with_capacity(7);
    let secs = |l: &LeaseLimit| l.reset_ms.map(|r| r.saturating_sub(now.millis()).div_ceil(1000));
    if let Some(v) = joined(limits.iter(), |out, l| push_item(out, &l.policy, ("q", l.limit), ("w", l.window_secs))) {
        h.push((Cow::Borrowed("RateLimit-Policy"), v));
    }
    if let Some(v) = joined(limits.iter(), |out, l| push_item(out, &l.policy, ("r", remaining(l)), ("t", secs(l)))) {
        h.push((Cow::Borrowed("RateLimit"), v));
    }
    if let Some(l) = legacy {
        h.push((Cow::Borrowed("X-RateLimit-Limit"), number(l.limit)));
        h.push((Cow::Borrowed("X-RateLimit-Remaining"), number(remaining(l))));
        if let Some(reset) = l.reset_ms {
            h.push((Cow::Borrowed("X-RateLimit-Reset"), number(reset.div_ceil(1000))));
        }
    }
    h.push((Cow::Borrowed("X-Quota-Status"), level.as_str().to_owned()));
    if let Some(at) = retry_at {
        h.push((Cow::Borrowed("Retry-After"), number(at.since(now).div_ceil(1000))));
    }
    h
}

/// What a decision's headers are rendered from: the meter's limits as numbers (unlimited ones
/// left out), which of them the legacy `X-RateLimit-*` trio names, the level, and when a
/// refusal's `Retry-After` ends. The org's DO sends this, not header text: the Worker renders it
/// (`headers`), so the single-threaded DO formats nothing, and a refusal the isolate remembers
/// (`policy::recall`) renders with its countdowns moved on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// When a refusal's `Retry-After` ends (epoch ms): a 429's. An admission and a 402 have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    pub limits: Vec<LeaseLimit>,
    /// Which of `limits` the legacy `X-RateLimit-*` trio names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<usize>,
    pub level: Level,
}

impl View {
    /// The view of a decision, admitted or refused.
    pub fn of(d: &Decision) -> Self {
        let retry_at =
            d.refusal.as_ref().and_then(|r| r.retry_after).map(|s| d.now.saturating_add_ms(s.saturating_mul(1000)));
        let limited: Vec<&LimitStatus> = limited(&d.limits).collect();
        let most = d.most_constrained();
        let legacy = most.and_then(|m| limited.iter().position(|l| std::ptr::eq(*l, m)));
        let limits = limited
            .iter()
            .map(|l| LeaseLimit {
                policy: l.policy.to_string(),
                limit: l.limit.unwrap_or(0),
                remaining: l.remaining.unwrap_or(0),
                window_secs: l.window_secs,
                reset_ms: l.reset.map(Timestamp::millis),
            })
            .collect();
        Self { retry_at_ms: retry_at.map(Timestamp::millis), limits, legacy, level: d.level() }
    }

    /// The decision's headers at `now`: at the decision's own time, `decision_headers`; later,
    /// with `t` and `Retry-After` counted down.
    pub fn headers(&self, now: Timestamp) -> HeaderList {
        let legacy = self.legacy.and_then(|i| self.limits.get(i));
        view_headers(&self.limits, 0, legacy, self.level, self.retry_at_ms.map(Timestamp::from_millis), now)
    }
}

/// The headers of a decision at its own time, in order: `RateLimit-Policy`, `RateLimit`, the
/// legacy trio for the most constrained limit (`X-RateLimit-Reset` in epoch seconds of its reset;
/// absent for lifetime), `X-Quota-Status`, and `Retry-After` on a 429. The same rendering as the
/// Worker's of the DO's `View` (one renderer: `view_headers`).
pub fn decision_headers(d: &Decision) -> HeaderList {
    View::of(d).headers(d.now)
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
        let mut out = String::new();
        push_sf_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, "\"a\\\"b\\\\c\"");
        out.clear();
        push_sf_string(&mut out, "requests-minute");
        assert_eq!(out, "\"requests-minute\"");
    }
}
