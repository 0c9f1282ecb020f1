//! The org machine's protocol: who calls (`Caller`), what they ask (`OrgOp`, `AdminOp`,
//! `LedgerOp`, wrapped in one `OrgMsg`), and what comes back (`OrgReply`).
//!
//! It owns the wire shape of the Worker → Durable Object call and nothing else: it must never
//! decide anything, and it never carries an authorisation as an absent value. An org operation
//! always names its caller, and which callers may run which operation is decided in one place
//! (`OrgOp::allows`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::headers::{HeaderList, View};
use crate::policy::keys::Fingerprint;
use crate::policy::lease::Grant;
pub use crate::policy::lease::LeaseClosing;
use crate::policy::{EventId, MeterId, OrgId, PlanId, Timestamp};
use crate::wire::UsageEvent;

/// The SHA-256 of an org key, as 64 lowercase hex characters: all the DO ever sees of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(pub String);

/// Who is asking. Every org operation carries one, so "no key" can never mean "skip the check".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Caller {
    /// An org key, by hash: the DO checks it belongs to this org before anything else.
    Key(KeyHash),
    /// The Worker itself, settling a proxied request it already authenticated.
    Gateway,
    /// The admin API (its bearer token was checked by the Worker).
    Admin,
    /// Another Worker of the account, through quotagate's service binding: the binding is the
    /// credential. It may do what an org key may (the usage API's operations), for the org it
    /// names, and spends the same usage API limit.
    Binding,
}

/// How a proxied or checked request is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecideKind {
    /// `/v1/check` without reserve: nothing changes.
    Check,
    /// `/v1/check` with reserve: a provisional reservation the caller settles.
    Reserve,
    /// A proxied request of known cost: counted at once, released if the origin fails.
    Proxy,
    /// A proxied request whose cost the origin reports: admitted while one unit remains.
    ProxyReported,
}

/// How a provisional reservation is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SettleAction {
    /// With the quantity used; `None` commits the reserved quantity.
    Commit {
        quantity: Option<u64>,
    },
    Release,
}

/// An operation on the org's usage, made by a key or by the gateway on a key's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgOp {
    /// `idempotency`: the id is the client's `Idempotency-Key` (proxied requests only), bound to
    /// this fingerprint of the request. The same key and fingerprint within the idempotency
    /// window is a replay, admitted without being counted again; another fingerprint is refused
    /// (422), and so is a key whose first request is still in flight (409).
    /// `lease`: the holder (a Worker isolate in lease mode) takes a lease with an admitted
    /// proxied request, if the plan leases and the room allows.
    Decide {
        meter: MeterId,
        quantity: u64,
        kind: DecideKind,
        id: EventId,
        ttl_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency: Option<Fingerprint>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        lease: bool,
        /// Requests of this class the isolate refused from a remembered refusal since it last
        /// asked (`policy::recall`): counted as refusals here, never as usage.
        #[serde(default, skip_serializing_if = "is_zero")]
        recalled: u64,
    },
    /// Usage events (`POST /v1/events`), idempotent by event id.
    Events { events: Vec<UsageEvent>, enforce: bool },
    /// The live usage overview (`GET /v1/usage`), or its one-line status.
    Usage { short: bool },
    /// Commit or release a provisional reservation (`/v1/reservations/{id}/…`).
    Settle { id: EventId, action: SettleAction },
    /// Give back a proxied request's units after a non-2xx or failed origin call. `held` is the
    /// token the decision answered with (kept in the DO's memory for the release window).
    /// `quantity` gives back part of a hold: one request of a lease that was already closed.
    Release {
        id: EventId,
        held: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<u64>,
    },
    /// Lease mode: close the holder's lease (its unspent units go back) and ask for the next one
    /// for requests of `cost` on `meter`, of about `want` units (a `cost` of 0 only closes).
    /// No lease in the answer
    /// means: decide strictly now.
    Lease {
        meter: MeterId,
        cost: u64,
        /// Units the holder asks for (its own rate over a lease period).
        #[serde(default)]
        want: u64,
        /// The new lease's id, made by the holder (random, like a request id), so that a lease
        /// of an earlier instance of the DO can never be taken for one of this instance.
        id: EventId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        closing: Option<LeaseClosing>,
    },
    /// The origin answered a proxied request 2xx: the usage it reported (counted without
    /// enforcement, once per request and meter), and for a request with an `Idempotency-Key`,
    /// the end of its flight (a second request with the key is a replay from now on).
    Report { id: EventId, usage: Vec<(MeterId, u64)> },
    /// A proxied request with an `Idempotency-Key` got no 2xx and held no units to release: the
    /// key is forgotten, so a retry with it is a new request.
    Forget { id: EventId },
    /// A ledger read (`/v1/usage/summary`, `/v1/usage/history`) asks to pass the usage API's own
    /// limit before the Worker reads D1.
    Gate,
}

