//! The admin API under `/_quota/admin`: plans, orgs, keys, resets, flush and reconciliation,
//! export, Stripe sync on demand, metrics, admin tokens and the audit log, and the operator
//! console's reads (`console`: the org list by level, the status view).
//!
//! It authenticates with `ADMIN_TOKEN` or a named token (`auth`), refuses a `read` token's
//! writes (403), writes an audit row around every write, persists to D1 and pushes each org's
//! configuration to its Durable Object. The endpoints are `op`'s; keys, tokens and the audit
//! view are `access`'s. Validation is the core's (`Plan::parse`, `OrgTerms::parse`) and the
//! wire module's; this module only sequences I/O.

mod access;
mod console;
mod op;

use std::fmt::Write as _;

use serde_json::{json, Value};
use worker::{Env, Request, Response};

use self::op::Op;
use super::auth::{authorize_admin, Admin};
use super::error::{json_response, EdgeError};
use super::ledger::{self, AuditStart, OrgRow, PlanRow};
use super::platform::{call_do, now, param, query, read_json, settings};
use crate::org::{AdminOp, Caller, LedgerOp, OrgMsg, OrgOp, OrgReply, StoredConfig};
use crate::policy::billing::{range_totals, DailyUsage, RangeTotals};
use crate::policy::{MeterId, OrgId, OrgTerms, Plan, PlanId, Policy, Timestamp};
use crate::wire::{csv_field, parse_range, parse_reset, InputError, OrgUpsert, Scope};

type Handled = Result<Response, EdgeError>;

fn ok(status: u16, body: &Value) -> Handled {
    json_response(status, body, "application/json").map_err(EdgeError::platform("response"))
}

fn rfc(ms: u64) -> String {
    Timestamp::from_millis(ms).rfc3339()
}

/// What a handler answered, and for a write, what it changed (the audit row's summary).
struct Done {
    response: Response,
    change: Option<String>,
}

impl Done {
    fn read(response: Response) -> Self {
        Self { response, change: None }
    }

    fn wrote(response: Response, change: String) -> Self {
        Self { response, change: Some(change) }
    }
}

/// The longest summary an audit row keeps.
const MAX_SUMMARY: usize = 2_000;

/// Routes `/_quota/admin/...`; `rest` is the path after `/_quota/admin/`. Who asks is settled
/// first, then what: a write needs the `write` scope, and its audit row is in D1 before the
/// change is made (no row, no change), with the status and what changed added after.
pub async fn route(mut req: Request, env: &Env, rest: &str) -> Handled {
    let who = authorize_admin(&req, env).await?;
    settings(env).check(crate::config::Need::Admin).map_err(EdgeError::Misconfigured)?;
    let op = Op::parse(&req.method(), rest)?;
    let Some((action, target)) = op.audited() else {
        return Ok(run(op, &mut req, env, &who).await?.response);
    };
    let db = ledger::db(env)?;
    let start = AuditStart { at: now(), token_id: &who.token_id, token_name: &who.name, action, target: &target };
    let seq = match ledger::audit_begin(&db, &start).await {
        Ok(seq) => Some(seq),
        // A flush moves pending usage to D1 and changes nothing else; while D1 is down its point
        // is to report the backlog, so it runs without its row (said loudly) rather than not at all.
        Err(e) if op.runs_without_ledger() => {
            let line = json!({"level": "error", "component": "audit", "msg": "audit row not written",
                              "action": action, "target": target, "error": e.to_string()});
            worker::console_error!("{line}");
            None
        }
        Err(e) => return Err(e),
    };
    let (response, change) = if who.scope == Scope::Write {
        match run(op, &mut req, env, &who).await {
            Ok(done) => (done.response, done.change),
            // Not the error's text: it may echo what the client sent.
            Err(e) => {
                let response = e.into_response().map_err(EdgeError::platform("response"))?;
                let why = format!("not done: refused with {}", response.status_code());
                (response, Some(why))
            }
        }
    } else {
        let denied = EdgeError::Forbidden(format!(
            "token '{}' has scope read; {action} needs a token with scope write",
            who.name
        ));
        let response = denied.into_response().map_err(EdgeError::platform("response"))?;
        (response, Some("denied: the token's scope is read".to_owned()))
    };
    let change: Option<String> = change.map(|c| c.chars().take(MAX_SUMMARY).collect());
    let finished = match seq {
        Some(seq) => ledger::audit_finish(&db, seq, response.status_code(), change.as_deref()).await,
        None => Ok(()),
    };
    if let Err(e) = finished {
        // The row is there (status null: outcome unknown); the change stands, so say so loudly.
        let line = json!({"level": "error", "component": "audit", "msg": "audit row not finished", "seq": seq,
                          "error": e.to_string()});
        worker::console_error!("{line}");
    }
    Ok(response)
}

