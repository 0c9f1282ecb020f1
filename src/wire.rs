//! The JSON shapes on the wire: request bodies of the HTTP API (parsed with exact, field-named
//! errors), the Worker ↔ Durable Object protocol, and the JSON views of decisions.
//!
//! Pure like the core, so every refusal message is tested natively. It must never decide usage
//! (that is `policy`) nor touch the platform (that is `edge`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::policy::plan::whole_number;
use crate::policy::{
    Decision, EventId, LimitStatus, MeterId, OrgId, PlanId, Timestamp, UsageError,
};

/// The largest JSON body the API reads; larger ones get 413.
pub const MAX_JSON_BODY: usize = 64 * 1024;
/// JavaScript numbers are exact only up to here; D1 and JSON clients see quantities as numbers.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
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

fn field<T>(field: &str, reason: impl Into<String>) -> Result<T, InputError> {
    Err(InputError::Field {
        field: field.to_owned(),
        reason: reason.into(),
    })
}

pub fn parse_json(bytes: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice(bytes).map_err(|e| InputError::Json(e.to_string()))
}

fn object<'a>(v: &'a Value, allowed: &[&str]) -> Result<&'a Map<String, Value>, InputError> {
    let Value::Object(o) = v else {
        return field("(body)", "must be a JSON object");
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return field(
            k,
            format!("unknown field (expected one of: {})", allowed.join(", ")),
        );
    }
    Ok(o)
}

/// A quantity: a whole number from 0 to 2^53 − 1.
pub fn parse_quantity(name: &str, v: &Value) -> Result<u64, InputError> {
    let n = whole_number(v).map_err(|reason| InputError::Field {
        field: name.to_owned(),
        reason,
    })?;
    if n > MAX_SAFE_INTEGER {
        return field(
            name,
            format!("must be at most {MAX_SAFE_INTEGER} (got {n})"),
        );
    }
    Ok(n)
}

fn meter(o: &Map<String, Value>) -> Result<MeterId, InputError> {
    match o.get("meter") {
        Some(Value::String(s)) => MeterId::parse(s).map_err(|e| InputError::Field {
            field: "meter".into(),
            reason: format!("'{s}' {e}"),
        }),
        Some(_) => field("meter", "must be a string"),
        None => field("meter", "is required"),
    }
}

fn opt_bool(o: &Map<String, Value>, name: &str) -> Result<bool, InputError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => field(name, "must be true or false"),
    }
}

fn opt_string(
    o: &Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, InputError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => field(name, format!("must be at most {max} characters")),
        Some(_) => field(name, "must be a string"),
    }
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
        let o = object(v, &["meter", "quantity", "reserve", "ttl_seconds"])?;
        let quantity = o
            .get("quantity")
            .map_or(Ok(1), |q| parse_quantity("quantity", q))?;
        let reserve = opt_bool(o, "reserve")?;
        let ttl_secs = match o.get("ttl_seconds") {
            None | Some(Value::Null) => DEFAULT_RESERVATION_SECS,
            Some(t) => {
                let t = parse_quantity("ttl_seconds", t)?;
                if !(1..=MAX_RESERVATION_SECS).contains(&t) {
                    return field(
                        "ttl_seconds",
                        format!("must be from 1 to {MAX_RESERVATION_SECS} (got {t})"),
                    );
                }
                if !reserve {
                    return field("ttl_seconds", "only applies with \"reserve\": true");
                }
                t
            }
        };
        Ok(Self {
            meter: meter(o)?,
            quantity,
            reserve,
            ttl_secs,
        })
    }
}

/// `POST /_quota/v1/reservations/{id}/commit`: the quantity used, the reserved one by default.
pub fn parse_commit(v: &Value) -> Result<Option<u64>, InputError> {
    let o = object(v, &["quantity"])?;
    o.get("quantity")
        .filter(|q| !q.is_null())
        .map(|q| parse_quantity("quantity", q))
        .transpose()
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
        let o = object(
            v,
            &[
                "plan",
                "name",
                "billing_anchor",
                "stripe_customer_id",
                "webhook_url",
                "overrides",
            ],
        )?;
        let plan = match o.get("plan") {
            Some(Value::String(s)) => PlanId::parse(s).map_err(|e| InputError::Field {
                field: "plan".into(),
                reason: format!("'{s}' {e}"),
            })?,
            Some(_) => return field("plan", "must be a string"),
            None => return field("plan", "is required"),
        };
        let webhook_url = opt_string(o, "webhook_url", 2048)?;
        if webhook_url
            .as_deref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return field("webhook_url", "must be an http(s) URL");
        }
        let stripe_customer_id = opt_string(o, "stripe_customer_id", 255)?;
        if stripe_customer_id
            .as_deref()
            .is_some_and(|c| !c.starts_with("cus_"))
        {
            return field("stripe_customer_id", "must be a Stripe customer id (cus_…)");
        }
        Ok(Self {
            plan,
            name: opt_string(o, "name", 200)?,
            billing_anchor: o.get("billing_anchor").cloned().filter(|v| !v.is_null()),
            stripe_customer_id,
            webhook_url,
            overrides: o.get("overrides").cloned().filter(|v| !v.is_null()),
        })
    }
}

