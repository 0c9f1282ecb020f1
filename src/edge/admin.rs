//! The admin API under `/_quota/admin`: plans, orgs, keys, resets, flush and reconciliation,
//! export, Stripe sync on demand, and metrics.
//!
//! It authenticates with `ADMIN_TOKEN` (compared in constant time), persists to D1 and pushes
//! each org's configuration to its Durable Object. Validation is the core's (`Plan::parse`,
//! `OrgTerms::parse`) and the wire module's; this file only sequences I/O.

use std::fmt::Write as _;

use serde_json::{json, Value};
use worker::{Env, Method, Request, Response};

use super::auth::authorize_admin;
use super::error::{json_response, EdgeError};
use super::ledger::{self, OrgRow, PlanRow};
use super::platform::{call_do, now, param, query, random_bytes, read_json, settings};
use crate::org::{AdminOp, Caller, KeyHash, LedgerOp, OrgMsg, OrgOp, OrgReply, StoredConfig};
use crate::policy::billing::{range_totals, DailyUsage, RangeTotals};
use crate::policy::keys::{mint, KEY_RANDOM_BYTES};
use crate::policy::{MeterId, OrgId, OrgTerms, Plan, PlanId, Policy, Timestamp};
use crate::wire::{csv_field, parse_range, parse_reset, InputError, OrgUpsert};

type Handled = Result<Response, EdgeError>;

fn path_id<T>(
    kind: &'static str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, crate::policy::ids::IdError>,
) -> Result<T, EdgeError> {
    parse(raw).map_err(|e| {
        EdgeError::Input(InputError::Field { field: format!("{kind} id in the path"), reason: format!("'{raw}' {e}") })
    })
}

fn ok(status: u16, body: &Value) -> Handled {
    json_response(status, body, "application/json").map_err(EdgeError::platform("response"))
}

fn rfc(ms: u64) -> String {
    Timestamp::from_millis(ms).rfc3339()
}

/// Routes `/_quota/admin/...`; `rest` is the path after `/_quota/admin/`.
pub async fn route(mut req: Request, env: &Env, rest: &str) -> Handled {
    authorize_admin(&req, env)?;
    settings(env).check(crate::config::Need::Admin).map_err(EdgeError::Misconfigured)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let method = req.method();
    match (method.clone(), parts.as_slice()) {
        (Method::Get, ["plans"]) => list_plans(env).await,
        (Method::Get, ["plans", id]) => get_plan(env, &path_id("plan", id, PlanId::parse)?).await,
        (Method::Put, ["plans", id]) => {
            let id = path_id("plan", id, PlanId::parse)?;
            let body = read_json(&mut req).await?;
            put_plan(env, &id, &body).await
        }
        (Method::Get, ["orgs", id]) => get_org(env, &path_id("org", id, OrgId::parse)?).await,
        (Method::Put, ["orgs", id]) => {
            let id = path_id("org", id, OrgId::parse)?;
            let body = read_json(&mut req).await?;
            put_org(env, &id, &body).await
        }
        (Method::Post, ["orgs", id, "keys"]) => create_key(env, &path_id("org", id, OrgId::parse)?).await,
        (Method::Get, ["orgs", id, "keys"]) => list_keys(env, &path_id("org", id, OrgId::parse)?).await,
        (Method::Delete, ["orgs", id, "keys", key_id]) => {
            revoke_key(env, &path_id("org", id, OrgId::parse)?, key_id).await
        }
        (Method::Post, ["orgs", id, "reset"]) => {
            let id = path_id("org", id, OrgId::parse)?;
            let meter = parse_reset(&read_json(&mut req).await?)?;
            require_org(env, &id).await?;
            let reply = do_ok(call_do(env, &id, &OrgMsg::Admin(AdminOp::Reset { meter: meter.clone() })).await?)?;
            ledger::record_reset(&ledger::db(env)?, &id, meter.as_ref().map(MeterId::as_str), now()).await?;
            ok(200, &reply.body)
        }
        (Method::Post, ["orgs", id, "flush"]) => {
            // No D1 lookup first: a flush must be able to report while the ledger is down.
            let id = path_id("org", id, OrgId::parse)?;
            let reply = do_ok(call_do(env, &id, &OrgMsg::Ledger(LedgerOp::Flush)).await?)?;
            ok(200, &reply.body)
        }
        (Method::Get | Method::Post, ["orgs", id, "reconcile"]) => {
            let id = path_id("org", id, OrgId::parse)?;
            require_org(env, &id).await?;
            let repair = method == Method::Post;
            let reply = do_ok(call_do(env, &id, &OrgMsg::Ledger(LedgerOp::Reconcile { repair })).await?)?;
            ok(200, &reply.body)
        }
        (Method::Get, ["export"]) => export(&req, env).await,
        // "Report now": an operator's sync skips the per-batch backoff (not the breaker).
        (Method::Post, ["stripe", "sync"]) => ok(200, &super::stripe::sync(env, true).await?),
        (Method::Get, ["orgs", id, "usage"]) => {
            // The dashboard's admin view: the same overview the org sees.
            let id = path_id("org", id, OrgId::parse)?;
            let reply = do_ok(
                call_do(env, &id, &OrgMsg::Org { caller: Caller::Admin, op: OrgOp::Usage { short: false } }).await?,
            )?;
            ok(200, &reply.body)
        }
        (Method::Get, ["metrics"]) => metrics(env).await,
        (_, p) if is_admin_resource(p) => {
            Err(EdgeError::MethodNotAllowed(format!("{method:?} is not allowed on /_quota/admin/{rest}")))
        }
        _ => Err(EdgeError::NotFound(format!("no admin endpoint /_quota/admin/{rest}"))),
    }
}

