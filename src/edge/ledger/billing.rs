//! Stripe reporting state in D1: which ledger rows are claimed into which frozen hourly batch,
//! each batch's delivery state, and the circuit breaker.
//!
//! Each function is one statement or one D1 batch (one transaction); the reporting rules are
//! `policy::stripe`'s and the sequencing is `edge::stripe`'s. It must never send anything.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::js_int;
use crate::policy::Timestamp;

const HOUR_MS: u64 = 3_600_000;

/// Unreported, unclaimed usage of one (org, meter, hour) of a Stripe customer.
#[derive(Debug, Deserialize)]
pub struct Group {
    pub org_id: String,
    pub customer: String,
    pub meter: String,
    pub hour_idx: u64,
}

/// A frozen batch waiting to be sent.
#[derive(Debug, Deserialize)]
pub struct Batch {
    pub id: String,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub hour: u64,
    pub value: u64,
    pub attempts: u32,
}

#[derive(Debug, Deserialize, Default)]
pub struct BreakerRow {
    pub failures: u32,
    pub open_until: u64,
}

#[derive(Debug, Deserialize)]
struct IdRow {
    event_id: String,
}

async fn run(db: &D1Database, sql: &str, args: &[JsValue], what: &'static str) -> Result<(), EdgeError> {
    db.prepare(sql).bind(args).map_err(EdgeError::platform("bind"))?.run().await.map_err(EdgeError::platform(what))?;
    Ok(())
}

pub async fn stripe_breaker(db: &D1Database) -> Result<BreakerRow, EdgeError> {
    let r: Vec<BreakerRow> =
        rows(db, "SELECT failures, open_until FROM stripe_state WHERE id = 1", &[], "stripe state").await?;
    Ok(r.into_iter().next().unwrap_or_default())
}

pub async fn set_breaker(db: &D1Database, failures: u32, open_until: u64) -> Result<(), EdgeError> {
    run(
        db,
        "UPDATE stripe_state SET failures = ?, open_until = ? WHERE id = 1",
        &[JsValue::from(failures), js_int(open_until)?],
        "stripe state",
    )
    .await
}

/// Up to 100 (org, meter, hour) groups with unreported, unclaimed usage of Stripe customers.
pub async fn unclaimed_groups(db: &D1Database) -> Result<Vec<Group>, EdgeError> {
    rows(
        db,
        "SELECT e.org_id AS org_id, o.stripe_customer_id AS customer, e.meter AS meter, e.ts / 3600000 AS hour_idx \
         FROM usage_events e JOIN orgs o ON o.id = e.org_id \
         WHERE o.stripe_customer_id IS NOT NULL AND e.stripe_reported_at IS NULL AND e.stripe_batch IS NULL \
         GROUP BY e.org_id, e.meter, hour_idx ORDER BY hour_idx LIMIT 100",
        &[],
        "stripe groups",
    )
    .await
}

/// The ids of a group's unclaimed events (at most 5,000, in id order).
pub async fn unclaimed_ids(db: &D1Database, g: &Group) -> Result<Vec<String>, EdgeError> {
    let from = g.hour_idx.saturating_mul(HOUR_MS);
    let ids: Vec<IdRow> = rows(
        db,
        "SELECT event_id FROM usage_events WHERE org_id = ? AND meter = ? AND ts >= ? AND ts < ? \
         AND stripe_reported_at IS NULL AND stripe_batch IS NULL ORDER BY event_id LIMIT 5000",
        &[s(&g.org_id), s(&g.meter), js_int(from)?, js_int(from.saturating_add(HOUR_MS))?],
        "stripe ids",
    )
    .await?;
    Ok(ids.into_iter().map(|r| r.event_id).collect())
}

/// One D1 batch, one transaction: claims the events for batch `id`, then freezes the batch from
/// what was claimed (an existing batch of that id is kept as it is).
pub async fn claim_batch(
    db: &D1Database,
    id: &str,
    g: &Group,
    event_name: &str,
    ids: &[String],
    now: Timestamp,
) -> Result<(), EdgeError> {
    let mut stmts = Vec::new();
    for chunk in ids.chunks(90) {
        let marks = vec!["?"; chunk.len()].join(",");
        let mut args = vec![s(id), s(&g.org_id)];
        args.extend(chunk.iter().map(|e| s(e)));
        let sql = format!(
            "UPDATE usage_events SET stripe_batch = ? WHERE org_id = ? AND stripe_batch IS NULL AND event_id IN ({marks})"
        );
        stmts.push(db.prepare(sql).bind(&args).map_err(EdgeError::platform("bind"))?);
    }
    let hour = g.hour_idx.saturating_mul(HOUR_MS) / 1000;
    stmts.push(
        db.prepare(
            "INSERT INTO stripe_batches (id, org_id, stripe_customer_id, event_name, meter, hour, value, events, status, created_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, SUM(quantity), COUNT(*), 'pending', ?7 FROM usage_events \
             WHERE stripe_batch = ?1 HAVING COUNT(*) > 0 ON CONFLICT (id) DO NOTHING",
        )
        .bind(&[s(id), s(&g.org_id), s(&g.customer), s(event_name), s(&g.meter), js_int(hour)?, t(now)?])
        .map_err(EdgeError::platform("bind"))?,
    );
    db.batch(stmts).await.map_err(EdgeError::platform("stripe claim"))?;
    Ok(())
}

/// Pending batches due now (every pending one when `force`), oldest first, at most 100.
pub async fn due_batches(db: &D1Database, now: Timestamp, force: bool) -> Result<Vec<Batch>, EdgeError> {
    rows(
        db,
        "SELECT id, stripe_customer_id, event_name, hour, value, attempts FROM stripe_batches \
         WHERE status = 'pending' AND (next_at <= ? OR ?) ORDER BY created_at LIMIT 100",
        &[t(now)?, JsValue::from(force)],
        "stripe batches",
    )
    .await
}

pub async fn expire_batch(db: &D1Database, id: &str, why: &str) -> Result<(), EdgeError> {
    run(
        db,
        "UPDATE stripe_batches SET status = 'expired', last_error = ? WHERE id = ?",
        &[s(why), s(id)],
        "stripe batch",
    )
    .await
}

/// Marks a batch and its events reported, in one transaction.
pub async fn settle_batch(db: &D1Database, id: &str, attempts: u32, at: Timestamp) -> Result<(), EdgeError> {
    let stmts = vec![
        db.prepare("UPDATE stripe_batches SET status = 'reported', reported_at = ?, attempts = ?, last_error = NULL WHERE id = ?")
            .bind(&[t(at)?, JsValue::from(attempts), s(id)])
            .map_err(EdgeError::platform("bind"))?,
        db.prepare("UPDATE usage_events SET stripe_reported_at = ? WHERE stripe_batch = ?")
            .bind(&[t(at)?, s(id)])
            .map_err(EdgeError::platform("bind"))?,
    ];
    db.batch(stmts).await.map_err(EdgeError::platform("stripe settle"))?;
    Ok(())
}

pub async fn fail_batch(db: &D1Database, id: &str, attempts: u32, next: Timestamp, why: &str) -> Result<(), EdgeError> {
    run(
        db,
        "UPDATE stripe_batches SET attempts = ?, next_at = ?, last_error = ? WHERE id = ?",
        &[JsValue::from(attempts), t(next)?, s(why), s(id)],
        "stripe batch",
    )
    .await
}
