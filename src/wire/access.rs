//! The admin API's access requests, validated: a new key's expiry, a key roll's grace period, a
//! new admin token, the ids of keys and tokens in a path, and the audit log's paging.
//!
//! It owns their field names, ranges and wording, and must never do I/O or decide who may ask.

use serde_json::Value;

use super::{field, InputError};
use crate::policy::json::Obj;
use crate::policy::Timestamp;

/// A roll's grace period when the caller names none: a day (the old key keeps working while
/// the new one is deployed).
pub const DEFAULT_GRACE_SECS: u64 = 86_400;
/// The longest grace period a roll may give: 30 days.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;
/// The longest a page of the audit log may be, and its default.
pub const MAX_AUDIT_PAGE: u32 = 500;
pub const DEFAULT_AUDIT_PAGE: u32 = 100;
/// The most admin tokens that may be live (neither revoked nor expired) at once.
pub const MAX_ADMIN_TOKENS: u64 = 100;

/// What an admin token may do: `read` is every GET (metrics, export and the audit log
/// included); `write` is everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// An optional RFC 3339 instant that must lie after `now` (an expiry in the past is a mistake,
/// not a way to make a dead key).
fn future(o: &Obj<'_>, key: &str, now: Timestamp) -> Result<Option<Timestamp>, InputError> {
    let Some(raw) = o.str_opt(key)? else { return Ok(None) };
    let Some(at) = Timestamp::parse_rfc3339(raw) else {
        return field(key, format!("must be an RFC 3339 time such as 2027-01-31T00:00:00Z (got '{}')", clip(raw)));
    };
    if at <= now {
        return field(key, format!("must be in the future (got {}, now is {})", at.rfc3339(), now.rfc3339()));
    }
    Ok(Some(at))
}

/// At most 40 characters of client text, for an error message.
/// At most 40 characters of a refused value, for its message.
pub(super) fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `POST /_quota/admin/orgs/{org}/keys`: `{"expires_at"?}`; an empty body is a key that never
/// expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRequest {
    pub expires_at: Option<Timestamp>,
}

impl KeyRequest {
    pub fn parse(v: &Value, now: Timestamp) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["expires_at"])?;
        Ok(Self { expires_at: future(&o, "expires_at", now)? })
    }
}

/// `POST /_quota/admin/orgs/{org}/keys/{key_id}/roll`: `{"grace_secs"?, "expires_at"?}`. The
/// old key keeps working for `grace_secs` (0 ends it at once; default a day); `expires_at` is
/// the new key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollRequest {
    pub grace_secs: u64,
    pub expires_at: Option<Timestamp>,
}

impl RollRequest {
    pub fn parse(v: &Value, now: Timestamp) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["grace_secs", "expires_at"])?;
        let grace_secs = o.uint_opt("grace_secs")?.unwrap_or(DEFAULT_GRACE_SECS);
        if grace_secs > MAX_GRACE_SECS {
            return field("grace_secs", format!("must be at most {MAX_GRACE_SECS} (30 days; got {grace_secs})"));
        }
        Ok(Self { grace_secs, expires_at: future(&o, "expires_at", now)? })
    }
}

/// `POST /_quota/admin/tokens`: `{"name", "scope", "expires_at"?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub name: String,
    pub scope: Scope,
    pub expires_at: Option<Timestamp>,
}

impl TokenRequest {
    pub fn parse(v: &Value, now: Timestamp) -> Result<Self, InputError> {
        let o = Obj::new("", v, &["name", "scope", "expires_at"])?;
        let name = o.str_req("name")?;
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '@');
        if name.is_empty() || name.len() > 64 || !name.chars().all(ok) || name.trim() != name {
            return field(
                "name",
                "must be 1 to 64 characters: letters, digits, spaces and . _ - @ (no space at either end)",
            );
        }
        let scope = o.str_req("scope")?;
        let Some(scope) = Scope::parse(scope) else {
            return field("scope", format!("must be read or write (got '{}')", clip(scope)));
        };
        Ok(Self { name: name.to_owned(), scope, expires_at: future(&o, "expires_at", now)? })
    }
}

/// A key id in a path: `key_` and 16 lowercase hex digits.
pub fn key_id_in_path(raw: &str) -> Result<&str, InputError> {
    id_in_path(raw, "key_", "key id in the path")
}

/// An admin token id in a path: `tok_` and 16 lowercase hex digits.
pub fn token_id_in_path(raw: &str) -> Result<&str, InputError> {
    id_in_path(raw, "tok_", "token id in the path")
}

fn id_in_path<'a>(raw: &'a str, prefix: &str, what: &str) -> Result<&'a str, InputError> {
    let hex = raw.strip_prefix(prefix).unwrap_or_default();
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(raw)
    } else {
        field(what, format!("'{}' is not {prefix} and 16 lowercase hex digits", clip(raw)))
    }
}

