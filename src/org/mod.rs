//! The org machine: one org's rules as pure, natively tested code, behind the thin Durable
//! Object in `edge::org_do` (the quinn-proto / quinn split).
//!
//! `msg` is the protocol (typed messages with an explicit caller, and the reply); `machine` is
//! the state machine that turns a message and a snapshot of storage into a reply, the writes to
//! apply and the time it next needs to run; `io` is the plain data it exchanges with storage;
//! `buckets` the
//! aggregated usage on its way to D1 and its exactly-once batches; `rules` holds the small formulas (counter rows, alert crossings, backoff, wake-up times,
//! reconciliation). It must never import `worker`, do
//! I/O or read a clock: `now` is always an argument.

pub mod buckets;
pub mod io;
pub mod machine;
pub mod msg;
pub mod rules;

pub use io::{
    AlertView, Boot, FlushResult, KeyUsed, Need, OutboxRow, Seen, SeenKey, SeenResult, Snapshot, StoredKey, Tallies,
    Writes,
};
pub use machine::{LimitLevel, OrgError, OrgMachine, ReconcileWindow, Repair, Step};
pub use msg::{
    AdminOp, ApiClass, Caller, DecideKind, KeyHash, LedgerOp, NewKey, OrgMsg, OrgOp, OrgReply, SettleAction,
    StoredConfig,
};

#[cfg(test)]
mod tests;
