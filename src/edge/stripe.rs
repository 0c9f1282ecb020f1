//! Stripe Billing Meters reporting: claims unreported ledger usage into frozen hourly batches,
//! sends them in Stripe's wire format, and settles them; a circuit breaker pauses reporting after
//! consecutive failures.
//!
//! The arithmetic and the wire body are the core's (`policy::stripe`); this file sequences D1 and
//! HTTP. It never deletes usage: a batch it cannot send stays pending, or becomes `expired`
//! (reported as an error) when it falls out of Stripe's 35-day window.

use serde::Deserialize;
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{D1Database, Env, Fetch, Headers, Method, Request, RequestInit};

use super::error::EdgeError;
use std::collections::BTreeMap;

use super::ledger::{self, s};
use super::platform::{config, js_int, now};
use crate::policy::stripe::{backoff_ms, batch_id, breaker_after, classify, meter_event_form, Answer, MAX_AGE_SECS};
use crate::policy::{OrgId, PlanId, Timestamp};

const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, Deserialize)]
struct Group {
    org_id: String,
    customer: String,
    meter: String,
    hour_idx: u64,
}

#[derive(Debug, Deserialize)]
struct IdRow {
    event_id: String,
}

#[derive(Debug, Deserialize)]
struct Batch {
    id: String,
    stripe_customer_id: String,
    event_name: String,
    hour: u64,
    value: u64,
    attempts: u32,
}

#[derive(Debug, Deserialize, Default)]
struct BreakerRow {
    failures: u32,
    open_until: u64,
}

async fn run(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<(), EdgeError> {
    db.prepare(sql)
        .bind(args)
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("stripe sql"))?;
    Ok(())
}

