//! The hot path: authenticate, classify, one DO round trip to check and reserve, forward to the
//! origin with signed tenant headers, and settle after the answer without making the client wait.
//!
//! It translates between HTTP and the decision the DO returns. It must never count anything
//! itself, never forward a client's credential, `X-Quota-*` or `X-Usage-*` header, never price a
//! path other than the one it forwards (the path is normalized once, `policy::path`), and never
//! pass silently when no decision could be had: the plan's fail mode says closed (503) or open
//! (forward, flagged).

use serde_json::json;
use worker::{console_log, Context, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response};

use super::auth::authenticate;
use super::error::{answer, reply_response, EdgeError};
use super::headers::{Names, Rewrite};
use super::leases::{self, ClassKey};
use super::ledger;
use super::platform::{call_do, now, random_hex, read_bounded, settings};
use super::recalls;
use crate::config::Need;
use crate::org::{Caller, DecideKind, KeyHash, OrgMsg, OrgOp, OrgReply};
use crate::policy::classify::{usage_header_meter, Classified, Cost, Routes, USAGE_HEADER_PREFIX};
use crate::policy::headers::HeaderList;
use crate::policy::keys::{origin_signature, Fingerprint, Signed, VerifiedKey};
use crate::policy::lease::Spend;
use crate::policy::path::normalize;
use crate::policy::{EventId, FailMode, MeterId, OrgId, Plan, PlanId, Timestamp};
use crate::telemetry::{DecisionLine, Outcome};
use crate::wire::{path_and_query, problem_body, InputError, MAX_IDEMPOTENT_BODY, MAX_SAFE_INTEGER};

type Handled = Result<Response, EdgeError>;

/// Where the request's usage stands after the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// The org's DO decided; `held` is the token a failed origin call releases its units with.
    Do { held: Option<u64> },
    /// The DO could not be asked and the plan fails open: forwarded, flagged, not counted.
    FailOpen,
    /// Admitted from this isolate's lease `token` (lease mode), with no DO call.
    Lease { token: u64, id: EventId },
}

struct Admitted {
    plan: String,
    headers: HeaderList,
    source: Source,
    /// A replay of an `Idempotency-Key` whose first request was served (signed to the origin).
    replayed: bool,
}

/// The request as the gateway prices and forwards it.
struct Target<'a> {
    method: Method,
    /// The normalized path and the query as it came: classified, signed and forwarded.
    path_and_query: String,
    key_id: &'a str,
    /// The body, when it was read whole to fingerprint an `Idempotency-Key` (else it streams).
    body: Option<Vec<u8>>,
}

/// What the decision log line of a proxied request says besides its outcome.
struct Logged<'a> {
    org: &'a OrgId,
    meter: &'a MeterId,
    quantity: u64,
    started: Timestamp,
}

impl Logged<'_> {
    /// One decision log line with the round trip's latency, if `DECISION_LOG` wants it.
    fn log(&self, env: &Env, outcome: Outcome, status: u16, source: &'static str) {
        if !settings(env).decision_log.wants(outcome) {
            return;
        }
        let line = DecisionLine {
            org: self.org.to_string(),
            meter: self.meter.to_string(),
            quantity: self.quantity,
            outcome,
            status,
            source,
            latency_ms: Some(now().since(self.started)),
        };
        console_log!("{}", line.render());
    }
}

/// The request's event id: the client's `Idempotency-Key` (replayable), or a random one.
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

