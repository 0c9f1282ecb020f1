//! The admin API under `/_quota/admin`: plans, orgs, keys and resets.
//!
//! It authenticates with `ADMIN_TOKEN` (compared in constant time), persists to D1 and pushes
//! each org's configuration to its Durable Object. Validation is the core's (`Plan::parse`,
//! `OrgTerms::parse`) and the wire module's; this file only sequences I/O.

use serde_json::{json, Value};
use worker::{Env, Method, Request, Response};

use super::error::{json_response, EdgeError};
use super::ledger::{self, OrgRow, PlanRow};
use super::platform::{call_do, config, now, random_bytes, read_json};
use crate::policy::keys::{mint, secrets_equal, KEY_RANDOM_BYTES};
use crate::policy::{OrgId, OrgTerms, Plan, PlanId, Timestamp};
use crate::wire::{parse_reset, DoReply, DoRequest, InputError, OrgUpsert};

type Handled = Result<Response, EdgeError>;

fn authorize(req: &Request, env: &Env) -> Result<(), EdgeError> {
    let given = req
        .headers()
        .get("Authorization")
        .ok()
        .flatten()
        .unwrap_or_default();
    let token = given.strip_prefix("Bearer ").unwrap_or_default();
    let expected = config(env, "ADMIN_TOKEN").unwrap_or_default();
    if secrets_equal(token.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(EdgeError::Unauthorized)
    }
}

fn path_id<T>(
    kind: &'static str,
    raw: &str,
    parse: impl Fn(&str) -> Result<T, crate::policy::ids::IdError>,
) -> Result<T, EdgeError> {
    parse(raw).map_err(|e| {
        EdgeError::Input(InputError::Field {
            field: format!("{kind} id in the path"),
            reason: format!("'{raw}' {e}"),
        })
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
    authorize(&req, env)?;
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
        (Method::Post, ["orgs", id, "keys"]) => {
            create_key(env, &path_id("org", id, OrgId::parse)?).await
        }
        (Method::Get, ["orgs", id, "keys"]) => {
            list_keys(env, &path_id("org", id, OrgId::parse)?).await
        }
        (Method::Delete, ["orgs", id, "keys", key_id]) => {
            revoke_key(env, &path_id("org", id, OrgId::parse)?, key_id).await
        }
        (Method::Post, ["orgs", id, "reset"]) => {
            let id = path_id("org", id, OrgId::parse)?;
            let meter = parse_reset(&read_json(&mut req).await?)?;
            require_org(env, &id).await?;
            let reply = do_ok(call_do(env, &id, &DoRequest::Reset { meter }).await?)?;
            ok(200, &reply.body)
        }
        (_, p) if is_admin_resource(p) => Err(EdgeError::MethodNotAllowed(format!(
            "{method:?} is not allowed on /_quota/admin/{rest}"
        ))),
        _ => Err(EdgeError::NotFound(format!(
            "no admin endpoint /_quota/admin/{rest}"
        ))),
    }
}

/// A path that names an admin resource (so a wrong method is 405, not 404).
fn is_admin_resource(p: &[&str]) -> bool {
    matches!(p, ["plans" | "orgs", ..])
        && matches!(p.len(), 1..=4)
        && p.get(2).is_none_or(|s| *s == "keys" || *s == "reset")
}

/// A DO reply that must be a success, else its answer is passed through.
fn do_ok(reply: DoReply) -> Result<DoReply, EdgeError> {
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
    }
    doc
}

async fn list_plans(env: &Env) -> Handled {
    let rows = ledger::list_plans(&ledger::db(env)?).await?;
    ok(
        200,
        &json!({"plans": rows.iter().map(plan_json).collect::<Vec<_>>()}),
    )
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
    let created = ledger::put_plan(&db, id, &plan.name, &doc.to_string(), now()).await?;
    // Every org on this plan gets the new version before the answer.
    let orgs = ledger::orgs_on_plan(&db, id).await?;
    for org in &orgs {
        push_config(env, org, body).await?;
    }
    let row = ledger::get_plan(&db, id)
        .await?
        .ok_or_else(|| EdgeError::Internal("plan vanished after upsert".into()))?;
    let mut out = plan_json(&row);
    if let Some(o) = out.as_object_mut() {
        o.insert("orgs_updated".into(), json!(orgs.len()));
    }
    ok(if created { 201 } else { 200 }, &out)
}

async fn push_config(env: &Env, org: &OrgRow, plan_doc: &Value) -> Result<DoReply, EdgeError> {
    let id = OrgId::parse(&org.id)
        .map_err(|e| EdgeError::Internal(format!("stored org id '{}': {e}", org.id)))?;
    let msg = DoRequest::Configure {
        org: id.clone(),
        plan_id: PlanId::parse(&org.plan_id)
            .map_err(|e| EdgeError::Internal(format!("stored plan id: {e}")))?,
        plan: plan_doc.clone(),
        billing_anchor: org.billing_anchor.clone().map(Value::String),
        overrides: serde_json::from_str(&org.overrides).ok(),
    };
    do_ok(call_do(env, &id, &msg).await?)
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
    ledger::get_org(&ledger::db(env)?, id)
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("unknown org '{id}'")))
}

async fn get_org(env: &Env, id: &OrgId) -> Handled {
    let row = require_org(env, id).await?;
    let state = do_ok(call_do(env, id, &DoRequest::State).await?)?;
    ok(200, &org_json(&row, &state.body))
}

async fn put_org(env: &Env, id: &OrgId, body: &Value) -> Handled {
    let up = OrgUpsert::parse(body)?;
    let db = ledger::db(env)?;
    let plan_row = ledger::get_plan(&db, &up.plan).await?.ok_or_else(|| {
        EdgeError::Input(InputError::Field {
            field: "plan".into(),
            reason: format!("unknown plan '{}'", up.plan),
        })
    })?;
    let plan_doc: Value = serde_json::from_str(&plan_row.body)
        .map_err(|e| EdgeError::Internal(format!("stored plan: {e}")))?;
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
    };
    ledger::put_org(&db, &row).await?;
    let state = push_config(env, &row, &plan_doc).await?;
    ok(
        if existing.is_some() { 200 } else { 201 },
        &org_json(&row, &state.body),
    )
}

async fn create_key(env: &Env, org: &OrgId) -> Handled {
    require_org(env, org).await?;
    let secret = config(env, "KEY_SECRET").ok_or(EdgeError::NotConfigured("KEY_SECRET"))?;
    let key = mint(org, &random_bytes::<KEY_RANDOM_BYTES>()?, secret.as_bytes());
    let t = now();
    ledger::insert_key(
        &ledger::db(env)?,
        &key.key_id,
        org,
        &key.hash,
        &key.prefix,
        t,
    )
    .await?;
    do_ok(
        call_do(
            env,
            org,
            &DoRequest::AddKey {
                key_id: key.key_id.clone(),
                hash: key.hash,
            },
        )
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
    do_ok(
        call_do(
            env,
            org,
            &DoRequest::RevokeKey {
                key_id: key_id.to_owned(),
            },
        )
        .await?,
    )?;
    ok(
        200,
        &json!({"key_id": key_id, "org_id": org.as_str(), "revoked_at": rfc(revoked)}),
    )
}
