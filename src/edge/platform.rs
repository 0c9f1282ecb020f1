//! Platform access the handlers share: the clock, randomness, configuration, the org Durable
//! Object call, and bounded body reading.
//!
//! It owns the number boundary towards JavaScript (checked conversions only) and must never make
//! a quota decision.

use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

use super::error::EdgeError;
use crate::policy::keys::hex;
use crate::policy::{OrgId, Timestamp};
use crate::telemetry::{BucketRow, DecisionLog, Recorder};
use crate::wire::{parse_json, DoReply, DoRequest, MAX_JSON_BODY, MAX_SAFE_INTEGER};

thread_local! {
    /// This isolate's Durable Object call latencies since its last hand-over to the ledger.
    static LATENCY: std::cell::RefCell<Recorder> = std::cell::RefCell::new(Recorder::default());
    static FLUSH_EVERY_MS: std::cell::OnceCell<u64> = const { std::cell::OnceCell::new() };
    static DECISION_LOG: std::cell::OnceCell<DecisionLog> = const { std::cell::OnceCell::new() };
    /// `QUOTA_CLOCK_OFFSET_MS`, testing only: shifts this isolate's clock so end-to-end tests can
    /// cross a real period boundary. Zero unless set.
    static CLOCK_OFFSET_MS: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Reads the test clock offset for this invocation; called at every entry point.
pub fn set_clock(env: &Env) {
    let offset = config(env, "QUOTA_CLOCK_OFFSET_MS").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    CLOCK_OFFSET_MS.with(|c| c.set(offset));
}

/// The time: the one place the edge reads the clock.
pub fn now() -> Timestamp {
    let real = worker::Date::now().as_millis();
    Timestamp::from_millis(real.saturating_add_signed(CLOCK_OFFSET_MS.with(std::cell::Cell::get)))
}

/// `n` random bytes as lowercase hex, from the platform's CSPRNG.
pub fn random_hex<const N: usize>() -> Result<String, EdgeError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| EdgeError::Internal(format!("getrandom: {e}")))?;
    Ok(hex(&buf))
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], EdgeError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| EdgeError::Internal(format!("getrandom: {e}")))?;
    Ok(buf)
}

/// A configured string (secret or var), `None` when unset or empty.
pub fn config(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|s| !s.is_empty())
}

/// A count as a JavaScript number, refused above 2^53 − 1 rather than rounded.
pub fn js_int(n: u64) -> Result<JsValue, EdgeError> {
    if n > MAX_SAFE_INTEGER {
        return Err(EdgeError::Internal(format!("{n} exceeds the JavaScript safe integer range")));
    }
    // Exact: n ≤ 2^53 − 1 has an exact f64.
    #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
    Ok(JsValue::from_f64(n as f64))
}

/// Sends one message to an org's Durable Object, recording how long the call took.
pub async fn call_do(env: &Env, org: &OrgId, msg: &DoRequest) -> Result<DoReply, EdgeError> {
    let started = now();
    let reply = send_do(env, org, msg).await;
    // The platform clock only advances across I/O, which a DO call is; failed calls count too.
    let at = now();
    LATENCY.with(|r| r.borrow_mut().observe(msg.op(), at.since(started), at));
    reply
}

/// Latency rows due for the ledger: every `METRICS_FLUSH_SECS` (10 s by default) per isolate.
pub fn latency_due(env: &Env) -> Option<Vec<BucketRow>> {
    // A deployment's vars never change under a running isolate: read once, not per request.
    let every_ms = FLUSH_EVERY_MS.with(|c| {
        *c.get_or_init(|| {
            config(env, "METRICS_FLUSH_SECS").and_then(|v| v.parse::<u64>().ok()).unwrap_or(10).saturating_mul(1000)
        })
    });
    LATENCY.with(|r| r.borrow_mut().take_due(now(), every_ms))
}

/// Which decisions write a log line (`DECISION_LOG`), read once per isolate.
pub fn decision_log(env: &Env) -> DecisionLog {
    DECISION_LOG.with(|c| *c.get_or_init(|| DecisionLog::parse(config(env, "DECISION_LOG").as_deref())))
}

/// Puts back latency rows the ledger did not take.
pub fn latency_restore(rows: Vec<BucketRow>) {
    LATENCY.with(|r| r.borrow_mut().restore(rows, now()));
}

async fn send_do(env: &Env, org: &OrgId, msg: &DoRequest) -> Result<DoReply, EdgeError> {
    let ns = env.durable_object("ORG_QUOTA").map_err(EdgeError::platform("ORG_QUOTA binding"))?;
    let stub = ns.get_by_name(org.as_str()).map_err(EdgeError::platform("org DO stub"))?;
    let body = serde_json::to_string(msg).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
    let req = Request::new_with_init("https://org-quota/msg", &init).map_err(EdgeError::platform("DO request"))?;
    let mut res = stub.fetch_with_request(req).await.map_err(EdgeError::platform("org DO call"))?;
    if res.status_code() != 200 {
        return Err(EdgeError::Internal(format!("org DO answered {}", res.status_code())));
    }
    res.json::<DoReply>().await.map_err(EdgeError::platform("org DO reply"))
}

/// A Durable Object reply as the client's response.
pub fn reply_response(reply: &DoReply) -> worker::Result<Response> {
    let ct = if reply.status >= 400 { "application/problem+json" } else { "application/json" };
    let headers = Headers::new();
    headers.set("Content-Type", ct)?;
    headers.set("Cache-Control", "no-store")?;
    for (k, v) in &reply.headers {
        headers.set(k, v)?;
    }
    if reply.status == 401 {
        headers.set("WWW-Authenticate", "Bearer")?;
    }
    Ok(Response::ok(reply.body.to_string())?.with_status(reply.status).with_headers(headers))
}

/// Reads a JSON body of at most `MAX_JSON_BODY` bytes; an empty body reads as `{}`.
pub async fn read_json(req: &mut Request) -> Result<Value, EdgeError> {
    let declared = req.headers().get("Content-Length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BODY) {
        return Err(EdgeError::TooLarge);
    }
    let bytes = req.bytes().await.map_err(|e| EdgeError::BadRequest(format!("request body could not be read: {e}")))?;
    if bytes.len() > MAX_JSON_BODY {
        return Err(EdgeError::TooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    Ok(parse_json(&bytes)?)
}

/// The request's query parameters, decoded.
pub fn query(req: &Request) -> Result<Vec<(String, String)>, EdgeError> {
    let url = req.url().map_err(EdgeError::platform("request url"))?;
    Ok(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

/// The first value of a query parameter.
pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
