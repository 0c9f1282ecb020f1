//! quotagate: per-org plan limits, metered and enforced at the edge.
//!
//! `policy` is the pure core (native and wasm32); `edge` is the Cloudflare Workers glue, compiled
//! for wasm32 only. See ARCHITECTURE.md for how the two meet.

pub mod org;
pub mod policy;
pub mod telemetry;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod edge;
