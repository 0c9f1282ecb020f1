//! Who is calling: the org key a request presents (verified with no I/O under the key secret of
//! the version it names; its hash is checked by the org's Durable Object in the same call as the
//! operation) and the admin bearer token (the bootstrap `ADMIN_TOKEN`, or a named token from D1).
//!
//! It owns the credential headers and the constant-time comparisons, and must never look at
//! usage or answer anything but "who" (and, for admins, with which scope).

use worker::{Env, Request};

use super::error::EdgeError;
use super::ledger;
use super::platform::{now, settings};
use crate::policy::keys::{secrets_equal, sha256_hex, token_id, verify, VerifiedKey};
use crate::wire::Scope;

/// The presented key: `X-API-Key`, else `Authorization: Bearer`. (The proxy withholds both
/// headers from the origin, whichever carried the key.)
fn presented_key(req: &Request) -> String {
    let h = req.headers();
    if let Some(k) = h.get("X-API-Key").ok().flatten().filter(|k| !k.is_empty()) {
        return k.trim().to_owned();
    }
    let auth = h.get("Authorization").ok().flatten().unwrap_or_default();
    let key = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")).unwrap_or_default();
    key.trim().to_owned()
}

/// Verifies the key's tag with no I/O: a forged, mangled, retired or missing key dies here.
pub fn authenticate(req: &Request, env: &Env) -> Result<VerifiedKey, EdgeError> {
    let s = settings(env);
    let secrets = s.key_secrets.as_ref().ok_or(EdgeError::NotConfigured("KEY_SECRETS (or KEY_SECRET)"))?;
    verify(&presented_key(req), secrets).map_err(|_| EdgeError::Unauthorized)
}

/// The admin a request is from: the token's id and name (what the audit log records) and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub token_id: String,
    pub name: String,
    pub scope: Scope,
}

/// The id and name the bootstrap `ADMIN_TOKEN` has in the audit log.
pub const BOOTSTRAP_ID: &str = "bootstrap";
pub const BOOTSTRAP_NAME: &str = "ADMIN_TOKEN";

/// The admin API's bearer token: the bootstrap `ADMIN_TOKEN` (compared in constant time), or a
/// named token `qga_<id>.<random>` whose row is found by its id and whose SHA-256 is compared
/// with the row's in constant time. Unknown, revoked and expired tokens are the same 401.
pub async fn authorize_admin(req: &Request, env: &Env) -> Result<Admin, EdgeError> {
    let given = req.headers().get("Authorization").ok().flatten().unwrap_or_default();
    let token = given.strip_prefix("Bearer ").unwrap_or_default().trim();
    if token.is_empty() {
        return Err(EdgeError::Unauthorized);
    }
    let cfg = settings(env);
    if cfg.admin_token.as_ref().is_some_and(|expected| secrets_equal(token.as_bytes(), expected.expose())) {
        return Ok(Admin { token_id: BOOTSTRAP_ID.to_owned(), name: BOOTSTRAP_NAME.to_owned(), scope: Scope::Write });
    }
    let id = token_id(token).ok_or(EdgeError::Unauthorized)?;
    let row = ledger::admin_token(&ledger::db(env)?, &id).await?.ok_or(EdgeError::Unauthorized)?;
    let hash = sha256_hex(token.as_bytes());
    let t = now().millis();
    let live = row.revoked_at.is_none() && row.expires_at.is_none_or(|e| t < e);
    if !secrets_equal(hash.as_bytes(), row.token_hash.as_bytes()) || !live {
        return Err(EdgeError::Unauthorized);
    }
    let scope = Scope::parse(&row.scope).ok_or_else(|| EdgeError::Internal(format!("token {id}: stored scope")))?;
    Ok(Admin { token_id: row.id, name: row.name, scope })
}