/// The normalized path with the query as it came. A path that cannot be normalized is a 400:
/// never priced on a guess.
fn normalized_target(req: &Request) -> Result<String, EdgeError> {
    let url = req.inner().url();
    let pq = path_and_query(&url);
    let (raw, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
    let path = normalize(raw)
        .map_err(|e| EdgeError::Input(InputError::Field { field: "path".into(), reason: e.to_string() }))?;
    // `/_quota/…` is the gateway's own: a path that only normalizes to it is not proxied.
    if path == "/_quota" || path.starts_with("/_quota/") {
        return Err(EdgeError::NotFound(format!("no endpoint {path}")));
    }
    Ok(match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

/// What the gateway prices a request by: where it goes, the route's (meter, cost), the id it is
/// counted under, and the fingerprint its `Idempotency-Key` is bound to (if it has one).
struct Priced<'a> {
    target: Target<'a>,
    class: Classified,
    id: EventId,
    idempotency: Option<Fingerprint>,
}

async fn price<'a>(req: &mut Request, routes: &Routes, key: &'a VerifiedKey) -> Result<Priced<'a>, EdgeError> {
    let path_and_query = normalized_target(req)?;
    let method = req.method();
    let class = routes.classify(method.as_ref(), path_and_query.split('?').next().unwrap_or("/"));
    let (id, replayable) = request_id(req)?;
    // An Idempotency-Key is bound to the request's fingerprint, its body's digest included.
    let (body, idempotency) = if replayable {
        // Read whole (bounded) for its digest; it is forwarded from these bytes.
        let body = read_bounded(req, MAX_IDEMPOTENT_BODY, || EdgeError::IdempotentBodyTooLarge).await?;
        let cost = match class.cost {
            Cost::Fixed(n) => n.to_string(),
            Cost::Reported => "reported".to_owned(),
        };
        let fp = Fingerprint::of(method.as_ref(), &path_and_query, class.meter.as_str(), &cost, &body);
        (Some(body), Some(fp))
    } else {
        (None, None)
    };
    Ok(Priced { target: Target { method, path_and_query, key_id: &key.key_id, body }, class, id, idempotency })
}

pub async fn handle(mut req: Request, env: &Env, ctx: &Context) -> Handled {
    let started = now();
    let cfg = settings(env);
    cfg.check(Need::Proxy).map_err(EdgeError::Misconfigured)?;
    // A forged, mangled or missing key dies here, with no I/O.
    let key = authenticate(&req, env)?;
    let Priced { target, class, id, idempotency } = price(&mut req, &cfg.routes, &key).await?;
    let replayable = idempotency.is_some();
    let (kind, quantity) = match class.cost {
        Cost::Fixed(n) => (DecideKind::Proxy, n),
        Cost::Reported => (DecideKind::ProxyReported, 0),
    };
    // A request without an Idempotency-Key is one of its class (a replay must reach the DO):
    // a refusal of the class may be remembered, and lease mode covers fixed costs.
    let class_key = (!replayable).then(|| ClassKey {
        org: key.org.clone(),
        key_hash: key.hash.clone(),
        meter: class.meter.clone(),
        cost: quantity,
        reported: kind == DecideKind::ProxyReported,
    });
    let logged = Logged { org: &key.org, meter: &class.meter, quantity, started };
    if let Some((status, res)) = class_key.as_ref().and_then(|k| recalls::recall(k, started)) {
        logged.log(env, Outcome::Refused, status, "recall");
        return res.map_err(EdgeError::platform("response"));
    }
    let leasable = class_key.as_ref().is_some_and(|k| !k.reported && k.cost > 0);
    if let Some(admitted) = class_key.as_ref().filter(|_| leasable).and_then(|k| from_lease(env, ctx, k, started)) {
        logged.log(env, Outcome::Leased, 200, "lease");
        let source = admitted.source.clone();
        let settle =
            Settler { env: env.clone(), org: key.org.clone(), id, source, lease_key: class_key, idempotent: false };
        return forward(req, env, ctx, &target, &admitted, &settle).await;
    }
    let lease_key = class_key.as_ref().filter(|_| leasable);
    let asking = lease_key.is_some_and(|k| leases::ask(k, started));
    let recalled = class_key.as_ref().map_or(0, recalls::take);
    let op = OrgOp::Decide {
        meter: class.meter.clone(),
        quantity,
        kind,
        id: id.clone(),
        ttl_ms: cfg.release_window_ms,
        idempotency,
        lease: asking,
        recalled,
    };
    let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash.clone())), op };
    let decided = if cfg.faults.do_unavailable {
        Err(EdgeError::Internal("fault injected: do_unavailable".into()))
    } else {
        call_do(env, &key.org, &msg).await
    };
    if let (true, Some(k)) = (asking, lease_key) {
        leases::asked(k);
    }
    let admitted = match decided {
        Ok(reply) if reply.status == 200 => {
            if let Some(k) = &class_key {
                recalls::forget(k);
            }
            admitted_by_do(reply, lease_key, started, env, ctx)
        }
        // The DO answered but could not decide (its storage failed): the same as no answer.
        Ok(reply) if reply.status >= 500 => {
            worker::console_error!(
                "{}",
                json!({"msg": "org DO could not decide", "org": key.org.as_str(), "status": reply.status})
            );
            fail_over(env, &key, &logged).await?
        }
        Ok(mut reply) => {
            let outcome = if reply.status == 401 { Outcome::Unauthorized } else { Outcome::Refused };
            logged.log(env, outcome, reply.status, "proxy");
            let body = reply.body.to_string();
            match (reply.view.take().filter(|_| reply.rememberable), class_key) {
                (Some(recall), Some(k)) if cfg.refusal_memory_ms > 0 => {
                    recalls::remember(k, *recall, reply.status, body.clone(), started, cfg.refusal_memory_ms);
                }
                (_, Some(k)) => recalls::forget(&k),
                (_, None) => {}
            }
            return answer(reply.status, &reply.headers, body).map_err(EdgeError::platform("response"));
        }
        Err(e) => {
            worker::console_error!(
                "{}",
                json!({"msg": "org DO unavailable", "org": key.org.as_str(), "error": e.to_string()})
            );
            fail_over(env, &key, &logged).await?
        }
    };
    let source = if admitted.source == Source::FailOpen { "fail-open" } else { "proxy" };
    logged.log(env, Outcome::Allowed, 200, source);
    let settle = Settler {
        env: env.clone(),
        org: key.org.clone(),
        id,
        source: admitted.source.clone(),
        lease_key: class_key.filter(|_| leasable),
        idempotent: replayable && !admitted.replayed,
    };
    forward(req, env, ctx, &target, &admitted, &settle).await
}

