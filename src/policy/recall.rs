//! Refusals an isolate remembers, so that a client looping on 429s or 402s costs its org's
//! Durable Object one call per memory span and isolate, not one per request.
//!
//! Owns what an isolate keeps of a hard refusal of a proxied request (the decision's `View`:
//! when the refusal's own `t` ends, and the limits its headers are rendered from), and the isolate's
//! bounded table of them (`Recalls`). A memo stands until the refusal's `Retry-After` ends, and
//! never longer than the deployment's memory span (`REFUSAL_MEMORY_MS`, at most
//! `MAX_MEMORY_MS`): that is how late a reset, a plan change, a top-up or a revocation may reach
//! an isolate that remembers a refusal. Remembering can only refuse, never admit.
//! Must never do I/O or read a clock: `now` is always an argument.

use std::collections::HashMap;
use std::hash::Hash;

use super::clock::Timestamp;
use super::headers::View;

/// The memory span when `REFUSAL_MEMORY_MS` is unset.
pub const DEFAULT_MEMORY_MS: u64 = 1_000;

/// The longest memory span a deployment may choose (the longest a lease may be spent, too).
pub const MAX_MEMORY_MS: u64 = super::lease::MAX_TTL_SECS * 1000;

/// Once a memo ended, the one request that asks the DO again has this long to bring the answer
/// back; meanwhile the others are still answered from the memo, so a storm on one class costs
/// one DO call per memory span, not one per request in flight when the memo ends.
pub const ASK_MS: u64 = 1_000;

/// How many refusals one isolate remembers at most (one per org, key, meter and cost): at the
/// cap, memos that ended go first, and a refusal that finds no room is simply not remembered.
pub const RECALL_CAP: usize = 4_096;

/// How long an isolate may answer a refusal again from its `View`.
impl View {
    /// Until when an isolate may answer it from memory, remembered at `now` for at most
    /// `span_ms`.
    pub fn until(&self, now: Timestamp, span_ms: u64) -> Timestamp {
        let cap = now.saturating_add_ms(span_ms);
        self.retry_at_ms.map_or(cap, |r| Timestamp::from_millis(r).min(cap))
    }
}

/// A remembered refusal: the memo, until when it stands, the answer's status and body text,
/// how many requests it refused since the org's DO last heard from this isolate about it, and
/// since when one request has been asking the DO again (after `until`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    pub view: View,
    pub until: Timestamp,
    pub status: u16,
    pub body: String,
    recalled: u64,
    asking: Option<Timestamp>,
}

/// An isolate's remembered refusals, at most `cap` of them.
#[derive(Debug)]
pub struct Recalls<K> {
    map: HashMap<K, Memo>,
    cap: usize,
}

impl<K: Hash + Eq> Default for Recalls<K> {
    fn default() -> Self {
        Self::new(RECALL_CAP)
    }
}

