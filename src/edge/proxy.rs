//! The hot path: authenticate, classify, one DO round trip to check and reserve, forward to the
//! origin with signed tenant headers, and settle after the answer without making the client wait.
//!
//! It translates between HTTP and the decision the DO returns. It must never count anything
//! itself, never forward a client's `X-Quota-*` header, and never pass silently when no decision
//! could be had: the plan's fail mode says closed (503) or open (forward, flagged).

use serde_json::json;
use worker::{console_log, Context, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response};

use super::error::EdgeError;
use super::ledger;
use super::org_api::presented_key;
use super::platform::{call_do, config, decision_log, now, random_hex, reply_response};
use crate::policy::classify::{usage_header_meter, Cost, Routes};
use crate::policy::keys::{origin_signature, origin_signing_string, verify, VerifiedKey};
use crate::policy::{EventId, FailMode, MeterId, OrgId, Plan, PlanId, Timestamp};
use crate::wire::{problem_body, DecideKind, DoReply, DoRequest, InputError, SettleAction, MAX_SAFE_INTEGER};

type Handled = Result<Response, EdgeError>;

/// How long a proxied request's reservation may wait for a release before it stands as committed
/// (and its usage event becomes ready for the ledger): `PROXY_RELEASE_WINDOW_SECS`, 1 to 3600.
const DEFAULT_RELEASE_WINDOW_SECS: u64 = 120;

fn release_window_ms(env: &Env) -> u64 {
    let secs =
        config(env, "PROXY_RELEASE_WINDOW_SECS").and_then(|v| v.parse::<u64>().ok()).filter(|s| (1..=3600).contains(s));
    secs.unwrap_or(DEFAULT_RELEASE_WINDOW_SECS).saturating_mul(1000)
}

struct Admitted {
    /// The units this request holds, which a failed origin call must give back.
    reserved: bool,
    plan: String,
    headers: Vec<(String, String)>,
    source: &'static str,
}

#[allow(clippy::too_many_arguments)]
fn log_decision(
    env: &Env,
    org: &str,
    meter: &MeterId,
    quantity: u64,
    outcome: &str,
    status: u16,
    source: &str,
    started: Timestamp,
) {
    if !decision_log(env).wants(outcome) {
        return;
    }
    console_log!(
        "{}",
        json!({"msg": "decision", "org": org, "meter": meter.as_str(), "quantity": quantity, "outcome": outcome,
               "status": status, "source": source, "latency_ms": now().since(started)})
    );
}

thread_local! {
    /// The parsed `ROUTES`, kept per isolate and re-parsed only when the variable's text changes.
    static ROUTES_CACHE: std::cell::RefCell<Option<(String, std::rc::Rc<Routes>)>> = const { std::cell::RefCell::new(None) };
}

fn routes(env: &Env) -> Result<std::rc::Rc<Routes>, EdgeError> {
    let raw = config(env, "ROUTES").unwrap_or_default();
    if let Some(hit) =
        ROUTES_CACHE.with(|c| c.borrow().as_ref().filter(|(k, _)| *k == raw).map(|(_, r)| std::rc::Rc::clone(r)))
    {
        return Ok(hit);
    }
    let parsed = std::rc::Rc::new(Routes::parse(&raw).map_err(EdgeError::Internal)?);
    ROUTES_CACHE.with(|c| *c.borrow_mut() = Some((raw, std::rc::Rc::clone(&parsed))));
    Ok(parsed)
}

/// The request's event id, and whether it is the client's Idempotency-Key (replayable).
fn request_id(req: &Request) -> Result<(EventId, bool), EdgeError> {
    match req.headers().get("Idempotency-Key").ok().flatten() {
        Some(k) => EventId::parse(&k).map(|id| (id, true)).map_err(|e| {
            EdgeError::Input(InputError::Field { field: "Idempotency-Key header".into(), reason: e.to_string() })
        }),
        None => EventId::parse(&format!("req_{}", random_hex::<12>()?))
            .map(|id| (id, false))
            .map_err(|e| EdgeError::Internal(e.to_string())),
    }
}