/// `POST /_quota/admin/orgs/{org}/reset`: `{"meter"?}`; an empty body resets every meter.
pub fn parse_reset(v: &Value) -> Result<Option<MeterId>, InputError> {
    let o = object(v, &["meter"])?;
    if o.get("meter").is_none_or(Value::is_null) {
        return Ok(None);
    }
    meter(o).map(Some)
}

// ------------------------------------------------------------------ Worker ↔ Durable Object

/// How a decision is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecideKind {
    /// `/v1/check` without reserve: nothing changes.
    Check,
    /// `/v1/check` with reserve: a provisional reservation the caller settles.
    Reserve,
    /// A proxied request of known cost: counted at once, released if the origin fails.
    Proxy,
    /// A proxied request whose cost the origin reports: admitted while one unit remains.
    ProxyReported,
}

/// One message to an org's Durable Object. Every org-key operation carries the key's hash, so
/// the key check and the operation are one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DoRequest {
    Decide {
        key_hash: String,
        meter: MeterId,
        quantity: u64,
        kind: DecideKind,
        id: EventId,
        ttl_ms: u64,
    },
    /// Commit or release a reservation. `key_hash` is absent when the Worker itself settles
    /// a proxied request's reservation.
    Settle {
        key_hash: Option<String>,
        id: EventId,
        action: SettleAction,
    },
    /// Usage the origin reported for a proxied request, counted without enforcement.
    Report {
        id: EventId,
        usage: Vec<(MeterId, u64)>,
    },
    Configure {
        org: OrgId,
        plan_id: PlanId,
        plan: Value,
        billing_anchor: Option<Value>,
        overrides: Option<Value>,
    },
    State,
    Reset {
        meter: Option<MeterId>,
    },
    AddKey {
        key_id: String,
        hash: String,
    },
    RevokeKey {
        key_id: String,
    },
}

/// How a reservation is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SettleAction {
    /// With the quantity used; `None` commits the reserved quantity.
    Commit {
        quantity: Option<u64>,
    },
    Release,
}

/// The Durable Object's answer: an HTTP answer the Worker can pass on as it is, plus what the
/// proxy needs to know (plan, fail mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoReply {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub body: Value,
    #[serde(default)]
    pub plan: Option<String>,
}

/// The status and problem `type` / `title` of a usage error.
pub fn usage_error_status(e: &UsageError) -> (u16, &'static str, &'static str) {
    match e {
        UsageError::UnknownMeter(_) => (400, "unknown-meter", "Unknown meter"),
        UsageError::NotReservable { .. } => (400, "not-reservable", "Meter cannot be reserved"),
        UsageError::DuplicateReservation(_) => (409, "duplicate-reservation", "Reservation exists"),
        UsageError::UnknownReservation(_) => (404, "unknown-reservation", "No such reservation"),
    }
}

/// An RFC 9457 problem body.
pub fn problem_body(status: u16, kind: &str, title: &str, detail: &str) -> Value {
    json!({"type": format!("urn:quotagate:problem:{kind}"), "title": title, "status": status, "detail": detail})
}

/// The one 401 body: missing, malformed, forged, unknown and revoked keys must be
/// indistinguishable, wherever they are refused.
pub fn unauthorized_body() -> Value {
    problem_body(
        401,
        "unauthorized",
        "Unauthorized",
        "A valid API key is required.",
    )
}

