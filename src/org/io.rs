//! What crosses between the org machine and the Durable Object's storage: what a step needs
//! (`Need`), what was loaded (`Snapshot`, `Boot`), what to write (`Writes`), and the rows both
//! sides name (`OutboxRow`, `AlertView`). Plain data: no rule and no I/O lives here.

use std::collections::{BTreeMap, BTreeSet};

use super::buckets::{Bucket, BucketKey};
use super::msg::{KeyHash, StoredConfig};
use super::rules::NewAlert;
use crate::policy::keys::Fingerprint;
use crate::policy::{EventId, MeterId, Reservation, Timestamp};

/// An idempotency record's key. Event ids and proxied requests' `Idempotency-Key`s live in
/// namespaces of their own, so neither can pre-empt the other: an event named like a request's
/// report cannot stop that report from counting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeenKey {
    /// A usage event's id (stored bare, as earlier builds stored it).
    Event(EventId),
    /// A proxied request's `Idempotency-Key`.
    Request(EventId),
    /// Usage an origin reported for a proxied request, per meter.
    Reported(EventId, MeterId),
}

impl SeenKey {
    /// The stored id. Event ids cannot contain '#', so the other namespaces never meet them.
    pub fn stored(&self) -> String {
        match self {
            Self::Event(id) => id.to_string(),
            Self::Request(id) => format!("req#{id}"),
            Self::Reported(id, meter) => format!("req#{id}#{meter}"),
        }
    }
}

/// What became of the first use of an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeenResult {
    Accepted,
    Rejected,
}

impl SeenResult {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
        }
    }
}

/// An idempotency record, as stored for its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub result: SeenResult,
    /// The fingerprint a proxied request's key is bound to (`None` for events and reports).
    pub fingerprint: Option<Fingerprint>,
    /// While the first request is in flight (its origin has not answered), until this time at
    /// the latest: a second request with the key meanwhile is refused with 409.
    pub busy_until: Option<Timestamp>,
}

/// One outbox row: a per-event ledger row of an audit meter (`audit = 1`), or a row an earlier
/// build queued before usage was aggregated (`audit = 0`: D1 still counts it into the buckets,
/// exactly once by event id). A proxied request's audit row waits for its release window, and a
/// release deletes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OutboxRow {
    pub seq: u64,
    pub event_id: String,
    pub meter: String,
    pub quantity: u64,
    pub ts: u64,
    pub source: String,
    pub metadata: Option<String>,
    pub ready_at: u64,
    #[serde(default)]
    pub audit: u8,
}

impl OutboxRow {
    /// An audit row of usage at `now`, ready for the ledger at once; `enqueue` gives it its
    /// sequence.
    pub fn audit(event_id: String, meter: &MeterId, quantity: u64, source: &str, now: Timestamp) -> Self {
        Self {
            seq: 0,
            event_id,
            meter: meter.to_string(),
            quantity,
            ts: now.millis(),
            source: source.to_owned(),
            metadata: None,
            ready_at: now.millis(),
            audit: 1,
        }
    }
}

/// A stored threshold alert, for the usage view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AlertView {
    pub policy: String,
    pub window_start: u64,
    pub payload: String,
    pub status: String,
    pub attempts: u32,
}

/// Counts the admin state view shows, read on demand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tallies {
    pub open_reservations: u64,
    /// Per-event audit rows (and rows of an earlier build) not yet in D1.
    pub outbox_pending: u64,
    /// Rows that must stay bounded whatever names and ids clients send: counter rows (one per
    /// meter of the plan), decision-count series (meter × outcome) and idempotency records.
    pub counter_rows: u64,
    pub decision_series: u64,
    pub idempotency_records: u64,
}

/// What a step needs loaded from storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // a load plan: each flag is one independent query
pub struct Need {
    /// Counter rows of these meters (ignored when `all_counters`).
    pub meters: BTreeSet<MeterId>,
    pub all_counters: bool,
    /// Idempotency records with these keys.
    pub seen: Vec<SeenKey>,
    /// This provisional reservation.
    pub reservation: Option<EventId>,
    /// Provisional reservations that expired by now.
    pub expired: bool,
    pub alerts: bool,
    pub tallies: bool,
}

