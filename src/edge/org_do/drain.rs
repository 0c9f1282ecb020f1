//! The I/O that leaves the org Durable Object: bucket batches and audit rows to the org's D1
//! ledger shard, the plan's version from D1, threshold alerts to their webhook, the ledger sums
//! reconciliation compares with, and the org's own report (repairs, drift alerts, gauges).
//!
//! Each driver reads what it sends synchronously, awaits the platform, then writes the outcome
//! synchronously; it never holds decided state across an await, and the rules it follows
//! (backoff, retry times, expected values) are the machine's. It must never decide usage.

use worker::{Request, RequestInit};

use super::{DoError, DoResult, OrgQuota};
use crate::edge::ledger::{self, AlertAttempt};
use crate::edge::platform::{now, settings};
use crate::org::rules::{alert_retry_at, AlertOutcome, MAX_IDEMPOTENCY_RECORDS};
use crate::org::{FlushResult, LedgerOp, Need, OrgMachine, OrgReply, Repair, Step};
use crate::policy::keys::webhook_signature;
use crate::policy::{OrgId, Timestamp};

/// A flush drains at most this many rounds of `ROWS_PER_ROUND` rows; the rest go next time.
const ROUNDS_PER_FLUSH: usize = 4;

/// `Flush` and `Reconcile` from the admin API.
pub(super) async fn ledger(q: &OrgQuota, op: LedgerOp) -> DoResult<OrgReply> {
    match op {
        LedgerOp::Flush => match flush(q).await {
            Ok((flushed, _)) => {
                let pending = pending(q)?;
                Ok(OrgReply::ok(serde_json::json!({"flushed": flushed, "pending": pending}), None))
            }
            // The answer says how much is waiting for the ledger.
            Err(e @ DoError::Ledger(_)) => {
                let mut reply = e.into_reply();
                if let (Some(o), Ok(p)) = (reply.body.as_object_mut(), pending(q)) {
                    o.insert("pending".into(), p.into());
                }
                Ok(reply)
            }
            Err(e) => Err(e),
        },
        LedgerOp::Reconcile { repair } => reconcile(q, if repair { Repair::All } else { Repair::Nothing }).await,
    }
}

/// Looks the org's plan up in D1 when this instance's copy is `within` ms old (default: the
/// refresh period), and adopts a newer version through the machine's `Configure`. A D1 failure
/// keeps the current plan and asks again one period later; it never fails the caller.
pub(super) async fn refresh_plan(q: &OrgQuota, within: Option<u64>) {
    let Ok(Some((plan, version))) = q.with_machine(|m, _, now| Ok(m.plan_check(now, within))) else { return };
    let found = match ledger::db(&q.env) {
        Ok(db) => ledger::newer_plan(&db, &plan, version).await,
        Err(e) => Err(e),
    };
    let adopted = q.with_machine(|m, store, now| {
        m.plan_checked(now);
        let Ok(Some(row)) = &found else { return Ok(None) };
        let doc: serde_json::Value = serde_json::from_str(&row.body).unwrap_or(serde_json::Value::Null);
        let Some(cfg) = m.config_with_plan(doc, row.version) else { return Ok(None) };
        let op = crate::org::AdminOp::Configure(cfg);
        let snap = store.load(&OrgMachine::needs_admin(&op), now)?;
        let step = m.step_admin(op, &snap, now)?;
        store.apply(&step.writes, now)?;
        Ok(Some(row.version))
    });
    match (found, adopted) {
        (Err(e), _) => log_error("plan lookup failed", &DoError::Ledger(e)),
        (_, Err(e)) => log_error("newer plan not adopted", &e),
        (_, Ok(Some(v))) => worker::console_log!(
            r#"{{"level":"info","component":"org_do","msg":"plan version adopted","plan":{:?},"version":{v}}}"#,
            plan.as_str()
        ),
        _ => {}
    }
}

/// Usage events not yet in D1: net events in the buckets, plus queued rows.
fn pending(q: &OrgQuota) -> DoResult<u64> {
    q.with_machine(|m, s, _| {
        let buckets = u64::try_from(m.ledger_pending()).unwrap_or(0);
        Ok(buckets.saturating_add(s.tallies()?.outbox_pending))
    })
}

