//! Edge glue for Cloudflare Workers (wasm32 only): the Worker entry, the router, the org Durable
//! Object, D1 statements and the proxy.
//!
//! Each file here translates between the platform and the policy core and does nothing else: no
//! limit arithmetic, no calendar math. A panic here is a bug; every failure becomes an answer
//! through `EdgeError`.

mod admin;
mod auth;
mod cron;
mod dashboard;
mod error;
mod headers;
mod leases;
mod ledger;
mod org_api;
mod org_do;
mod platform;
mod proxy;
mod recalls;
mod rpc;
mod stripe;
mod usage_api;

use serde_json::json;
use worker::{event, Context, Env, Method, Request, Response, ScheduleContext, ScheduledEvent};

use crate::telemetry;
use error::{json_response, EdgeError};

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    platform::set_clock(&env);
    let res = match route(req, &env, &ctx).await {
        Ok(res) => Ok(res),
        Err(e) => e.into_response(),
    };
    if let Some(rows) = platform::latency_due(&env) {
        ctx.wait_until(async move { hand_over_latency(&env, rows).await });
    }
    res
}

/// Adds this isolate's latency buckets to the ledger's; on failure they wait for the next turn.
async fn hand_over_latency(env: &Env, rows: Vec<telemetry::BucketRow>) {
    let result = match ledger::db(env) {
        Ok(db) => ledger::add_latency(&db, &rows).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        worker::console_error!("{}", json!({"msg": "latency hand-over failed", "error": e.to_string()}));
        platform::latency_restore(rows);
    }
}

/// Cron: reconciliation (report only), gauges, Stripe reporting and ledger retention.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    platform::set_clock(&env);
    cron::run(&env).await;
    if let Some(rows) = platform::latency_due(&env) {
        hand_over_latency(&env, rows).await;
    }
}

async fn route(req: Request, env: &Env, ctx: &Context) -> Result<Response, EdgeError> {
    let path = req.path();
    let method = req.method();
    if method == Method::Get {
        if let Some(page) = dashboard::serve(&path) {
            return page;
        }
    }
    if let Some(rest) = path.strip_prefix("/_quota/admin/") {
        return admin::route(req, env, rest).await;
    }
    if let Some(rest) = path.strip_prefix("/_quota/v1/reservations/") {
        return match method {
            Method::Post => org_api::settle(req, env, rest).await,
            _ => Err(EdgeError::MethodNotAllowed("reservations take POST".into())),
        };
    }
    match (method, path.as_str()) {
        (Method::Get, "/_quota/healthz") => healthz(env).await,
        (_, "/_quota/healthz") => Err(EdgeError::MethodNotAllowed("healthz takes GET".into())),
        (Method::Post, "/_quota/v1/check") => org_api::check(req, env).await,
        (Method::Post, "/_quota/v1/events") => usage_api::events(req, env).await,
        (Method::Get, "/_quota/v1/usage") => usage_api::live(&req, env, false).await,
        (Method::Get, "/_quota/v1/usage/status") => usage_api::live(&req, env, true).await,
        (Method::Get, "/_quota/v1/usage/summary") => usage_api::summary(&req, env).await,
        (Method::Get, "/_quota/v1/usage/history") => usage_api::history(&req, env).await,
        (
            _,
            "/_quota/v1/events"
            | "/_quota/v1/usage"
            | "/_quota/v1/usage/status"
            | "/_quota/v1/usage/summary"
            | "/_quota/v1/usage/history",
        ) => Err(EdgeError::MethodNotAllowed(format!("{} does not take {:?}", path, req.method()))),
        (_, "/_quota/v1/check") => Err(EdgeError::MethodNotAllowed("check takes POST".into())),
        (Method::Get, "/_quota/fault/panic" | "/_quota/fault/panic-do") if platform::settings(env).faults.panic => {
            injected_panic(env, &path).await
        }
        (_, p) if p == "/_quota" || p.starts_with("/_quota/") => Err(EdgeError::NotFound(format!("no endpoint {p}"))),
        _ => proxy::handle(req, env, ctx).await,
    }
}

/// `QUOTA_FAULTS=panic` (tests only): a panic in this isolate, or in a Durable Object's, so the
/// tests see worker/entry.mjs make a fresh wasm instance and the next request answer.
async fn injected_panic(env: &Env, path: &str) -> Result<Response, EdgeError> {
    assert!(path != "/_quota/fault/panic", "fault injected: panic");
    let ns = env.durable_object("ORG_QUOTA").map_err(EdgeError::platform("ORG_QUOTA binding"))?;
    let stub = ns.get_by_name("_health").map_err(EdgeError::platform("DO stub"))?;
    let res = stub.fetch_with_str("https://org-quota/panic").await.map_err(EdgeError::platform("DO panic"))?;
    Ok(res)
}

/// Liveness plus a real round trip to both backing stores: the D1 ledger (its schema must be
/// migrated) and a Durable Object's `SQLite` storage.
async fn healthz(env: &Env) -> Result<Response, EdgeError> {
    // Every setting that is set and wrong, by name: the deployment answers 503 until it is fixed.
    let cfg = platform::settings(env);
    if !cfg.errors.is_empty() {
        let errors: Vec<serde_json::Value> =
            cfg.errors.iter().map(|e| json!({"var": e.var, "reason": e.reason, "message": e.to_string()})).collect();
        let body = json!({"status": "misconfigured", "service": "quotagate", "version": env!("CARGO_PKG_VERSION"), "errors": errors});
        return json_response(503, &body, "application/json").map_err(EdgeError::platform("response"));
    }
    let plans = ledger::plan_count(&ledger::db(env)?).await?;
    let ns = env.durable_object("ORG_QUOTA").map_err(EdgeError::platform("ORG_QUOTA binding"))?;
    // Org ids never start with '_', so this object never holds an org's counters.
    let stub = ns.get_by_name("_health").map_err(EdgeError::platform("DO stub"))?;
    let mut pong = stub.fetch_with_str("https://org-quota/ping").await.map_err(EdgeError::platform("DO ping"))?;
    let pong: serde_json::Value = pong.json().await.map_err(EdgeError::platform("DO ping body"))?;
    // The key secret versions in use, never a secret: what a rotation's steps are checked by.
    let keys = cfg.key_secrets.as_ref().map(|k| {
        let versions: Vec<u16> = k.versions().iter().map(|v| v.get()).collect();
        json!({"current_version": k.current().0.get(), "accepted_versions": versions})
    });
    let signing = |s: Option<&crate::policy::secret::Secrets>| s.map_or(0, |s| s.iter().count());
    let body = json!({
        "status": "ok",
        "service": "quotagate",
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {
            "ledger": {"ok": true, "plans": plans},
            "org_do": pong,
        },
        "secrets": {
            "keys": keys,
            "origin_signatures": signing(cfg.origin_secret.as_ref()),
            "webhook_signatures": signing(cfg.webhook_secret.as_ref()),
        },
    });
    json_response(200, &body, "application/json").map_err(EdgeError::platform("response"))
}