/// One limit as the API shows it.
pub fn limit_json(l: &LimitStatus, now: Timestamp) -> Value {
    json!({
        "meter": l.meter.as_str(),
        "policy": l.policy,
        "period": l.period.to_string(),
        "mode": l.mode,
        "limit": l.limit,
        "used": l.used,
        "remaining": l.remaining,
        "percentage": l.percentage(),
        "level": l.level.as_str(),
        "window_start": l.window_start.rfc3339(),
        "reset_at": l.reset.map(Timestamp::rfc3339),
        "reset_in_seconds": l.reset_secs(now),
        "overage": l.overage,
        "overage_cost_cents": l.overage_cost_cents,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl std::fmt::Debug, InputError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn check_bodies() {
        let ok = CheckRequest::parse(
            &json!({"meter": "rows", "quantity": 5, "reserve": true, "ttl_seconds": 60}),
        )
        .unwrap();
        assert_eq!(
            (ok.meter.as_str(), ok.quantity, ok.reserve, ok.ttl_secs),
            ("rows", 5, true, 60)
        );
        assert_eq!(
            CheckRequest::parse(&json!({"meter": "rows"}))
                .unwrap()
                .quantity,
            1
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "quantity": -1})
            )),
            "quantity: must not be negative (got -1)"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "quantity": 1.5})
            )),
            "quantity: must be a whole number (got 1.5)"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "quantity": "5"})
            )),
            "quantity: must be a whole number, got a string"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "quantity": 9_007_199_254_740_992u64})
            )),
            "quantity: must be at most 9007199254740991 (got 9007199254740992)"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!({"quantity": 1}))),
            "meter: is required"
        );
        assert_eq!(err(CheckRequest::parse(&json!({"meter": "Rows"}))), "meter: 'Rows' may contain only a-z, 0-9, '_' and '-', and must start with a letter or digit");
        assert_eq!(
            err(CheckRequest::parse(&json!({"meter": "rows", "qty": 1}))),
            "qty: unknown field (expected one of: meter, quantity, reserve, ttl_seconds)"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "reserve": "yes"})
            )),
            "reserve: must be true or false"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "reserve": true, "ttl_seconds": 0})
            )),
            "ttl_seconds: must be from 1 to 86400 (got 0)"
        );
        assert_eq!(
            err(CheckRequest::parse(
                &json!({"meter": "rows", "ttl_seconds": 5})
            )),
            "ttl_seconds: only applies with \"reserve\": true"
        );
        assert_eq!(
            err(CheckRequest::parse(&json!([1]))),
            "(body): must be a JSON object"
        );
        assert_eq!(
            err(parse_json(b"{\"meter\": ")),
            "request body is not valid JSON: EOF while parsing a value at line 1 column 10"
        );
    }

    #[test]
    fn org_bodies() {
        let o = OrgUpsert::parse(&json!({"plan": "free", "name": "Acme", "billing_anchor": "2026-01-31", "overrides": []})).unwrap();
        assert_eq!((o.plan.as_str(), o.name.as_deref()), ("free", Some("Acme")));
        assert_eq!(
            err(OrgUpsert::parse(&json!({"name": "x"}))),
            "plan: is required"
        );
        assert_eq!(
            err(OrgUpsert::parse(
                &json!({"plan": "free", "webhook_url": "ftp://x"})
            )),
            "webhook_url: must be an http(s) URL"
        );
        assert_eq!(
            err(OrgUpsert::parse(
                &json!({"plan": "free", "stripe_customer_id": "acme"})
            )),
            "stripe_customer_id: must be a Stripe customer id (cus_…)"
        );
        assert_eq!(err(OrgUpsert::parse(&json!({"plan": "free", "tier": 1}))), "tier: unknown field (expected one of: plan, name, billing_anchor, stripe_customer_id, webhook_url, overrides)");
    }

    #[test]
    fn commit_and_reset_bodies() {
        assert_eq!(parse_commit(&json!({})), Ok(None));
        assert_eq!(parse_commit(&json!({"quantity": 3})), Ok(Some(3)));
        assert_eq!(
            err(parse_commit(&json!({"quantity": -3}))),
            "quantity: must not be negative (got -3)"
        );
        assert_eq!(parse_reset(&json!({})), Ok(None));
        assert_eq!(
            parse_reset(&json!({"meter": "rows"}))
                .unwrap()
                .map(|m| m.to_string()),
            Some("rows".into())
        );
    }

    #[test]
    fn do_messages_round_trip() {
        for action in [
            SettleAction::Commit { quantity: None },
            SettleAction::Commit { quantity: Some(4) },
            SettleAction::Release,
        ] {
            let m = DoRequest::Settle {
                key_hash: None,
                id: EventId::parse("r1").unwrap(),
                action,
            };
            let back: DoRequest =
                serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            assert_eq!(back, m);
        }
        let s = serde_json::to_string(&DoRequest::Reset { meter: None }).unwrap();
        assert_eq!(s, r#"{"op":"reset","meter":null}"#);
    }
}
