//! The JSON shapes on the wire: request bodies of the HTTP API (parsed with exact, field-named
//! errors), the Worker ↔ Durable Object protocol, and the JSON views of decisions; and the parts
//! of a request's serialized URL the gateway forwards (path and query).
//!
//! Pure like the core, so every refusal message is tested natively. It must never decide usage
//! (that is `policy`) nor touch the platform (that is `edge`).

mod access;
mod console;

pub use access::{
    key_id_in_path, token_id_in_path, AuditQuery, KeyRequest, RollRequest, Scope, TokenRequest, DEFAULT_GRACE_SECS,
    MAX_ADMIN_TOKENS,
};
pub use console::{without_urls, OrgListQuery, OrgOrder};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::policy::json::{whole_number, FieldError, Obj};
use crate::policy::{
    Decision, EventId, Level, LimitStatus, MeterId, OrgId, Period, PlanId, Policy, Timestamp, UsageError,
};

/// The largest JSON body the API reads; larger ones get 413.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// The largest body of a proxied request with an `Idempotency-Key`: the key is bound to the
/// body's digest, so the gateway reads the body whole before deciding. Larger ones get 413.
pub const MAX_IDEMPOTENT_BODY: usize = 1024 * 1024;
pub use crate::policy::plan::MAX_SAFE_INTEGER;
/// Bounds on how long an explicit reservation may stay open.
pub const DEFAULT_RESERVATION_SECS: u64 = 300;
pub const MAX_RESERVATION_SECS: u64 = 86_400;

/// Why a request body is refused: always a 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

impl From<FieldError> for InputError {
    fn from(e: FieldError) -> Self {
        Self::Field { field: e.field, reason: e.reason }
    }
}

fn field<T>(field: &str, reason: impl Into<String>) -> Result<T, InputError> {
    Err(InputError::Field { field: field.to_owned(), reason: reason.into() })
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice(bytes).map_err(|e| InputError::Json(e.to_string()))
}

/// A quantity: a whole number from 0 to 2^53 − 1.
pub fn parse_quantity(name: &str, v: &Value) -> Result<u64, InputError> {
    whole_number(v).map_err(|reason| InputError::Field { field: name.to_owned(), reason })
}

/// `POST /_quota/v1/check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub meter: MeterId,
    pub quantity: u64,
    pub reserve: bool,
    pub ttl_secs: u64,
}

impl CheckRequest {
    pub fn parse(v: &Value) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["meter", "quantity", "reserve", "ttl_seconds"])?;
        let quantity = o.uint_opt("quantity")?.unwrap_or(1);
        let reserve = o.flag("reserve")?;
        let ttl_secs = match o.uint_opt("ttl_seconds")? {
            None => DEFAULT_RESERVATION_SECS,
            Some(t) => {
                if !(1..=MAX_RESERVATION_SECS).contains(&t) {
                    return field("ttl_seconds", format!("must be from 1 to {MAX_RESERVATION_SECS} (got {t})"));
                }
                if !reserve {
                    return field("ttl_seconds", "only applies with \"reserve\": true");
                }
                t
            }
        };
        Ok(Self { meter: o.id_req("meter", MeterId::parse)?, quantity, reserve, ttl_secs })
    }
}

/// `POST /_quota/v1/reservations/{id}/commit`: the quantity used, the reserved one by default.
pub fn parse_commit(v: &Value) -> Result<Option<u64>, InputError> {
    Ok(Obj::new("", v, &["quantity"])?.uint_opt("quantity")?)
}

/// `PUT /_quota/admin/orgs/{org}`: the org's own fields; the plan-dependent ones (anchor,
/// overrides) are validated against the plan by `policy::OrgTerms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUpsert {
    pub plan: PlanId,
    pub name: Option<String>,
    pub billing_anchor: Option<Value>,
    pub stripe_customer_id: Option<String>,
    pub webhook_url: Option<String>,
    pub overrides: Option<Value>,
}

