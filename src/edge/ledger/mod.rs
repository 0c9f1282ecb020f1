//! The one D1 access layer: every D1 statement of the gateway lives under this module, and no
//! other file calls `prepare`. This file holds the catalogue (plans, orgs) and the helpers;
//! `access` API keys, admin tokens and the audit log; `console` org levels and the operator
//! console's reads; `usage` the usage ledger, `ops` gauges,
//! latency buckets and alert deliveries, and `billing` the Stripe reporting state.
//!
//! Each function is one statement or one batch and translates rows to plain structs; it must
//! never validate business rules (the core does) nor call a Durable Object.

mod access;
mod billing;
mod console;
mod ops;
mod usage;

pub use access::{
    active_token_count, admin_token, audit_begin, audit_finish, audit_page, get_key, insert_key, insert_token,
    key_plan, key_shard, list_keys, list_tokens, prune_audit, revoke_key, revoke_token, roll_key, AuditStart, KeyRow,
    NewKeyRow, TokenRow,
};
pub use billing::{
    claim_hourly, due_batches, expire_batch, fail_batch, set_breaker, settle_batch, stripe_backlog, stripe_breaker,
    Batch,
};
pub use console::{ledger_health, org_page, recent_alerts, set_levels, LedgerHealthRow, OrgLevelRow};
pub use ops::{add_latency, gauges, latency, live_metrics, record_alert_attempt, set_gauges, AlertAttempt};
pub use usage::{
    apply_buckets, daily_range, history, insert_usage, prune, record_repairs, record_reset, repair_counts, summary,
    window_aggregate, DailyRow, Repaired,
};

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, Env};

use super::error::EdgeError;
use super::platform::js_int;
use crate::policy::{OrgId, PlanId, Timestamp};
use crate::policy::{OrgTerms, Plan, Policy};

/// The catalogue's database (plans, orgs, keys, Stripe batches, gauges): also ledger shard 0.
pub fn db(env: &Env) -> Result<D1Database, EdgeError> {
    env.d1("LEDGER").map_err(EdgeError::platform("LEDGER binding"))
}

/// The database of ledger shard `n`: `LEDGER` for 0, `LEDGER_<n>` otherwise.
pub fn shard_db(env: &Env, n: u32) -> Result<D1Database, EdgeError> {
    if n == 0 {
        return db(env);
    }
    env.d1(&format!("LEDGER_{n}")).map_err(EdgeError::platform("LEDGER_<n> binding"))
}

/// Every ledger shard, for the readers that span orgs (export, Stripe, retention).
pub fn all_shards(env: &Env, shards: u32) -> Result<Vec<D1Database>, EdgeError> {
    (0..shards.max(1)).map(|n| shard_db(env, n)).collect()
}

fn s(v: &str) -> JsValue {
    JsValue::from_str(v)
}

fn opt(v: Option<&str>) -> JsValue {
    v.map_or(JsValue::NULL, JsValue::from_str)
}

fn t(ts: Timestamp) -> Result<JsValue, EdgeError> {
    js_int(ts.millis())
}

/// The rows one statement of a batch changed (0 when D1 does not say).
fn changes(r: &worker::D1Result) -> u64 {
    r.meta().ok().flatten().and_then(|m| m.changes).and_then(|c| u64::try_from(c).ok()).unwrap_or(0)
}