impl<K: Hash + Eq> Recalls<K> {
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), cap }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The refusal remembered for `k`, if it stands at `now` (or ended, while another request
    /// asks the DO again, for at most `ASK_MS`); it counts as recalled. `None` when this
    /// request must ask the DO: after a memo ends, the first to find it so is the one to ask.
    pub fn recall(&mut self, k: &K, now: Timestamp) -> Option<&Memo> {
        // The common case (nothing refused lately) costs no hashing.
        if self.map.is_empty() {
            return None;
        }
        let m = self.map.get_mut(k)?;
        let asked = m.asking.is_some_and(|since| now < since.saturating_add_ms(ASK_MS));
        if now >= m.until && !asked {
            m.asking = Some(now);
            return None;
        }
        m.recalled = m.recalled.saturating_add(1);
        Some(m)
    }

    /// The class is being asked of its org's DO again: the refusals its memo answered since the
    /// last ask, for the DO to count.
    pub fn take(&mut self, k: &K) -> u64 {
        if self.map.is_empty() {
            return 0;
        }
        self.map.get_mut(k).map_or(0, |m| std::mem::take(&mut m.recalled))
    }

    /// The DO answered the class with anything but a refusal to remember: its memo goes.
    pub fn forget(&mut self, k: &K) {
        if !self.map.is_empty() {
            self.map.remove(k);
        }
    }

    /// Remembers a refusal of `k` for at most `span_ms` (0: not at all). At the cap, memos that
    /// ended make room first (the refusals they answered go uncounted in the DO's decision
    /// counts; nothing was admitted); if there is still none, the refusal is not remembered.
    pub fn remember(&mut self, k: K, view: View, status: u16, body: String, now: Timestamp, span_ms: u64) {
        let until = view.until(now, span_ms);
        if until <= now {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            self.map.retain(|_, m| now < m.until);
            if self.map.len() >= self.cap {
                return;
            }
        }
        let recalled = self.map.get(&k).map_or(0, |m| m.recalled);
        self.map.insert(k, Memo { view, until, status, body, recalled, asking: None });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decision::Level;

    fn memo(retry_at_ms: u64) -> View {
        View { retry_at_ms: Some(retry_at_ms), limits: Vec::new(), legacy: None, level: Level::Over }
    }

    #[test]
    fn a_memo_stands_until_the_refusals_t_within_the_span() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(memo(10_400).until(t, 1_000), Timestamp::from_millis(10_400));
        assert_eq!(memo(60_000).until(t, 1_000), Timestamp::from_millis(11_000));
        let no_retry = View { retry_at_ms: None, ..memo(0) };
        assert_eq!(no_retry.until(t, 2_500), Timestamp::from_millis(12_500), "a 402: the span alone");
        let mut r = Recalls::new(4);
        r.remember("k", memo(60_000), 402, String::new(), t, 0);
        assert!(r.is_empty(), "a span of 0 remembers nothing");
    }

    #[test]
    fn a_memo_stands_until_its_end_and_counts_what_it_answered() {
        let mut r = Recalls::new(8);
        let t = Timestamp::from_millis(10_000);
        assert!(r.recall(&"k", t).is_none());
        r.remember("k", memo(10_500), 429, "{}".into(), t, 1_000);
        assert_eq!(r.recall(&"k", t).map(|m| m.status), Some(429));
        assert!(r.recall(&"k", Timestamp::from_millis(10_499)).is_some());
        assert!(r.recall(&"k", Timestamp::from_millis(10_500)).is_none(), "ends at until: this one asks");
        assert!(r.recall(&"other", t).is_none());
        assert_eq!(r.take(&"k"), 2);
        assert_eq!(r.take(&"k"), 0);
        // While that request asks, the others are still answered, for at most ASK_MS.
        assert!(r.recall(&"k", Timestamp::from_millis(10_600)).is_some());
        assert!(r.recall(&"k", Timestamp::from_millis(11_499)).is_some());
        assert!(r.recall(&"k", Timestamp::from_millis(11_500)).is_none(), "the ask took too long: another asks");
        assert_eq!(r.take(&"k"), 2);
        // The DO admitted: the memo goes.
        r.forget(&"k");
        assert!(r.is_empty());
    }

    #[test]
    fn the_table_never_grows_past_its_cap() {
        let mut r = Recalls::new(3);
        let t = Timestamp::from_millis(0);
        for k in 0..10u32 {
            r.remember(k, memo(500), 429, String::new(), t, 1_000);
        }
        assert_eq!(r.len(), 3, "full of standing memos: later refusals are not remembered");
        assert!(r.recall(&0, t).is_some() && r.recall(&9, t).is_none());
        // Once they end, they make room.
        let later = Timestamp::from_millis(600);
        r.remember(42, memo(1_000), 429, String::new(), later, 1_000);
        assert_eq!(r.len(), 1);
        assert!(r.recall(&42, later).is_some());
        // A memo that already ended is not kept.
        r.remember(43, memo(100), 429, String::new(), later, 1_000);
        assert!(r.recall(&43, later).is_none());
    }
}
