//! The operator console's reads, validated: the org list's paging, filter and order; and what the
//! status view may show of an alert delivery's error.
//!
//! It owns their parameter names, ranges and wording, and must never do I/O.

use super::access::clip;
use super::{field, InputError};
use crate::policy::PlanId;

/// The longest page of the org list, and its default.
pub const MAX_ORG_PAGE: u32 = 200;
pub const DEFAULT_ORG_PAGE: u32 = 50;
/// The furthest an org list may page: far past any catalogue D1 holds.
pub const MAX_ORG_OFFSET: u32 = 1_000_000;
/// The longest filter text.
pub const MAX_FILTER_CHARS: usize = 64;

/// How the org list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgOrder {
    /// Nearest to a limit first (the worst level of the org's limits), then by id.
    Level,
    /// By id.
    Id,
}

/// `GET /_quota/admin/orgs?limit&offset&q&plan&sort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgListQuery {
    pub limit: u32,
    pub offset: u32,
    /// Lower-case text an org's id or name must contain; empty matches every org.
    pub filter: String,
    pub plan: Option<PlanId>,
    pub order: OrgOrder,
}

fn number(
    name: &str,
    raw: Option<&str>,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, InputError> {
    match raw {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => field(
                name,
                format!("must be a whole number from {} to {} (got '{}')", range.start(), range.end(), clip(v)),
            ),
        },
    }
}

impl OrgListQuery {
    pub fn parse(
        limit: Option<&str>,
        offset: Option<&str>,
        q: Option<&str>,
        plan: Option<&str>,
        sort: Option<&str>,
    ) -> Result<Self, InputError> {
        let limit = number("limit", limit, 1..=MAX_ORG_PAGE, DEFAULT_ORG_PAGE)?;
        let offset = number("offset", offset, 0..=MAX_ORG_OFFSET, 0)?;
        let filter = q.unwrap_or("").trim();
        if filter.chars().count() > MAX_FILTER_CHARS || filter.chars().any(char::is_control) {
            return field(
                "q",
                format!("must be at most {MAX_FILTER_CHARS} characters, none of them control characters"),
            );
        }
        let plan = match plan {
            None | Some("") => None,
            Some(p) => {
                Some(PlanId::parse(p).map_err(|e| InputError::Field { field: "plan".into(), reason: e.to_string() })?)
            }
        };
        let order = match sort {
            None | Some("level") => OrgOrder::Level,
            Some("id") => OrgOrder::Id,
            Some(other) => return field("sort", format!("must be 'level' or 'id' (got '{}')", clip(other))),
        };
        Ok(Self { limit, offset, filter: filter.to_lowercase(), plan, order })
    }
}

/// `text` with every URL in it replaced by `[url]`: an alert delivery's error may quote the
/// receiving URL, which may carry the receiver's token.
pub fn without_urls(text: &str) -> String {
    text.split(' ').map(|w| if w.contains("://") { "[url]" } else { w }).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_error_never_shows_its_url() {
        assert_eq!(
            without_urls("error sending request for https://hooks.example.com/t/secret?x=1: refused"),
            "error sending request for [url] refused"
        );
        assert_eq!(without_urls("status 500"), "status 500");
    }

    fn err(r: Result<OrgListQuery, InputError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn the_org_list_query_has_defaults_and_exact_refusals() {
        let d = OrgListQuery::parse(None, None, None, None, None).unwrap();
        assert_eq!((d.limit, d.offset, d.filter.as_str(), d.plan, d.order), (50, 0, "", None, OrgOrder::Level));
        let q = OrgListQuery::parse(Some("200"), Some("950"), Some("  Acme "), Some("pro"), Some("id")).unwrap();
        assert_eq!((q.limit, q.offset, q.filter.as_str(), q.order), (200, 950, "acme", OrgOrder::Id));
        assert_eq!(q.plan.map(|p| p.to_string()).as_deref(), Some("pro"));
        assert_eq!(
            err(OrgListQuery::parse(Some("0"), None, None, None, None)),
            "limit: must be a whole number from 1 to 200 (got '0')"
        );
        assert_eq!(
            err(OrgListQuery::parse(None, Some("-3"), None, None, None)),
            "offset: must be a whole number from 0 to 1000000 (got '-3')"
        );
        assert_eq!(
            err(OrgListQuery::parse(None, None, Some(&"x".repeat(65)), None, None)),
            "q: must be at most 64 characters, none of them control characters"
        );
        assert!(OrgListQuery::parse(None, None, Some("a\u{0}b"), None, None).is_err());
        assert!(err(OrgListQuery::parse(None, None, None, Some("no such!"), None)).starts_with("plan: "));
        assert_eq!(
            err(OrgListQuery::parse(None, None, None, None, Some("pct"))),
            "sort: must be 'level' or 'id' (got 'pct')"
        );
    }
}