/// Which of the usage API's own limits a key's call spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiClass {
    /// Summary and history: each is a D1 read.
    LedgerRead,
    /// `/v1/check`, `/v1/events`, `/v1/usage` and `/v1/usage/status`: each is a DO call.
    Call,
}

impl OrgOp {
    /// The one table of who may do what.
    pub const fn allows(&self, caller: &Caller) -> bool {
        matches!(
            (self, caller),
            (
                Self::Decide { .. } | Self::Events { .. } | Self::Settle { .. } | Self::Gate | Self::Lease { .. },
                Caller::Key(_)
            ) | (
                Self::Decide { kind: DecideKind::Check | DecideKind::Reserve, .. }
                    | Self::Events { .. }
                    | Self::Settle { .. },
                Caller::Binding
            ) | (Self::Usage { .. }, Caller::Key(_) | Caller::Admin | Caller::Binding)
                | (Self::Release { .. } | Self::Report { .. } | Self::Forget { .. }, Caller::Gateway)
        )
    }
}

impl OrgOp {
    /// The usage API limit this operation spends, if any: proxied requests spend none (their
    /// plan's limits are what they spend).
    pub const fn api_class(&self) -> Option<ApiClass> {
        match self {
            Self::Decide { kind: DecideKind::Check | DecideKind::Reserve, .. }
            | Self::Events { .. }
            | Self::Usage { .. } => Some(ApiClass::Call),
            Self::Gate => Some(ApiClass::LedgerRead),
            _ => None,
        }
    }
}

/// The org's configuration as the admin API sends it; validated by the machine before storing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub org: OrgId,
    pub plan_id: PlanId,
    pub plan: Value,
    pub billing_anchor: Option<Value>,
    pub overrides: Option<Value>,
    /// Where threshold alerts go (else the deployment's `ALERT_WEBHOOK_URL`).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The Stripe customer the org's usage is billed to: kept with each ledger bucket.
    #[serde(default)]
    pub stripe_customer: Option<String>,
    /// The plan's version in D1 when this config was made: a newer one is adopted by itself.
    #[serde(default)]
    pub plan_version: u64,
    /// The ledger shard (D1 database) that holds the org's usage.
    #[serde(default)]
    pub shard: u32,
}

/// Operations only the admin API sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOp {
    Configure(StoredConfig),
    State,
    Reset {
        meter: Option<MeterId>,
    },
    AddKey(NewKey),
    /// A key roll: `new` works at once, `old` until `old_expires_at` (sooner if it already
    /// expired sooner). One step, so no instant has neither.
    RollKey {
        old: String,
        old_expires_at: Timestamp,
        new: NewKey,
    },
    RevokeKey {
        key_id: String,
    },
    /// What the DO alone knows of the org's keys: each one's last-used day.
    Keys,
}

/// A key the admin API minted: its id, its hash (all the DO ever sees of it) and when it stops
/// working, if ever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewKey {
    pub key_id: String,
    pub hash: KeyHash,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// Operations that await the ledger (D1) and are driven by the DO's drain, not by `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerOp {
    /// Send all pending usage (buckets and audit rows) to D1 now.
    Flush,
    /// Compare counters with the ledger; `repair` sets them to the ledger's truth.
    Reconcile { repair: bool },
}

/// One message to an org's Durable Object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrgMsg {
    Org { caller: Caller, op: OrgOp },
    Admin(AdminOp),
    Ledger(LedgerOp),
}

impl OrgMsg {
    /// The operation's name, as a metric label.
    #[must_use]
    pub const fn op(&self) -> &'static str {
        match self {
            Self::Org { op, .. } => match op {
                OrgOp::Decide { .. } => "decide",
                OrgOp::Events { .. } => "events",
                OrgOp::Usage { .. } => "usage",
                OrgOp::Settle { .. } => "settle",
                OrgOp::Release { .. } => "release",
                OrgOp::Report { .. } => "report",
                OrgOp::Forget { .. } => "forget",
                OrgOp::Gate => "gate",
                OrgOp::Lease { .. } => "lease",
            },
            Self::Admin(op) => match op {
                AdminOp::Configure(_) => "configure",
                AdminOp::State => "state",
                AdminOp::Reset { .. } => "reset",
                AdminOp::AddKey(_) => "add_key",
                AdminOp::RollKey { .. } => "roll_key",
                AdminOp::RevokeKey { .. } => "revoke_key",
                AdminOp::Keys => "keys",
            },
            Self::Ledger(LedgerOp::Flush) => "flush",
            Self::Ledger(LedgerOp::Reconcile { .. }) => "reconcile",
        }
    }
}