/// Spends one request of the class from this isolate's lease, if it holds one to spend
/// (renewing it off the client's path when due), else closes what must close and says ask.
fn from_lease(env: &Env, ctx: &Context, k: &ClassKey, started: Timestamp) -> Option<Admitted> {
    let taken = leases::take(k, started);
    let source = match taken.spend {
        Spend::Taken { token, id, renew, want, to_close } => {
            if renew {
                leases::renew_lease(env, ctx, k.clone(), want, to_close);
            }
            Source::Lease { token, id }
        }
        Spend::AskAndClose(closings) => {
            leases::send_closings(env, ctx, k.clone(), closings);
            return None;
        }
        Spend::Ask => return None,
    };
    Some(Admitted { plan: taken.plan, headers: taken.headers, source, replayed: false })
}

/// An admission by the org's DO, with the lease it may carry installed in this isolate.
fn admitted_by_do(
    reply: OrgReply,
    lease_key: Option<&ClassKey>,
    started: Timestamp,
    env: &Env,
    ctx: &Context,
) -> Admitted {
    let plan = reply.plan.unwrap_or_default();
    if let (true, Some(k)) = (reply.no_lease, lease_key) {
        leases::no_lease(k, started);
    }
    if let (Some(grant), Some(k)) = (reply.lease, lease_key) {
        if let Some(closing) = leases::install(k, grant, plan.clone(), now()) {
            leases::send_closings(env, ctx, k.clone(), vec![closing]);
        }
    }
    Admitted { plan, headers: reply.headers, source: Source::Do { held: reply.held }, replayed: reply.replayed }
}

/// No decision could be had: the plan's fail mode says forward (open) or refuse with 503 (closed).
async fn fail_over(env: &Env, key: &VerifiedKey, logged: &Logged<'_>) -> Result<Admitted, EdgeError> {
    match fail_mode(env, key).await {
        Ok((FailMode::Open, plan)) => {
            Ok(Admitted { plan, headers: Vec::new(), source: Source::FailOpen, replayed: false })
        }
        // The ledger could vouch for no such key: the same 401 as ever.
        Err(EdgeError::Unauthorized) => Err(EdgeError::Unauthorized),
        Ok((FailMode::Closed, _)) | Err(_) => {
            logged.log(env, Outcome::Unavailable, 503, "fail-closed");
            Err(EdgeError::Internal("no decision: org DO unavailable and the plan fails closed".into()))
        }
    }
}

/// The plan's fail mode from D1, with the key's revocation and expiry checked there instead of
/// in the DO.
async fn fail_mode(env: &Env, key: &VerifiedKey) -> Result<(FailMode, String), EdgeError> {
    let row = ledger::key_plan(&ledger::db(env)?, &key.org, &key.hash).await?;
    let t = now().millis();
    let row =
        row.filter(|r| r.revoked_at.is_none() && r.expires_at.is_none_or(|e| t < e)).ok_or(EdgeError::Unauthorized)?;
    let plan_id = PlanId::parse(&row.plan_id).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let doc = serde_json::from_str(&row.plan_body).map_err(|e| EdgeError::Internal(e.to_string()))?;
    Ok((Plan::parse(&plan_id, &doc)?.on_failure, row.plan_id))
}

