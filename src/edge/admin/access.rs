//! The admin API's access endpoints: an org's keys (create with an optional expiry, list, roll
//! with a grace period, revoke), admin tokens (create, list, revoke) and the audit log view.
//!
//! It sequences D1 and the org's Durable Object, D1 first (so the fail-open path and the ledger
//! reads see a change the DO call then misses). It must never return or record a hash or a
//! plaintext except the one answer that creates a key or a token.

use serde_json::{json, Value};
use worker::{Env, Request, Response};

use super::{do_ok, ok, require_org, rfc, Done};
use crate::edge::auth::Admin;
use crate::edge::error::EdgeError;
use crate::edge::ledger::{self, KeyRow, NewKeyRow, TokenRow};
use crate::edge::platform::{call_do, now, param, query, random_bytes, settings};
use crate::org::{AdminOp, KeyHash, NewKey, OrgMsg};
use crate::policy::keys::{mint, mint_token, MintedKey, KEY_RANDOM_BYTES, TOKEN_ID_BYTES, TOKEN_SECRET_BYTES};
use crate::policy::{OrgId, Timestamp};
use crate::wire::{AuditQuery, KeyRequest, RollRequest, TokenRequest, MAX_ADMIN_TOKENS};

/// A fresh key under the current key secret.
fn new_key(env: &Env, org: &OrgId) -> Result<MintedKey, EdgeError> {
    let cfg = settings(env);
    let secrets = cfg.key_secrets.as_ref().ok_or(EdgeError::NotConfigured("KEY_SECRETS (or KEY_SECRET)"))?;
    Ok(mint(org, &random_bytes::<KEY_RANDOM_BYTES>()?, secrets))
}

fn key_row<'a>(key: &'a MintedKey, org: &'a OrgId, at: Timestamp, expires_at: Option<Timestamp>) -> NewKeyRow<'a> {
    NewKeyRow {
        key_id: &key.key_id,
        org,
        hash: &key.hash,
        prefix: &key.prefix,
        version: key.version.get(),
        created_at: at,
        expires_at,
    }
}

/// The one answer that shows a key's plaintext.
fn created_key(key: &MintedKey, org: &OrgId, at: Timestamp, expires_at: Option<Timestamp>) -> Value {
    json!({"key_id": key.key_id, "key": key.plaintext, "prefix": key.prefix, "org_id": org.as_str(),
           "created_at": at.rfc3339(), "expires_at": expires_at.map(Timestamp::rfc3339),
           "secret_version": key.version.get()})
}

fn expiry_text(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "never expires".to_owned(), |t| format!("expires {}", t.rfc3339()))
}

pub(super) async fn create_key(env: &Env, org: &OrgId, body: &Value) -> Result<Done, EdgeError> {
    let t = now();
    let req = KeyRequest::parse(body, t)?;
    require_org(env, org).await?;
    let key = new_key(env, org)?;
    ledger::insert_key(&ledger::db(env)?, &key_row(&key, org, t, req.expires_at)).await?;
    let new = NewKey { key_id: key.key_id.clone(), hash: KeyHash(key.hash.clone()), expires_at: req.expires_at };
    do_ok(call_do(env, org, &OrgMsg::Admin(AdminOp::AddKey(new))).await?)?;
    let change = format!(
        "created key {} ({}, secret version {}, {})",
        key.key_id,
        key.prefix,
        key.version,
        expiry_text(req.expires_at)
    );
    Ok(Done::wrote(ok(201, &created_key(&key, org, t, req.expires_at))?, change))
}

/// Whether a credential is revoked or expired at `now` (keys and admin tokens alike).
fn ended(revoked_at: Option<u64>, expires_at: Option<u64>, now: u64) -> Option<&'static str> {
    if revoked_at.is_some() {
        Some("revoked")
    } else if expires_at.is_some_and(|e| e <= now) {
        Some("expired")
    } else {
        None
    }
}

