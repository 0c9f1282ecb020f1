//! The pure quota policy core: plans, meters, periods, limits, the decision engine and the
//! response vocabulary.
//!
//! It owns every rule about usage and takes the time as an argument. It must never do I/O, read
//! a clock or import `worker`: it compiles and is tested natively with `cargo test`.

pub mod billing;
pub mod classify;
pub mod clock;
pub mod codec;
pub mod composite;
pub mod counter;
pub mod decision;
pub mod engine;
pub mod headers;
pub mod ids;
pub mod json;
pub mod keys;
pub mod lease;
pub mod path;
pub mod period;
pub mod plan;
pub mod recall;
pub mod secret;
pub mod stripe;

pub use clock::Timestamp;
pub use counter::Counter;
pub use decision::{Decision, Level, LimitStatus, Refusal, RefusalKind};
pub use engine::{Book, Reservation, ReservationKind, ReserveAs, Settled, Settlement, UsageError};
pub use ids::{EventId, MeterId, OrgId, PlanId};
pub use period::{Period, RateUnit, Window};
pub use plan::{Aggregation, Cap, Counts, FailMode, Limit, MeterSpec, OnExceed, OrgTerms, Plan, PlanError, Policy};