/// Settles a proxied request after the origin answered, off the client's path (`wait_until`).
struct Settler {
    env: Env,
    org: OrgId,
    id: EventId,
    source: Source,
    lease_key: Option<ClassKey>,
    /// The first request of an `Idempotency-Key`: the org hears how it ended either way (its
    /// key is busy until then), a 2xx by `Report` and anything else by `Release` or `Forget`.
    idempotent: bool,
}

impl Settler {
    fn send(&self, ctx: &Context, op: OrgOp, what: &'static str) {
        let (env, org) = (self.env.clone(), self.org.clone());
        let msg = OrgMsg::Org { caller: Caller::Gateway, op };
        ctx.wait_until(async move {
            match call_do(&env, &org, &msg).await {
                Ok(r) if r.status == 200 => {}
                Ok(r) => worker::console_error!("{}", json!({"msg": what, "org": org.as_str(), "status": r.status})),
                Err(e) => {
                    worker::console_error!("{}", json!({"msg": what, "org": org.as_str(), "error": e.to_string()}));
                }
            }
        });
    }

    /// Usage counts only when the origin answers 2xx: the units this request holds go back.
    fn release(&self, ctx: &Context) {
        match &self.source {
            Source::Do { held: Some(held) } => {
                self.send(ctx, OrgOp::Release { id: self.id.clone(), held: *held, quantity: None }, "release failed");
            }
            Source::Lease { token, id } => {
                let Some(k) = &self.lease_key else { return };
                // Back into the lease it came from; if that lease was replaced, the DO gives the
                // request's units back from the lease's hold.
                if !leases::give_back(k, *token, k.cost) {
                    let op = OrgOp::Release { id: id.clone(), held: *token, quantity: Some(k.cost) };
                    self.send(ctx, op, "release failed");
                }
            }
            // A reported-cost request holds nothing; its key is given up so a retry is new.
            Source::Do { held: None } if self.idempotent => {
                self.send(ctx, OrgOp::Forget { id: self.id.clone() }, "idempotency key release failed");
            }
            Source::Do { held: None } | Source::FailOpen => {}
        }
    }

    /// After a 2xx: the usage the origin reported, and the end of an idempotent request's flight.
    fn report(&self, ctx: &Context, usage: Vec<(MeterId, u64)>) {
        let wanted = !usage.is_empty() || self.idempotent;
        if wanted && matches!(self.source, Source::Do { .. } | Source::Lease { .. }) {
            self.send(ctx, OrgOp::Report { id: self.id.clone(), usage }, "usage report failed");
        }
    }
}

/// Whether a client header stays at the edge: every header a quota key may come in (both, not
/// only the one it came in), the tenant headers (ours alone), `X-Usage-*` (the origin's report
/// to us), `Host`, and any prefix the deployment reserves (`RESERVED_HEADER_PREFIXES`).
fn withheld(name: &str, reserved: &[String]) -> bool {
    name.starts_with("x-quota-")
        || name.starts_with(USAGE_HEADER_PREFIX)
        || matches!(name, "authorization" | "x-api-key" | "host")
        || reserved.iter().any(|p| name.starts_with(p.as_str()))
}

/// The name requests to an origin bound as a service carry (the binding, not the host, routes
/// them).
const SERVICE_ORIGIN: &str = "https://origin.service";

thread_local! {
    /// Whether this isolate's Worker has an `ORIGIN` binding: a deployment's bindings never
    /// change under a running isolate, so a deployment with none pays no lookup per request.
    static ORIGIN_BOUND: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
}

/// The `ORIGIN` service binding, when the origin is another Worker of the account: requests go
/// to it on the same thread, with no network hop. It takes precedence over `ORIGIN_URL`.
fn origin_service(env: &Env) -> Option<worker::Fetcher> {
    let bound = ORIGIN_BOUND.with(|b| *b.get_or_init(|| env.service("ORIGIN").is_ok()));
    if bound {
        env.service("ORIGIN").ok()
    } else {
        None
    }
}