/// Carries out one admin operation.
async fn run(op: Op, req: &mut Request, env: &Env, who: &Admin) -> Result<Done, EdgeError> {
    let done = match op {
        Op::ListPlans => Done::read(list_plans(env).await?),
        Op::GetPlan(id) => Done::read(get_plan(env, &id).await?),
        Op::PutPlan(id) => {
            let body = read_json(req).await?;
            put_plan(env, &id, &body).await?
        }
        Op::ListOrgs => Done::read(console::list_orgs(req, env).await?),
        Op::GetOrg(id) => Done::read(get_org(env, &id).await?),
        Op::PutOrg(id) => {
            let body = read_json(req).await?;
            put_org(env, &id, &body).await?
        }
        Op::OrgUsage(id) => {
            // The dashboard's admin view: the same overview the org sees.
            let msg = OrgMsg::Org { caller: Caller::Admin, op: OrgOp::Usage { short: false } };
            Done::read(ok(200, &do_ok(call_do(env, &id, &msg).await?)?.body)?)
        }
        Op::OrgHistory(id) => {
            // The usage page's chart in admin mode: the org API's own daily series.
            require_org(env, &id).await?;
            let (meter, from, to) = super::usage_api::history_query(req)?;
            Done::read(ok(200, &super::usage_api::history_body(env, &id, &meter, from, to).await?)?)
        }
        Op::ListKeys(id) => Done::read(access::list_keys(env, &id).await?),
        Op::CreateKey(id) => {
            let body = read_json(req).await?;
            access::create_key(env, &id, &body).await?
        }
        Op::RollKey(id, key) => {
            let body = read_json(req).await?;
            access::roll_key(env, &id, &key, &body).await?
        }
        Op::RevokeKey(id, key) => access::revoke_key(env, &id, &key).await?,
        Op::Reset(id) => {
            let meter = parse_reset(&read_json(req).await?)?;
            require_org(env, &id).await?;
            let reply = do_ok(call_do(env, &id, &OrgMsg::Admin(AdminOp::Reset { meter: meter.clone() })).await?)?;
            ledger::record_reset(&ledger::db(env)?, &id, meter.as_ref().map(MeterId::as_str), now()).await?;
            let what = meter.map_or_else(|| "every meter".to_owned(), |m| format!("meter {m}"));
            Done::wrote(ok(200, &reply.body)?, format!("reset {what}"))
        }
        Op::Flush(id) => {
            // No D1 lookup first: a flush must be able to report while the ledger is down.
            let reply = do_ok(call_do(env, &id, &OrgMsg::Ledger(LedgerOp::Flush)).await?)?;
            Done::wrote(ok(200, &reply.body)?, format!("flushed the ledger: {}", reply.body))
        }
        Op::Reconcile { org, repair } => {
            require_org(env, &org).await?;
            let reply = do_ok(call_do(env, &org, &OrgMsg::Ledger(LedgerOp::Reconcile { repair })).await?)?;
            let response = ok(200, &reply.body)?;
            if repair {
                Done::wrote(response, format!("repaired counters to the ledger: {}", reply.body))
            } else {
                Done::read(response)
            }
        }
        Op::Export => Done::read(export(req, env).await?),
        // "Report now": an operator's sync skips the per-batch backoff (not the breaker).
        Op::StripeSync => {
            let body = super::stripe::sync(env, true).await?;
            Done::wrote(ok(200, &body)?, format!("Stripe sync: {body}"))
        }
        Op::Metrics => Done::read(metrics(env).await?),
        Op::ListTokens => Done::read(access::list_tokens(env).await?),
        Op::CreateToken => {
            let body = read_json(req).await?;
            access::create_token(env, who, &body).await?
        }
        Op::RevokeToken(id) => access::revoke_token(env, &id).await?,
        Op::Audit => Done::read(access::audit(req, env).await?),
        Op::Status => Done::read(console::status(env, who).await?),
    };
    Ok(done)
}