/// `GET /_quota/admin/audit?limit&before`: a page of the audit log, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    pub limit: u32,
    /// Rows with a sequence number below this one (the previous page's `next_before`).
    pub before: Option<u64>,
}

impl AuditQuery {
    pub fn parse(limit: Option<&str>, before: Option<&str>) -> Result<Self, InputError> {
        let limit = match limit {
            None => DEFAULT_AUDIT_PAGE,
            Some(l) => match l.parse::<u32>() {
                Ok(n) if (1..=MAX_AUDIT_PAGE).contains(&n) => n,
                _ => {
                    return field(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_AUDIT_PAGE} (got '{}')", clip(l)),
                    )
                }
            },
        };
        let before = match before {
            None => None,
            Some(b) => match b.parse::<u64>() {
                Ok(n) if n <= crate::policy::plan::MAX_SAFE_INTEGER => Some(n),
                _ => {
                    return field(
                        "before",
                        format!("must be a sequence number from a previous page (got '{}')", clip(b)),
                    )
                }
            },
        };
        Ok(Self { limit, before })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    fn err(r: Result<impl std::fmt::Debug, InputError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn keys_and_rolls_take_a_future_expiry_and_a_bounded_grace() {
        assert_eq!(KeyRequest::parse(&json!({}), NOW).unwrap().expires_at, None);
        let at = KeyRequest::parse(&json!({"expires_at": "2027-01-31T00:00:00Z"}), NOW).unwrap();
        assert_eq!(at.expires_at.map(Timestamp::rfc3339).as_deref(), Some("2027-01-31T00:00:00Z"));
        assert_eq!(
            err(KeyRequest::parse(&json!({"expires_at": "2020-01-01T00:00:00Z"}), NOW)),
            "expires_at: must be in the future (got 2020-01-01T00:00:00Z, now is 2027-01-15T08:00:00Z)"
        );
        assert_eq!(
            err(KeyRequest::parse(&json!({"expires_at": "tomorrow"}), NOW)),
            "expires_at: must be an RFC 3339 time such as 2027-01-31T00:00:00Z (got 'tomorrow')"
        );
        assert!(err(KeyRequest::parse(&json!({"expiry": 1}), NOW)).contains("expiry"));
        let roll = RollRequest::parse(&json!({}), NOW).unwrap();
        assert_eq!((roll.grace_secs, roll.expires_at), (DEFAULT_GRACE_SECS, None));
        assert_eq!(RollRequest::parse(&json!({"grace_secs": 0}), NOW).unwrap().grace_secs, 0);
        assert_eq!(
            err(RollRequest::parse(&json!({"grace_secs": 2_592_001}), NOW)),
            "grace_secs: must be at most 2592000 (30 days; got 2592001)"
        );
        assert!(RollRequest::parse(&json!({"grace_secs": -1}), NOW).is_err());
        assert!(RollRequest::parse(&json!({"grace_secs": "60"}), NOW).is_err());
    }

    #[test]
    fn tokens_need_a_plain_name_and_a_scope() {
        let t = TokenRequest::parse(&json!({"name": "ci deploy@acme", "scope": "read"}), NOW).unwrap();
        assert_eq!((t.name.as_str(), t.scope, t.expires_at), ("ci deploy@acme", Scope::Read, None));
        for bad in ["", " lead", "x".repeat(65).as_str(), "new\nline", "<script>", "naïve"] {
            let e = err(TokenRequest::parse(&json!({"name": bad, "scope": "write"}), NOW));
            assert!(e.starts_with("name: must be 1 to 64 characters"), "{bad:?}: {e}");
        }
        assert_eq!(
            err(TokenRequest::parse(&json!({"name": "n", "scope": "admin"}), NOW)),
            "scope: must be read or write (got 'admin')"
        );
        assert!(err(TokenRequest::parse(&json!({"name": "n"}), NOW)).starts_with("scope"));
    }

    #[test]
    fn ids_in_paths_and_audit_pages_are_checked() {
        assert_eq!(key_id_in_path("key_0123456789abcdef").unwrap(), "key_0123456789abcdef");
        assert_eq!(
            err(key_id_in_path("key_XYZ")),
            "key id in the path: 'key_XYZ' is not key_ and 16 lowercase hex digits"
        );
        assert!(token_id_in_path("tok_0123456789abcdef").is_ok() && token_id_in_path("key_0123456789abcdef").is_err());
        assert_eq!(AuditQuery::parse(None, None).unwrap(), AuditQuery { limit: 100, before: None });
        assert_eq!(AuditQuery::parse(Some("5"), Some("42")).unwrap(), AuditQuery { limit: 5, before: Some(42) });
        assert_eq!(err(AuditQuery::parse(Some("0"), None)), "limit: must be a whole number from 1 to 500 (got '0')");
        assert!(AuditQuery::parse(Some("501"), None).is_err());
        assert!(AuditQuery::parse(None, Some("-1")).is_err());
        assert!(AuditQuery::parse(None, Some("9007199254740992")).is_err());
    }
}