/// The request to the origin: same method, normalized path, query, body and headers, less the
/// withheld ones (`withheld`), plus the signed tenant headers.
fn origin_request(
    req: &Request,
    env: &Env,
    target: &Target<'_>,
    org: &OrgId,
    admitted: &Admitted,
    id: &EventId,
    bound: bool,
) -> Result<Request, EdgeError> {
    let cfg = settings(env);
    // Through the `ORIGIN` service binding the host is only a name (the binding routes); over
    // the network, `ORIGIN_URL`.
    let origin = if bound {
        SERVICE_ORIGIN
    } else {
        cfg.origin_url.as_deref().ok_or(EdgeError::NotConfigured("ORIGIN_URL (or an ORIGIN service binding)"))?
    };
    let origin_secret = cfg.origin_secret.as_ref().ok_or(EdgeError::NotConfigured("ORIGIN_SECRET"))?;
    // The names in one call; the copy, less the withheld, plus the tenant headers, in another.
    let mut edit = Rewrite::default();
    for name in Names::of(req.headers()).iter() {
        if withheld(name, &cfg.reserved_header_prefixes) {
            edit.drop(name);
        }
    }
    let ts = now().secs();
    let signed = Signed {
        ts_secs: ts,
        org: org.as_str(),
        plan: &admitted.plan,
        key_id: target.key_id,
        decision_id: id.as_str(),
        replay: admitted.replayed,
        method: target.method.as_ref(),
        path_and_query: &target.path_and_query,
    };
    edit.set("X-Quota-Org", org.as_str())?;
    edit.set("X-Quota-Plan", &admitted.plan)?;
    edit.set("X-Quota-Key-Id", target.key_id)?;
    edit.set("X-Quota-Decision-Id", id.as_str())?;
    edit.set("X-Quota-Replay", if admitted.replayed { "true" } else { "false" })?;
    edit.set("X-Quota-Timestamp", &ts.to_string())?;
    edit.set("X-Quota-Signature", &origin_signature(origin_secret, &signed))?;
    if admitted.source == Source::FailOpen {
        edit.set("X-Quota-Decision", "fail-open")?;
    }
    let headers = edit.apply(req.headers())?;
    let mut init = RequestInit::new();
    init.with_method(target.method.clone()).with_headers(headers).with_redirect(RequestRedirect::Manual);
    if !matches!(target.method, Method::Get | Method::Head) {
        match &target.body {
            Some(bytes) => init.with_body(Some(js_sys::Uint8Array::from(bytes.as_slice()).into())),
            None => init.with_body(req.inner().body().map(Into::into)),
        };
    }
    let url = format!("{}{}", origin.trim_end_matches('/'), target.path_and_query);
    Request::new_with_init(&url, &init).map_err(EdgeError::platform("origin request"))
}

/// The origin's headers for the client, less `X-Usage-*` (returned as usage), plus ours.
fn client_headers(res: &Response, admitted: &Admitted) -> Result<(Headers, Vec<(MeterId, u64)>), EdgeError> {
    let mut edit = Rewrite::default();
    let mut usage = Vec::new();
    for name in Names::of(res.headers()).iter() {
        let Some(meter) = usage_header_meter(name) else { continue };
        let value = res.headers().get(name).map_err(EdgeError::platform("headers"))?.unwrap_or_default();
        edit.drop(name);
        // The origin's report is trusted but still checked at the number boundary.
        match value.trim().parse::<u64>().ok().filter(|q| *q <= MAX_SAFE_INTEGER) {
            Some(q) => usage.push((meter, q)),
            None => worker::console_error!(
                "{}",
                json!({"msg": "bad usage header from origin", "header": name, "value": value})
            ),
        }
    }
    for (k, v) in &admitted.headers {
        edit.set(k, v)?;
    }
    if admitted.source == Source::FailOpen {
        edit.set("X-Quota-Decision", "fail-open")?;
    }
    Ok((edit.apply(res.headers())?, usage))
}

async fn forward(
    req: Request,
    env: &Env,
    ctx: &Context,
    target: &Target<'_>,
    admitted: &Admitted,
    settle: &Settler,
) -> Handled {
    // Looked up once per request: one property read of the environment.
    let service = origin_service(env);
    let fwd = origin_request(&req, env, target, &settle.org, admitted, &settle.id, service.is_some())?;
    let sent = match service {
        Some(service) => service.fetch_request(fwd).await,
        None => Fetch::Request(fwd).send().await,
    };
    let res = match sent {
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
            let reply = OrgReply { headers: admitted.headers.clone(), ..OrgReply::problem(502, body) };
            return reply_response(&reply).map_err(EdgeError::platform("response"));
        }
    };
    let (headers, usage) = client_headers(&res, admitted)?;
    if (200..300).contains(&res.status_code()) {
        settle.report(ctx, usage);
    } else {
        settle.release(ctx);
    }
    Ok(res.with_headers(headers))
}
