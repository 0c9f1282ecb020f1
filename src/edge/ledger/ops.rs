//! Operational state in D1: gauges the cron publishes, the DO-call latency buckets every
//! isolate hands over, live figures for `/admin/metrics`, and alert delivery attempts.
//!
//! Each function is one statement or one batch; it must never decide anything.

use std::fmt::Write as _;

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{opt, rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::js_int;
use crate::policy::{OrgId, Timestamp};
use crate::telemetry::BucketRow;

#[derive(Debug, Clone, Deserialize)]
pub struct GaugeRow {
    pub name: String,
    pub labels: String,
    pub value: i64,
}

/// Publishes a gauge for the metrics endpoint.
/// Several gauges in one D1 batch (an org's status report to its shard).
pub async fn set_gauges(db: &D1Database, gauges: &[(String, String, u64)], at: Timestamp) -> Result<(), EdgeError> {
    let mut stmts = Vec::with_capacity(gauges.len());
    for (name, labels, value) in gauges {
        stmts.push(
            db.prepare(
                "INSERT INTO metric_gauges (name, labels, value, updated_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (name, labels) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(&[s(name), s(labels), js_int(*value)?, t(at)?])
            .map_err(EdgeError::platform("bind"))?,
        );
    }
    db.batch(stmts).await.map_err(EdgeError::platform("metric_gauges upsert"))?;
    Ok(())
}

pub async fn gauges(db: &D1Database) -> Result<Vec<GaugeRow>, EdgeError> {
    rows(db, "SELECT name, labels, value FROM metric_gauges ORDER BY name, labels", &[], "metric_gauges query").await
}

#[derive(Debug, Deserialize)]
struct LiveRow {
    breaker_open: i64,
    failures: i64,
    pending: i64,
    expired: i64,
}

#[derive(Debug, Deserialize)]
struct OutcomeRow {
    outcome: String,
    n: i64,
}

/// Metrics read live from D1: the Stripe breaker, the Stripe backlog (pending and expired
/// batches, summed over the shards by the caller), and alert deliveries by outcome.
pub async fn live_metrics(db: &D1Database, at: Timestamp, backlog: (u64, u64)) -> Result<String, EdgeError> {
    let live: Option<LiveRow> = db
        .prepare(
            "SELECT CASE WHEN open_until > ? THEN 1 ELSE 0 END AS breaker_open, failures, \
             0 AS pending, 0 AS expired FROM stripe_state WHERE id = 1",
        )
        .bind(&[t(at)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("stripe_state query"))?;
    let outcomes: Vec<OutcomeRow> = rows(
        db,
        "SELECT outcome, COUNT(*) AS n FROM alert_deliveries GROUP BY outcome ORDER BY outcome",
        &[],
        "alert_deliveries query",
    )
    .await?;
    let mut l = live.unwrap_or(LiveRow { breaker_open: 0, failures: 0, pending: 0, expired: 0 });
    (l.pending, l.expired) =
        (i64::try_from(backlog.0).unwrap_or(i64::MAX), i64::try_from(backlog.1).unwrap_or(i64::MAX));
    let mut out = format!(
        "# HELP quotagate_stripe_breaker_open 1 while Stripe reporting is paused after consecutive failures.\n\
         # TYPE quotagate_stripe_breaker_open gauge\nquotagate_stripe_breaker_open {}\n\
         # HELP quotagate_stripe_consecutive_failures Failed Stripe reports since the last success.\n\
         # TYPE quotagate_stripe_consecutive_failures gauge\nquotagate_stripe_consecutive_failures {}\n\
         # HELP quotagate_stripe_pending_batches Usage batches waiting to be reported to Stripe.\n\
         # TYPE quotagate_stripe_pending_batches gauge\nquotagate_stripe_pending_batches {}\n\
         # HELP quotagate_stripe_expired_batches Usage batches older than Stripe's 35-day window (not reportable).\n\
         # TYPE quotagate_stripe_expired_batches gauge\nquotagate_stripe_expired_batches {}\n\
         # HELP quotagate_alert_deliveries_total Threshold-alert delivery attempts by outcome.\n\
         # TYPE quotagate_alert_deliveries_total counter\n",
        l.breaker_open, l.failures, l.pending, l.expired
    );
    for o in outcomes {
        let _ = writeln!(out, "quotagate_alert_deliveries_total{{outcome=\"{}\"}} {}", o.outcome, o.n);
    }
    Ok(out)
}

/// Adds latency buckets (one isolate's hand-over) to the summed histogram.
pub async fn add_latency(db: &D1Database, rows: &[BucketRow]) -> Result<(), EdgeError> {
    let mut statements = Vec::with_capacity(rows.len());
    for r in rows {
        let le = JsValue::from_f64(f64::from(i32::try_from(r.le_ms).map_err(|e| EdgeError::Internal(e.to_string()))?));
        statements.push(
            db.prepare(
                "INSERT INTO do_call_latency (op, le_ms, n, sum_ms) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (op, le_ms) DO UPDATE SET n = n + excluded.n, sum_ms = sum_ms + excluded.sum_ms",
            )
            .bind(&[s(&r.op), le, js_int(r.n)?, js_int(r.sum_ms)?])
            .map_err(EdgeError::platform("bind"))?,
        );
    }
    db.batch(statements).await.map_err(EdgeError::platform("latency upsert"))?;
    Ok(())
}

/// The summed latency histogram, as stored rows.
pub async fn latency(db: &D1Database) -> Result<Vec<BucketRow>, EdgeError> {
    rows(db, "SELECT op, le_ms, n, sum_ms FROM do_call_latency ORDER BY op, le_ms", &[], "do_call_latency query").await
}

/// One alert delivery attempt, as `alert_deliveries` records it.
#[derive(Debug)]
pub struct AlertAttempt<'a> {
    pub org: &'a OrgId,
    pub alert_id: &'a str,
    pub attempt: u32,
    pub url: &'a str,
    pub code: Option<u16>,
    pub error: Option<&'a str>,
    pub outcome: &'a str,
    pub at: Timestamp,
}

pub async fn record_alert_attempt(db: &D1Database, a: &AlertAttempt<'_>) -> Result<(), EdgeError> {
    db.prepare(
        "INSERT OR IGNORE INTO alert_deliveries (org_id, alert_id, attempt, url, status_code, error, outcome, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&[
        s(a.org.as_str()),
        s(a.alert_id),
        JsValue::from(a.attempt),
        s(a.url),
        a.code.map_or(JsValue::NULL, JsValue::from),
        opt(a.error),
        s(a.outcome),
        t(a.at)?,
    ])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("alert delivery insert"))?;
    Ok(())
}
