//! Validated identifiers for plans, orgs and meters.
//!
//! Owns the one rule for what an id may look like, so that every id that reaches a Durable Object
//! name, a SQL parameter or a header value has already been checked. Must never allocate an id
//! from unchecked input: the only constructor is `parse`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may contain only a-z, 0-9, '_' and '-', and must start with a letter or digit")]
    BadChar,
    #[error("may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'")]
    BadEventChar,
}

const MAX_ID_LEN: usize = 64;

fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { max: MAX_ID_LEN });
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || !s.chars().all(ok_char) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

// Ids are shared, not copied: a decision hands its meter and org to every limit status, log
// line and lease key, and a clone of an `Arc<str>` is a count, not an allocation.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_id(s)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id(&s)?;
                Ok(Self(Arc::from(s)))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A meter such as `requests` or `ai_tokens`.
    MeterId
);

impl MeterId {
    /// The default meter of proxied requests.
    pub fn requests() -> Self {
        Self(Arc::from("requests"))
    }
}
id_type!(
    /// A plan such as `free` or `enterprise`.
    PlanId
);
impl PlanId {
    /// `none`: the plan of usage whose org no longer has one.
    pub fn unassigned() -> Self {
        Self(Arc::from("none"))
    }
}

id_type!(
    /// A customer organization; names its Durable Object.
    OrgId
);

impl OrgId {
    /// The ledger shard a new org goes to among `shards`: FNV-1a of the id, so the spread is
    /// even and the same id always lands on the same shard. Stored with the org when it is
    /// created, so adding shards later never moves an org's history.
    pub fn shard(&self, shards: u32) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.0.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % shards.max(1)
    }
}

/// An idempotency key or reservation id, as clients send it: 1 to 128 characters of
/// `A-Z a-z 0-9 . _ : -`. Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

/// How long an event id may be.
pub const MAX_EVENT_ID_LEN: usize = 128;

impl EventId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_EVENT_ID_LEN {
            return Err(IdError::TooLong { max: MAX_EVENT_ID_LEN });
        }
        if !s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')) {
            return Err(IdError::BadEventChar);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> String {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_ids() {
        for s in ["requests", "ai_tokens_input", "org-42", "9lives"] {
            assert_eq!(MeterId::parse(s).map(|m| m.to_string()), Ok(s.to_owned()));
        }
    }

    #[test]
    fn refuses_bad_ids_with_reason() {
        assert_eq!(MeterId::parse(""), Err(IdError::Empty));
        assert_eq!(MeterId::parse("Requests"), Err(IdError::BadChar));
        assert_eq!(MeterId::parse("_x"), Err(IdError::BadChar));
        assert_eq!(MeterId::parse("a b"), Err(IdError::BadChar));
        assert_eq!(OrgId::parse(&"a".repeat(65)), Err(IdError::TooLong { max: 64 }));
        // Shards: stable, in range, and spread over both of two.
        let ids: Vec<OrgId> =
            (0..100).map(|i| OrgId::parse(&format!("org-{i}")).unwrap_or_else(|e| unreachable!("{e}"))).collect();
        let on_one = ids.iter().filter(|o| o.shard(2) == 1).count();
        assert!((30..=70).contains(&on_one), "{on_one} of 100 on shard 1");
        assert!(ids.iter().all(|o| o.shard(1) == 0 && o.shard(2) == o.shard(2)));
        assert!(OrgId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn event_ids() {
        assert!(EventId::parse("req_01J:abc-DEF.9").is_ok());
        assert_eq!(EventId::parse("a b"), Err(IdError::BadEventChar));
        assert_eq!(EventId::parse(&"x".repeat(129)), Err(IdError::TooLong { max: 128 }));
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<PlanId>("\"pro\"").is_ok());
        assert!(serde_json::from_str::<PlanId>("\"PRO\"").is_err());
    }
}
