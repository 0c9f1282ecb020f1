//! The I/O that leaves the org Durable Object: outbox rows to the D1 ledger, threshold alerts to
//! their webhook, and the ledger sums reconciliation compares with.
//!
//! Each driver reads what it sends synchronously, awaits the platform, then writes the outcome
//! synchronously; it never holds decided state across an await, and the rules it follows
//! (backoff, retry times, expected values) are the machine's. It must never decide usage.

use worker::{Request, RequestInit};

use super::{DoError, DoResult, OrgQuota};
use crate::edge::ledger::{self, AlertAttempt};
use crate::edge::platform::{now, settings};
use crate::org::rules::{alert_retry_at, AlertOutcome};
use crate::org::{FlushResult, LedgerOp, Need, OrgMachine, OrgReply, Step};
use crate::policy::keys::webhook_signature;
use crate::policy::{OrgId, Timestamp};

/// A flush drains at most this many rounds of `ROWS_PER_ROUND` rows; the rest go next time.
const ROUNDS_PER_FLUSH: usize = 4;

/// `Flush` and `Reconcile` from the admin API.
pub(super) async fn ledger(q: &OrgQuota, op: LedgerOp) -> DoResult<OrgReply> {
    match op {
        LedgerOp::Flush => match flush(q).await {
            Ok((flushed, pending)) => {
                Ok(OrgReply::ok(serde_json::json!({"flushed": flushed, "pending": pending}), None))
            }
            // The answer says how much is waiting for the ledger.
            Err(e @ DoError::Ledger(_)) => {
                let mut reply = e.into_reply();
                if let (Some(o), Ok(t)) = (reply.body.as_object_mut(), q.with_machine(|_, s, _| Ok(s.tallies()?))) {
                    o.insert("pending".into(), t.outbox_pending.into());
                }
                Ok(reply)
            }
            Err(e) => Err(e),
        },
        LedgerOp::Reconcile { repair } => reconcile(q, repair).await,
    }
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
    if let Err(e) = deliver_alerts(q).await {
        log_error("alert delivery failed", &e);
        let _ = q.with_machine(|m, _, now| {
            m.alerts_due(Some(now.saturating_add_ms(5_000)));
            Ok(())
        });
    }
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

fn log_error(what: &str, e: &DoError) {
    worker::console_error!(r#"{{"level":"error","component":"org_do","msg":"{what}","error":{:?}}}"#, e.to_string());
}

/// Drains ready outbox rows to D1, then deletes exactly the rows D1 confirmed. Returns
/// (flushed, still pending).
async fn flush(q: &OrgQuota) -> DoResult<(u64, u64)> {
    if q.ledger_busy.replace(true) {
        return Err(DoError::Busy);
    }
    let r = flush_rounds(q).await;
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

async fn flush_rounds(q: &OrgQuota) -> DoResult<(u64, u64, Option<Timestamp>)> {
    let org = org_of(q)?;
    let db = ledger::db(&q.env)?;
    let mut flushed = 0u64;
    for _ in 0..ROUNDS_PER_FLUSH {
        let t = now();
        let rows = q.with_machine(|_, store, _| Ok(store.ready(t)?))?;
        if rows.is_empty() {
            break;
        }
        ledger::insert_usage(&db, &org, &rows, t).await?;
        q.with_machine(|_, store, _| Ok(store.flushed(&rows)?))?;
        flushed = flushed.saturating_add(u64::try_from(rows.len()).unwrap_or(0));
    }
    q.with_machine(|_, store, now| {
        store.prune_idempotency(OrgMachine::idempotency_cutoff(now))?;
        let (pending, next) = store.pending()?;
        Ok((flushed, pending, next))
    })
}

fn org_of(q: &OrgQuota) -> DoResult<OrgId> {
    q.with_machine(|m, _, _| m.org().cloned().ok_or(DoError::Org(crate::org::OrgError::NotConfigured)))
}

/// Compares counters with D1 plus the outbox; with `repair`, counters take that value. The D1
/// reads happen first; the comparison re-reads the counters afterwards, synchronously.
async fn reconcile(q: &OrgQuota, repair: bool) -> DoResult<OrgReply> {
    if q.ledger_busy.replace(true) {
        return Err(DoError::Busy);
    }
    let r = reconcile_inner(q, repair).await;
    q.ledger_busy.set(false);
    r
}

async fn reconcile_inner(q: &OrgQuota, repair: bool) -> DoResult<OrgReply> {
    let all = Need { all_counters: true, ..Need::default() };
    let (org, windows) = q.with_machine(|m, store, now| {
        let snap = store.load(&all, now)?;
        let org = m.org().cloned().ok_or(crate::org::OrgError::NotConfigured)?;
        Ok((org, m.reconcile_windows(&snap, now)?))
    })?;
    let db = ledger::db(&q.env)?;
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
            let queued = store.queued(w.meter.as_str(), w.from, w.to)?;
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
    let (max_attempts, secret) = (cfg.alert_max_attempts, cfg.webhook_secret.as_str());
    let db = ledger::db(&q.env)?;
    for row in due {
        let t = now();
        let Some(url) = target.as_deref() else {
            q.with_machine(|_, store, _| Ok(store.alert_attempted(&row.id, row.attempts, "no_target", t, None)?))?;
            continue;
        };
        let attempt = row.attempts.saturating_add(1);
        let (code, error) = post_webhook(url, &row.id, &row.payload, secret.as_bytes(), t).await;
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
    secret: &[u8],
    t: Timestamp,
) -> (Option<u16>, Option<String>) {
    let headers = worker::Headers::new();
    let signature = webhook_signature(secret, t.secs(), payload);
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