impl OrgUpsert {
    pub fn parse(v: &Value) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["plan", "name", "billing_anchor", "stripe_customer_id", "webhook_url", "overrides"])?;
        let plan = o.id_req("plan", PlanId::parse)?;
        let webhook_url = o.string_max("webhook_url", 2048)?;
        if webhook_url.as_deref().is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
            return field("webhook_url", "must be an http(s) URL");
        }
        let stripe_customer_id = o.string_max("stripe_customer_id", 255)?;
        if stripe_customer_id.as_deref().is_some_and(|c| !c.starts_with("cus_")) {
            return field("stripe_customer_id", "must be a Stripe customer id (cus_…)");
        }
        Ok(Self {
            plan,
            name: o.string_max("name", 200)?,
            billing_anchor: o.get("billing_anchor").cloned().filter(|v| !v.is_null()),
            stripe_customer_id,
            webhook_url,
            overrides: o.get("overrides").cloned().filter(|v| !v.is_null()),
        })
    }
}

/// `POST /_quota/admin/orgs/{org}/reset`: `{"meter"?}`; an empty body resets every meter.
pub fn parse_reset(v: &Value) -> Result<Option<MeterId>, InputError> {
    Ok(Obj::new("", v, &["meter"])?.id("meter", MeterId::parse)?)
}

// ------------------------------------------------------------------ Worker ↔ Durable Object

/// One usage event as the DO records it; validated by `EventsRequest::parse`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub id: EventId,
    pub meter: MeterId,
    pub quantity: u64,
    /// When the usage happened (ms); the ledger keeps it, the counters count it now.
    pub timestamp: Option<u64>,
    pub metadata: Option<Value>,
}

/// How many events one `POST /v1/events` may carry.
pub const MAX_EVENTS: usize = 100;
/// How far in the future an event's timestamp may be (clock skew), and how far in the past.
pub const MAX_EVENT_SKEW_MS: u64 = 5 * 60 * 1000;
pub const MAX_EVENT_AGE_MS: u64 = 35 * 86_400_000;
const MAX_METADATA_BYTES: usize = 2048;

/// `POST /_quota/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRequest {
    pub events: Vec<UsageEvent>,
    pub enforce: bool,
}

fn parse_event(i: usize, item: &Value, now: Timestamp) -> Result<UsageEvent, InputError> {
    let at = |f: &str| format!("events[{i}].{f}");
    let e = Obj::new(&format!("events[{i}]"), item, &["id", "meter", "quantity", "timestamp", "metadata"])?;
    let id = e
        .id("id", EventId::parse)?
        .map_or_else(|| field(&at("id"), "is required (it makes the event idempotent)"), Ok)?;
    let meter = e.id_req("meter", MeterId::parse)?;
    let quantity = e.uint_opt("quantity")?.map_or_else(|| field(&at("quantity"), "is required"), Ok)?;
    let timestamp = match e.get("timestamp") {
        None => None,
        Some(Value::String(s)) => {
            let ms = Timestamp::parse_rfc3339(s)
                .ok_or_else(|| InputError::Field {
                    field: at("timestamp"),
                    reason: format!("'{s}' is not an RFC 3339 date-time"),
                })?
                .millis();
            if ms > now.millis().saturating_add(MAX_EVENT_SKEW_MS) {
                return field(&at("timestamp"), format!("'{s}' is in the future"));
            }
            if ms < now.millis().saturating_sub(MAX_EVENT_AGE_MS) {
                return field(&at("timestamp"), format!("'{s}' is more than 35 days old"));
            }
            Some(ms)
        }
        Some(_) => return field(&at("timestamp"), "must be an RFC 3339 date-time string"),
    };
    let metadata = match e.get("metadata") {
        None => None,
        Some(m @ Value::Object(_)) if m.to_string().len() <= MAX_METADATA_BYTES => Some(m.clone()),
        Some(Value::Object(_)) => {
            return field(&at("metadata"), format!("must be at most {MAX_METADATA_BYTES} bytes of JSON"))
        }
        Some(v) => return field(&at("metadata"), format!("must be an object, got {}", crate::policy::json::kind(v))),
    };
    Ok(UsageEvent { id, meter, quantity, timestamp, metadata })
}