/// The alarm: the machine's tick (expired reservations, decision counts), alert delivery, then
/// the ledger flush. Each failure is logged and rescheduled by the machine; none stops the rest.
pub(super) async fn alarm(q: &OrgQuota) {
    let ticked = q.with_machine(|m, store, now| {
        let snap = store.load(&m.needs_tick(now), now)?;
        let writes = m.tick(snap, now)?;
        if let Err(e) = store.apply(&writes, now) {
            m.restore_counts(writes.counts, now);
            return Err(e.into());
        }
        Ok(())
    });
    if let Err(e) = ticked {
        log_error("tick failed", &e);
    }
    // A busy org refreshes its plan here, ahead of time, so its requests never wait for D1.
    let half = settings(&q.env).plan_refresh_ms / 2;
    refresh_plan(q, Some(half)).await;
    if let Err(e) = deliver_alerts(q).await {
        log_error("alert delivery failed", &e);
        let _ = q.with_machine(|m, _, now| {
            m.alerts_due(Some(now.saturating_add_ms(5_000)));
            Ok(())
        });
    }
    if q.with_machine(|m, _, now| Ok(m.flush_due(now))).unwrap_or(true) {
        match flush(q).await {
            Ok(_) | Err(DoError::Org(_)) => {}
            Err(DoError::Busy) => {
                let _ = q.with_machine(|m, _, now| {
                    m.flush_busy(now);
                    Ok(())
                });
            }
            Err(e) => log_error("ledger flush failed", &e),
        }
    }
    if q.with_machine(|m, _, now| Ok(m.report_due(now))).unwrap_or(false) {
        report(q).await;
    }
}

/// The org's own status report, instead of a cron visiting every org: it reconciles, repairs
/// drift of at most `RECONCILE_AUTOFIX_PCT` (recorded in D1 and logged), raises an alert for
/// larger drift (a signed webhook to `ALERT_WEBHOOK_URL`, a log line, the drift gauge) and
/// repairs nothing then, and publishes its gauges to its ledger shard in one D1 batch. A failure
/// is logged; the next usage schedules another report.
async fn report(q: &OrgQuota) {
    let cfg = settings(&q.env);
    let reply = reconcile(q, Repair::Small { pct: cfg.reconcile_autofix_pct }).await;
    let _ = q.with_machine(|m, _, now| {
        m.reported(now);
        Ok(())
    });
    let reply = match reply {
        Ok(r) if r.status == 200 => r,
        Ok(r) => {
            return log_error(
                "report skipped",
                &DoError::Org(crate::org::OrgError::Corrupt(format!("status {}", r.status))),
            )
        }
        Err(e) => return log_error("report failed", &e),
    };
    let body = &reply.body;
    let org = body.get("org_id").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let field = |k: &str| body.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let drift = field("total_drift");
    let shard = q.with_machine(|m, _, _| Ok(m.shard())).unwrap_or(0);
    let db = ledger::shard_db(&q.env, shard);
    let t = now();
    if drift > 0 {
        let line = serde_json::json!({"msg": "reconcile drift", "org": org, "total_drift": drift,
            "repaired_units": field("repaired_units"), "limits": body.get("limits")});
        worker::console_warn!("{line}");
    }
    // Small drift was repaired: record each repair.
    let repaired: Vec<ledger::Repaired> = body
        .get("limits")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|l| l.get("repaired").and_then(serde_json::Value::as_bool) == Some(true))
        .filter_map(|l| {
            let n = |k: &str| l.get(k).and_then(serde_json::Value::as_u64);
            let start = l.get("window_start").and_then(serde_json::Value::as_str)?;
            Some(ledger::Repaired {
                policy: l.get("policy")?.as_str()?.to_owned(),
                window_start: Timestamp::parse_rfc3339(start)?,
                counter: n("counter")?,
                expected: n("expected")?,
            })
        })
        .collect();
    if !repaired.is_empty() {
        let stored = match &db {
            Ok(db) => ledger::record_repairs(db, &org, &repaired, t).await,
            Err(e) => Err(crate::edge::error::EdgeError::Internal(e.to_string())),
        };
        if let Err(e) = stored {
            log_error("repair not recorded", &DoError::Ledger(e));
        }
    }
    // Large drift means something is broken: alert the operator, repair nothing.
    if body.get("large_drift").and_then(serde_json::Value::as_bool) == Some(true) {
        let id = format!("drift_{org}_{}", t.millis());
        let payload =
            serde_json::json!({"id": id, "type": "quota.reconcile_drift", "org_id": org, "total_drift": drift,
            "threshold_pct": cfg.reconcile_autofix_pct, "limits": body.get("limits"), "timestamp": t.rfc3339()})
            .to_string();
        let (code, error) = match cfg.alert_webhook_url.as_deref() {
            Some(url) => match cfg.webhook_secret.as_ref() {
                Some(secrets) => post_webhook(url, &id, &payload, secrets, t).await,
                None => (None, Some("WEBHOOK_SECRET is not set: alerts are never sent unsigned".to_owned())),
            },
            None => (None, Some("ALERT_WEBHOOK_URL is not set".to_owned())),
        };
        let line = serde_json::json!({"msg": "reconcile drift over threshold", "org": org, "total_drift": drift,
            "threshold_pct": cfg.reconcile_autofix_pct, "alert_status": code, "alert_error": error});
        worker::console_error!("{line}");
    }
    let labels = format!("org=\"{org}\"");
    let pending = field("outbox_pending").saturating_add(field("ledger_pending"));
    let mut gauges = vec![
        ("quotagate_reconcile_drift_units".to_owned(), labels.clone(), drift),
        ("quotagate_outbox_depth".to_owned(), labels.clone(), pending),
        ("quotagate_ledger_flush_failures".to_owned(), labels.clone(), field("flush_failures")),
        // When this org last reported: a report that stops (while the org is busy) is an alert.
        ("quotagate_org_report_timestamp_seconds".to_owned(), labels, t.secs()),
    ];
    for c in body.get("decisions").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let get = |k: &str| c.get(k).and_then(serde_json::Value::as_str).unwrap_or_default();
        let labels = format!("org=\"{org}\",meter=\"{}\",outcome=\"{}\"", get("meter"), get("outcome"));
        gauges.push((
            "quotagate_decisions_total".to_owned(),
            labels,
            c.get("n").and_then(serde_json::Value::as_u64).unwrap_or(0),
        ));
    }
    let stored = match &db {
        Ok(db) => ledger::set_gauges(db, &gauges, t).await,
        Err(e) => Err(crate::edge::error::EdgeError::Internal(e.to_string())),
    };
    if let Err(e) = stored {
        log_error("gauges not stored", &DoError::Ledger(e));
    }
    publish_levels(q, t).await;
}

