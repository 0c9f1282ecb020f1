//! The admin API's reads for the operator console: the org list (paginated, filtered, nearest
//! to a limit first, from the levels each org's report publishes) and the status view (recent
//! alert deliveries, the ledger's backlog and last flush, the Stripe breaker).
//!
//! It only reads D1; it must never call a Durable Object per org (the list serves thousands).

use serde_json::{json, Value};
use worker::{Env, Request, Response};

use super::{ok, rfc};
use crate::edge::auth::Admin;
use crate::edge::error::EdgeError;
use crate::edge::ledger::{self, LedgerHealthRow, OrgLevelRow};
use crate::edge::platform::{now, param, query, settings};
use crate::wire::{without_urls, OrgListQuery};

/// How many alerts the status view shows.
const RECENT_ALERTS: u32 = 50;

fn org_entry(r: &OrgLevelRow) -> Value {
    let level = r.policy.as_ref().map(|policy| {
        json!({"policy": policy, "meter": r.meter, "percentage": r.pct,
               "until": r.until.map(rfc), "reported_at": r.updated_at.map(rfc)})
    });
    json!({"id": r.id, "name": r.name, "plan": r.plan_id, "level": level})
}

/// `GET /_quota/admin/orgs?limit&offset&q&plan&sort`: one page of orgs, nearest to a limit
/// first by default, each with its worst level as of its last report (`null` before its first).
pub(super) async fn list_orgs(req: &Request, env: &Env) -> Result<Response, EdgeError> {
    let q = query(req);
    let page = OrgListQuery::parse(
        param(&q, "limit"),
        param(&q, "offset"),
        param(&q, "q"),
        param(&q, "plan"),
        param(&q, "sort"),
    )?;
    let (rows, total) = ledger::org_page(&ledger::db(env)?, &page, now()).await?;
    let orgs: Vec<Value> = rows.iter().map(org_entry).collect();
    ok(200, &json!({"orgs": orgs, "total": total, "offset": page.offset, "limit": page.limit}))
}

/// `GET /_quota/admin/status`: what an operator checks when something looks wrong, and who
/// is asking (the console shows a `read` token no buttons that would be refused).
pub(super) async fn status(env: &Env, who: &Admin) -> Result<Response, EdgeError> {
    let db = ledger::db(env)?;
    let t = now();
    let mut ledger_sum = LedgerHealthRow::default();
    let mut backlog = (0u64, 0u64);
    for shard in ledger::all_shards(env, settings(env).ledger_shards)? {
        let h = ledger::ledger_health(&shard).await?;
        ledger_sum.pending = ledger_sum.pending.saturating_add(h.pending);
        ledger_sum.orgs_pending = ledger_sum.orgs_pending.saturating_add(h.orgs_pending);
        ledger_sum.orgs_failing = ledger_sum.orgs_failing.saturating_add(h.orgs_failing);
        ledger_sum.last_flush_at = ledger_sum.last_flush_at.max(h.last_flush_at);
        let (pending, expired) = ledger::stripe_backlog(&shard).await?;
        backlog = (backlog.0.saturating_add(pending), backlog.1.saturating_add(expired));
    }
    let breaker = ledger::stripe_breaker(&db).await?;
    // Alerts name the org and the alert; the receiving URL (which may carry the receiver's
    // token) is not shown.
    let alerts: Vec<Value> = ledger::recent_alerts(&db, RECENT_ALERTS)
        .await?
        .iter()
        .map(|a| {
            json!({"org_id": a.org_id, "alert_id": a.alert_id, "attempts": a.attempt, "outcome": a.outcome,
                   "status_code": a.status_code, "error": a.error.as_deref().map(without_urls), "at": rfc(a.at)})
        })
        .collect();
    let body = json!({
        "generated_at": t.rfc3339(),
        "you": {"token_id": who.token_id, "name": who.name, "scope": who.scope.as_str()},
        "ledger": {
            "pending_events": ledger_sum.pending,
            "orgs_pending": ledger_sum.orgs_pending,
            "orgs_failing": ledger_sum.orgs_failing,
            "last_flush_at": ledger_sum.last_flush_at.map(rfc),
        },
        "stripe": {
            "breaker_open": breaker.open_until > t.millis(),
            "consecutive_failures": breaker.failures,
            "open_until": (breaker.open_until > 0).then(|| rfc(breaker.open_until)),
            "pending_batches": backlog.0,
            "expired_batches": backlog.1,
        },
        "alerts": alerts,
    });
    ok(200, &body)
}