impl EventsRequest {
    pub fn parse(v: &Value, now: Timestamp) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["events", "enforce"])?;
        let Some(Value::Array(items)) = o.get("events") else {
            return field("events", "is required: an array of 1 to 100 events");
        };
        if items.is_empty() || items.len() > MAX_EVENTS {
            return field("events", format!("must hold 1 to {MAX_EVENTS} events (got {})", items.len()));
        }
        let mut events: Vec<UsageEvent> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let e = parse_event(i, item, now)?;
            if events.iter().any(|x| x.id == e.id) {
                return field(&format!("events[{i}].id"), format!("'{}' appears twice in this request", e.id));
            }
            events.push(e);
        }
        Ok(Self { events, enforce: o.flag("enforce")? })
    }
}

/// `days` of `/usage/summary`: 1 to 365, 30 when absent.
pub fn parse_days(raw: Option<&str>) -> Result<u64, InputError> {
    let Some(raw) = raw else { return Ok(30) };
    match raw.parse::<u64>() {
        Ok(d) if (1..=365).contains(&d) => Ok(d),
        _ => field("days", format!("must be a whole number from 1 to 365 (got '{raw}')")),
    }
}

/// A `from`/`to` query pair of dates, inclusive, at most `max_days` days long.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    max_days: i64,
) -> Result<(time::Date, time::Date), InputError> {
    let date = |name: &str, v: Option<&str>| -> Result<time::Date, InputError> {
        let v = v.ok_or_else(|| InputError::Field { field: name.into(), reason: "is required (YYYY-MM-DD)".into() })?;
        crate::policy::clock::parse_date(v).map_err(|reason| InputError::Field { field: name.into(), reason })
    };
    let (f, t) = (date("from", from)?, date("to", to)?);
    if f > t {
        return field("to", format!("{t} is before from ({f})"));
    }
    if (t - f).whole_days() >= max_days {
        return field("to", format!("the range may span at most {max_days} days"));
    }
    Ok((f, t))
}

/// One RFC 4180 CSV field: quoted when it holds a comma, quote, CR or LF.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The status and problem `type` / `title` of a usage error.
pub fn usage_error_status(e: &UsageError) -> (u16, &'static str, &'static str) {
    match e {
        UsageError::UnknownMeter(_) => (400, "unknown-meter", "Unknown meter"),
        UsageError::NotReservable { .. } => (400, "not-reservable", "Meter cannot be reserved"),
        UsageError::DuplicateReservation(_) => (409, "duplicate-reservation", "Reservation exists"),
        UsageError::UnknownReservation(_) => (404, "unknown-reservation", "No such reservation"),
        UsageError::Composite { .. } => (400, "composite-meter", "Record usage on the parts"),
        UsageError::CountCeiling { .. } => (422, "count-ceiling", "Count ceiling"),
    }
}

/// An RFC 9457 problem body.
pub fn problem_body(status: u16, kind: &str, title: &str, detail: &str) -> Value {
    json!({"type": format!("urn:quotagate:problem:{kind}"), "title": title, "status": status, "detail": detail})
}

/// The one 401 body: missing, malformed, forged, unknown and revoked keys must be
/// indistinguishable, wherever they are refused.
pub fn unauthorized_body() -> Value {
    problem_body(401, "unauthorized", "Unauthorized", "A valid API key is required.")
}

/// One limit as the API shows it.
pub fn limit_json(l: &LimitStatus, now: Timestamp) -> Value {
    json!({
        "meter": l.meter.as_str(),
        "policy": &*l.policy,
        "period": l.period.to_string(),
        "mode": l.mode,
        "limit": l.limit,
        "used": l.used,
        "remaining": l.remaining,
        "percentage": l.percentage(),
        "level": l.level.as_str(),
        // The simplest thing a client checks: at or under the limit (always, without a cap).
        "within_limit": l.limit.is_none_or(|n| l.used <= n),
        "window_start": l.window_start.rfc3339(),
        "reset_at": l.reset.map(Timestamp::rfc3339),
        "reset_in_seconds": l.reset_secs(now),
        "overage": l.overage,
        "overage_cost_cents": l.overage_cost_cents,
    })
}

