//! The scheduled job (`#[event(scheduled)]`): report usage to Stripe and prune the ledger's
//! tiers past retention, on every shard. It visits no org: each active org's DO reconciles and
//! publishes its own gauges (`ORG_REPORT_SECS`), so the job's work does not grow with orgs.
//!
//! It sequences the ledger and Stripe; it must never decide usage, and a failure of one step or
//! one shard is logged and never stops the others.

use serde_json::json;
use worker::Env;

use super::ledger;
use super::platform::{now, settings};
use super::stripe;

/// The cron's work: Stripe reporting, then tiered retention.
pub async fn run(env: &Env) {
    let started = now();
    // A bad setting stops the cron's work (loudly) rather than pruning or billing on a guess.
    if let Err(e) = settings(env).check(crate::config::Need::Cron) {
        worker::console_error!("{}", json!({"msg": "cron skipped", "error": e}));
        return;
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
    // The admin audit log is kept as long as the daily ledger.
    let audit = match ledger::db(env) {
        Ok(db) => ledger::prune_audit(&db, daily_cutoff).await,
        Err(e) => Err(e),
    };
    match audit {
        Ok(n) => pruned = pruned.saturating_add(n),
        Err(e) => worker::console_error!("{}", json!({"msg": "cron: audit retention failed", "error": e.to_string()})),
    }
    // The cron's own heartbeat, for the alert that fires when it stops running.
    let finished = now();
    let beat = match ledger::db(env) {
        Ok(db) => {
            let gauge = [("quotagate_cron_last_run_timestamp_seconds".to_owned(), String::new(), finished.secs())];
            ledger::set_gauges(&db, &gauge, finished).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = beat {
        worker::console_error!("{}", json!({"msg": "cron: heartbeat not stored", "error": e.to_string()}));
    }
    let line = json!({"msg": "scheduled", "rows_pruned": pruned, "retention_days": days, "hourly_retention_days": hourly_days,
                      "ms": now().since(started)});
    worker::console_log!("{line}");
}