/// A DO reply that must be a success, else its answer is passed through.
fn do_ok(reply: OrgReply) -> Result<OrgReply, EdgeError> {
    if reply.status == 200 {
        Ok(reply)
    } else {
        Err(EdgeError::Do(Box::new(reply)))
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

async fn put_plan(env: &Env, id: &PlanId, body: &Value) -> Result<Done, EdgeError> {
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
    // A plan holds no secret: the audit row keeps the document as stored (cut to its limit).
    let change = format!("{} plan version {}: {doc}", if created { "created" } else { "updated" }, row.version);
    Ok(Done::wrote(ok(if created { 201 } else { 200 }, &out)?, change))
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

async fn put_org(env: &Env, id: &OrgId, body: &Value) -> Result<Done, EdgeError> {
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
    let change = org_change(existing.as_ref(), &row);
    Ok(Done::wrote(ok(if existing.is_some() { 200 } else { 201 }, &org_json(&row, &state.body))?, change))
}

/// What a PUT of an org changed, for the audit log. A webhook URL may carry a token of the
/// receiver's and a Stripe customer id is the customer's: the log says only whether each is set.
fn org_change(before: Option<&OrgRow>, after: &OrgRow) -> String {
    let set = |v: &Option<String>| if v.is_some() { "set" } else { "unset" };
    let plan = match before {
        Some(b) if b.plan_id != after.plan_id => format!("plan {} -> {}", b.plan_id, after.plan_id),
        _ => format!("plan {}", after.plan_id),
    };
    format!(
        "{} org: {plan}; name {:?}; billing_anchor {}; overrides {}; webhook_url {}; stripe_customer_id {}",
        if before.is_some() { "updated" } else { "created" },
        after.name.as_deref().unwrap_or(""),
        after.billing_anchor.as_deref().unwrap_or("none"),
        after.overrides,
        set(&after.webhook_url),
        set(&after.stripe_customer_id),
    )
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
                "quotagate_org_report_timestamp_seconds" => {
                    "When an org last reconciled and reported (epoch seconds); active orgs report every ORG_REPORT_SECS."
                }
                "quotagate_cron_last_run_timestamp_seconds" => "When the scheduled job last finished (epoch seconds).",
                _ => "Published by a scheduled job.",
            };
            // Decision counts only grow (they are an org's running totals, published at its
            // report): a counter, as its `_total` name says.
            let kind = if r.name.ends_with("_total") { "counter" } else { "gauge" };
            let _ = write!(out, "# HELP {} {help}\n# TYPE {} {kind}\n", r.name, r.name);
            last = &r.name;
        }
        let _ = writeln!(out, "{}{{{}}} {}", r.name, r.labels, r.value);
    }
    let headers = worker::Headers::new();
    headers.set("Content-Type", "text/plain; version=0.0.4; charset=utf-8").map_err(EdgeError::platform("headers"))?;
    Ok(Response::ok(out).map_err(EdgeError::platform("response"))?.with_headers(headers))
}