/// `GET /v1/usage`: the live overview of an org.
pub fn usage_json(org: &OrgId, policy: &Policy, statuses: &[LimitStatus], alerts: &[Value], now: Timestamp) -> Value {
    let period = Period::Month.window(now, policy.billing_anchor);
    let meters: Vec<Value> = statuses
        .iter()
        .map(|l| {
            let mut v = limit_json(l, now);
            if let Some(o) = v.as_object_mut() {
                let spec = policy.meter(&l.meter);
                o.insert("unit".into(), json!(spec.map_or("units", |m| m.unit.as_str())));
                // A composite shows what each part used in the same window.
                if let Some(parts) = spec.map(|m| &m.parts).filter(|p| !p.is_empty()) {
                    let breakdown: serde_json::Map<String, Value> = parts
                        .iter()
                        .map(|p| {
                            let used =
                                statuses.iter().find(|x| &x.meter == p && x.period == l.period).map_or(0, |x| x.used);
                            (p.to_string(), json!(used))
                        })
                        .collect();
                    o.insert("breakdown".into(), Value::Object(breakdown));
                }
            }
            v
        })
        .collect();
    json!({
        "org_id": org.as_str(),
        "plan": policy.plan.as_str(),
        "period": {"start": period.start.rfc3339(), "end": period.end.map(Timestamp::rfc3339)},
        "total_overage_cost_cents": statuses.iter().fold(0u64, |a, l| a.saturating_add(l.overage_cost_cents)),
        "alerts": alerts,
        "meters": meters,
    })
}

/// `GET /v1/usage/status`: the worst level across the org's limits, in words.
pub fn status_json(org: &OrgId, policy: &Policy, statuses: &[LimitStatus]) -> Value {
    let worst = statuses.iter().max_by_key(|l| l.level);
    let level = worst.map_or(Level::Ok, |l| l.level);
    let (status, message) = match (level, worst) {
        (Level::Over, Some(l)) => {
            ("over_limit", format!("{} is at {}% of its limit", l.policy, l.percentage().unwrap_or(100)))
        }
        (Level::Warning | Level::Critical, Some(l)) => {
            ("approaching_limit", format!("{} is at {}% of its limit", l.policy, l.percentage().unwrap_or(0)))
        }
        _ => ("ok", "All limits are below 80%".to_owned()),
    };
    json!({"org_id": org.as_str(), "plan": policy.plan.as_str(), "status": status, "level": level.as_str(), "message": message})
}

/// A decision as `/v1/check` answers it.
pub fn decision_json(d: &Decision) -> Value {
    json!({
        "allowed": d.allowed(),
        "status": d.status(),
        "meter": d.meter.as_str(),
        "quantity": d.quantity,
        "level": d.level().as_str(),
        "retry_after": d.retry_after(),
        "violated_policies": d.violated_policies(),
        "limits": d.limits.iter().map(|l| limit_json(l, d.now)).collect::<Vec<_>>(),
    })
}

/// The path and query of a URL as the runtime serializes it (`https://host/a/b?x=1#f` →
/// `/a/b?x=1`), read without parsing the URL again: every proxied request needs it, and a
/// WHATWG parse in wasm is work the runtime has already done. A serialized http(s) URL always
/// has a path, starting at the first `/` after the authority, and a `?` or `#` inside the path
/// is percent-encoded; the fragment is never sent.
pub fn path_and_query(url: &str) -> &str {
    let rest = url.find("://").and_then(|i| url.get(i.saturating_add(3)..)).unwrap_or(url);
    let pq = rest.find('/').and_then(|i| rest.get(i..)).unwrap_or("/");
    pq.split('#').next().filter(|p| !p.is_empty()).unwrap_or("/")
}

