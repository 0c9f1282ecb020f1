//! The usage API's own limit: a key's summary and history reads (each a D1 read) and its checks,
//! events and usage views (each a DO call) are limited per org and minute, so a misbehaving
//! client cannot hammer them. Enforced by the same engine as any plan limit (GCRA), refused with
//! the same headers and problem body. Its state is in memory only: a restarted object starts
//! with a full allowance, which bounds abuse just as well and writes nothing per call.

use serde_json::json;

use crate::org::msg::{ApiClass, OrgReply};
use crate::policy::headers::{refusal_problem, View};
use crate::policy::{Book, MeterId, Plan, PlanId, Policy, Timestamp};

/// The meters the usage API's limits count, as they appear in `RateLimit` headers and problems.
const READS: &str = "usage_api_reads";
const CALLS: &str = "usage_api_calls";

#[derive(Debug, Clone)]
pub(super) struct ApiLimiter {
    policy: Policy,
    book: Book,
}

impl ApiLimiter {
    /// The limiter for these per-minute allowances; `None` when both are 0 (off).
    pub(super) fn new(reads_per_minute: u64, calls_per_minute: u64) -> Option<Self> {
        let limits: Vec<_> = [(READS, reads_per_minute), (CALLS, calls_per_minute)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(m, n)| json!({"meter": m, "limit": n, "period": "minute", "mode": "hard"}))
            .collect();
        if limits.is_empty() {
            return None;
        }
        // One validator for every limit, this one included.
        let id = PlanId::parse("usage-api").ok()?;
        let plan = Plan::parse(&id, &json!({"limits": limits})).ok()?;
        Some(Self { policy: Policy::new(&plan, &crate::policy::OrgTerms::default()), book: Book::default() })
    }

    /// Spends one call of `class`; the refusal to answer with when the minute's allowance is
    /// spent (a class without a limit always passes).
    pub(super) fn admit(&mut self, class: ApiClass, plan: &str, now: Timestamp) -> Option<OrgReply> {
        let meter = MeterId::parse(match class {
            ApiClass::LedgerRead => READS,
            ApiClass::Call => CALLS,
        })
        .ok()?;
        self.policy.meter(&meter)?;
        let decision = self.book.record(&self.policy, &meter, 1, true, now).ok()?;
        let body = refusal_problem(&decision, plan, None)?;
        let view = Some(Box::new(View::of(&decision)));
        Some(OrgReply { status: decision.status(), view, body, plan: Some(plan.to_owned()), ..OrgReply::EMPTY })
    }
}
