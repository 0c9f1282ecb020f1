//! The org API under `/_quota/v1` (org key): decisions without proxying, and settling explicit
//! reservations.
//!
//! It authenticates the key (tag in the Worker, hash in the DO, one round trip), parses bodies
//! with `wire` and passes the DO's answer on. It must never decide anything itself.

use worker::{Env, Request, Response};

use super::error::EdgeError;
use super::platform::{call_do, config, random_hex, read_json, reply_response};
use crate::policy::keys::{verify, VerifiedKey};
use crate::policy::EventId;
use crate::wire::{parse_commit, CheckRequest, DecideKind, DoRequest, InputError, SettleAction};

type Handled = Result<Response, EdgeError>;

/// The presented key and the header it came in: `X-API-Key`, else `Authorization: Bearer`.
pub fn presented_key(req: &Request) -> (&'static str, String) {
    let h = req.headers();
    if let Some(k) = h.get("X-API-Key").ok().flatten().filter(|k| !k.is_empty()) {
        return ("x-api-key", k.trim().to_owned());
    }
    let auth = h.get("Authorization").ok().flatten().unwrap_or_default();
    let key = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).unwrap_or_default();
    ("authorization", key.trim().to_owned())
}

/// Verifies the key's tag with no I/O; the hash is checked by the DO in the same call as the
/// operation.
pub fn authenticate(req: &Request, env: &Env) -> Result<VerifiedKey, EdgeError> {
    let secret = config(env, "KEY_SECRET").ok_or(EdgeError::NotConfigured("KEY_SECRET"))?;
    let (_, presented) = presented_key(req);
    verify(&presented, secret.as_bytes()).map_err(|_| EdgeError::Unauthorized)
}

pub async fn check(mut req: Request, env: &Env) -> Handled {
    let key = authenticate(&req, env)?;
    let body = CheckRequest::parse(&read_json(&mut req).await?)?;
    let id = EventId::parse(&format!("rsv_{}", random_hex::<12>()?)).map_err(|e| EdgeError::Internal(e.to_string()))?;
    let msg = DoRequest::Decide {
        key_hash: key.hash,
        meter: body.meter,
        quantity: body.quantity,
        kind: if body.reserve { DecideKind::Reserve } else { DecideKind::Check },
        id,
        ttl_ms: body.ttl_secs.saturating_mul(1000),
        replayable: false,
    };
    let reply = call_do(env, &key.org, &msg).await?;
    reply_response(&reply).map_err(EdgeError::platform("response"))
}

/// `POST /_quota/v1/reservations/{id}/commit|release`.
pub async fn settle(mut req: Request, env: &Env, rest: &str) -> Handled {
    let key = authenticate(&req, env)?;
    let (raw_id, action) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [id, "commit"] => (*id, SettleAction::Commit { quantity: parse_commit(&read_json(&mut req).await?)? }),
        [id, "release"] => (*id, SettleAction::Release),
        _ => return Err(EdgeError::NotFound(format!("no endpoint /_quota/v1/reservations/{rest}"))),
    };
    let id = EventId::parse(raw_id).map_err(|e| {
        EdgeError::Input(InputError::Field {
            field: "reservation id in the path".into(),
            reason: format!("'{raw_id}' {e}"),
        })
    })?;
    let reply = call_do(env, &key.org, &DoRequest::Settle { key_hash: Some(key.hash), id, action }).await?;
    reply_response(&reply).map_err(EdgeError::platform("response"))
}