/// Runs one query and reads every row as `T`; `what` names the query in errors.
async fn rows<T: for<'de> Deserialize<'de>>(
    db: &D1Database,
    sql: &str,
    args: &[JsValue],
    what: &'static str,
) -> Result<Vec<T>, EdgeError> {
    db.prepare(sql)
        .bind(args)
        .map_err(EdgeError::platform("bind"))?
        .all()
        .await
        .and_then(|r| r.results())
        .map_err(EdgeError::platform(what))
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlanRow {
    pub id: String,
    pub name: String,
    pub body: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// Raised by every PUT; org DOs adopt a newer one by themselves.
    pub version: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrgRow {
    pub id: String,
    pub name: Option<String>,
    pub plan_id: String,
    pub billing_anchor: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub webhook_url: Option<String>,
    pub overrides: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// The ledger shard that holds its usage: set when the org is created, never moved.
    #[serde(default)]
    pub shard: u32,
}

pub async fn get_plan(db: &D1Database, id: &PlanId) -> Result<Option<PlanRow>, EdgeError> {
    db.prepare("SELECT id, name, body, created_at, updated_at, version FROM plans WHERE id = ?")
        .bind(&[s(id.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("plans query"))
}

/// How many plans there are: the health check's round trip (it fails if the schema is missing).
pub async fn plan_count(db: &D1Database) -> Result<u64, EdgeError> {
    #[derive(Deserialize)]
    struct N {
        n: u64,
    }
    let rows: Vec<N> = rows(db, "SELECT COUNT(*) AS n FROM plans", &[], "plans query").await?;
    Ok(rows.first().map_or(0, |r| r.n))
}

pub async fn list_plans(db: &D1Database) -> Result<Vec<PlanRow>, EdgeError> {
    rows(db, "SELECT id, name, body, created_at, updated_at, version FROM plans ORDER BY id", &[], "plans query").await
}

/// A plan's version and body, if it is newer than `than`: what an org DO reads to adopt it.
pub async fn newer_plan(db: &D1Database, id: &PlanId, than: u64) -> Result<Option<PlanRow>, EdgeError> {
    db.prepare("SELECT id, name, body, created_at, updated_at, version FROM plans WHERE id = ? AND version > ?")
        .bind(&[s(id.as_str()), js_int(than)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("plans query"))
}

/// How many orgs are on a plan (one query, whatever the count).
pub async fn orgs_on_plan_count(db: &D1Database, plan: &PlanId) -> Result<u64, EdgeError> {
    #[derive(Deserialize)]
    struct N {
        n: u64,
    }
    let r: Vec<N> =
        rows(db, "SELECT COUNT(*) AS n FROM orgs WHERE plan_id = ?", &[s(plan.as_str())], "orgs query").await?;
    Ok(r.first().map_or(0, |r| r.n))
}

/// Inserts or replaces a plan, raising its version; `true` when it was new.
pub async fn put_plan(db: &D1Database, id: &PlanId, name: &str, body: &str, now: Timestamp) -> Result<bool, EdgeError> {
    let existed = get_plan(db, id).await?.is_some();
    db.prepare(
        "INSERT INTO plans (id, name, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, body = excluded.body, updated_at = excluded.updated_at, \
         version = plans.version + 1",
    )
    .bind(&[s(id.as_str()), s(name), s(body), t(now)?])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("plans upsert"))?;
    Ok(!existed)
}

const ORG_COLUMNS: &str =
    "id, name, plan_id, billing_anchor, stripe_customer_id, webhook_url, overrides, created_at, updated_at, shard";

pub async fn get_org(db: &D1Database, id: &OrgId) -> Result<Option<OrgRow>, EdgeError> {
    db.prepare(format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = ?"))
        .bind(&[s(id.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("orgs query"))
}

pub async fn put_org(db: &D1Database, row: &OrgRow) -> Result<(), EdgeError> {
    db.prepare(
        "INSERT INTO orgs (id, name, plan_id, billing_anchor, stripe_customer_id, webhook_url, overrides, created_at, updated_at, shard) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, plan_id = excluded.plan_id, \
         billing_anchor = excluded.billing_anchor, stripe_customer_id = excluded.stripe_customer_id, \
         webhook_url = excluded.webhook_url, overrides = excluded.overrides, updated_at = excluded.updated_at",
    )
    .bind(&[
        s(&row.id),
        opt(row.name.as_deref()),
        s(&row.plan_id),
        opt(row.billing_anchor.as_deref()),
        opt(row.stripe_customer_id.as_deref()),
        opt(row.webhook_url.as_deref()),
        s(&row.overrides),
        js_int(row.created_at)?,
        js_int(row.updated_at)?,
        JsValue::from(row.shard),
    ])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("orgs upsert"))?;
    Ok(())
}

pub async fn all_orgs(db: &D1Database) -> Result<Vec<OrgRow>, EdgeError> {
    rows(db, &format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY id"), &[], "orgs query").await
}

/// An org's effective policy from its catalogue rows.
pub fn policy_of(org: &OrgRow, plan: &PlanRow) -> Result<Policy, EdgeError> {
    let plan_id = PlanId::parse(&plan.id).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&plan.body).map_err(|e| EdgeError::Internal(format!("stored plan: {e}")))?;
    let plan = Plan::parse(&plan_id, &doc)?;
    let anchor = org.billing_anchor.clone().map(serde_json::Value::String);
    let overrides: Option<serde_json::Value> = serde_json::from_str(&org.overrides).ok();
    Ok(Policy::new(&plan, &OrgTerms::parse(anchor.as_ref(), overrides.as_ref(), &plan)?))
}