/// The Durable Object's answer: an HTTP answer the Worker passes on once it has rendered the
/// decision's headers from its `view` (`rendered`), plus what the proxy needs (the plan, and the
/// token of the hold on a proxied request's units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgReply {
    pub status: u16,
    /// A decision's numbers, which its `RateLimit` fields, legacy trio, `X-Quota-Status` and
    /// `Retry-After` are rendered from, by the Worker rather than the single-threaded DO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<Box<View>>,
    /// Headers besides the view's (`Idempotent-Replayed`, a problem's `Retry-After`); after
    /// `rendered`, the view's come first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: HeaderList,
    /// `null` for an allowed proxied decision: the Worker needs only the headers.
    #[serde(default)]
    pub body: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// The token that holds this proxied request's units: only then may the Worker release them
    /// (a replay holds nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
    /// A lease for the next requests like this one (lease mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Grant>,
    /// A lease was asked for but the org's plan has no lease mode: the holder stops asking
    /// for a while (sent only then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_lease: bool,
    /// The request repeats an `Idempotency-Key` whose first request was served: admitted, not
    /// counted again, and flagged to the origin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// A hard refusal of a proxied request without an `Idempotency-Key`: the isolate may answer
    /// its class again from memory, from `view` (`policy::recall`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rememberable: bool,
}

/// Serde's test for a count left out of the message when zero.
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
const fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl OrgReply {
    /// A 200 with nothing: the base of the other answers.
    pub const EMPTY: Self = Self {
        status: 200,
        headers: Vec::new(),
        body: Value::Null,
        plan: None,
        held: None,
        lease: None,
        no_lease: false,
        replayed: false,
        rememberable: false,
        view: None,
    };

    /// The answer as the Worker sends it at `now`: the view's headers rendered, before the
    /// others. The view stays, for a refusal the isolate may remember.
    #[must_use]
    pub fn rendered(mut self, now: Timestamp) -> Self {
        if let Some(view) = &self.view {
            let mut headers = view.headers(now);
            headers.append(&mut self.headers);
            self.headers = headers;
        }
        self
    }

    /// A 200 with a JSON body and no headers.
    #[must_use]
    pub fn ok(body: Value, plan: Option<String>) -> Self {
        Self { body, plan, ..Self::EMPTY }
    }

    /// An answer with a problem body.
    #[must_use]
    pub fn problem(status: u16, body: Value) -> Self {
        Self { status, body, ..Self::EMPTY }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Caller {
        Caller::Key(KeyHash("ab".repeat(32)))
    }

    #[test]
    fn who_may_do_what() {
        let id = EventId::parse("r1").unwrap_or_else(|e| unreachable!("{e}"));
        let release = OrgOp::Release { id: id.clone(), held: 1, quantity: None };
        assert!(release.allows(&Caller::Gateway));
        assert!(!release.allows(&key()), "a key cannot release a proxied request's units");
        assert!(!release.allows(&Caller::Admin));
        let usage = OrgOp::Usage { short: false };
        assert!(usage.allows(&key()) && usage.allows(&Caller::Admin) && !usage.allows(&Caller::Gateway));
        let settle = OrgOp::Settle { id, action: SettleAction::Release };
        assert!(settle.allows(&key()) && !settle.allows(&Caller::Gateway));
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            OrgMsg::Org { caller: key(), op: OrgOp::Usage { short: true } },
            OrgMsg::Admin(AdminOp::Reset { meter: None }),
            OrgMsg::Ledger(LedgerOp::Reconcile { repair: true }),
            OrgMsg::Admin(AdminOp::AddKey(NewKey { key_id: "k".into(), hash: KeyHash("h".into()), expires_at: None })),
        ];
        for m in msgs {
            let s = serde_json::to_string(&m).unwrap_or_default();
            assert_eq!(serde_json::from_str::<OrgMsg>(&s).ok(), Some(m), "{s}");
        }
        // A caller is never optional: a message without one does not decode.
        assert!(serde_json::from_str::<OrgMsg>(r#"{"org":{"op":{"usage":{"short":true}}}}"#).is_err());
    }

    #[test]
    fn an_allowed_proxy_reply_is_small() {
        let r = OrgReply {
            status: 200,
            headers: vec![],
            body: Value::Null,
            plan: Some("free".into()),
            held: Some(7),
            lease: None,
            no_lease: false,
            replayed: false,
            rememberable: false,
            view: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap_or_default(),
            r#"{"status":200,"body":null,"plan":"free","held":7}"#
        );
    }
}
