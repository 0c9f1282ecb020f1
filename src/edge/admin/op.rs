//! Every admin endpoint as one typed operation, parsed from the method and the path before
//! anything runs: which ones write (and so need the `write` scope and leave an audit row), and
//! what the audit log calls each one and its target.
//!
//! It owns the admin API's paths and must never do I/O.

use worker::Method;

use super::super::error::EdgeError;
use crate::policy::ids::IdError;
use crate::policy::{OrgId, PlanId};
use crate::wire::{key_id_in_path, token_id_in_path, InputError};

/// One admin endpoint, with the ids its path names, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ListPlans,
    GetPlan(PlanId),
    PutPlan(PlanId),
    ListOrgs,
    GetOrg(OrgId),
    PutOrg(OrgId),
    OrgUsage(OrgId),
    OrgHistory(OrgId),
    ListKeys(OrgId),
    CreateKey(OrgId),
    RollKey(OrgId, String),
    RevokeKey(OrgId, String),
    Reset(OrgId),
    Flush(OrgId),
    Reconcile { org: OrgId, repair: bool },
    Export,
    StripeSync,
    Metrics,
    ListTokens,
    CreateToken,
    RevokeToken(String),
    Audit,
    Status,
}

fn path_id<T>(kind: &'static str, raw: &str, parse: impl Fn(&str) -> Result<T, IdError>) -> Result<T, EdgeError> {
    parse(raw).map_err(|e| {
        EdgeError::Input(InputError::Field { field: format!("{kind} id in the path"), reason: format!("'{raw}' {e}") })
    })
}

fn org(raw: &str) -> Result<OrgId, EdgeError> {
    path_id("org", raw, OrgId::parse)
}

impl Op {
    /// The operation `method` on `/_quota/admin/<rest>` names: 404 for no such resource, 405
    /// for a method it does not take, 400 for an id in the path that does not parse.
    pub fn parse(method: &Method, rest: &str) -> Result<Self, EdgeError> {
        let parts: Vec<&str> = rest.split('/').collect();
        let op = match (method, parts.as_slice()) {
            (Method::Get, ["plans"]) => Self::ListPlans,
            (Method::Get, ["plans", id]) => Self::GetPlan(path_id("plan", id, PlanId::parse)?),
            (Method::Put, ["plans", id]) => Self::PutPlan(path_id("plan", id, PlanId::parse)?),
            (Method::Get, ["orgs"]) => Self::ListOrgs,
            (Method::Get, ["orgs", id]) => Self::GetOrg(org(id)?),
            (Method::Put, ["orgs", id]) => Self::PutOrg(org(id)?),
            (Method::Get, ["orgs", id, "usage"]) => Self::OrgUsage(org(id)?),
            (Method::Get, ["orgs", id, "history"]) => Self::OrgHistory(org(id)?),
            (Method::Get, ["orgs", id, "keys"]) => Self::ListKeys(org(id)?),
            (Method::Post, ["orgs", id, "keys"]) => Self::CreateKey(org(id)?),
            (Method::Post, ["orgs", id, "keys", key, "roll"]) => {
                Self::RollKey(org(id)?, key_id_in_path(key)?.to_owned())
            }
            (Method::Delete, ["orgs", id, "keys", key]) => Self::RevokeKey(org(id)?, key_id_in_path(key)?.to_owned()),
            (Method::Post, ["orgs", id, "reset"]) => Self::Reset(org(id)?),
            (Method::Post, ["orgs", id, "flush"]) => Self::Flush(org(id)?),
            (Method::Get | Method::Post, ["orgs", id, "reconcile"]) => {
                Self::Reconcile { org: org(id)?, repair: *method == Method::Post }
            }
            (Method::Get, ["export"]) => Self::Export,
            (Method::Post, ["stripe", "sync"]) => Self::StripeSync,
            (Method::Get, ["metrics"]) => Self::Metrics,
            (Method::Get, ["tokens"]) => Self::ListTokens,
            (Method::Post, ["tokens"]) => Self::CreateToken,
            (Method::Delete, ["tokens", id]) => Self::RevokeToken(token_id_in_path(id)?.to_owned()),
            (Method::Get, ["audit"]) => Self::Audit,
            (Method::Get, ["status"]) => Self::Status,
            (_, p) if is_resource(p) => {
                return Err(EdgeError::MethodNotAllowed(format!("{method:?} is not allowed on /_quota/admin/{rest}")))
            }
            _ => return Err(EdgeError::NotFound(format!("no admin endpoint /_quota/admin/{rest}"))),
        };
        Ok(op)
    }

    /// A write that must run while D1 is down (and so without its audit row then): a flush,
    /// whose answer reports the backlog D1 has not taken.
    pub const fn runs_without_ledger(&self) -> bool {
        matches!(self, Self::Flush(_))
    }

    /// For a write: what the audit log calls it, and its target. `None` for a read.
    pub fn audited(&self) -> Option<(&'static str, String)> {
        let (action, target) = match self {
            Self::PutPlan(p) => ("plan.put", format!("plan/{p}")),
            Self::PutOrg(o) => ("org.put", format!("org/{o}")),
            Self::CreateKey(o) => ("key.create", format!("org/{o}")),
            Self::RollKey(o, k) => ("key.roll", format!("org/{o}/key/{k}")),
            Self::RevokeKey(o, k) => ("key.revoke", format!("org/{o}/key/{k}")),
            Self::Reset(o) => ("org.reset", format!("org/{o}")),
            Self::Flush(o) => ("org.flush", format!("org/{o}")),
            Self::Reconcile { org, repair: true } => ("org.repair", format!("org/{org}")),
            Self::StripeSync => ("stripe.sync", "stripe".to_owned()),
            Self::CreateToken => ("token.create", "tokens".to_owned()),
            Self::RevokeToken(t) => ("token.revoke", format!("token/{t}")),
            Self::ListPlans
            | Self::GetPlan(_)
            | Self::ListOrgs
            | Self::GetOrg(_)
            | Self::OrgUsage(_)
            | Self::OrgHistory(_)
            | Self::ListKeys(_)
            | Self::Reconcile { repair: false, .. }
            | Self::Export
            | Self::Metrics
            | Self::ListTokens
            | Self::Audit
            | Self::Status => return None,
        };
        Some((action, target))
    }
}

/// A path that names an admin resource (so a wrong method is 405, not 404).
fn is_resource(p: &[&str]) -> bool {
    matches!(p, ["export" | "metrics" | "audit" | "tokens" | "status"] | ["stripe", "sync"] | ["tokens", _])
        || matches!(p, ["orgs", _, "keys", _, "roll"])
        || matches!(p, ["plans" | "orgs", ..])
            && matches!(p.len(), 1..=4)
            && p.get(2).is_none_or(|s| matches!(*s, "keys" | "reset" | "flush" | "reconcile" | "usage" | "history"))
}
