//! Who may do what, in D1: org API keys (by hash, with expiry, secret version and roll), named
//! admin tokens (by id, with their hash) and the admin audit log.
//!
//! Each function is one statement or one batch. No plaintext key or token and no secret ever
//! reaches a statement here: keys and tokens arrive as SHA-256 hashes, audit rows as summaries.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use super::{changes, opt, rows, s, t};
use crate::edge::error::EdgeError;
use crate::edge::platform::js_int;
use crate::policy::{OrgId, Timestamp};

const KEY_COLUMNS: &str = "id, prefix, created_at, revoked_at, expires_at, secret_version, replaced_by";

#[derive(Debug, Clone, Deserialize)]
pub struct KeyRow {
    pub id: String,
    pub prefix: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub secret_version: u16,
    pub replaced_by: Option<String>,
}

/// A key to insert: everything but its plaintext.
#[derive(Debug, Clone, Copy)]
pub struct NewKeyRow<'a> {
    pub key_id: &'a str,
    pub org: &'a OrgId,
    pub hash: &'a str,
    pub prefix: &'a str,
    pub version: u16,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// What the fail-open path needs to know about a key when the org's DO cannot be asked.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyPlanRow {
    pub revoked_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub plan_id: String,
    pub plan_body: String,
}

fn opt_t(ts: Option<Timestamp>) -> Result<JsValue, EdgeError> {
    ts.map_or(Ok(JsValue::NULL), t)
}

fn insert_key_stmt(db: &D1Database, k: &NewKeyRow<'_>) -> Result<worker::D1PreparedStatement, EdgeError> {
    db.prepare(
        "INSERT INTO api_keys (id, org_id, key_hash, prefix, created_at, expires_at, secret_version) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&[
        s(k.key_id),
        s(k.org.as_str()),
        s(k.hash),
        s(k.prefix),
        t(k.created_at)?,
        opt_t(k.expires_at)?,
        JsValue::from(k.version),
    ])
    .map_err(EdgeError::platform("bind"))
}

pub async fn insert_key(db: &D1Database, k: &NewKeyRow<'_>) -> Result<(), EdgeError> {
    insert_key_stmt(db, k)?.run().await.map_err(EdgeError::platform("api_keys insert"))?;
    Ok(())
}

/// A roll, as one batch: the new key, and the old one's expiry brought forward to `old_until`
/// (an earlier expiry stands) with the new key's id beside it. Returns the old key's expiry.
pub async fn roll_key(
    db: &D1Database,
    old: &str,
    old_until: Timestamp,
    new: &NewKeyRow<'_>,
) -> Result<Option<u64>, EdgeError> {
    let update = db
        .prepare(
            "UPDATE api_keys SET expires_at = MIN(COALESCE(expires_at, ?1), ?1), replaced_by = ?2 \
             WHERE id = ?3 AND org_id = ?4",
        )
        .bind(&[t(old_until)?, s(new.key_id), s(old), s(new.org.as_str())])
        .map_err(EdgeError::platform("bind"))?;
    db.batch(vec![insert_key_stmt(db, new)?, update]).await.map_err(EdgeError::platform("api_keys roll"))?;
    Ok(get_key(db, new.org, old).await?.and_then(|k| k.expires_at))
}

pub async fn get_key(db: &D1Database, org: &OrgId, key_id: &str) -> Result<Option<KeyRow>, EdgeError> {
    db.prepare(format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ? AND org_id = ?"))
        .bind(&[s(key_id), s(org.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("api_keys query"))
}

pub async fn list_keys(db: &D1Database, org: &OrgId) -> Result<Vec<KeyRow>, EdgeError> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE org_id = ? ORDER BY created_at, id");
    rows(db, &sql, &[s(org.as_str())], "api_keys query").await
}

/// Marks a key of `org` revoked; `None` when the org has no such key. Revoking twice keeps the
/// first revocation time.
pub async fn revoke_key(db: &D1Database, org: &OrgId, key_id: &str, now: Timestamp) -> Result<Option<u64>, EdgeError> {
    db.prepare("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND org_id = ?")
        .bind(&[t(now)?, s(key_id), s(org.as_str())])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("api_keys revoke"))?;
    Ok(get_key(db, org, key_id).await?.and_then(|r| r.revoked_at))
}

/// The key's revocation state, expiry and its org's plan, for deciding without the DO.
pub async fn key_plan(db: &D1Database, org: &OrgId, hash: &str) -> Result<Option<KeyPlanRow>, EdgeError> {
    db.prepare(
        "SELECT k.revoked_at AS revoked_at, k.expires_at AS expires_at, p.id AS plan_id, p.body AS plan_body \
         FROM api_keys k JOIN orgs o ON o.id = k.org_id JOIN plans p ON p.id = o.plan_id \
         WHERE k.key_hash = ? AND k.org_id = ?",
    )
    .bind(&[s(hash), s(org.as_str())])
    .map_err(EdgeError::platform("bind"))?
    .first(None)
    .await
    .map_err(EdgeError::platform("api_keys query"))
}

/// The org's ledger shard if the key works at `now` for it (used where the org's DO is not
/// asked: ledger reads); `None` for a revoked, expired or unknown key.
pub async fn key_shard(db: &D1Database, org: &OrgId, hash: &str, now: Timestamp) -> Result<Option<u32>, EdgeError> {
    #[derive(Deserialize)]
    struct Shard {
        shard: u32,
    }
    let row: Option<Shard> = db
        .prepare(
            "SELECT o.shard AS shard FROM api_keys k JOIN orgs o ON o.id = k.org_id \
             WHERE k.key_hash = ? AND k.org_id = ? AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)",
        )
        .bind(&[s(hash), s(org.as_str()), t(now)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("api_keys query"))?;
    Ok(row.map(|r| r.shard))
}

// ---------------------------------------------------------------------------- admin tokens

const TOKEN_COLUMNS: &str = "id, name, scope, token_hash, prefix, created_at, created_by, expires_at, revoked_at";

#[derive(Debug, Clone, Deserialize)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    /// `read` or `write` (the table's CHECK keeps it so).
    pub scope: String,
    pub token_hash: String,
    pub prefix: String,
    pub created_at: u64,
    pub created_by: String,
    pub expires_at: Option<u64>,
    pub revoked_at: Option<u64>,
}

pub async fn admin_token(db: &D1Database, id: &str) -> Result<Option<TokenRow>, EdgeError> {
    db.prepare(format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE id = ?"))
        .bind(&[s(id)])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("admin_tokens query"))
}

pub async fn insert_token(db: &D1Database, row: &TokenRow) -> Result<(), EdgeError> {
    db.prepare(
        "INSERT INTO admin_tokens (id, name, scope, token_hash, prefix, created_at, created_by, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&[
        s(&row.id),
        s(&row.name),
        s(&row.scope),
        s(&row.token_hash),
        s(&row.prefix),
        js_int(row.created_at)?,
        s(&row.created_by),
        row.expires_at.map_or(Ok(JsValue::NULL), js_int)?,
    ])
    .map_err(EdgeError::platform("bind"))?
    .run()
    .await
    .map_err(EdgeError::platform("admin_tokens insert"))?;
    Ok(())
}

