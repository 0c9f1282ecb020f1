//! The one D1 access layer: plans, orgs and API keys, the usage ledger (inserts from the org
//! Durable Object's outbox, summaries, history, reconciliation sums, retention), gauges, latency
//! buckets and alert deliveries.
//!
//! Each function is one statement or one batch and translates rows to plain structs; it must
//! never validate business rules (the core does) nor call a Durable Object.

use std::fmt::Write as _;

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{D1Database, Env};

use super::error::EdgeError;
use super::platform::js_int;
use crate::policy::{OrgId, PlanId, Timestamp};
use crate::telemetry::BucketRow;

pub fn db(env: &Env) -> Result<D1Database, EdgeError> {
    env.d1("LEDGER").map_err(EdgeError::platform("LEDGER binding"))
}

pub(super) fn s(v: &str) -> JsValue {
    JsValue::from_str(v)
}

fn opt(v: Option<&str>) -> JsValue {
    v.map_or(JsValue::NULL, JsValue::from_str)
}

fn t(ts: Timestamp) -> Result<JsValue, EdgeError> {
    js_int(ts.millis())
}

/// Runs one query and reads every row as `T`; `what` names the query in errors.
pub(super) async fn rows<T: for<'de> Deserialize<'de>>(
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
}

#[derive(Debug, Clone, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub prefix: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
}

/// What the fail-open path needs to know about a key when the org's DO cannot be asked.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyPlanRow {
    pub revoked_at: Option<u64>,
    pub plan_id: String,
    pub plan_body: String,
}

pub async fn get_plan(db: &D1Database, id: &PlanId) -> Result<Option<PlanRow>, EdgeError> {
    db.prepare("SELECT id, name, body, created_at, updated_at FROM plans WHERE id = ?")
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
    rows(db, "SELECT id, name, body, created_at, updated_at FROM plans ORDER BY id", &[], "plans query").await
}

/// Inserts or replaces a plan; `true` when it was new.
pub async fn put_plan(db: &D1Database, id: &PlanId, name: &str, body: &str, now: Timestamp) -> Result<bool, EdgeError> {
    let existed = get_plan(db, id).await?.is_some();
    db.prepare(
        "INSERT INTO plans (id, name, body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4) \
         ON CONFLICT(id) DO UPDATE SET name = excluded.name, body = excluded.body, updated_at = excluded.updated_at",
    )
    .bind(&[s(id.as_str()), s(name), s(body), t(now)?])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("plans upsert"))?;
    Ok(!existed)
}

const ORG_COLUMNS: &str =
    "id, name, plan_id, billing_anchor, stripe_customer_id, webhook_url, overrides, created_at, updated_at";

pub async fn get_org(db: &D1Database, id: &OrgId) -> Result<Option<OrgRow>, EdgeError> {
    db.prepare(format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = ?"))
        .bind(&[s(id.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("orgs query"))
}

pub async fn orgs_on_plan(db: &D1Database, plan: &PlanId) -> Result<Vec<OrgRow>, EdgeError> {
    rows(
        db,
        &format!("SELECT {ORG_COLUMNS} FROM orgs WHERE plan_id = ? ORDER BY id"),
        &[s(plan.as_str())],
        "orgs query",
    )
    .await
}

pub async fn put_org(db: &D1Database, row: &OrgRow) -> Result<(), EdgeError> {
    db.prepare(
        "INSERT INTO orgs (id, name, plan_id, billing_anchor, stripe_customer_id, webhook_url, overrides, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
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
    ])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("orgs upsert"))?;
    Ok(())
}

pub async fn insert_key(
    db: &D1Database,
    key_id: &str,
    org: &OrgId,
    hash: &str,
    prefix: &str,
    now: Timestamp,
) -> Result<(), EdgeError> {
    db.prepare("INSERT INTO api_keys (id, org_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)")
        .bind(&[s(key_id), s(org.as_str()), s(hash), s(prefix), t(now)?])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("api_keys insert"))?;
    Ok(())
}

pub async fn list_keys(db: &D1Database, org: &OrgId) -> Result<Vec<KeyRow>, EdgeError> {
    rows(
        db,
        "SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE org_id = ? ORDER BY created_at",
        &[s(org.as_str())],
        "api_keys query",
    )
    .await
}

/// Marks a key of `org` revoked; `None` when the org has no such key. Revoking twice keeps the
/// first revocation time.
pub async fn revoke_key(db: &D1Database, org: &OrgId, key_id: &str, now: Timestamp) -> Result<Option<u64>, EdgeError> {
    db.prepare("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND org_id = ?")
        .bind(&[t(now)?, s(key_id), s(org.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("api_keys revoke"))?;
    let row: Option<KeyRow> = db
        .prepare("SELECT id, prefix, created_at, revoked_at FROM api_keys WHERE id = ? AND org_id = ?")
        .bind(&[s(key_id), s(org.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("api_keys query"))?;
    Ok(row.and_then(|r| r.revoked_at))
}

/// The key's revocation state and its org's plan, for deciding without the DO.
pub async fn key_plan(db: &D1Database, org: &OrgId, hash: &str) -> Result<Option<KeyPlanRow>, EdgeError> {
    db.prepare(
        "SELECT k.revoked_at AS revoked_at, p.id AS plan_id, p.body AS plan_body FROM api_keys k \
         JOIN orgs o ON o.id = k.org_id JOIN plans p ON p.id = o.plan_id WHERE k.key_hash = ? AND k.org_id = ?",
    )
    .bind(&[s(hash), s(org.as_str())])
    .map_err(EdgeError::platform("bind"))?
    .first(None)
    .await
    .map_err(EdgeError::platform("api_keys query"))
}

/// The key is active for the org (used where the org's DO is not asked: ledger reads).
pub async fn key_active(db: &D1Database, org: &OrgId, hash: &str) -> Result<bool, EdgeError> {
    let row: Option<serde_json::Value> = db
        .prepare("SELECT 1 AS ok FROM api_keys WHERE key_hash = ? AND org_id = ? AND revoked_at IS NULL")
        .bind(&[s(hash), s(org.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("api_keys query"))?;
    Ok(row.is_some())
}

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

pub async fn all_orgs(db: &D1Database) -> Result<Vec<OrgRow>, EdgeError> {
    rows(db, &format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY id"), &[], "orgs query").await
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

#[derive(Debug, Clone, Deserialize)]
pub struct GaugeRow {
    pub name: String,
    pub labels: String,
    pub value: i64,
}

/// Publishes a gauge for the metrics endpoint.
pub async fn set_gauge(db: &D1Database, name: &str, labels: &str, value: u64, at: Timestamp) -> Result<(), EdgeError> {
    db.prepare(
        "INSERT INTO metric_gauges (name, labels, value, updated_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (name, labels) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )
    .bind(&[s(name), s(labels), js_int(value)?, t(at)?])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("metric_gauges upsert"))?;
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

/// Metrics read live from D1: the Stripe breaker and backlog, and alert deliveries by outcome.
pub async fn live_metrics(db: &D1Database, at: Timestamp) -> Result<String, EdgeError> {
    let live: Option<LiveRow> = db
        .prepare(
            "SELECT CASE WHEN open_until > ? THEN 1 ELSE 0 END AS breaker_open, failures, \
             (SELECT COUNT(*) FROM stripe_batches WHERE status = 'pending') AS pending, \
             (SELECT COUNT(*) FROM stripe_batches WHERE status = 'expired') AS expired FROM stripe_state WHERE id = 1",
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
    let l = live.unwrap_or(LiveRow { breaker_open: 0, failures: 0, pending: 0, expired: 0 });
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