/// A path that names an admin resource (so a wrong method is 405, not 404).
fn is_admin_resource(p: &[&str]) -> bool {
    p == ["export"]
        || p == ["metrics"]
        || p == ["stripe", "sync"]
        || matches!(p, ["plans" | "orgs", ..])
            && matches!(p.len(), 1..=4)
            && p.get(2).is_none_or(|s| matches!(*s, "keys" | "reset" | "flush" | "reconcile" | "usage"))
}

/// A DO reply that must be a success, else its answer is passed through.
fn do_ok(reply: OrgReply) -> Result<OrgReply, EdgeError> {
    if reply.status == 200 {
        Ok(reply)
    } else {
        Err(EdgeError::Do(reply))
    }
}

fn plan_json(row: &PlanRow) -> Value {
    let mut doc: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
    if let Some(o) = doc.as_object_mut() {
        o.insert("id".into(), json!(row.id));
        o.insert("name".into(), json!(row.name));
        o.insert("created_at".into(), json!(rfc(row.created_at)));
        o.insert("updated_at".into(), json!(rfc(row.updated_at)));
        o.insert("version".into(), json!(row.version));
    }
    doc
}

async fn list_plans(env: &Env) -> Handled {
    let rows = ledger::list_plans(&ledger::db(env)?).await?;
    ok(200, &json!({"plans": rows.iter().map(plan_json).collect::<Vec<_>>()}))
}

async fn get_plan(env: &Env, id: &PlanId) -> Handled {
    let row = ledger::get_plan(&ledger::db(env)?, id)
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("unknown plan '{id}'")))?;
    ok(200, &plan_json(&row))
}

async fn put_plan(env: &Env, id: &PlanId, body: &Value) -> Handled {
    let plan = Plan::parse(id, body)?;
    let db = ledger::db(env)?;
    // Stored without the fields the path and the row own, so a GET shows them once.
    let mut doc = body.clone();
    if let Some(o) = doc.as_object_mut() {
        o.remove("id");
        o.remove("name");
    }
    // No fan-out: the new version is in D1, and each org's DO adopts it by itself within
    // PLAN_REFRESH_SECS (on its next request once its copy is that old, or from its alarm while
    // it is busy). Three D1 queries, however many orgs are on the plan.
    let created = ledger::put_plan(&db, id, &plan.name, &doc.to_string(), now()).await?;
    let row =
        ledger::get_plan(&db, id).await?.ok_or_else(|| EdgeError::Internal("plan vanished after upsert".into()))?;
    let orgs = ledger::orgs_on_plan_count(&db, id).await?;
    let mut out = plan_json(&row);
    if let Some(o) = out.as_object_mut() {
        o.insert("orgs".into(), json!(orgs));
        o.insert("adopted_within_secs".into(), json!(settings(env).plan_refresh_ms / 1000));
    }
    ok(if created { 201 } else { 200 }, &out)
}