pub async fn handle(req: Request, env: &Env, ctx: &Context) -> Handled {
    let started = now();
    let secret = config(env, "KEY_SECRET").ok_or(EdgeError::NotConfigured("KEY_SECRET"))?;
    let (key_header, presented) = presented_key(&req);
    // A forged, mangled or missing key dies here, with no I/O.
    let key = verify(&presented, secret.as_bytes()).map_err(|_| EdgeError::Unauthorized)?;
    let class = routes(env)?.classify(req.method().as_ref(), &req.path());
    let (id, replayable) = request_id(&req)?;
    let (kind, quantity) = match class.cost {
        Cost::Fixed(n) => (DecideKind::Proxy, n),
        Cost::Reported => (DecideKind::ProxyReported, 0),
    };
    let msg = DoRequest::Decide {
        key_hash: key.hash.clone(),
        meter: class.meter.clone(),
        quantity,
        kind,
        id: id.clone(),
        ttl_ms: release_window_ms(env),
        replayable,
    };
    let faults = config(env, "QUOTA_FAULTS").unwrap_or_default();
    let decided = if faults.split(',').any(|f| f.trim() == "do_unavailable") {
        Err(EdgeError::Internal("fault injected: do_unavailable".into()))
    } else {
        call_do(env, &key.org, &msg).await
    };
    let log = |outcome: &str, status: u16, source: &str| {
        log_decision(env, key.org.as_str(), &class.meter, quantity, outcome, status, source, started);
    };
    let admitted = match decided {
        Ok(reply) if reply.status == 200 => Admitted {
            plan: reply.plan.clone().unwrap_or_default(),
            headers: reply.headers,
            source: "do",
            reserved: reply.reserved,
        },
        // The DO answered but could not decide (its storage failed): the same as no answer.
        Ok(reply) if reply.status >= 500 => {
            worker::console_error!(
                "{}",
                json!({"msg": "org DO could not decide", "org": key.org.as_str(), "status": reply.status})
            );
            fail_over(env, &key, &class.meter, quantity, started).await?
        }
        Ok(reply) => {
            log(if reply.status == 401 { "unauthorized" } else { "refused" }, reply.status, "do");
            return reply_response(&reply).map_err(EdgeError::platform("response"));
        }
        Err(e) => {
            worker::console_error!(
                "{}",
                json!({"msg": "org DO unavailable", "org": key.org.as_str(), "error": e.to_string()})
            );
            fail_over(env, &key, &class.meter, quantity, started).await?
        }
    };
    log("allowed", 200, admitted.source);
    let settle = Settler { env: env.clone(), org: key.org.clone(), id, reserved: admitted.reserved };
    forward(req, env, ctx, key_header, &admitted, &settle).await
}

/// No decision could be had: the plan's fail mode says forward (open) or refuse with 503 (closed).
async fn fail_over(
    env: &Env,
    key: &VerifiedKey,
    meter: &MeterId,
    quantity: u64,
    started: Timestamp,
) -> Result<Admitted, EdgeError> {
    match fail_mode(env, key).await {
        Ok((FailMode::Open, plan)) => Ok(Admitted { plan, headers: Vec::new(), source: "fail-open", reserved: false }),
        // The ledger could vouch for no such key: the same 401 as ever.
        Err(EdgeError::Unauthorized) => Err(EdgeError::Unauthorized),
        Ok((FailMode::Closed, _)) | Err(_) => {
            log_decision(env, key.org.as_str(), meter, quantity, "unavailable", 503, "fail-closed", started);
            Err(EdgeError::Internal("no decision: org DO unavailable and the plan fails closed".into()))
        }
    }
}

/// The plan's fail mode from D1, with the key's revocation checked there instead of in the DO.
async fn fail_mode(env: &Env, key: &VerifiedKey) -> Result<(FailMode, String), EdgeError> {
    let row = ledger::key_plan(&ledger::db(env)?, &key.org, &key.hash).await?;
    let row = row.filter(|r| r.revoked_at.is_none()).ok_or(EdgeError::Unauthorized)?;
    let plan_id = PlanId::parse(&row.plan_id).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let doc = serde_json::from_str(&row.plan_body).map_err(|e| EdgeError::Internal(e.to_string()))?;
    Ok((Plan::parse(&plan_id, &doc)?.on_failure, row.plan_id))
}

/// Settles a proxied request after the origin answered, off the client's path (`wait_until`).
struct Settler {
    env: Env,
    org: OrgId,
    id: EventId,
    /// The decision reserved units that a failed origin call must give back.
    reserved: bool,
}

impl Settler {
    fn send(&self, ctx: &Context, msg: DoRequest, what: &'static str) {
        let (env, org) = (self.env.clone(), self.org.clone());
        ctx.wait_until(async move {
            if let Err(e) = call_do(&env, &org, &msg).await {
                worker::console_error!("{}", json!({"msg": what, "org": org.as_str(), "error": e.to_string()}));
            }
        });
    }

    /// Usage counts only when the origin answers 2xx.
    fn release(&self, ctx: &Context) {
        if self.reserved {
            let msg = DoRequest::Settle { key_hash: None, id: self.id.clone(), action: SettleAction::Release };
            self.send(ctx, msg, "release failed");
        }
    }

