//! The usage ledger in D1: rows from the org Durable Objects' outboxes (exactly once by event
//! id), the org-facing summary and history, the export's daily range, reset marks, retention, and
//! the sums reconciliation compares counters with.
//!
//! Each function is one statement or one batch; it must never decide usage.

use serde::Deserialize;
use worker::D1Database;

use super::{opt, rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::js_int;
use crate::policy::{OrgId, Timestamp};

#[derive(Debug, Clone, Deserialize)]
pub struct SummaryRow {
    pub meter: String,
    pub events: u64,
    pub quantity: u64,
    pub first_ts: u64,
    pub last_ts: u64,
}

/// Per-meter totals from the daily rollups since `from_day` (inclusive).
pub async fn summary(db: &D1Database, org: &OrgId, from_day: &str) -> Result<Vec<SummaryRow>, EdgeError> {
    rows(
        db,
        "SELECT meter, SUM(events) AS events, SUM(quantity) AS quantity, MIN(first_ts) AS first_ts, MAX(last_ts) AS last_ts \
         FROM usage_daily WHERE org_id = ? AND day >= ? GROUP BY meter ORDER BY meter",
        &[s(org.as_str()), s(from_day)],
        "usage_daily query",
    )
    .await
}

#[derive(Debug, Clone, Deserialize)]
pub struct DailyRow {
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub meter: String,
    pub day: String,
    pub quantity: u64,
    pub events: u64,
    pub max_value: u64,
    pub last_value: u64,
}

/// Daily rollups of one org's meter over [from, to] (inclusive days).
pub async fn history(
    db: &D1Database,
    org: &OrgId,
    meter: &str,
    from: &str,
    to: &str,
) -> Result<Vec<DailyRow>, EdgeError> {
    rows(
        db,
        "SELECT org_id, meter, day, quantity, events, max_value, last_value FROM usage_daily \
         WHERE org_id = ? AND meter = ? AND day >= ? AND day <= ? ORDER BY day",
        &[s(org.as_str()), s(meter), s(from), s(to)],
        "usage_daily query",
    )
    .await
}

/// Daily rollups of every org over [from, to], for the billing export.
pub async fn daily_range(db: &D1Database, from: &str, to: &str) -> Result<Vec<DailyRow>, EdgeError> {
    rows(
        db,
        "SELECT org_id, meter, day, quantity, events, max_value, last_value FROM usage_daily \
         WHERE day >= ? AND day <= ? ORDER BY org_id, meter, day",
        &[s(from), s(to)],
        "usage_daily query",
    )
    .await
}

pub async fn record_reset(db: &D1Database, org: &OrgId, meter: Option<&str>, at: Timestamp) -> Result<(), EdgeError> {
    db.prepare("INSERT OR IGNORE INTO counter_resets (org_id, meter, at) VALUES (?, ?, ?)")
        .bind(&[s(org.as_str()), opt(meter), t(at)?])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("counter_resets insert"))?;
    Ok(())
}

/// Deletes raw events older than `before` that are rolled up (always, by the trigger) and,
/// where the org reports to Stripe, already reported. Returns how many went.
pub async fn prune(db: &D1Database, before: Timestamp) -> Result<u64, EdgeError> {
    let res = db
        .prepare(
            "DELETE FROM usage_events WHERE ts < ? AND (stripe_reported_at IS NOT NULL OR org_id NOT IN \
             (SELECT id FROM orgs WHERE stripe_customer_id IS NOT NULL))",
        )
        .bind(&[t(before)?])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("usage_events prune"))?;
    Ok(res.meta().ok().flatten().and_then(|m| m.changes).and_then(|c| u64::try_from(c).ok()).unwrap_or(0))
}

// ------------------------------------------------------------------ from the org Durable Object

/// Rows per INSERT: 9 bound parameters each, under D1's 100 per statement.
const ROWS_PER_INSERT: usize = 11;

/// Inserts outbox rows into `usage_events` as one batch: `ON CONFLICT DO NOTHING` on (org,
/// event id), so a batch D1 took but whose answer was lost counts once when it is sent again
/// (the rollup trigger counts only rows really inserted).
pub async fn insert_usage(
    db: &D1Database,
    org: &OrgId,
    rows: &[crate::org::OutboxRow],
    recorded: Timestamp,
) -> Result<(), EdgeError> {
    let mut stmts = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO usage_events (org_id, event_id, meter, quantity, ts, day, source, metadata, recorded_at) \
             VALUES {values} ON CONFLICT (org_id, event_id) DO NOTHING"
        );
        let mut args = Vec::with_capacity(chunk.len().saturating_mul(9));
        for r in chunk {
            args.extend([
                s(org.as_str()),
                s(&r.event_id),
                s(&r.meter),
                js_int(r.quantity)?,
                js_int(r.ts)?,
                s(&Timestamp::from_millis(r.ts).date().to_string()),
                s(&r.source),
                opt(r.metadata.as_deref()),
                t(recorded)?,
            ]);
        }
        stmts.push(db.prepare(sql).bind(&args).map_err(EdgeError::platform("bind"))?);
    }
    let results = db.batch(stmts).await.map_err(EdgeError::platform("usage insert"))?;
    if let Some(bad) = results.iter().find(|r| !r.success()) {
        return Err(EdgeError::Internal(format!("usage insert: {}", bad.error().unwrap_or_default())));
    }
    Ok(())
}

/// The ledger's sum, peak and latest value of one meter over `[from, to)` ms.
pub async fn window_aggregate(
    db: &D1Database,
    org: &OrgId,
    meter: &str,
    from: u64,
    to: u64,
) -> Result<crate::org::rules::LedgerAgg, EdgeError> {
    let row = db
        .prepare(
            "SELECT COALESCE(SUM(quantity), 0) AS total, COALESCE(MAX(quantity), 0) AS peak, \
             (SELECT quantity FROM usage_events WHERE org_id = ?1 AND meter = ?2 AND ts >= ?3 AND ts < ?4 \
              ORDER BY ts DESC, event_id DESC LIMIT 1) AS last, MAX(ts) AS last_ts \
             FROM usage_events WHERE org_id = ?1 AND meter = ?2 AND ts >= ?3 AND ts < ?4",
        )
        .bind(&[s(org.as_str()), s(meter), js_int(from)?, js_int(to)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("reconcile query"))?;
    Ok(row.unwrap_or_default())
}