/// The config an org's DO runs: the org's row and its plan's current version.
pub fn org_config(org: &OrgRow, plan: &PlanRow) -> Result<StoredConfig, EdgeError> {
    Ok(StoredConfig {
        org: OrgId::parse(&org.id).map_err(|e| EdgeError::Internal(format!("stored org id '{}': {e}", org.id)))?,
        plan_id: PlanId::parse(&org.plan_id).map_err(|e| EdgeError::Internal(format!("stored plan id: {e}")))?,
        plan: serde_json::from_str(&plan.body).map_err(|e| EdgeError::Internal(format!("stored plan: {e}")))?,
        billing_anchor: org.billing_anchor.clone().map(Value::String),
        overrides: serde_json::from_str(&org.overrides).ok(),
        webhook_url: org.webhook_url.clone(),
        stripe_customer: org.stripe_customer_id.clone(),
        plan_version: plan.version,
        shard: org.shard,
    })
}

async fn push_config(env: &Env, org: &OrgRow, plan: &PlanRow) -> Result<OrgReply, EdgeError> {
    let cfg = org_config(org, plan)?;
    let id = cfg.org.clone();
    do_ok(call_do(env, &id, &OrgMsg::Admin(AdminOp::Configure(cfg))).await?)
}

fn org_json(row: &OrgRow, state: &Value) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "plan": row.plan_id,
        "billing_anchor": row.billing_anchor,
        "stripe_customer_id": row.stripe_customer_id,
        "webhook_url": row.webhook_url,
        "overrides": serde_json::from_str::<Value>(&row.overrides).unwrap_or(Value::Null),
        "created_at": rfc(row.created_at),
        "updated_at": rfc(row.updated_at),
        "state": state,
    })
}

async fn require_org(env: &Env, id: &OrgId) -> Result<OrgRow, EdgeError> {
    ledger::get_org(&ledger::db(env)?, id).await?.ok_or_else(|| EdgeError::NotFound(format!("unknown org '{id}'")))
}

async fn get_org(env: &Env, id: &OrgId) -> Handled {
    let row = require_org(env, id).await?;
    let state = do_ok(call_do(env, id, &OrgMsg::Admin(AdminOp::State)).await?)?;
    ok(200, &org_json(&row, &state.body))
}

async fn put_org(env: &Env, id: &OrgId, body: &Value) -> Handled {
    let up = OrgUpsert::parse(body)?;
    let db = ledger::db(env)?;
    let plan_row = ledger::get_plan(&db, &up.plan).await?.ok_or_else(|| {
        EdgeError::Input(InputError::Field { field: "plan".into(), reason: format!("unknown plan '{}'", up.plan) })
    })?;
    let plan_doc: Value =
        serde_json::from_str(&plan_row.body).map_err(|e| EdgeError::Internal(format!("stored plan: {e}")))?;
    let plan = Plan::parse(&up.plan, &plan_doc)?;
    // Validates the anchor and the overrides against the plan before anything is stored.
    let terms = OrgTerms::parse(up.billing_anchor.as_ref(), up.overrides.as_ref(), &plan)?;
    let existing = ledger::get_org(&db, id).await?;
    let t = now().millis();
    let row = OrgRow {
        id: id.to_string(),
        name: up.name,
        plan_id: up.plan.to_string(),
        billing_anchor: terms.billing_anchor.map(|d| d.to_string()),
        stripe_customer_id: up.stripe_customer_id,
        webhook_url: up.webhook_url,
        overrides: up.overrides.unwrap_or_else(|| json!([])).to_string(),
        created_at: existing.as_ref().map_or(t, |e| e.created_at),
        updated_at: t,
        // Set once, when the org is created: its history stays where it was written.
        shard: existing.as_ref().map_or_else(|| id.shard(settings(env).ledger_shards), |e| e.shard),
    };
    ledger::put_org(&db, &row).await?;
    let state = push_config(env, &row, &plan_row).await?;
    ok(if existing.is_some() { 200 } else { 201 }, &org_json(&row, &state.body))
}