    fn report(&self, ctx: &Context, usage: Vec<(MeterId, u64)>) {
        self.send(ctx, DoRequest::Report { id: self.id.clone(), usage }, "usage report failed");
    }
}

/// The request to the origin: same method, path, query, body and headers, less the client's
/// `X-Quota-*` and the quota key, plus the signed tenant headers.
fn origin_request(
    req: &Request,
    env: &Env,
    key_header: &str,
    org: &OrgId,
    admitted: &Admitted,
) -> Result<Request, EdgeError> {
    let origin = config(env, "ORIGIN_URL").ok_or(EdgeError::NotConfigured("ORIGIN_URL"))?;
    let origin_secret = config(env, "ORIGIN_SECRET").ok_or(EdgeError::NotConfigured("ORIGIN_SECRET"))?;
    let url = req.url().map_err(EdgeError::platform("request url"))?;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let method = req.method();
    let headers = Headers::new();
    for (name, value) in req.headers().entries() {
        // Tenant headers are ours alone; the key stays at the edge.
        if name.starts_with("x-quota-") || name == key_header || name == "host" {
            continue;
        }
        headers.append(&name, &value).map_err(EdgeError::platform("headers"))?;
    }
    let ts = now().secs();
    let signing = origin_signing_string(ts, org.as_str(), &admitted.plan, method.as_ref(), &path_and_query);
    let mut tenant = vec![
        ("X-Quota-Org", org.to_string()),
        ("X-Quota-Plan", admitted.plan.clone()),
        ("X-Quota-Timestamp", ts.to_string()),
        ("X-Quota-Signature", origin_signature(origin_secret.as_bytes(), &signing)),
    ];
    if admitted.source == "fail-open" {
        tenant.push(("X-Quota-Decision", "fail-open".to_owned()));
    }
    for (k, v) in tenant {
        headers.set(k, &v).map_err(EdgeError::platform("headers"))?;
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers).with_redirect(RequestRedirect::Manual);
    if !matches!(method, Method::Get | Method::Head) {
        init.with_body(req.inner().body().map(Into::into));
    }
    let target = format!("{}{path_and_query}", origin.trim_end_matches('/'));
    Request::new_with_init(&target, &init).map_err(EdgeError::platform("origin request"))
}

/// The origin's headers for the client, less `X-Usage-*` (returned as usage), plus ours.
fn client_headers(res: &Response, admitted: &Admitted) -> Result<(Headers, Vec<(MeterId, u64)>), EdgeError> {
    let out = Headers::new();
    let mut usage = Vec::new();
    for (name, value) in res.headers().entries() {
        if let Some(meter) = usage_header_meter(&name) {
            // The origin's report is trusted but still checked at the number boundary.
            match value.trim().parse::<u64>().ok().filter(|q| *q <= MAX_SAFE_INTEGER) {
                Some(q) => usage.push((meter, q)),
                None => worker::console_error!(
                    "{}",
                    json!({"msg": "bad usage header from origin", "header": name, "value": value})
                ),
            }
            continue;
        }
        out.append(&name, &value).map_err(EdgeError::platform("headers"))?;
    }
    for (k, v) in &admitted.headers {
        out.set(k, v).map_err(EdgeError::platform("headers"))?;
    }
    if admitted.source == "fail-open" {
        out.set("X-Quota-Decision", "fail-open").map_err(EdgeError::platform("headers"))?;
    }
    Ok((out, usage))
}

async fn forward(
    req: Request,
    env: &Env,
    ctx: &Context,
    key_header: &str,
    admitted: &Admitted,
    settle: &Settler,
) -> Handled {
    let fwd = origin_request(&req, env, key_header, &settle.org, admitted)?;
    let res = match Fetch::Request(fwd).send().await {
        Ok(res) => res,
        Err(e) => {
            settle.release(ctx);
            worker::console_error!(
                "{}",
                json!({"msg": "origin unreachable", "org": settle.org.as_str(), "error": e.to_string()})
            );
            let body = problem_body(
                502,
                "origin-unreachable",
                "Bad gateway",
                "The origin could not be reached; nothing was counted.",
            );
            let reply = DoReply { status: 502, headers: admitted.headers.clone(), body, plan: None, reserved: false };
            return reply_response(&reply).map_err(EdgeError::platform("response"));
        }
    };
    let (headers, usage) = client_headers(&res, admitted)?;
    if (200..300).contains(&res.status_code()) {
        if !usage.is_empty() && admitted.source == "do" {
            settle.report(ctx, usage);
        }
    } else {
        settle.release(ctx);
    }
    Ok(res.with_headers(headers))
}