pub async fn list_tokens(db: &D1Database) -> Result<Vec<TokenRow>, EdgeError> {
    rows(db, &format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY created_at, id"), &[], "admin_tokens query")
        .await
}

/// Tokens neither revoked nor expired at `now`.
pub async fn active_token_count(db: &D1Database, now: Timestamp) -> Result<u64, EdgeError> {
    #[derive(Deserialize)]
    struct N {
        n: u64,
    }
    let row: Option<N> = db
        .prepare("SELECT COUNT(*) AS n FROM admin_tokens WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
        .bind(&[t(now)?])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("admin_tokens query"))?;
    Ok(row.map_or(0, |r| r.n))
}

/// Revokes a token; its revocation time, or `None` when there is no such token.
pub async fn revoke_token(db: &D1Database, id: &str, now: Timestamp) -> Result<Option<u64>, EdgeError> {
    db.prepare("UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
        .bind(&[t(now)?, s(id)])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("admin_tokens revoke"))?;
    Ok(admin_token(db, id).await?.and_then(|r| r.revoked_at))
}

// ------------------------------------------------------------------------------- audit log

/// An admin write about to be made: who, what, on what.
#[derive(Debug, Clone, Copy)]
pub struct AuditStart<'a> {
    pub at: Timestamp,
    pub token_id: &'a str,
    pub token_name: &'a str,
    pub action: &'a str,
    pub target: &'a str,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditRow {
    pub seq: u64,
    pub at: u64,
    pub token_id: String,
    pub token_name: String,
    pub action: String,
    pub target: String,
    pub summary: String,
    pub status: Option<u16>,
}

/// Writes the row of a write about to be made (its summary comes with its outcome); its
/// sequence number.
pub async fn audit_begin(db: &D1Database, a: &AuditStart<'_>) -> Result<u64, EdgeError> {
    #[derive(Deserialize)]
    struct Seq {
        seq: u64,
    }
    let row: Option<Seq> = db
        .prepare(
            "INSERT INTO admin_audit (at, token_id, token_name, action, target, summary) VALUES (?, ?, ?, ?, ?, '') \
             RETURNING seq",
        )
        .bind(&[t(a.at)?, s(a.token_id), s(a.token_name), s(a.action), s(a.target)])
        .map_err(EdgeError::platform("bind"))?
        .first(None)
        .await
        .map_err(EdgeError::platform("admin_audit insert"))?;
    row.map(|r| r.seq).ok_or_else(|| EdgeError::Internal("admin_audit insert returned no seq".into()))
}

/// Records how the write ended: its HTTP status and, when it changed something, what.
pub async fn audit_finish(db: &D1Database, seq: u64, status: u16, summary: Option<&str>) -> Result<(), EdgeError> {
    db.prepare("UPDATE admin_audit SET status = ?, summary = COALESCE(?, summary) WHERE seq = ?")
        .bind(&[JsValue::from(status), opt(summary), js_int(seq)?])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("admin_audit update"))?;
    Ok(())
}

/// Up to `limit` rows, newest first, before sequence number `before` (all when `None`).
pub async fn audit_page(db: &D1Database, before: Option<u64>, limit: u32) -> Result<Vec<AuditRow>, EdgeError> {
    let before = js_int(before.unwrap_or(crate::wire::MAX_SAFE_INTEGER))?;
    rows(
        db,
        "SELECT seq, at, token_id, token_name, action, target, summary, status FROM admin_audit \
         WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        &[before, JsValue::from(limit)],
        "admin_audit query",
    )
    .await
}

/// Audit rows older than `before` go (`RETENTION_DAYS`). Returns how many.
pub async fn prune_audit(db: &D1Database, before: Timestamp) -> Result<u64, EdgeError> {
    let r = db
        .prepare("DELETE FROM admin_audit WHERE at < ?")
        .bind(&[t(before)?])
        .map_err(EdgeError::platform("bind"))?
        .run()
        .await
        .map_err(EdgeError::platform("admin_audit prune"))?;
    Ok(changes(&r))
}
