//! The persisted JSON encoding of a `Counter` and a `Reservation`: `{"v":1,"k":…,…}`.
//!
//! Provisional reservations are stored this way, and the org DO's schema-1 counters were; the
//! hot path's counter rows use the integer encoding in `org::rules` instead. It owns the
//! version check and must never decide anything.

use serde::{Deserialize, Serialize};

use super::counter::Counter;
use super::engine::Reservation;

/// The version of the persisted counter and reservation encoding.
pub const STATE_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    v: u8,
    #[serde(flatten)]
    state: T,
}

/// A persisted record that does not decode: a newer version, or damage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored state does not decode: {0}")]
pub struct DecodeError(String);

fn encode<T: Serialize>(state: &T) -> String {
    serde_json::to_string(&Versioned { v: STATE_VERSION, state }).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, DecodeError> {
    let v: Versioned<T> = serde_json::from_str(s).map_err(|e| DecodeError(e.to_string()))?;
    if v.v == STATE_VERSION {
        Ok(v.state)
    } else {
        Err(DecodeError(format!("version {} (this build reads {STATE_VERSION})", v.v)))
    }
}

impl DecodeError {
    pub fn from_serde(e: &serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

impl Counter {
    pub fn encode(&self) -> String {
        encode(self)
    }

    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        decode(s)
    }
}

impl Reservation {
    pub fn encode(&self) -> String {
        encode(self)
    }

    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        decode(s)
    }
}
