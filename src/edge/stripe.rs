//! Stripe Billing Meters reporting: claims unreported hourly ledger usage into frozen batches,
//! sends them in Stripe's wire format, and settles them; a circuit breaker pauses reporting after
//! consecutive failures.
//!
//! The arithmetic and the wire body are the core's (`policy::stripe`); this file sequences D1 and
//! HTTP. It never deletes usage: a batch it cannot send stays pending, or becomes `expired`
//! (reported as an error) when it falls out of Stripe's 35-day window.

use serde_json::{json, Value};
use worker::{Env, Fetch, Headers, Method, Request, RequestInit};

use super::error::EdgeError;
use super::ledger::{self, Batch};
use super::platform::{now, settings};
use crate::policy::secret::Secret;
use crate::policy::stripe::{backoff_ms, breaker_after, classify, meter_event_form, Answer, MAX_AGE_SECS};
use crate::policy::Timestamp;

/// Sends one meter event; (HTTP status, body) or the transport error.
async fn send(env: &Env, b: &Batch, secret: &Secret) -> Result<(u16, String), String> {
    let base = &settings(env).stripe_api_base;
    let url = format!("{}/v1/billing/meter_events", base.trim_end_matches('/'));
    let body = meter_event_form(&b.event_name, &b.stripe_customer_id, b.value, &b.id, b.hour);
    let headers = Headers::new();
    for (k, v) in [
        ("Authorization", format!("Bearer {}", secret.expose_str())),
        ("Content-Type", "application/x-www-form-urlencoded".to_owned()),
        ("Idempotency-Key", b.id.clone()),
    ] {
        headers.set(k, &v).map_err(|e| e.to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_body(Some(body.into()));
    let req = Request::new_with_init(&url, &init).map_err(|e| e.to_string())?;
    let mut res = Fetch::Request(req).send().await.map_err(|e| e.to_string())?;
    let status = res.status_code();
    Ok((status, res.text().await.unwrap_or_default()))
}

/// One reporting run, shard by shard: claim, then send due batches (all pending ones when
/// `force`). Each shard keeps the batches claimed from its own hourly rows (a claim and its mark
/// are one transaction there); the breaker is the catalogue's, shared by every shard. Returns a
/// summary; a configuration gap or an open breaker is a summary too, not an error.
pub async fn sync(env: &Env, force: bool) -> Result<Value, EdgeError> {
    let db = ledger::db(env)?;
    let t = now();
    let Some(secret) = settings(env).stripe_secret_key.clone() else {
        return Ok(json!({"skipped": "STRIPE_SECRET_KEY is not configured"}));
    };
    let state = ledger::stripe_breaker(&db).await?;
    let shards = ledger::all_shards(env, settings(env).ledger_shards)?;
    let mut claimed = 0u64;
    for shard in &shards {
        claimed = claimed.saturating_add(ledger::claim_hourly(shard, t).await?);
    }
    if state.open_until > t.millis() {
        let until = Timestamp::from_millis(state.open_until).rfc3339();
        return Ok(json!({"claimed": claimed, "sent": 0, "breaker": "open", "open_until": until}));
    }
    let (mut failures, mut open_until) = (state.failures, state.open_until);
    let (mut sent, mut delivered, mut failed, mut expired) = (0u64, 0u64, 0u64, 0u64);
    'shards: for shard in &shards {
        let due: Vec<Batch> = ledger::due_batches(shard, t, force).await?;
        for b in &due {
            if t.secs().saturating_sub(b.hour) > MAX_AGE_SECS {
                let why = "older than Stripe's 35-day window for meter events: not reportable";
                ledger::expire_batch(shard, &b.id, why).await?;
                worker::console_error!(
                    "{}",
                    json!({"msg": "stripe batch expired", "batch": b.id, "value": b.value, "error": why})
                );
                expired = expired.saturating_add(1);
                continue;
            }
            sent = sent.saturating_add(1);
            let outcome = send(env, b, &secret).await;
            let answer = match &outcome {
                Ok((status, body)) => classify(*status, body),
                Err(_) => Answer::Failed,
            };
            let attempts = b.attempts.saturating_add(1);
            if answer == Answer::Delivered {
                delivered = delivered.saturating_add(1);
                ledger::settle_batch(shard, &b.id, attempts, t).await?;
            } else {
                failed = failed.saturating_add(1);
                let why = match &outcome {
                    Ok((status, body)) => {
                        format!("Stripe answered {status}: {}", body.chars().take(300).collect::<String>())
                    }
                    Err(e) => format!("no answer: {e}"),
                };
                let next = t.saturating_add_ms(backoff_ms(attempts));
                ledger::fail_batch(shard, &b.id, attempts, next, &why).await?;
                worker::console_warn!(
                    "{}",
                    json!({"msg": "stripe report failed", "batch": b.id, "attempts": attempts, "error": why})
                );
            }
            (failures, open_until) = breaker_after(failures, open_until, answer == Answer::Failed, t.millis());
            if open_until > t.millis() {
                worker::console_error!(
                    "{}",
                    json!({"msg": "stripe breaker open", "until": Timestamp::from_millis(open_until).rfc3339()})
                );
                break 'shards;
            }
        }
    }
    ledger::set_breaker(&db, failures, open_until).await?;
    let breaker = if open_until > t.millis() { "open" } else { "closed" };
    Ok(json!({"claimed": claimed, "sent": sent, "delivered": delivered, "failed": failed, "expired": expired,
              "consecutive_failures": failures, "breaker": breaker}))
}