/// What the store loaded for a step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Counter rows by meter, as stored.
    pub rows: BTreeMap<String, String>,
    /// Idempotency records found.
    pub seen: BTreeMap<SeenKey, Seen>,
    pub reservations: Vec<Reservation>,
    /// When the earliest provisional reservation left after `reservations` expires.
    pub next_expiry: Option<Timestamp>,
    pub alerts: Vec<AlertView>,
    pub tallies: Tallies,
}

/// A key as the org's DO stores it: its id, its hash, when it stops working, and the last day
/// (UTC, in days since the epoch) a request used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: String,
    pub hash: KeyHash,
    pub expires_at: Option<Timestamp>,
    pub used_day: Option<u64>,
}

/// A key used on a day it had not been used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsed {
    pub key_id: String,
    /// Days since the epoch, UTC.
    pub day: u64,
}

/// What the store must write, all in the step's one synchronous transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    pub config: Option<StoredConfig>,
    /// Counter rows to upsert, by meter.
    pub counters: Vec<(String, String)>,
    /// Meters whose counter rows go (no longer in the plan).
    pub drop_counters: Vec<String>,
    pub outbox: Vec<OutboxRow>,
    pub outbox_delete: Vec<u64>,
    pub reservation_put: Vec<Reservation>,
    pub reservation_delete: Vec<EventId>,
    /// Idempotency records to add (the first write of a key wins).
    pub remember: Vec<(SeenKey, Seen)>,
    /// Idempotency records whose request is no longer in flight.
    pub settled: Vec<SeenKey>,
    pub forget: Vec<SeenKey>,
    pub alerts: Vec<NewAlert>,
    pub meta: Vec<(String, String)>,
    /// Key rows to write whole (a new key, a roll's two).
    pub key_put: Vec<StoredKey>,
    /// A key's first use of a day: its last-used day, one column of one row.
    pub key_used: Option<KeyUsed>,
    pub key_delete: Option<String>,
    /// Decision counts to add: (meter, outcome, n).
    pub counts: Vec<(String, &'static str, u64)>,
    /// Open ledger buckets to store, whole.
    pub buckets: Vec<(BucketKey, Bucket)>,
    /// Seal every open bucket into this batch (and record the number).
    pub seal: Option<u64>,
    /// D1 confirmed this batch: its rows go.
    pub sealed_done: Option<u64>,
}

/// What the store loads once per Durable Object instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boot {
    pub config: Option<StoredConfig>,
    pub keys: Vec<StoredKey>,
    /// Reset marks: meter (or `*`) → when.
    pub resets: BTreeMap<String, Timestamp>,
    /// The highest outbox sequence ever handed out: max of the outbox and meta `outbox_seq`.
    pub max_seq: u64,
    /// Meta `outbox_seq` alone: what storage has recorded of it.
    pub seq_mark: u64,
    pub outbox_ready: Option<Timestamp>,
    pub alert_due: Option<Timestamp>,
    pub reservation_expires: Option<Timestamp>,
    /// How many provisional reservations are open.
    pub open_reservations: u64,
    pub flush_failures: u32,
    /// Ledger buckets as stored: (batch, key, bucket); batch 0 is open.
    pub buckets: Vec<(u64, BucketKey, Bucket)>,
    /// The last ledger batch number handed out (meta `flush_seq`).
    pub flush_seq: u64,
    /// This object's ledger epoch (meta `ledger_epoch`): D1's exactly-once mark is per epoch, so
    /// an object whose storage was lost starts over instead of being ignored.
    pub epoch: u64,
    /// When the stored config was adopted (meta `config_at`): a bucket never spans two plans.
    pub config_at: Option<Timestamp>,
    /// How often open buckets go to D1 (`LEDGER_FLUSH_SECS`), set by the Durable Object.
    pub flush_every_ms: u64,
    /// How old the plan may grow before D1 is asked for a newer version (`PLAN_REFRESH_SECS`).
    pub plan_refresh_ms: u64,
    /// How often an active org reconciles and reports its status (`ORG_REPORT_SECS`).
    pub report_every_ms: u64,
    /// The usage API's own limits per org and minute: ledger reads, and other calls (0: none).
    pub api_reads_per_minute: u64,
    pub api_calls_per_minute: u64,
}

/// How a flush ended, as the drain reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushResult {
    /// D1 took what was ready; `next_ready` is when the earliest row left becomes ready.
    Done { pending: u64, next_ready: Option<Timestamp> },
    /// D1 refused or could not be reached; nothing left the outbox.
    Failed,
}
