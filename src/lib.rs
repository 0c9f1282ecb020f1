//! quotagate: per-org plan limits, metered and enforced at the edge.
//!
//! `policy` is the pure core (native and wasm32); `edge` is the Cloudflare Workers glue, compiled
//! for wasm32 only. See ARCHITECTURE.md for how the two meet.

/// `MAX_SAFE_INTEGER` (2^53 − 1) as an SQL literal, for statements that read a count back
/// through JS (`concat!` takes only literals); `policy::json`'s tests hold it to the constant.
// Natively only the tests use it (the statements are wasm32-only).
#[cfg_attr(not(target_arch = "wasm32"), allow(unused_macros))]
macro_rules! max_safe_sql {
    () => {
        "9007199254740991"
    };
}

pub mod config;
pub mod org;
pub mod policy;
pub mod telemetry;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod edge;
