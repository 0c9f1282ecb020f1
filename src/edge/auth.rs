//! Who is calling: the org key a request presents (verified with no I/O; its hash is checked by
//! the org's Durable Object in the same call as the operation) and the admin bearer token.
//!
//! It owns the credential headers and the constant-time comparison, and must never look at
//! usage or answer anything but "who".

use worker::{Env, Request};

use super::error::EdgeError;
use super::platform::settings;
use crate::policy::keys::{secrets_equal, verify, VerifiedKey};

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

/// Verifies the key's tag with no I/O: a forged, mangled or missing key dies here.
pub fn authenticate(req: &Request, env: &Env) -> Result<VerifiedKey, EdgeError> {
    let s = settings(env);
    let secret = s.key_secret.as_deref().ok_or(EdgeError::NotConfigured("KEY_SECRET"))?;
    verify(&presented_key(req), secret.as_bytes()).map_err(|_| EdgeError::Unauthorized)
}

/// The admin API's bearer token, compared in constant time.
pub fn authorize_admin(req: &Request, env: &Env) -> Result<(), EdgeError> {
    let given = req.headers().get("Authorization").ok().flatten().unwrap_or_default();
    let token = given.strip_prefix("Bearer ").unwrap_or_default();
    let cfg = settings(env);
    let expected = cfg.admin_token.as_deref().unwrap_or_default();
    if !expected.is_empty() && secrets_equal(token.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(EdgeError::Unauthorized)
    }
}