/// The query string of a serialized URL (what follows `?`, without the fragment), if any.
pub fn query_of(url: &str) -> Option<&str> {
    path_and_query(url).split_once('?').map(|(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_from_serialized_urls() {
        for (url, pq) in [
            ("https://api.example.com/v1/things?a=1&b=2", "/v1/things?a=1&b=2"),
            ("http://127.0.0.1:8787/", "/"),
            ("https://h/x#frag", "/x"),
            ("https://h/x?q=1#frag?no", "/x?q=1"),
            ("https://user:pw@h:1/p/a%3Fb?c=%23", "/p/a%3Fb?c=%23"),
            ("https://h/?", "/?"),
        ] {
            assert_eq!(path_and_query(url), pq, "{url}");
        }
        assert_eq!(query_of("https://h/p?days=7&meter=a"), Some("days=7&meter=a"));
        assert_eq!(query_of("https://h/p#x?y"), None);
        assert_eq!(query_of("https://h/p"), None);
    }

    fn err(r: Result<impl std::fmt::Debug, InputError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn check_bodies() {
        let ok =
            CheckRequest::parse(&json!({"meter": "rows", "quantity": 5, "reserve": true, "ttl_seconds": 60})).unwrap();
        assert_eq!((ok.meter.as_str(), ok.quantity, ok.reserve, ok.ttl_secs), ("rows", 5, true, 60));
        assert_eq!(CheckRequest::parse(&json!({"meter": "rows"})).unwrap().quantity, 1);
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "quantity": -1}))),
            "quantity: must not be negative (got -1)"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "quantity": 1.5}))),
            "quantity: must be a whole number (got 1.5)"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "quantity": "5"}))),
            "quantity: must be a whole number, got a string"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "quantity": 9_007_199_254_740_992u64}))),
            "quantity: must be at most 9007199254740991 (got 9007199254740992)"
        );
        assert_eq!(err(CheckRequest::parse(&json!({"quantity": 1}))), "meter: is required");
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "Rows"}))),
            "meter: 'Rows' may contain only a-z, 0-9, '_' and '-', and must start with a letter or digit"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "qty": 1}))),
            "qty: unknown field (expected one of: meter, quantity, reserve, ttl_seconds)"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "reserve": "yes"}))),
            "reserve: must be true or false, got a string"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "reserve": true, "ttl_seconds": 0}))),
            "ttl_seconds: must be from 1 to 86400 (got 0)"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "ttl_seconds": 5}))),
            "ttl_seconds: only applies with \"reserve\": true"
        );
        assert_eq!(err(CheckRequest::parse(&json!([1]))), "(body): must be an object, got an array");
        assert_eq!(
            err(parse_json(b"{\"meter\": ")),
            "request body is not valid JSON: EOF while parsing a value at line 1 column 10"
        );
    }

    #[test]
    fn org_bodies() {
        let o =
            OrgUpsert::parse(&json!({"plan": "free", "name": "Acme", "billing_anchor": "2026-01-31", "overrides": []}))
                .unwrap();
        assert_eq!((o.plan.as_str(), o.name.as_deref()), ("free", Some("Acme")));
        assert_eq!(err(OrgUpsert::parse(&json!({"name": "x"}))), "plan: is required");
        assert_eq!(
            err(OrgUpsert::parse(&json!({"plan": "free", "webhook_url": "ftp://x"}))),
            "webhook_url: must be an http(s) URL"
        );
        assert_eq!(
            err(OrgUpsert::parse(&json!({"plan": "free", "stripe_customer_id": "acme"}))),
            "stripe_customer_id: must be a Stripe customer id (cus_…)"
        );
        assert_eq!(err(OrgUpsert::parse(&json!({"plan": "free", "tier": 1}))), "tier: unknown field (expected one of: plan, name, billing_anchor, stripe_customer_id, webhook_url, overrides)");
    }

    #[test]
    fn commit_and_reset_bodies() {
        assert_eq!(parse_commit(&json!({})), Ok(None));
        assert_eq!(parse_commit(&json!({"quantity": 3})), Ok(Some(3)));
        assert_eq!(err(parse_commit(&json!({"quantity": -3}))), "quantity: must not be negative (got -3)");
        assert_eq!(parse_reset(&json!({})), Ok(None));
        assert_eq!(parse_reset(&json!({"meter": "rows"})).unwrap().map(|m| m.to_string()), Some("rows".into()));
    }

    #[test]
    fn event_bodies() {
        let now = Timestamp::from_millis(1_795_428_000_000); // 2026-11-23T10:00Z
        let body = json!({"events": [{"id": "e1", "meter": "rows", "quantity": 5, "timestamp": "2026-11-23T09:00:00Z",
                                      "metadata": {"job": 7}}], "enforce": true});
        let ok = EventsRequest::parse(&body, now).unwrap();
        assert_eq!((ok.enforce, ok.events.len(), ok.events[0].timestamp), (true, 1, Some(1_795_424_400_000)));
        let e = |v: Value| EventsRequest::parse(&v, now).unwrap_err().to_string();
        let ev = |extra: Value| {
            let mut base = json!({"id": "a", "meter": "rows", "quantity": 1});
            base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            e(json!({"events": [base]}))
        };
        assert_eq!(e(json!({})), "events: is required: an array of 1 to 100 events");
        assert_eq!(e(json!({"events": []})), "events: must hold 1 to 100 events (got 0)");
        let many: Vec<Value> =
            (0..101).map(|i| json!({"id": format!("e{i}"), "meter": "rows", "quantity": 1})).collect();
        assert_eq!(e(json!({"events": many})), "events: must hold 1 to 100 events (got 101)");
        assert_eq!(
            e(json!({"events": [{"meter": "rows", "quantity": 1}]})),
            "events[0].id: is required (it makes the event idempotent)"
        );
        assert_eq!(ev(json!({"quantity": -2})), "events[0].quantity: must not be negative (got -2)");
        assert_eq!(ev(json!({"quantity": 0.5})), "events[0].quantity: must be a whole number (got 0.5)");
        let twice = json!({"events": [{"id": "a", "meter": "rows", "quantity": 1}, {"id": "a", "meter": "rows", "quantity": 1}]});
        assert_eq!(e(twice), "events[1].id: 'a' appears twice in this request");
        assert_eq!(
            ev(json!({"timestamp": "yesterday"})),
            "events[0].timestamp: 'yesterday' is not an RFC 3339 date-time"
        );
        assert_eq!(
            ev(json!({"timestamp": "2026-11-24T10:00:00Z"})),
            "events[0].timestamp: '2026-11-24T10:00:00Z' is in the future"
        );
        assert_eq!(
            ev(json!({"timestamp": "2026-01-01T00:00:00Z"})),
            "events[0].timestamp: '2026-01-01T00:00:00Z' is more than 35 days old"
        );
        assert_eq!(ev(json!({"metadata": [1]})), "events[0].metadata: must be an object, got an array");
        assert_eq!(
            ev(json!({"kind": "x"})),
            "events[0].kind: unknown field (expected one of: id, meter, quantity, timestamp, metadata)"
        );
    }

    #[test]
    fn query_parameters() {
        assert_eq!(parse_days(None), Ok(30));
        assert_eq!(parse_days(Some("365")), Ok(365));
        for bad in ["0", "366", "-1", "1.5", "x", ""] {
            let want = format!("days: must be a whole number from 1 to 365 (got '{bad}')");
            assert_eq!(parse_days(Some(bad)).unwrap_err().to_string(), want);
        }
        let (f, t) = parse_range(Some("2026-01-30"), Some("2026-02-02"), 366).unwrap();
        assert_eq!((t - f).whole_days(), 3);
        let e = |a, b| parse_range(a, b, 366).unwrap_err().to_string();
        assert_eq!(e(Some("2026-02-02"), Some("2026-01-30")), "to: 2026-01-30 is before from (2026-02-02)");
        assert_eq!(
            e(Some("2026-02-30"), Some("2026-03-01")),
            "from: '2026-02-30' is not a valid date in the form YYYY-MM-DD"
        );
        assert_eq!(e(None, Some("2026-03-01")), "from: is required (YYYY-MM-DD)");
        assert_eq!(e(Some("2025-01-01"), Some("2026-03-01")), "to: the range may span at most 366 days");
    }

    #[test]
    fn csv_quoting_is_rfc4180() {
        assert_eq!(csv_field("acme"), "acme");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
