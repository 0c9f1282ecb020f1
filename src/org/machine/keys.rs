//! The org's keys as its machine holds them: by hash (all it ever sees of a key), each with the
//! time it stops working and the last day it was used.
//!
//! It owns what makes a key good at an instant (listed, not expired) and when its last-used day
//! is worth a write (once per key and day, never per request). It must never see a plaintext
//! key or a secret version: those stay in the Worker.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::org::io::{KeyUsed, StoredKey};
use crate::org::msg::{KeyHash, NewKey};
use crate::policy::Timestamp;

const DAY_MS: u64 = 86_400_000;

/// The org's keys, by hash.
#[derive(Debug, Clone, Default)]
pub(super) struct Keys {
    by_hash: BTreeMap<KeyHash, StoredKey>,
}

impl Keys {
    pub(super) fn new(stored: Vec<StoredKey>) -> Self {
        Self { by_hash: stored.into_iter().map(|k| (k.hash.clone(), k)).collect() }
    }

    /// The key with this hash, if it is the org's and has not expired at `now`.
    pub(super) fn active(&self, hash: &KeyHash, now: Timestamp) -> Option<&StoredKey> {
        self.by_hash.get(hash).filter(|k| k.expires_at.is_none_or(|t| now < t))
    }

    /// Records that the key was used at `now`: what to write when that is a new day for it
    /// (one write per key and day), else `None`.
    pub(super) fn touch(&mut self, hash: &KeyHash, now: Timestamp) -> Option<KeyUsed> {
        let today = now.millis() / DAY_MS;
        let key = self.by_hash.get_mut(hash)?;
        if key.used_day.is_some_and(|d| d >= today) {
            return None;
        }
        key.used_day = Some(today);
        Some(KeyUsed { key_id: key.key_id.clone(), day: today })
    }

    /// Adds a key (or replaces one of the same id); returns the row to write.
    pub(super) fn add(&mut self, new: NewKey) -> StoredKey {
        self.by_hash.retain(|_, k| k.key_id != new.key_id);
        let row = StoredKey { key_id: new.key_id, hash: new.hash, expires_at: new.expires_at, used_day: None };
        self.by_hash.insert(row.hash.clone(), row.clone());
        row
    }

    /// Ends `key_id` at `at` at the latest (an earlier expiry stands); returns the row to write,
    /// or `None` when the org has no such key.
    pub(super) fn expire(&mut self, key_id: &str, at: Timestamp) -> Option<StoredKey> {
        let key = self.by_hash.values_mut().find(|k| k.key_id == key_id)?;
        key.expires_at = Some(key.expires_at.map_or(at, |t| t.min(at)));
        Some(key.clone())
    }

    /// Removes `key_id`; whether it was there.
    pub(super) fn revoke(&mut self, key_id: &str) -> bool {
        let before = self.by_hash.len();
        self.by_hash.retain(|_, k| k.key_id != key_id);
        self.by_hash.len() != before
    }

    /// How many keys work at `now`.
    pub(super) fn active_count(&self, now: Timestamp) -> usize {
        self.by_hash.values().filter(|k| k.expires_at.is_none_or(|t| now < t)).count()
    }

    /// `{"<key id>": {"last_used": "YYYY-MM-DD" | null}}`: what the key listing needs from the DO.
    pub(super) fn view(&self) -> Value {
        let mut out = Map::new();
        for k in self.by_hash.values() {
            let day = k.used_day.map(|d| Timestamp::from_millis(d.saturating_mul(DAY_MS)).date().to_string());
            out.insert(k.key_id.clone(), json!({"last_used": day}));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hash(c: char) -> KeyHash {
        KeyHash(c.to_string().repeat(64))
    }

    fn new(id: &str, c: char, expires_at: Option<u64>) -> NewKey {
        NewKey { key_id: id.into(), hash: hash(c), expires_at: expires_at.map(Timestamp::from_millis) }
    }

    #[test]
    fn a_key_works_until_it_expires_and_is_touched_once_a_day() {
        let mut keys = Keys::default();
        keys.add(new("key_a", 'a', Some(10 * DAY_MS)));
        let at = |ms| Timestamp::from_millis(ms);
        assert!(keys.active(&hash('a'), at(10 * DAY_MS - 1)).is_some());
        assert!(keys.active(&hash('a'), at(10 * DAY_MS)).is_none(), "expired at its expires_at");
        assert!(keys.active(&hash('b'), at(0)).is_none());
        assert_eq!(keys.touch(&hash('a'), at(DAY_MS + 5)), Some(KeyUsed { key_id: "key_a".into(), day: 1 }));
        assert_eq!(keys.touch(&hash('a'), at(2 * DAY_MS - 1)), None, "the same day writes nothing");
        assert_eq!(keys.touch(&hash('a'), at(2 * DAY_MS)).map(|k| k.day), Some(2));
        assert_eq!(keys.view(), json!({"key_a": {"last_used": "1970-01-03"}}));
    }

    #[test]
    fn an_expiry_only_comes_sooner() {
        let mut keys = Keys::default();
        keys.add(new("key_a", 'a', Some(5_000)));
        keys.add(new("key_b", 'b', None));
        let at = Timestamp::from_millis;
        assert_eq!(keys.expire("key_a", at(9_000)).unwrap().expires_at, Some(at(5_000)));
        assert_eq!(keys.expire("key_b", at(9_000)).unwrap().expires_at, Some(at(9_000)));
        assert_eq!(keys.expire("key_c", at(9_000)), None);
        assert_eq!(keys.active_count(at(4_999)), 2);
        assert_eq!(keys.active_count(at(5_000)), 1);
        assert!(keys.revoke("key_b") && !keys.revoke("key_b"));
        assert_eq!(keys.active_count(at(0)), 1);
    }
}