/// Writes the org's levels (how near each quota it stands) to the catalogue, where the
/// operator's org list sorts by them, when they changed since the last ones written. A failure
/// is logged; the next report writes them again.
async fn publish_levels(q: &OrgQuota, t: Timestamp) {
    let all = Need { all_counters: true, ..Need::default() };
    let news = q.with_machine(|m, store, now| {
        let org = m.org().cloned().ok_or(crate::org::OrgError::NotConfigured)?;
        Ok(m.levels_to_publish(m.levels(&store.load(&all, now)?, now)?).map(|l| (org, l)))
    });
    let (org, levels) = match news {
        Ok(Some(news)) => news,
        Ok(None) => return,
        Err(e) => return log_error("levels not computed", &e),
    };
    let stored = match ledger::db(&q.env) {
        Ok(db) => ledger::set_levels(&db, &org, &levels, t).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(()) => {
            let _ = q.with_machine(|m, _, _| {
                m.levels_published(levels);
                Ok(())
            });
        }
        Err(e) => log_error("levels not stored", &DoError::Ledger(e)),
    }
}

fn log_error(what: &str, e: &DoError) {
    worker::console_error!(r#"{{"level":"error","component":"org_do","msg":"{what}","error":{:?}}}"#, e.to_string());
}

/// Sends the org's usage to D1: the bucket batch (sealed from every open bucket; one left in
/// flight by a failed flush goes first), then ready audit rows. Returns (usage events flushed,
/// audit rows still pending).
async fn flush(q: &OrgQuota) -> DoResult<(u64, u64)> {
    if q.ledger_busy.replace(true) {
        return Err(DoError::Busy);
    }
    let r = flush_all(q).await;
    q.ledger_busy.set(false);
    let result = match &r {
        Ok((_, pending, next_ready)) => FlushResult::Done { pending: *pending, next_ready: *next_ready },
        Err(_) => FlushResult::Failed,
    };
    let noted = q.with_machine(|m, store, now| {
        let meta = m.after_flush(result, now);
        if let FlushResult::Failed = result {
            let line = format!(
                r#"{{"level":"warn","component":"org_do","msg":"ledger flush failed","failures":{},"retry_at":"{}"}}"#,
                m.flush_failures(),
                m.wake().map_or_else(String::new, Timestamp::rfc3339)
            );
            worker::console_error!("{line}");
        }
        store.apply(&crate::org::Writes { meta, ..crate::org::Writes::default() }, now)?;
        Ok(())
    });
    if let Err(e) = noted {
        log_error("flush outcome not saved", &e);
    }
    r.map(|(flushed, pending, _)| (flushed, pending))
}

async fn flush_all(q: &OrgQuota) -> DoResult<(u64, u64, Option<Timestamp>)> {
    let org = org_of(q)?;
    let (shard, epoch) = q.with_machine(|m, _, _| Ok((m.shard(), m.epoch())))?;
    let db = ledger::shard_db(&q.env, shard)?;
    let mut flushed = 0u64;
    // At most two batches: one a failed flush left in flight, then everything open now.
    for _ in 0..2 {
        let sealed = q.with_machine(|m, store, now| {
            if let Some(w) = m.seal_ledger() {
                store.apply(&w, now)?;
            }
            Ok(m.sealed().cloned())
        })?;
        let Some(sealed) = sealed else { break };
        ledger::apply_buckets(&db, &org, epoch, &sealed, now()).await?;
        let events = q.with_machine(|m, store, now| {
            store.apply(&m.ledger_confirmed(sealed.seq), now)?;
            Ok(m.batch_events(&sealed))
        })?;
        flushed = flushed.saturating_add(events);
    }
    for _ in 0..ROUNDS_PER_FLUSH {
        let t = now();
        let rows = q.with_machine(|_, store, _| Ok(store.ready(t)?))?;
        if rows.is_empty() {
            break;
        }
        ledger::insert_usage(&db, &org, &rows, t).await?;
        q.with_machine(|_, store, _| Ok(store.flushed(&rows)?))?;
        // Audit rows' usage came in the buckets; an earlier build's rows are usage of their own.
        let legacy = rows.iter().filter(|r| r.audit == 0).count();
        flushed = flushed.saturating_add(u64::try_from(legacy).unwrap_or(0));
    }
    q.with_machine(|_, store, now| {
        store.prune_idempotency(OrgMachine::idempotency_cutoff(now), now, MAX_IDEMPOTENCY_RECORDS)?;
        let (pending, next) = store.pending()?;
        Ok((flushed, pending, next))
    })
}

fn org_of(q: &OrgQuota) -> DoResult<OrgId> {
    q.with_machine(|m, _, _| m.org().cloned().ok_or(DoError::Org(crate::org::OrgError::NotConfigured)))
}

/// Compares counters with D1 plus what is still pending; with `repair`, counters take that
/// value. It flushes first (so no batch is in flight), then reads D1, then compares with the
/// counters and the buckets as they are afterwards, synchronously.
async fn reconcile(q: &OrgQuota, repair: Repair) -> DoResult<OrgReply> {
    flush(q).await?;
    if q.ledger_busy.replace(true) {
        return Err(DoError::Busy);
    }
    let r = reconcile_inner(q, repair).await;
    q.ledger_busy.set(false);
    r
}

async fn reconcile_inner(q: &OrgQuota, repair: Repair) -> DoResult<OrgReply> {
    let all = Need { all_counters: true, ..Need::default() };
    let (org, shard, windows) = q.with_machine(|m, store, now| {
        let snap = store.load(&all, now)?;
        let org = m.org().cloned().ok_or(crate::org::OrgError::NotConfigured)?;
        Ok((org, m.shard(), m.reconcile_windows(&snap, now)?))
    })?;
    let db = ledger::shard_db(&q.env, shard)?;
    let mut sums = Vec::with_capacity(windows.len());
    for w in windows {
        let agg = ledger::window_aggregate(&db, &org, w.meter.as_str(), w.from, w.to).await?;
        sums.push((w, agg));
    }
    // From here on synchronous: counters and the outbox as they are now.
    let step: Step = q.with_machine(|m, store, now| {
        let snap = store.load(&all, now)?;
        let mut compared = Vec::with_capacity(sums.len());
        for (w, agg) in sums {
            let queued =
                store.queued(w.meter.as_str(), w.from, w.to)?.plus(m.pending_usage(w.meter.as_str(), w.from, w.to));
            compared.push((w, agg, queued));
        }
        let step = m.reconcile(&compared, &snap, repair, store.tallies()?, &store.counts()?, now)?;
        store.apply(&step.writes, now)?;
        Ok(step)
    })?;
    Ok(step.reply)
}

/// Delivers due alerts: a signed POST each, recorded in D1; failures retry with the machine's
/// backoff until `ALERT_MAX_ATTEMPTS` (8), then the alert is dead.
async fn deliver_alerts(q: &OrgQuota) -> DoResult<()> {
    let (org, hook, due) = q.with_machine(|m, store, now| {
        let org = m.org().cloned();
        Ok((org, m.webhook_url().map(str::to_owned), store.due_alerts(now)?))
    })?;
    let Some(org) = org else { return Ok(()) };
    let cfg = settings(&q.env);
    let target = hook.or_else(|| cfg.alert_webhook_url.clone());
    let max_attempts = cfg.alert_max_attempts;
    let db = ledger::db(&q.env)?;
    for row in due {
        let t = now();
        let Some(url) = target.as_deref() else {
            q.with_machine(|_, store, _| Ok(store.alert_attempted(&row.id, row.attempts, "no_target", t, None)?))?;
            continue;
        };
        let attempt = row.attempts.saturating_add(1);
        // Never unsigned: without its secret an alert is an attempt that failed, and retries.
        let (code, error) = match cfg.webhook_secret.as_ref() {
            Some(secrets) => post_webhook(url, &row.id, &row.payload, secrets, t).await,
            None => (None, Some("WEBHOOK_SECRET is not set: alerts are never sent unsigned".to_owned())),
        };
        let outcome = AlertOutcome::of(code, attempt, max_attempts);
        let next = alert_retry_at(attempt, t);
        q.with_machine(|_, store, _| {
            Ok(store.alert_attempted(&row.id, attempt, outcome.status(), next, error.as_deref())?)
        })?;
        let record = AlertAttempt {
            org: &org,
            alert_id: &row.id,
            attempt,
            url,
            code,
            error: error.as_deref(),
            outcome: outcome.as_str(),
            at: t,
        };
        if let Err(e) = ledger::record_alert_attempt(&db, &record).await {
            log_error("alert attempt not recorded", &DoError::Ledger(e));
        }
    }
    q.with_machine(|m, store, _| {
        m.alerts_due(store.next_alert()?);
        Ok(())
    })
}

/// POSTs one alert; returns the status code (if any answer came) and an error text.
async fn post_webhook(
    url: &str,
    id: &str,
    payload: &str,
    secrets: &crate::policy::secret::Secrets,
    t: Timestamp,
) -> (Option<u16>, Option<String>) {
    let headers = worker::Headers::new();
    let signature = webhook_signature(secrets, t.secs(), payload);
    for (k, v) in [
        ("Content-Type", "application/json"),
        ("User-Agent", "quotagate-webhooks/1"),
        ("X-Quota-Webhook-Id", id),
        ("X-Quota-Webhook-Signature", signature.as_str()),
    ] {
        if let Err(e) = headers.set(k, v) {
            return (None, Some(e.to_string()));
        }
    }
    let mut init = RequestInit::new();
    init.with_method(worker::Method::Post).with_headers(headers).with_body(Some(payload.into()));
    let sent = match Request::new_with_init(url, &init) {
        Ok(req) => worker::Fetch::Request(req).send().await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(res) if (200..300).contains(&res.status_code()) => (Some(res.status_code()), None),
        Ok(res) => (Some(res.status_code()), Some(format!("receiver answered {}", res.status_code()))),
        Err(e) => (None, Some(e.to_string())),
    }
}