async fn all<T: for<'de> Deserialize<'de>>(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<Vec<T>, EdgeError> {
    ledger::rows(db, sql, args, "stripe sql").await
}

/// The Stripe `event_name` of each meter of an org's policy: the meter config's, else the id.
/// An org that no longer has a plan reports under the meter ids.
async fn event_names(db: &D1Database, org: &str) -> Result<BTreeMap<String, String>, EdgeError> {
    let org_id = OrgId::parse(org).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let Some(o) = ledger::get_org(db, &org_id).await? else { return Ok(BTreeMap::new()) };
    let plan_id = PlanId::parse(&o.plan_id).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let Some(p) = ledger::get_plan(db, &plan_id).await? else { return Ok(BTreeMap::new()) };
    let policy = super::admin::policy_of(&o, &p)?;
    Ok(policy.meters.values().map(|m| (m.id.to_string(), m.event_name.clone())).collect())
}

/// Claims unreported, unclaimed events of Stripe customers into one batch per (org, meter, hour).
async fn claim(db: &D1Database, t: Timestamp) -> Result<u64, EdgeError> {
    let groups: Vec<Group> = all(
        db,
        "SELECT e.org_id AS org_id, o.stripe_customer_id AS customer, e.meter AS meter, e.ts / 3600000 AS hour_idx \
         FROM usage_events e JOIN orgs o ON o.id = e.org_id \
         WHERE o.stripe_customer_id IS NOT NULL AND e.stripe_reported_at IS NULL AND e.stripe_batch IS NULL \
         GROUP BY e.org_id, e.meter, hour_idx ORDER BY hour_idx LIMIT 100",
        &[],
    )
    .await?;
    let mut claimed = 0u64;
    // Looked up once per org per run, not once per (meter, hour) group.
    let mut names: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for g in groups {
        let from = g.hour_idx.saturating_mul(HOUR_MS);
        let ids: Vec<IdRow> = all(
            db,
            "SELECT event_id FROM usage_events WHERE org_id = ? AND meter = ? AND ts >= ? AND ts < ? \
             AND stripe_reported_at IS NULL AND stripe_batch IS NULL ORDER BY event_id LIMIT 5000",
            &[s(&g.org_id), s(&g.meter), js_int(from)?, js_int(from.saturating_add(HOUR_MS))?],
        )
        .await?;
        if ids.is_empty() {
            continue;
        }
        let ids: Vec<String> = ids.into_iter().map(|r| r.event_id).collect();
        let hour = from / 1000;
        let id = batch_id(&g.org_id, &g.meter, hour, &ids);
        if !names.contains_key(&g.org_id) {
            names.insert(g.org_id.clone(), event_names(db, &g.org_id).await?);
        }
        let name = names.get(&g.org_id).and_then(|n| n.get(&g.meter)).cloned().unwrap_or_else(|| g.meter.clone());
        // One D1 batch, one transaction: claim the rows, then freeze the batch from what was claimed.
        let mut stmts = Vec::new();
        for chunk in ids.chunks(90) {
            let marks = vec!["?"; chunk.len()].join(",");
            let mut args = vec![s(&id), s(&g.org_id)];
            args.extend(chunk.iter().map(|e| s(e)));
            let sql = format!("UPDATE usage_events SET stripe_batch = ? WHERE org_id = ? AND stripe_batch IS NULL AND event_id IN ({marks})");
            stmts.push(db.prepare(sql).bind(&args).map_err(EdgeError::platform("bind"))?);
        }
        stmts.push(
            db.prepare(
                "INSERT INTO stripe_batches (id, org_id, stripe_customer_id, event_name, meter, hour, value, events, status, created_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, SUM(quantity), COUNT(*), 'pending', ?7 FROM usage_events \
                 WHERE stripe_batch = ?1 HAVING COUNT(*) > 0 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&[s(&id), s(&g.org_id), s(&g.customer), s(&name), s(&g.meter), js_int(hour)?, js_int(t.millis())?])
            .map_err(EdgeError::platform("bind"))?,
        );
        db.batch(stmts).await.map_err(EdgeError::platform("stripe claim"))?;
        claimed = claimed.saturating_add(1);
    }
    Ok(claimed)
}

/// Sends one meter event; (HTTP status, body) or the transport error.
async fn send(env: &Env, b: &Batch, secret: &str) -> Result<(u16, String), String> {
    let base = config(env, "STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".to_owned());
    let url = format!("{}/v1/billing/meter_events", base.trim_end_matches('/'));
    let body = meter_event_form(&b.event_name, &b.stripe_customer_id, b.value, &b.id, b.hour);
    let headers = Headers::new();
    for (k, v) in [
        ("Authorization", format!("Bearer {secret}")),
        ("Content-Type", "application/x-www-form-urlencoded".to_owned()),
        ("Idempotency-Key", b.id.clone()),
    ] {
        headers.set(k, &v).map_err(|e| e.to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(JsValue::from_str(&body)));
    let req = Request::new_with_init(&url, &init).map_err(|e| e.to_string())?;
    let mut res = Fetch::Request(req).send().await.map_err(|e| e.to_string())?;
    let status = res.status_code();
    Ok((status, res.text().await.unwrap_or_default()))
}

/// One reporting run: claim, then send due batches (all pending ones when `force`). Returns a
/// summary; a configuration gap or an open breaker is a summary too, not an error.
pub async fn sync(env: &Env, force: bool) -> Result<Value, EdgeError> {
    let db = ledger::db(env)?;
    let t = now();
    let Some(secret) = config(env, "STRIPE_SECRET_KEY") else {
        return Ok(json!({"skipped": "STRIPE_SECRET_KEY is not configured"}));
    };
    let state: BreakerRow = all(&db, "SELECT failures, open_until FROM stripe_state WHERE id = 1", &[])
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let claimed = claim(&db, t).await?;
    if state.open_until > t.millis() {
        let until = Timestamp::from_millis(state.open_until).rfc3339();
        return Ok(json!({"claimed": claimed, "sent": 0, "breaker": "open", "open_until": until}));
    }
    let due: Vec<Batch> = all(
        &db,
        "SELECT id, stripe_customer_id, event_name, hour, value, attempts FROM stripe_batches \
         WHERE status = 'pending' AND (next_at <= ? OR ?) ORDER BY created_at LIMIT 100",
        &[js_int(t.millis())?, JsValue::from(force)],
    )
    .await?;
    let (mut failures, mut open_until) = (state.failures, state.open_until);
    let (mut sent, mut delivered, mut failed, mut expired) = (0u64, 0u64, 0u64, 0u64);
    for b in &due {
        if t.secs().saturating_sub(b.hour) > MAX_AGE_SECS {
            let why = "older than Stripe's 35-day window for meter events: not reportable";
            run(&db, "UPDATE stripe_batches SET status = 'expired', last_error = ? WHERE id = ?", &[s(why), s(&b.id)])
                .await?;
            worker::console_error!(
                "{}",
                json!({"msg": "stripe batch expired", "batch": b.id, "value": b.value, "error": why})
            );
            expired = expired.saturating_add(1);
            continue;
        }
        sent = sent.saturating_add(1);
        let outcome = send(env, b, &secret).await;
        let answer = match &outcome {
            Ok((status, body)) => classify(*status, body),
            Err(_) => Answer::Failed,
        };
        let attempts = b.attempts.saturating_add(1);
        if answer == Answer::Delivered {
            delivered = delivered.saturating_add(1);
            let at = js_int(t.millis())?;
            let stmts = vec![
                db.prepare("UPDATE stripe_batches SET status = 'reported', reported_at = ?, attempts = ?, last_error = NULL WHERE id = ?")
                    .bind(&[at.clone(), JsValue::from(attempts), s(&b.id)])
                    .map_err(EdgeError::platform("bind"))?,
                db.prepare("UPDATE usage_events SET stripe_reported_at = ? WHERE stripe_batch = ?")
                    .bind(&[at, s(&b.id)])
                    .map_err(EdgeError::platform("bind"))?,
            ];
            db.batch(stmts).await.map_err(EdgeError::platform("stripe settle"))?;
        } else {
            failed = failed.saturating_add(1);
            let why = match &outcome {
                Ok((status, body)) => {
                    format!("Stripe answered {status}: {}", body.chars().take(300).collect::<String>())
                }
                Err(e) => format!("no answer: {e}"),
            };
            let next = js_int(t.millis().saturating_add(backoff_ms(attempts)))?;
            run(
                &db,
                "UPDATE stripe_batches SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
                &[JsValue::from(attempts), next, s(&why), s(&b.id)],
            )
            .await?;
            worker::console_warn!(
                "{}",
                json!({"msg": "stripe report failed", "batch": b.id, "attempts": attempts, "error": why})
            );
        }
        (failures, open_until) = breaker_after(failures, open_until, answer == Answer::Failed, t.millis());
        if open_until > t.millis() {
            worker::console_error!(
                "{}",
                json!({"msg": "stripe breaker open", "until": Timestamp::from_millis(open_until).rfc3339()})
            );
            break;
        }
    }
    run(
        &db,
        "UPDATE stripe_state SET failures = ?, open_until = ? WHERE id = 1",
        &[JsValue::from(failures), js_int(open_until)?],
    )
    .await?;
    let breaker = if open_until > t.millis() { "open" } else { "closed" };
    Ok(json!({"claimed": claimed, "sent": sent, "delivered": delivered, "failed": failed, "expired": expired,
              "consecutive_failures": failures, "breaker": breaker}))
}
