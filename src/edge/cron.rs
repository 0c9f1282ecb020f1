//! The scheduled job (`#[event(scheduled)]`): reconcile every org (report only: drift is logged
//! and published as a gauge, never silently repaired), publish each org's outbox depth, flush
//! failures and decision counts, report usage to Stripe, and prune raw ledger rows past
//! retention.
//!
//! It sequences calls to the org DOs, the ledger and Stripe; it must never decide usage, and a
//! failure of one org or one step is logged and never stops the others.

use serde_json::{json, Value};
use worker::Env;

use super::ledger;
use super::platform::{call_do, now, settings};
use super::stripe;
use crate::org::{LedgerOp, OrgMsg};
use crate::policy::OrgId;

/// The cron's work: reconcile every org (report only) and prune old raw events.
pub async fn run(env: &Env) {
    let started = now();
    let (mut checked, mut drifted) = (0u64, 0u64);
    // A ledger that cannot list the orgs is an error to report, not "0 orgs".
    let orgs = match ledger::db(env) {
        Ok(db) => ledger::all_orgs(&db).await,
        Err(e) => Err(e),
    };
    let orgs = orgs.unwrap_or_else(|e| {
        worker::console_error!("{}", json!({"msg": "cron: orgs not listed", "error": e.to_string()}));
        Vec::new()
    });
    for org in &orgs {
        let Ok(id) = OrgId::parse(&org.id) else { continue };
        match call_do(env, &id, &OrgMsg::Ledger(LedgerOp::Reconcile { repair: false })).await {
            Ok(reply) if reply.status == 200 => {
                checked = checked.saturating_add(1);
                let drift = reply.body.get("total_drift").and_then(Value::as_u64).unwrap_or(0);
                if let Ok(db) = ledger::db(env) {
                    let labels = format!("org=\"{}\"", org.id);
                    let field = |k: &str| reply.body.get(k).and_then(Value::as_u64).unwrap_or(0);
                    for (name, value) in [
                        ("quotagate_reconcile_drift_units", drift),
                        ("quotagate_outbox_depth", field("outbox_pending")),
                        ("quotagate_ledger_flush_failures", field("flush_failures")),
                    ] {
                        if let Err(e) = ledger::set_gauge(&db, name, &labels, value, started).await {
                            worker::console_error!(
                                "{}",
                                json!({"msg": "gauge not stored", "gauge": name, "error": e.to_string()})
                            );
                        }
                    }
                    let counts = reply.body.get("decisions").and_then(Value::as_array).cloned().unwrap_or_default();
                    for c in counts {
                        let meter = c.get("meter").and_then(Value::as_str).unwrap_or_default();
                        let outcome = c.get("outcome").and_then(Value::as_str).unwrap_or_default();
                        let n = c.get("n").and_then(Value::as_u64).unwrap_or(0);
                        let labels = format!("org=\"{}\",meter=\"{meter}\",outcome=\"{outcome}\"", org.id);
                        if let Err(e) = ledger::set_gauge(&db, "quotagate_decisions_total", &labels, n, started).await {
                            worker::console_error!("{}", json!({"msg": "gauge not stored", "error": e.to_string()}));
                        }
                    }
                }
                if drift > 0 {
                    drifted = drifted.saturating_add(1);
                    let line = json!({"msg": "reconcile drift", "org": org.id, "total_drift": drift, "limits": reply.body.get("limits")});
                    worker::console_warn!("{line}");
                }
            }
            Ok(reply) => {
                worker::console_warn!("{}", json!({"msg": "reconcile skipped", "org": org.id, "status": reply.status}));
            }
            Err(e) => {
                worker::console_error!("{}", json!({"msg": "reconcile failed", "org": org.id, "error": e.to_string()}));
            }
        }
    }
    match stripe::sync(env, false).await {
        Ok(summary) => worker::console_log!("{}", json!({"msg": "stripe sync", "summary": summary})),
        Err(e) => worker::console_error!("{}", json!({"msg": "stripe sync failed", "error": e.to_string()})),
    }
    let cfg = settings(env);
    let (days, hourly_days) = (cfg.retention_days, cfg.hourly_retention_days);
    let daily_cutoff = started.saturating_sub_ms(days.saturating_mul(86_400_000));
    let hourly_cutoff = started.saturating_sub_ms(hourly_days.saturating_mul(86_400_000));
    // Tiered retention on every shard: one D1 batch each.
    let mut pruned = 0u64;
    match ledger::all_shards(env, cfg.ledger_shards) {
        Ok(shards) => {
            for db in shards {
                match ledger::prune(&db, hourly_cutoff, daily_cutoff).await {
                    Ok(n) => pruned = pruned.saturating_add(n),
                    Err(e) => {
                        worker::console_error!("{}", json!({"msg": "cron: retention failed", "error": e.to_string()}));
                    }
                }
            }
        }
        Err(e) => worker::console_error!("{}", json!({"msg": "cron: retention failed", "error": e.to_string()})),
    }
    let line = json!({"msg": "scheduled", "orgs_checked": checked, "orgs_with_drift": drifted,
                      "rows_pruned": pruned, "retention_days": days, "hourly_retention_days": hourly_days,
                      "ms": now().since(started)});
    worker::console_log!("{line}");
}
