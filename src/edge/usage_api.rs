//! The org's usage API under `/_quota/v1`: usage events, the live overview and status (from the
//! org's DO), and the ledger views: summary and daily history (from D1).
//!
//! It authenticates, parses with `wire` and sequences I/O; it never counts anything itself.

use serde_json::{json, Value};
use time::Duration;
use worker::{Env, Request, Response};

use super::auth::authenticate;
use super::error::{json_response, reply_response, EdgeError};
use super::ledger;
use super::platform::{call_do, now, param, query, read_json, settings};
use crate::org::{Caller, KeyHash, OrgMsg, OrgOp};
use crate::policy::{MeterId, Plan, PlanId, Timestamp};
use crate::wire::{parse_days, parse_range, EventsRequest, InputError};

type Handled = Result<Response, EdgeError>;

pub async fn events(mut req: Request, env: &Env) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(&req, env)?;
    let body = EventsRequest::parse(&read_json(&mut req).await?, now())?;
    let op = OrgOp::Events { events: body.events, enforce: body.enforce };
    let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash)), op };
    reply_response(&call_do(env, &key.org, &msg).await?).map_err(EdgeError::platform("response"))
}

/// `GET /v1/usage` (`short` = false) and `GET /v1/usage/status` (`short` = true).
pub async fn live(req: &Request, env: &Env, short: bool) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(req, env)?;
    let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash)), op: OrgOp::Usage { short } };
    let reply = call_do(env, &key.org, &msg).await?;
    reply_response(&reply).map_err(EdgeError::platform("response"))
}

/// Passes the usage API's own limit for ledger reads (one DO call) before D1 is read; the
/// refusal (429 with `RateLimit` fields) is the answer when the minute's allowance is spent.
async fn gate(env: &Env, key: &crate::policy::keys::VerifiedKey) -> Result<Option<Response>, EdgeError> {
    let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash.clone())), op: OrgOp::Gate };
    let reply = call_do(env, &key.org, &msg).await?;
    if reply.status == 200 {
        return Ok(None);
    }
    Ok(Some(reply_response(&reply).map_err(EdgeError::platform("response"))?))
}

pub async fn summary(req: &Request, env: &Env) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(req, env)?;
    let q = query(req);
    let days = parse_days(param(&q, "days"))?;
    if let Some(refused) = gate(env, &key).await? {
        return Ok(refused);
    }
    let db = ledger::db(env)?;
    let shard = ledger::key_shard(&db, &key.org, &key.hash, now()).await?.ok_or(EdgeError::Unauthorized)?;
    let t = now();
    let from = t.date() - Duration::days(i64::try_from(days).unwrap_or(365).saturating_sub(1));
    let rows = ledger::summary(&ledger::shard_db(env, shard)?, &key.org, &from.to_string()).await?;
    let by_type: serde_json::Map<String, Value> = rows
        .iter()
        .map(|r| {
            (r.meter.clone(), json!({"count": r.events, "total_quantity": r.quantity,
                "first_event": Timestamp::from_millis(r.first_ts).rfc3339(), "last_event": Timestamp::from_millis(r.last_ts).rfc3339()}))
        })
        .collect();
    let total: u64 = rows.iter().fold(0, |a, r| a.saturating_add(r.events));
    let body = json!({"org_id": key.org.as_str(), "period_days": days, "from": from.to_string(), "total_events": total,
                      "generated_at": t.rfc3339(), "summary_by_type": by_type});
    json_response(200, &body, "application/json").map_err(EdgeError::platform("response"))
}

pub async fn history(req: &Request, env: &Env) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(req, env)?;
    let (meter, from, to) = history_query(req)?;
    if let Some(refused) = gate(env, &key).await? {
        return Ok(refused);
    }
    let db = ledger::db(env)?;
    if ledger::key_shard(&db, &key.org, &key.hash, now()).await?.is_none() {
        return Err(EdgeError::Unauthorized);
    }
    json_response(200, &history_body(env, &key.org, &meter, from, to).await?, "application/json")
        .map_err(EdgeError::platform("response"))
}

/// The `meter`, `from` and `to` of a history request (at most 366 days).
pub fn history_query(req: &Request) -> Result<(MeterId, time::Date, time::Date), EdgeError> {
    let q = query(req);
    let meter_raw =
        param(&q, "meter").ok_or_else(|| InputError::Field { field: "meter".into(), reason: "is required".into() })?;
    let meter = MeterId::parse(meter_raw)
        .map_err(|e| InputError::Field { field: "meter".into(), reason: format!("'{meter_raw}' {e}") })?;
    let (from, to) = parse_range(param(&q, "from"), param(&q, "to"), 366)?;
    Ok((meter, from, to))
}

/// An org's daily series of one meter from the ledger, every day present: the org API's history
/// and the admin API's (the usage page's chart) alike.
pub async fn history_body(
    env: &Env,
    org_id: &crate::policy::OrgId,
    meter: &MeterId,
    from: time::Date,
    to: time::Date,
) -> Result<Value, EdgeError> {
    let db = ledger::db(env)?;
    // An unknown meter is an error, not an empty series.
    let org = ledger::get_org(&db, org_id).await?.ok_or(EdgeError::Unauthorized)?;
    let plan_id = PlanId::parse(&org.plan_id).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let plan_row =
        ledger::get_plan(&db, &plan_id).await?.ok_or_else(|| EdgeError::Internal("org's plan is missing".into()))?;
    let doc: Value = serde_json::from_str(&plan_row.body).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let plan = Plan::parse(&plan_id, &doc)?;
    if *meter != MeterId::requests() && !plan.meters.contains_key(meter) {
        return Err(EdgeError::Input(InputError::Field {
            field: "meter".into(),
            reason: format!("unknown meter '{meter}'"),
        }));
    }
    let shard = ledger::shard_db(env, org.shard)?;
    let rows = ledger::history(&shard, org_id, meter.as_str(), &from.to_string(), &to.to_string()).await?;
    let mut series = Vec::new();
    let mut d = from;
    loop {
        let ds = d.to_string();
        let row = rows.iter().find(|r| r.day == ds);
        series
            .push(json!({"date": ds, "quantity": row.map_or(0, |r| r.quantity), "events": row.map_or(0, |r| r.events),
                           "max": row.map_or(0, |r| r.max_value), "last": row.map_or(0, |r| r.last_value)}));
        if d >= to {
            break;
        }
        let Some(next) = d.next_day() else { break };
        d = next;
    }
    Ok(
        json!({"org_id": org_id.as_str(), "meter": meter.as_str(), "from": from.to_string(), "to": to.to_string(), "days": series}),
    )
}
