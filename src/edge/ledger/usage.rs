//! The usage ledger in D1: the org Durable Objects' bucket batches (exactly once per org by the
//! flush mark), per-event audit rows (exactly once by event id), the org-facing summary and
//! history, the export's daily range, reset marks, tiered retention, and the sums reconciliation
//! compares counters with. These tables live in each org's ledger shard.
//!
//! Each function is one statement or one batch; it must never decide usage.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{opt, rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::{js_int, js_signed};
use crate::org::buckets::{Bucket, BucketKey, Sealed};
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
        // Sums are read at most 2^53 − 1 (`MAX_SAFE_INTEGER`): a JS number carries no more exactly, and
        // the ledger's totals can pass it where counters cannot (a reset, a month of days).
        concat!(
            "SELECT meter, MIN(SUM(events), ",
            max_safe_sql!(),
            ") AS events, MIN(SUM(quantity), ",
            max_safe_sql!(),
            ") AS quantity, MIN(first_ts) AS first_ts, MAX(last_ts) AS last_ts \
             FROM usage_daily WHERE org_id = ? AND day >= ? GROUP BY meter ORDER BY meter"
        ),
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
        concat!(
            "SELECT org_id, meter, day, MIN(quantity, ",
            max_safe_sql!(),
            ") AS quantity, events, max_value, last_value FROM usage_daily \
             WHERE org_id = ? AND meter = ? AND day >= ? AND day <= ? ORDER BY day"
        ),
        &[s(org.as_str()), s(meter), s(from), s(to)],
        "usage_daily query",
    )
    .await
}

/// Daily rollups of every org over [from, to], for the billing export.
pub async fn daily_range(db: &D1Database, from: &str, to: &str) -> Result<Vec<DailyRow>, EdgeError> {
    rows(
        db,
        concat!(
            "SELECT org_id, meter, day, MIN(quantity, ",
            max_safe_sql!(),
            ") AS quantity, events, max_value, last_value FROM usage_daily \
             WHERE day >= ? AND day <= ? ORDER BY org_id, meter, day"
        ),
        &[s(from), s(to)],
        "usage_daily query",
    )
    .await
}

/// A counter an org's own report repaired (small drift).
#[derive(Debug, Clone)]
pub struct Repaired {
    pub policy: String,
    pub window_start: Timestamp,
    pub counter: u64,
    pub expected: u64,
}

