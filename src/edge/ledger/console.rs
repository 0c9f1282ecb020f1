//! What the operator console reads and the org report writes for it: each org's levels (how
//! near its limits it stands), the org list sorted by them, recent alert deliveries and the
//! ledger's health on one shard.
//!
//! Each function is one statement or one batch; it must never decide anything.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::js_int;
use crate::org::LimitLevel;
use crate::policy::{OrgId, Timestamp};
use crate::wire::{OrgListQuery, OrgOrder};

/// Replaces an org's levels with those of its latest report (one batch).
pub async fn set_levels(db: &D1Database, org: &OrgId, levels: &[LimitLevel], at: Timestamp) -> Result<(), EdgeError> {
    let mut stmts = Vec::with_capacity(levels.len() + 1);
    stmts.push(
        db.prepare("DELETE FROM org_levels WHERE org_id = ?")
            .bind(&[s(org.as_str())])
            .map_err(EdgeError::platform("bind"))?,
    );
    for l in levels {
        stmts.push(
            db.prepare(
                "INSERT INTO org_levels (org_id, policy, meter, pct, until, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&[
                s(org.as_str()),
                s(&l.policy),
                s(l.meter.as_str()),
                js_int(l.percentage)?,
                l.until.map_or(Ok(JsValue::NULL), t)?,
                t(at)?,
            ])
            .map_err(EdgeError::platform("bind"))?,
        );
    }
    db.batch(stmts).await.map_err(EdgeError::platform("org_levels replace"))?;
    Ok(())
}

/// One org of the list, with its worst level now (`policy` `None`: it has not reported yet).
#[derive(Debug, Clone, Deserialize)]
pub struct OrgLevelRow {
    pub id: String,
    pub name: Option<String>,
    pub plan_id: String,
    pub policy: Option<String>,
    pub meter: Option<String>,
    pub pct: Option<u64>,
    pub until: Option<u64>,
    pub updated_at: Option<u64>,
}

/// A level whose window has reset by `now` reads 0: a quiet org is not listed at yesterday's.
const LEVELS_NOW: &str = "WITH lv AS (SELECT org_id, policy, meter, until, updated_at, \
     CASE WHEN until IS NOT NULL AND until <= ?3 THEN 0 ELSE pct END AS pct FROM org_levels), \
     worst AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY pct DESC, policy) AS rn FROM lv) ";
const MATCHES: &str = "(?1 = '' OR instr(lower(o.id), ?1) > 0 OR instr(lower(COALESCE(o.name, '')), ?1) > 0) \
     AND (?2 IS NULL OR o.plan_id = ?2)";

#[derive(Deserialize)]
struct Total {
    n: u64,
}

/// One page of the org list, and how many orgs match in all.
pub async fn org_page(db: &D1Database, q: &OrgListQuery, now: Timestamp) -> Result<(Vec<OrgLevelRow>, u64), EdgeError> {
    let plan = q.plan.as_ref().map_or(JsValue::NULL, |p| s(p.as_str()));
    let order = match q.order {
        OrgOrder::Level => "COALESCE(w.pct, -1) DESC, o.id",
        OrgOrder::Id => "o.id",
    };
    let page = rows(
        db,
        &format!(
            "{LEVELS_NOW}SELECT o.id, o.name, o.plan_id, w.policy, w.meter, w.pct, w.until, w.updated_at \
             FROM orgs o LEFT JOIN worst w ON w.org_id = o.id AND w.rn = 1 WHERE {MATCHES} \
             ORDER BY {order} LIMIT ?4 OFFSET ?5"
        ),
        &[s(&q.filter), plan.clone(), t(now)?, JsValue::from(q.limit), JsValue::from(q.offset)],
        "org list",
    )
    .await?;
    let total: Vec<Total> =
        rows(db, &format!("SELECT COUNT(*) AS n FROM orgs o WHERE {MATCHES}"), &[s(&q.filter), plan], "org count")
            .await?;
    Ok((page, total.first().map_or(0, |c| c.n)))
}

/// The latest attempt of each alert, newest first.
#[derive(Debug, Clone, Deserialize)]
pub struct AlertRow {
    pub org_id: String,
    pub alert_id: String,
    pub attempt: u64,
    pub status_code: Option<u64>,
    pub error: Option<String>,
    pub outcome: String,
    pub at: u64,
}

pub async fn recent_alerts(db: &D1Database, limit: u32) -> Result<Vec<AlertRow>, EdgeError> {
    rows(
        db,
        "SELECT a.org_id, a.alert_id, a.attempt, a.status_code, a.error, a.outcome, a.at FROM alert_deliveries a \
         WHERE a.attempt = (SELECT MAX(b.attempt) FROM alert_deliveries b \
                            WHERE b.org_id = a.org_id AND b.alert_id = a.alert_id) \
         ORDER BY a.at DESC, a.org_id, a.alert_id LIMIT ?",
        &[JsValue::from(limit)],
        "alert deliveries",
    )
    .await
}

/// One shard's ledger health: usage not yet in D1 and orgs whose flushes fail (as of their
/// last reports), and the last flush it applied.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct LedgerHealthRow {
    pub pending: u64,
    pub orgs_pending: u64,
    pub orgs_failing: u64,
    pub last_flush_at: Option<u64>,
}

pub async fn ledger_health(db: &D1Database) -> Result<LedgerHealthRow, EdgeError> {
    let r: Vec<LedgerHealthRow> = rows(
        db,
        "SELECT \
           (SELECT COALESCE(SUM(value), 0) FROM metric_gauges WHERE name = 'quotagate_outbox_depth') AS pending, \
           (SELECT COUNT(*) FROM metric_gauges WHERE name = 'quotagate_outbox_depth' AND value > 0) AS orgs_pending, \
           (SELECT COUNT(*) FROM metric_gauges WHERE name = 'quotagate_ledger_flush_failures' AND value > 0) AS orgs_failing, \
           (SELECT MAX(at) FROM ledger_marks) AS last_flush_at",
        &[],
        "ledger health",
    )
    .await?;
    Ok(r.first().copied().unwrap_or_default())
}