/// The state a key is in at `now`, as the listing says it.
fn key_state(k: &KeyRow, now: u64) -> &'static str {
    ended(k.revoked_at, k.expires_at, now).unwrap_or(if k.replaced_by.is_some() { "rolling" } else { "active" })
}

/// The org's keys, from D1 (what was set) and from its DO (the day each was last used): never a
/// hash, never a plaintext.
pub(super) async fn list_keys(env: &Env, org: &OrgId) -> Result<Response, EdgeError> {
    require_org(env, org).await?;
    let rows = ledger::list_keys(&ledger::db(env)?, org).await?;
    let used = do_ok(call_do(env, org, &OrgMsg::Admin(AdminOp::Keys)).await?)?.body;
    let t = now().millis();
    let keys: Vec<Value> = rows
        .iter()
        .map(|k| {
            let last_used = used.get("keys").and_then(|m| m.get(&k.id)).and_then(|u| u.get("last_used")).cloned();
            json!({"key_id": k.id, "prefix": k.prefix, "state": key_state(k, t), "created_at": rfc(k.created_at),
                   "last_used": last_used.unwrap_or(Value::Null), "expires_at": k.expires_at.map(rfc),
                   "revoked_at": k.revoked_at.map(rfc), "secret_version": k.secret_version,
                   "replaced_by": k.replaced_by})
        })
        .collect();
    ok(200, &json!({"org_id": org.as_str(), "keys": keys}))
}

/// A roll: a new key now, and the old one kept for the grace period, then expired. A key that
/// is revoked, expired or already rolled is not rolled again (409).
pub(super) async fn roll_key(env: &Env, org: &OrgId, old: &str, body: &Value) -> Result<Done, EdgeError> {
    let t = now();
    let req = RollRequest::parse(body, t)?;
    require_org(env, org).await?;
    let db = ledger::db(env)?;
    let row = ledger::get_key(&db, org, old)
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("org '{org}' has no key '{old}'")))?;
    let state = key_state(&row, t.millis());
    if state != "active" {
        let why = row.replaced_by.as_ref().map_or(String::new(), |n| format!(" (rolled to {n})"));
        return Err(EdgeError::Conflict(format!("key '{old}' is {state}{why}; only an active key can be rolled")));
    }
    let key = new_key(env, org)?;
    let until = t.saturating_add_ms(req.grace_secs.saturating_mul(1000));
    let old_until = ledger::roll_key(&db, old, until, &key_row(&key, org, t, req.expires_at)).await?;
    let old_until = old_until.map_or(until, Timestamp::from_millis);
    let new = NewKey { key_id: key.key_id.clone(), hash: KeyHash(key.hash.clone()), expires_at: req.expires_at };
    let msg = OrgMsg::Admin(AdminOp::RollKey { old: old.to_owned(), old_expires_at: old_until, new });
    do_ok(call_do(env, org, &msg).await?)?;
    let mut out = created_key(&key, org, t, req.expires_at);
    if let Some(o) = out.as_object_mut() {
        o.insert("rolled".into(), json!({"key_id": old, "expires_at": old_until.rfc3339()}));
    }
    let change = format!(
        "rolled key {old} to {} ({}, secret version {}, {}); {old} works until {} (grace {} s)",
        key.key_id,
        key.prefix,
        key.version,
        expiry_text(req.expires_at),
        old_until.rfc3339(),
        req.grace_secs
    );
    Ok(Done::wrote(ok(201, &out)?, change))
}

pub(super) async fn revoke_key(env: &Env, org: &OrgId, key_id: &str) -> Result<Done, EdgeError> {
    require_org(env, org).await?;
    // D1 first: if the DO call then fails, the fail-open path still sees the revocation.
    let revoked = ledger::revoke_key(&ledger::db(env)?, org, key_id, now())
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("org '{org}' has no key '{key_id}'")))?;
    do_ok(call_do(env, org, &OrgMsg::Admin(AdminOp::RevokeKey { key_id: key_id.to_owned() })).await?)?;
    let response = ok(200, &json!({"key_id": key_id, "org_id": org.as_str(), "revoked_at": rfc(revoked)}))?;
    Ok(Done::wrote(response, format!("revoked key {key_id}")))
}