async fn create_key(env: &Env, org: &OrgId) -> Handled {
    require_org(env, org).await?;
    let cfg = settings(env);
    let secret = cfg.key_secret.as_deref().ok_or(EdgeError::NotConfigured("KEY_SECRET"))?;
    let key = mint(org, &random_bytes::<KEY_RANDOM_BYTES>()?, secret.as_bytes());
    let t = now();
    ledger::insert_key(&ledger::db(env)?, &key.key_id, org, &key.hash, &key.prefix, t).await?;
    do_ok(
        call_do(env, org, &OrgMsg::Admin(AdminOp::AddKey { key_id: key.key_id.clone(), hash: KeyHash(key.hash) }))
            .await?,
    )?;
    ok(
        201,
        &json!({"key_id": key.key_id, "key": key.plaintext, "prefix": key.prefix, "org_id": org.as_str(), "created_at": t.rfc3339()}),
    )
}

async fn list_keys(env: &Env, org: &OrgId) -> Handled {
    require_org(env, org).await?;
    let rows = ledger::list_keys(&ledger::db(env)?, org).await?;
    let keys: Vec<Value> = rows
        .iter()
        .map(|k| json!({"key_id": k.id, "prefix": k.prefix, "created_at": rfc(k.created_at), "revoked_at": k.revoked_at.map(rfc)}))
        .collect();
    ok(200, &json!({"org_id": org.as_str(), "keys": keys}))
}

async fn revoke_key(env: &Env, org: &OrgId, key_id: &str) -> Handled {
    require_org(env, org).await?;
    // D1 first: if the DO call then fails, the fail-open path still sees the revocation.
    let revoked = ledger::revoke_key(&ledger::db(env)?, org, key_id, now())
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("org '{org}' has no key '{key_id}'")))?;
    do_ok(call_do(env, org, &OrgMsg::Admin(AdminOp::RevokeKey { key_id: key_id.to_owned() })).await?)?;
    ok(200, &json!({"key_id": key_id, "org_id": org.as_str(), "revoked_at": rfc(revoked)}))
}

/// One export row: org, plan, meter and the totals over the range.
struct ExportRow {
    org: String,
    plan: String,
    meter: String,
    totals: RangeTotals,
}

/// Groups the rollups by (org, meter) and prices each group under its org's plan.
fn export_rows(days: &[ledger::DailyRow], orgs: &[OrgRow], plans: &[PlanRow]) -> Result<Vec<ExportRow>, EdgeError> {
    let mut rows = Vec::new();
    let mut i = 0usize;
    while let Some(first) = days.get(i) {
        let group: Vec<&ledger::DailyRow> =
            days.iter().skip(i).take_while(|d| d.org_id == first.org_id && d.meter == first.meter).collect();
        i = i.saturating_add(group.len());
        let daily: Vec<DailyUsage> = group
            .iter()
            .filter_map(|d| {
                let day = crate::policy::clock::parse_date(&d.day).ok()?;
                Some(DailyUsage {
                    day,
                    quantity: d.quantity,
                    events: d.events,
                    max_value: d.max_value,
                    last_value: d.last_value,
                })
            })
            .collect();
        let meter = MeterId::parse(&first.meter).map_err(|e| EdgeError::Internal(e.to_string()))?;
        let org = orgs.iter().find(|o| o.id == first.org_id);
        let plan_row = org.and_then(|o| plans.iter().find(|p| p.id == o.plan_id));
        let (plan, totals) = match (org, plan_row) {
            (Some(o), Some(p)) => {
                let policy = ledger::policy_of(o, p)?;
                (policy.plan.to_string(), range_totals(&policy, &meter, &daily))
            }
            // An org deleted since: its usage is still exported, unpriced.
            _ => (String::new(), range_totals(&Policy::unpriced(), &meter, &daily)),
        };
        rows.push(ExportRow { org: first.org_id.clone(), plan, meter: first.meter.clone(), totals });
    }
    Ok(rows)
}

