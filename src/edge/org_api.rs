//! The org API under `/_quota/v1` (org key): decisions without proxying, and settling explicit
//! reservations.
//!
//! It authenticates the key (`auth`: tag in the Worker, hash in the DO, one round trip), parses
//! bodies with `wire` and passes the DO's answer on. It must never decide anything itself.

use worker::{Env, Request, Response};

use super::auth::authenticate;
use super::error::{reply_response, EdgeError};
use super::platform::{call_do, random_hex, read_json, settings};
use crate::org::{Caller, DecideKind, KeyHash, OrgMsg, OrgOp, SettleAction};
use crate::policy::EventId;
use crate::wire::{parse_commit, CheckRequest, InputError};

type Handled = Result<Response, EdgeError>;

pub async fn check(mut req: Request, env: &Env) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(&req, env)?;
    let op = check_op(CheckRequest::parse(&read_json(&mut req).await?)?)?;
    let reply = call_do(env, &key.org, &OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash)), op }).await?;
    reply_response(&reply).map_err(EdgeError::platform("response"))
}

/// The decision a check asks for (with a fresh reservation id when it reserves): the HTTP API's
/// and the service binding's alike.
pub fn check_op(body: CheckRequest) -> Result<OrgOp, EdgeError> {
    let id = EventId::parse(&format!("rsv_{}", random_hex::<12>()?)).map_err(|e| EdgeError::Internal(e.to_string()))?;
    Ok(OrgOp::Decide {
        meter: body.meter,
        quantity: body.quantity,
        kind: if body.reserve { DecideKind::Reserve } else { DecideKind::Check },
        id,
        ttl_ms: body.ttl_secs.saturating_mul(1000),
        idempotency: None,
        lease: false,
        recalled: 0,
    })
}

/// A reservation id as a client names it (in a path, or to the service binding).
pub fn reservation_id(raw: &str, field: &str) -> Result<EventId, EdgeError> {
    EventId::parse(raw)
        .map_err(|e| EdgeError::Input(InputError::Field { field: field.to_owned(), reason: format!("'{raw}' {e}") }))
}

/// `POST /_quota/v1/reservations/{id}/commit|release`.
pub async fn settle(mut req: Request, env: &Env, rest: &str) -> Handled {
    settings(env).check(crate::config::Need::UsageApi).map_err(EdgeError::Misconfigured)?;
    let key = authenticate(&req, env)?;
    let (raw_id, action) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        [id, "commit"] => (*id, SettleAction::Commit { quantity: parse_commit(&read_json(&mut req).await?)? }),
        [id, "release"] => (*id, SettleAction::Release),
        _ => return Err(EdgeError::NotFound(format!("no endpoint /_quota/v1/reservations/{rest}"))),
    };
    let id = reservation_id(raw_id, "reservation id in the path")?;
    let msg = OrgMsg::Org { caller: Caller::Key(KeyHash(key.hash)), op: OrgOp::Settle { id, action } };
    let reply = call_do(env, &key.org, &msg).await?;
    reply_response(&reply).map_err(EdgeError::platform("response"))
}
