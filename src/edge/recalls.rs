//! This isolate's remembered refusals: one `policy::recall::Memo` per request class
//! (`leases::ClassKey`), in isolate memory, at most `RECALL_CAP` of them, each for at most
//! `REFUSAL_MEMORY_MS`.
//!
//! Glue only: how long a refusal stands and how it is rendered are `policy::recall`'s rules
//! (pure, natively tested). This file keeps the table and turns a memo into a response. It must
//! never admit anything: a memo can only refuse.

use std::cell::RefCell;

use worker::Response;

use super::error::answer;
use super::leases::ClassKey;
use crate::policy::headers::View;
use crate::policy::recall::Recalls;
use crate::policy::Timestamp;

thread_local! {
    static MEMOS: RefCell<Recalls<ClassKey>> = RefCell::new(Recalls::default());
}

/// The class's remembered refusal at `now`, as the response the DO gave (its countdowns
/// moved on), or `None` when the DO must be asked.
pub fn recall(k: &ClassKey, now: Timestamp) -> Option<(u16, worker::Result<Response>)> {
    MEMOS.with(|m| {
        let mut m = m.borrow_mut();
        let memo = m.recall(k, now)?;
        Some((memo.status, answer(memo.status, &memo.view.headers(now), memo.body.clone())))
    })
}

/// The class is asked of its DO: how many refusals its memo answered since the last ask (the
/// DO counts them).
pub fn take(k: &ClassKey) -> u64 {
    MEMOS.with(|m| m.borrow_mut().take(k))
}

/// The DO answered the class with anything but a refusal to remember: its memo goes.
pub fn forget(k: &ClassKey) {
    MEMOS.with(|m| m.borrow_mut().forget(k));
}

/// Remembers the DO's refusal of the class, with the body it answered, for at most `span_ms`.
pub fn remember(k: ClassKey, view: View, status: u16, body: String, now: Timestamp, span_ms: u64) {
    MEMOS.with(|m| m.borrow_mut().remember(k, view, status, body, now, span_ms));
}