/// `GET /_quota/admin/export?from&to&format=json|csv`: per org and meter over the inclusive
/// date range, from the daily rollups, with overage priced by each org's plan.
async fn export(req: &Request, env: &Env) -> Handled {
    let q = query(req);
    let get = |n: &str| param(&q, n);
    let (from, to) = parse_range(get("from"), get("to"), 366)?;
    let csv = match get("format").unwrap_or("json") {
        "json" => false,
        "csv" => true,
        other => {
            let reason = format!("must be json or csv (got '{other}')");
            return Err(EdgeError::Input(InputError::Field { field: "format".into(), reason }));
        }
    };
    let db = ledger::db(env)?;
    // Every shard's rows, merged back into (org, meter, day) order.
    let mut days = Vec::new();
    for shard in ledger::all_shards(env, settings(env).ledger_shards)? {
        days.extend(ledger::daily_range(&shard, &from.to_string(), &to.to_string()).await?);
    }
    days.sort_by(|a, b| (&a.org_id, &a.meter, &a.day).cmp(&(&b.org_id, &b.meter, &b.day)));
    let rows = export_rows(&days, &ledger::all_orgs(&db).await?, &ledger::list_plans(&db).await?)?;
    if csv {
        let mut out = String::from("org_id,plan,meter,quantity,events,overage,overage_cost_cents\r\n");
        for r in &rows {
            let t = &r.totals;
            let _ = write!(
                out,
                "{},{},{},{},{},{},{}\r\n",
                csv_field(&r.org),
                csv_field(&r.plan),
                csv_field(&r.meter),
                t.quantity,
                t.events,
                t.overage,
                t.overage_cost_cents
            );
        }
        let headers = worker::Headers::new();
        headers.set("Content-Type", "text/csv; charset=utf-8").map_err(EdgeError::platform("headers"))?;
        let name = format!("attachment; filename=\"quotagate-usage-{from}-{to}.csv\"");
        headers.set("Content-Disposition", &name).map_err(EdgeError::platform("headers"))?;
        return Ok(Response::ok(out).map_err(EdgeError::platform("response"))?.with_headers(headers));
    }
    let total_cost = rows.iter().fold(0u64, |a, r| a.saturating_add(r.totals.overage_cost_cents));
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"org_id": r.org, "plan": r.plan, "meter": r.meter, "quantity": r.totals.quantity,
                   "events": r.totals.events, "overage": r.totals.overage, "overage_cost_cents": r.totals.overage_cost_cents})
        })
        .collect();
    let body = json!({"from": from.to_string(), "to": to.to_string(), "generated_at": now().rfc3339(),
                      "total_overage_cost_cents": total_cost, "rows": items});
    ok(200, &body)
}

/// `GET /_quota/admin/metrics`: Prometheus text exposition of the gauges scheduled jobs publish.
async fn metrics(env: &Env) -> Handled {
    let db = ledger::db(env)?;
    // Each org's DO publishes its gauges to its own shard.
    let mut rows = Vec::new();
    let mut repairs = Vec::new();
    let mut backlog = (0u64, 0u64);
    for shard in ledger::all_shards(env, settings(env).ledger_shards)? {
        rows.extend(ledger::gauges(&shard).await?);
        repairs.extend(ledger::repair_counts(&shard).await?);
        let (pending, expired) = ledger::stripe_backlog(&shard).await?;
        backlog = (backlog.0.saturating_add(pending), backlog.1.saturating_add(expired));
    }
    rows.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    let mut out = ledger::live_metrics(&db, now(), backlog).await?;
    out.push_str("# HELP quotagate_reconcile_repairs_total Counters an org repaired by itself (drift within RECONCILE_AUTOFIX_PCT).\n# TYPE quotagate_reconcile_repairs_total counter\n");
    repairs.sort();
    for (org, n) in &repairs {
        let _ = writeln!(out, "quotagate_reconcile_repairs_total{{org=\"{org}\"}} {n}");
    }
    out.push_str(&crate::telemetry::render(&ledger::latency(&db).await?));
    let mut last = "";
    for r in &rows {
        if r.name != last {
            let help = match r.name.as_str() {
                "quotagate_reconcile_drift_units" => {
                    "Units by which an org's counters differ from the ledger at the last reconciliation."
                }
                "quotagate_decisions_total" => "Decisions by org, meter and outcome, as of the org's last report.",
                "quotagate_outbox_depth" => "Usage events of an org not yet in the ledger, at its last report.",
                "quotagate_ledger_flush_failures" => "Consecutive failed ledger flushes of an org, at its last report.",
                _ => "Published by a scheduled job.",
            };
            let _ = write!(out, "# HELP {} {help}\n# TYPE {} gauge\n", r.name, r.name);
            last = &r.name;
        }
        let _ = writeln!(out, "{}{{{}}} {}", r.name, r.labels, r.value);
    }
    let headers = worker::Headers::new();
    headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8").map_err(EdgeError::platform("headers"))?;
    Ok(Response::ok(out).map_err(EdgeError::platform("response"))?.with_headers(headers))
}
