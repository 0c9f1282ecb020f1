//! Platform access the handlers share: the clock, randomness, configuration (read and validated
//! once per isolate), the org Durable Object call, and bounded body reading.
//!
//! It owns the number boundary towards JavaScript (checked conversions only) and must never make
//! a quota decision.

use serde_json::Value;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use worker::{Env, Method, Request, RequestInit};

use super::error::EdgeError;
use crate::org::{OrgMsg, OrgReply};
use crate::policy::keys::hex;
use crate::policy::{OrgId, Timestamp};
use crate::telemetry::{BucketRow, DecisionLog, Recorder};
use crate::wire::{parse_json, query_of, MAX_JSON_BODY, MAX_SAFE_INTEGER};

thread_local! {
    /// This isolate's Durable Object call latencies since its last hand-over to the ledger.
    static LATENCY: std::cell::RefCell<Recorder> = std::cell::RefCell::new(Recorder::default());
    static SETTINGS: std::cell::OnceCell<std::rc::Rc<Settings>> = const { std::cell::OnceCell::new() };
}

pub use crate::config::Settings;

/// This isolate's settings.
pub fn settings(env: &Env) -> std::rc::Rc<Settings> {
    SETTINGS.with(|c| std::rc::Rc::clone(c.get_or_init(|| std::rc::Rc::new(Settings::parse(&|n| config(env, n))))))
}

/// Makes sure this isolate has read its settings (and so its clock offset); called at every
/// entry point, cheap after the first.
pub fn set_clock(env: &Env) {
    let _ = settings(env);
}

fn clock_offset_ms() -> i64 {
    SETTINGS.with(|c| c.get().map_or(0, |s| s.clock_offset_ms))
}

/// The time: the one place the edge reads the clock.
pub fn now() -> Timestamp {
    // `Date.now()`: one call and a number, where `worker::Date::now()` builds a `Date` object
    // and asks it for the time (two calls); a proxied request reads the clock several times.
    // Checked finite, positive and below 2^53, so the cast is exact after `trunc`.
    let ms = js_sys::Date::now();
    #[allow(clippy::as_conversions, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let real = if ms.is_finite() && ms > 0.0 && ms < 9_007_199_254_740_992.0 { ms.trunc() as u64 } else { 0 };
    Timestamp::from_millis(real.saturating_add_signed(clock_offset_ms()))
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

/// A configured string (secret or var), `None` when unset. Read by `Settings::parse` alone.
fn config(env: &Env, name: &str) -> Option<String> {
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

/// A signed count for JavaScript (a ledger delta may be negative), checked like `js_int`.
pub fn js_signed(n: i64) -> Result<JsValue, EdgeError> {
    let v = js_int(n.unsigned_abs())?;
    if n < 0 {
        #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
        return Ok(JsValue::from_f64(-(n.unsigned_abs() as f64)));
    }
    Ok(v)
}

/// Sends one message to an org's Durable Object, recording how long the call took.
pub async fn call_do(env: &Env, org: &OrgId, msg: &OrgMsg) -> Result<OrgReply, EdgeError> {
    let started = now();
    let reply = send_do(env, org, msg).await;
    // The platform clock only advances across I/O, which a DO call is; failed calls count too.
    let at = now();
    LATENCY.with(|r| r.borrow_mut().observe(msg.op(), at.since(started), at));
    // The decision's headers are rendered here, in the isolate, from the numbers the DO sent.
    reply.map(|r| r.rendered(at))
}

/// Latency rows due for the ledger: every `METRICS_FLUSH_SECS` (10 s by default) per isolate.
pub fn latency_due(env: &Env) -> Option<Vec<BucketRow>> {
    let every_ms = settings(env).metrics_flush_ms;
    LATENCY.with(|r| r.borrow_mut().take_due(now(), every_ms))
}

/// Which decisions write a log line (`DECISION_LOG`).
pub fn decision_log(env: &Env) -> DecisionLog {
    settings(env).decision_log
}

/// Puts back latency rows the ledger did not take.
pub fn latency_restore(rows: Vec<BucketRow>) {
    LATENCY.with(|r| r.borrow_mut().restore(rows, now()));
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// An org Durable Object's stub, as its RPC methods see it (`org_do::OrgQuota::rpc_call`).
    #[wasm_bindgen(extends = js_sys::Object)]
    type OrgStub;
    #[wasm_bindgen(method, catch, js_name = call)]
    fn call(this: &OrgStub, msg: &str) -> Result<js_sys::Promise, JsValue>;
}

async fn send_do(env: &Env, org: &OrgId, msg: &OrgMsg) -> Result<OrgReply, EdgeError> {
    let ns = env.durable_object("ORG_QUOTA").map_err(EdgeError::platform("ORG_QUOTA binding"))?;
    let stub = ns.get_by_name(org.as_str()).map_err(EdgeError::platform("org DO stub"))?;
    let body = serde_json::to_string(msg).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let text = if let OrgMsg::Ledger(_) = msg {
        // Ledger messages await D1 inside the DO: they go by fetch, which may await.
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(JsValue::from_str(&body)));
        let req = Request::new_with_init("https://org-quota/msg", &init).map_err(EdgeError::platform("DO request"))?;
        let res = stub.fetch_with_request(req).await.map_err(EdgeError::platform("org DO call"))?;
        if res.status_code() != 200 {
            return Err(EdgeError::Internal(format!("org DO answered {}", res.status_code())));
        }
        // One `text()` promise for the whole body: workers-rs's `Response::text` reads a
        // streamed body chunk by chunk through a reader, a promise and a microtask per chunk.
        let web: web_sys::Response = res.into();
        let promise = web.text().map_err(|e| EdgeError::Internal(format!("org DO reply: {e:?}")))?;
        JsFuture::from(promise).await.map_err(|e| EdgeError::Internal(format!("org DO reply: {e:?}")))?
    } else {
        // Everything else by RPC: one string each way, no Request or Response.
        let rpc: OrgStub = stub.into_rpc();
        let promise = rpc.call(&body).map_err(|e| EdgeError::Internal(format!("org DO call: {e:?}")))?;
        JsFuture::from(promise).await.map_err(|e| EdgeError::Internal(format!("org DO call: {e:?}")))?
    };
    let text = text.as_string().ok_or_else(|| EdgeError::Internal("org DO reply is not text".into()))?;
    serde_json::from_str(&text).map_err(|e| EdgeError::Internal(format!("org DO reply: {e}")))
}

/// Reads a whole body of at most `max` bytes (refused by its `Content-Length` before reading
/// when it declares more); `too_large` is the error past it.
pub async fn read_bounded(req: &mut Request, max: usize, too_large: fn() -> EdgeError) -> Result<Vec<u8>, EdgeError> {
    let declared = req.headers().get("Content-Length").ok().flatten().and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let bytes = req.bytes().await.map_err(|e| EdgeError::BadRequest(format!("request body could not be read: {e}")))?;
    if bytes.len() > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Reads a JSON body of at most `MAX_JSON_BODY` bytes; an empty body reads as `{}`.
pub async fn read_json(req: &mut Request) -> Result<Value, EdgeError> {
    let bytes = read_bounded(req, MAX_JSON_BODY, || EdgeError::TooLarge).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    Ok(parse_json(&bytes)?)
}

/// The request's query parameters, decoded.
pub fn query(req: &Request) -> Vec<(String, String)> {
    let url = req.inner().url();
    form_urlencoded::parse(query_of(&url).unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of a query parameter.
pub fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