/// Records an org's repairs, one D1 batch.
pub async fn record_repairs(db: &D1Database, org: &str, repairs: &[Repaired], at: Timestamp) -> Result<(), EdgeError> {
    let mut stmts = Vec::with_capacity(repairs.len());
    for r in repairs {
        stmts.push(
            db.prepare(
                "INSERT OR IGNORE INTO reconcile_repairs (org_id, at, policy, window_start, counter, expected) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&[s(org), t(at)?, s(&r.policy), t(r.window_start)?, js_int(r.counter)?, js_int(r.expected)?])
            .map_err(EdgeError::platform("bind"))?,
        );
    }
    db.batch(stmts).await.map_err(EdgeError::platform("reconcile_repairs insert"))?;
    Ok(())
}

/// Repairs per org, for the metrics.
pub async fn repair_counts(db: &D1Database) -> Result<Vec<(String, u64)>, EdgeError> {
    #[derive(Deserialize)]
    struct R {
        org_id: String,
        n: u64,
    }
    let r: Vec<R> = rows(
        db,
        "SELECT org_id, COUNT(*) AS n FROM reconcile_repairs GROUP BY org_id ORDER BY org_id",
        &[],
        "reconcile_repairs query",
    )
    .await?;
    Ok(r.into_iter().map(|r| (r.org_id, r.n)).collect())
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

/// Tiered retention, one D1 batch: hourly rows before `hourly_before`, daily rows and audit rows
/// before `daily_before`. Returns how many rows went.
pub async fn prune(db: &D1Database, hourly_before: Timestamp, daily_before: Timestamp) -> Result<u64, EdgeError> {
    let day = daily_before.date().to_string();
    let stmts = vec![
        db.prepare("DELETE FROM usage_hourly WHERE start < ?").bind(&[t(hourly_before)?]),
        db.prepare("DELETE FROM usage_daily WHERE day < ?").bind(&[s(&day)]),
        db.prepare("DELETE FROM usage_events WHERE ts < ?").bind(&[t(daily_before)?]),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(EdgeError::platform("bind"))?;
    let results = db.batch(stmts).await.map_err(EdgeError::platform("ledger prune"))?;
    Ok(results.iter().map(super::changes).sum())
}

// ------------------------------------------------------------------ from the org Durable Object

/// Rows per INSERT: 10 bound parameters each, under D1's 100 per statement.
const ROWS_PER_INSERT: usize = 9;

/// Inserts outbox rows into `usage_events` as one batch: `ON CONFLICT DO NOTHING` on (org,
/// event id), so a batch D1 took but whose answer was lost counts once when it is sent again.
/// Audit rows are not counted again (their usage came in the buckets); rows an earlier build
/// queued are (`rolled`: the trigger counts only rows really inserted).
pub async fn insert_usage(
    db: &D1Database,
    org: &OrgId,
    rows: &[crate::org::OutboxRow],
    recorded: Timestamp,
) -> Result<(), EdgeError> {
    let mut stmts = Vec::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!(
            "INSERT INTO usage_events (org_id, event_id, meter, quantity, ts, day, source, metadata, recorded_at, rolled) \
             VALUES {values} ON CONFLICT (org_id, event_id) DO NOTHING"
        );
        let mut args = Vec::with_capacity(chunk.len().saturating_mul(10));
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
                JsValue::from(u8::from(r.audit == 0)),
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

/// A `VALUES` list of numbered parameters for `rows`, after the shared `head` parameters, and
/// every argument in order: one row's arguments come from `row`.
fn values_rows(
    head: Vec<JsValue>,
    rows: &[(BucketKey, Bucket)],
    row: impl Fn(&BucketKey, &Bucket) -> Result<Vec<JsValue>, EdgeError>,
) -> Result<(String, Vec<JsValue>), EdgeError> {
    let mut args = head;
    let mut values = Vec::with_capacity(rows.len());
    for (k, b) in rows {
        let first = args.len().saturating_add(1);
        let these = row(k, b)?;
        let marks: Vec<String> = (first..first.saturating_add(these.len())).map(|i| format!("?{i}")).collect();
        values.push(format!("({})", marks.join(", ")));
        args.extend(these);
    }
    Ok((values.join(", "), args))
}

/// Hourly rows per INSERT (11 parameters each, plus 4 shared) and daily rows (9 each).
const HOURLY_PER_INSERT: usize = 8;
const DAILY_PER_INSERT: usize = 10;

/// Applies one sealed bucket batch of `org` as one D1 batch (one transaction), exactly once: each
/// statement applies only while the org's mark is below `seq` in this `epoch`, and the last one
/// raises the mark. Sent again after D1 committed, it changes nothing.
pub async fn apply_buckets(
    db: &D1Database,
    org: &OrgId,
    epoch: u64,
    sealed: &Sealed,
    at: Timestamp,
) -> Result<(), EdgeError> {
    const GUARD: &str = "WHERE NOT EXISTS (SELECT 1 FROM ledger_marks WHERE org_id = ?1 AND epoch = ?2 AND seq >= ?3)";
    const MERGE: &str = "quantity = quantity + excluded.quantity, events = events + excluded.events, \
        max_value = MAX(max_value, excluded.max_value), \
        last_value = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_value ELSE last_value END, \
        last_ts = MAX(last_ts, excluded.last_ts), \
        first_ts = CASE WHEN first_ts = 0 THEN excluded.first_ts WHEN excluded.first_ts = 0 THEN first_ts \
        ELSE MIN(first_ts, excluded.first_ts) END";
    let head = || -> Result<Vec<JsValue>, EdgeError> { Ok(vec![s(org.as_str()), js_int(epoch)?, js_int(sealed.seq)?]) };
    let hourly = |k: &BucketKey, b: &Bucket| -> Result<Vec<JsValue>, EdgeError> {
        Ok(vec![
            s(&k.meter),
            js_int(k.start)?,
            s(&b.terms.plan),
            s(&b.terms.event_name),
            opt(b.terms.customer.as_deref()),
            js_signed(b.quantity)?,
            js_signed(b.events)?,
            js_int(b.max_value)?,
            js_int(b.last_value)?,
            js_int(b.last_ts)?,
            js_int(b.first_ts)?,
        ])
    };
    let daily = |k: &BucketKey, b: &Bucket| -> Result<Vec<JsValue>, EdgeError> {
        Ok(vec![
            s(&k.meter),
            s(&Timestamp::from_millis(k.start).date().to_string()),
            s(&b.terms.plan),
            js_signed(b.quantity)?,
            js_signed(b.events)?,
            js_int(b.max_value)?,
            js_int(b.last_value)?,
            js_int(b.last_ts)?,
            js_int(b.first_ts)?,
        ])
    };
    let mut stmts = Vec::new();
    for chunk in sealed.buckets.chunks(HOURLY_PER_INSERT) {
        let (values, args) = values_rows(head()?, chunk, hourly)?;
        let sql = format!(
            "INSERT INTO usage_hourly (org_id, meter, start, plan_id, event_name, customer, quantity, events, max_value, \
             last_value, last_ts, first_ts) SELECT ?1, column1, column2, column3, column4, column5, column6, column7, \
             column8, column9, column10, column11 FROM (VALUES {values}) {GUARD} \
             ON CONFLICT (org_id, meter, start) DO UPDATE SET {MERGE}"
        );
        stmts.push(db.prepare(sql).bind(&args).map_err(EdgeError::platform("bind"))?);
    }
    for chunk in sealed.buckets.chunks(DAILY_PER_INSERT) {
        let (values, args) = values_rows(head()?, chunk, daily)?;
        let sql = format!(
            "INSERT INTO usage_daily (org_id, meter, day, plan_id, quantity, events, max_value, last_value, last_ts, \
             first_ts) SELECT ?1, column1, column2, column3, column4, column5, column6, column7, column8, column9 \
             FROM (VALUES {values}) {GUARD} ON CONFLICT (org_id, meter, day) DO UPDATE SET plan_id = excluded.plan_id, {MERGE}"
        );
        stmts.push(db.prepare(sql).bind(&args).map_err(EdgeError::platform("bind"))?);
    }
    let mut args = head()?;
    args.push(t(at)?);
    stmts.push(
        db.prepare(
            "INSERT INTO ledger_marks (org_id, epoch, seq, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (org_id) DO UPDATE \
             SET epoch = excluded.epoch, seq = excluded.seq, at = excluded.at \
             WHERE NOT (ledger_marks.epoch = excluded.epoch AND ledger_marks.seq >= excluded.seq)",
        )
        .bind(&args)
        .map_err(EdgeError::platform("bind"))?,
    );
    let results = db.batch(stmts).await.map_err(EdgeError::platform("bucket flush"))?;
    if let Some(bad) = results.iter().find(|r| !r.success()) {
        return Err(EdgeError::Internal(format!("bucket flush: {}", bad.error().unwrap_or_default())));
    }
    Ok(())
}

/// The ledger's sum, peak and latest value of one meter over buckets starting in `[from, to)` ms.
pub async fn window_aggregate(
    db: &D1Database,
    org: &OrgId,
    meter: &str,
    from: u64,
    to: u64,
) -> Result<crate::org::rules::LedgerAgg, EdgeError> {
    let row = db
        .prepare(concat!(
            "SELECT COALESCE(MIN(SUM(quantity), ",
            max_safe_sql!(),
            "), 0) AS total, COALESCE(MAX(max_value), 0) AS peak, \
                 (SELECT last_value FROM usage_hourly WHERE org_id = ?1 AND meter = ?2 AND start >= ?3 AND start < ?4 \
                  AND last_ts > 0 ORDER BY last_ts DESC LIMIT 1) AS last, NULLIF(MAX(last_ts), 0) AS last_ts \
                 FROM usage_hourly WHERE org_id = ?1 AND meter = ?2 AND start >= ?3 AND start < ?4"
        ))
        .bind(&[s(org.as_str()), s(meter), js_int(from)?, js_int(to)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("reconcile query"))?;
    Ok(row.unwrap_or_default())
}