fn token_json(r: &TokenRow, now: u64) -> Value {
    let state = ended(r.revoked_at, r.expires_at, now).unwrap_or("active");
    json!({"token_id": r.id, "name": r.name, "scope": r.scope, "prefix": r.prefix, "state": state,
           "created_at": rfc(r.created_at), "created_by": r.created_by, "expires_at": r.expires_at.map(rfc),
           "revoked_at": r.revoked_at.map(rfc)})
}

pub(super) async fn list_tokens(env: &Env) -> Result<Response, EdgeError> {
    let rows = ledger::list_tokens(&ledger::db(env)?).await?;
    let t = now().millis();
    ok(200, &json!({"tokens": rows.iter().map(|r| token_json(r, t)).collect::<Vec<_>>()}))
}

/// A named admin token; its plaintext is in this answer only.
pub(super) async fn create_token(env: &Env, who: &Admin, body: &Value) -> Result<Done, EdgeError> {
    let t = now();
    let req = TokenRequest::parse(body, t)?;
    let db = ledger::db(env)?;
    if ledger::active_token_count(&db, t).await? >= MAX_ADMIN_TOKENS {
        return Err(EdgeError::Conflict(format!(
            "{MAX_ADMIN_TOKENS} admin tokens are active, the most there may be; revoke one first"
        )));
    }
    let token = mint_token(&random_bytes::<TOKEN_ID_BYTES>()?, &random_bytes::<TOKEN_SECRET_BYTES>()?);
    let row = TokenRow {
        id: token.id.clone(),
        name: req.name.clone(),
        scope: req.scope.as_str().to_owned(),
        token_hash: token.hash.clone(),
        prefix: token.prefix.clone(),
        created_at: t.millis(),
        created_by: who.name.clone(),
        expires_at: req.expires_at.map(Timestamp::millis),
        revoked_at: None,
    };
    ledger::insert_token(&db, &row).await?;
    let mut out = token_json(&row, t.millis());
    if let Some(o) = out.as_object_mut() {
        o.insert("token".into(), Value::String(token.plaintext.expose_str().to_owned()));
    }
    let change = format!(
        "created token {} '{}' ({}, scope {}, {})",
        row.id,
        row.name,
        row.prefix,
        row.scope,
        expiry_text(req.expires_at)
    );
    Ok(Done::wrote(ok(201, &out)?, change))
}

pub(super) async fn revoke_token(env: &Env, id: &str) -> Result<Done, EdgeError> {
    let db = ledger::db(env)?;
    let revoked = ledger::revoke_token(&db, id, now())
        .await?
        .ok_or_else(|| EdgeError::NotFound(format!("no admin token '{id}'")))?;
    Ok(Done::wrote(ok(200, &json!({"token_id": id, "revoked_at": rfc(revoked)}))?, format!("revoked token {id}")))
}

/// `GET /_quota/admin/audit?limit&before`: newest first; `next_before` pages on.
pub(super) async fn audit(req: &Request, env: &Env) -> Result<Response, EdgeError> {
    let q = query(req);
    let page = AuditQuery::parse(param(&q, "limit"), param(&q, "before"))?;
    let rows = ledger::audit_page(&ledger::db(env)?, page.before, page.limit).await?;
    let full = u32::try_from(rows.len()).is_ok_and(|n| n == page.limit);
    let next = rows.last().filter(|_| full).map(|r| r.seq);
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"seq": r.seq, "at": rfc(r.at), "token_id": r.token_id, "token_name": r.token_name,
                   "action": r.action, "target": r.target, "summary": r.summary, "status": r.status})
        })
        .collect();
    ok(200, &json!({"entries": entries, "next_before": next}))
}
