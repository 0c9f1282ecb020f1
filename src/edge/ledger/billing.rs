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

/// Hourly rows claimed per run and shard.
const CLAIMS_PER_RUN: u64 = 200;

/// Claims unclaimed usage of Stripe customers from one shard's hourly rows into frozen batches,
/// in one D1 batch (one transaction): each batch takes what its row gained since the last claim,
/// and its id names the row and that starting point (`qg_<org>_<meter>_<start s>_<claimed>`), so
/// the same claim always has the same id and a retry can never bill twice. Returns how many.
pub async fn claim_hourly(db: &D1Database, now: Timestamp) -> Result<u64, EdgeError> {
    const PICK: &str = "SELECT org_id, meter, start FROM usage_hourly \
        WHERE customer IS NOT NULL AND quantity > stripe_claimed ORDER BY start LIMIT ?2";
    let stmts = vec![
        db.prepare(format!(
            "INSERT INTO stripe_batches (id, org_id, stripe_customer_id, event_name, meter, hour, value, events, status, created_at, bucket_start) \
             SELECT 'qg_' || org_id || '_' || meter || '_' || (start / 1000) || '_' || stripe_claimed, org_id, customer, \
             event_name, meter, (start / 3600000) * 3600, quantity - stripe_claimed, events, 'pending', ?1, start FROM usage_hourly \
             WHERE (org_id, meter, start) IN ({PICK}) ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&[t(now)?, js_int(CLAIMS_PER_RUN)?])
        .map_err(EdgeError::platform("bind"))?,
        db.prepare(format!("UPDATE usage_hourly SET stripe_claimed = quantity WHERE (org_id, meter, start) IN ({PICK})"))
            .bind(&[t(now)?, js_int(CLAIMS_PER_RUN)?])
            .map_err(EdgeError::platform("bind"))?,
    ];
    let results = db.batch(stmts).await.map_err(EdgeError::platform("stripe claim"))?;
    Ok(results.first().map_or(0, super::changes))
}

/// Batches waiting to be sent, and batches past Stripe's window, on one shard.
pub async fn stripe_backlog(db: &D1Database) -> Result<(u64, u64), EdgeError> {
    #[derive(Deserialize)]
    struct B {
        pending: u64,
        expired: u64,
    }
    let r: Vec<B> = rows(
        db,
        "SELECT COALESCE(SUM(status = 'pending'), 0) AS pending, COALESCE(SUM(status = 'expired'), 0) AS expired FROM stripe_batches",
        &[],
        "stripe batches",
    )
    .await?;
    Ok(r.first().map_or((0, 0), |b| (b.pending, b.expired)))
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
        db.prepare(
            "UPDATE usage_hourly SET stripe_reported_at = ?1 WHERE (org_id, meter, start) IN \
             (SELECT org_id, meter, bucket_start FROM stripe_batches WHERE id = ?2)",
        )
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
