//! `OrgError`: why the org machine could not carry out a message, and its one mapping to an
//! answer. It must never decide anything; the machine chooses the error, this file the words.

use super::super::msg::OrgReply;
use super::super::rules::MAX_OPEN_RESERVATIONS;
use crate::policy::{EventId, PlanError, UsageError};
use crate::wire::{problem_body, unauthorized_body, usage_error_status};

/// Why the machine could not carry out a message: its one error type, mapped to an answer by
/// `into_reply` alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("org is not configured")]
    NotConfigured,
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(#[from] UsageError),
    #[error("stored state does not decode: {0}")]
    Corrupt(String),
    #[error(
        "Idempotency-Key '{0}' was first used for a different request (method, path, query, route \
         or body); a new request needs a new key"
    )]
    KeyReused(EventId),
    #[error("the first request with Idempotency-Key '{0}' is still in flight; retry once it has been answered")]
    KeyInFlight(EventId),
    #[error(
        "this org has {MAX_OPEN_RESERVATIONS} provisional reservations open, the most it may have; commit or \
         release one, or wait for one to expire"
    )]
    TooManyReservations { retry_after_secs: Option<u64> },
    #[error("this org's Durable Object has no key '{0}'")]
    UnknownKey(String),
}

impl OrgError {
    /// The answer for this error.
    pub fn into_reply(self) -> OrgReply {
        let (status, kind, title, detail) = match &self {
            Self::Unauthorized => return OrgReply::problem(401, unauthorized_body()),
            Self::NotConfigured => (
                404,
                "unknown-org",
                "Unknown org",
                "This org has no plan; PUT /_quota/admin/orgs/{org} first.".to_owned(),
            ),
            Self::Plan(e) => (400, "invalid-plan", "Invalid plan", e.to_string()),
            Self::Usage(e) => {
                let (s, k, t) = usage_error_status(e);
                (s, k, t, e.to_string())
            }
            Self::Corrupt(_) => {
                (500, "internal", "Internal error", "The org's quota state could not be read.".to_owned())
            }
            Self::KeyReused(_) => (422, "idempotency-key-reused", "Idempotency-Key reused", self.to_string()),
            Self::UnknownKey(_) => (404, "not-found", "Not found", self.to_string()),
            Self::KeyInFlight(_) => (409, "idempotency-key-in-flight", "Request in flight", self.to_string()),
            Self::TooManyReservations { retry_after_secs } => {
                let body = problem_body(429, "too-many-reservations", "Too many open reservations", &self.to_string());
                let mut reply = OrgReply::problem(429, body);
                if let Some(s) = retry_after_secs {
                    reply.headers.push(("Retry-After".into(), s.to_string()));
                }
                return reply;
            }
        };
        OrgReply::problem(status, problem_body(status, kind, title, &detail))
    }
}
