//! Stripe Billing Meters, the pure part: batch identifiers, the form-encoded wire body, how an
//! answer is classified, and the backoff and circuit-breaker arithmetic.
//!
//! Must never do I/O: the edge sends what this builds and feeds the answers back.

use std::fmt::Write as _;

/// Stripe accepts meter events at most 35 days old.
pub const MAX_AGE_SECS: u64 = 35 * 86_400;
/// Consecutive failures that open the breaker, and how long it stays open.
pub const BREAKER_FAILURES: u32 = 5;
pub const BREAKER_OPEN_MS: u64 = 15 * 60 * 1000;

/// `application/x-www-form-urlencoded` per the HTML spec (what Stripe's API takes).
fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// The body of `POST /v1/billing/meter_events`.
pub fn meter_event_form(event_name: &str, customer: &str, value: u64, identifier: &str, timestamp_secs: u64) -> String {
    [
        ("event_name", event_name.to_owned()),
        ("payload[stripe_customer_id]", customer.to_owned()),
        ("payload[value]", value.to_string()),
        ("identifier", identifier.to_owned()),
        ("timestamp", timestamp_secs.to_string()),
    ]
    .iter()
    .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
    .collect::<Vec<_>>()
    .join("&")
}

/// How an answer from Stripe settles a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx, or a 400 saying this identifier was already used: billed exactly once either way.
    Delivered,
    /// Anything else: try again later (counts towards the breaker).
    Failed,
}

pub fn classify(status: u16, body: &str) -> Answer {
    if (200..300).contains(&status) {
        return Answer::Delivered;
    }
    let lower = body.to_ascii_lowercase();
    if status == 400 && lower.contains("identifier") && (lower.contains("already") || lower.contains("duplicate")) {
        return Answer::Delivered;
    }
    Answer::Failed
}

/// Delay before the next attempt of a batch: 30 s doubling per attempt, at most 1 hour.
pub fn backoff_ms(attempts: u32) -> u64 {
    30_000u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(7)).min(3_600_000)
}

/// The breaker after one more outcome: (consecutive failures, open until ms).
pub fn breaker_after(failures: u32, open_until: u64, failed: bool, now_ms: u64) -> (u32, u64) {
    if !failed {
        return (0, open_until);
    }
    let f = failures.saturating_add(1);
    if f >= BREAKER_FAILURES {
        (0, now_ms.saturating_add(BREAKER_OPEN_MS))
    } else {
        (f, open_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_form_encoded() {
        let body = meter_event_form("api requests", "cus_1", 42, "qg_a_b_1_ff", 1_700_000_000);
        assert_eq!(
            body,
            "event_name=api+requests&payload%5Bstripe_customer_id%5D=cus_1&payload%5Bvalue%5D=42&identifier=qg_a_b_1_ff&timestamp=1700000000"
        );
    }

    #[test]
    fn answers() {
        assert_eq!(classify(200, "{}"), Answer::Delivered);
        let dup =
            r#"{"error":{"message":"An event already exists with identifier qg_x.","type":"invalid_request_error"}}"#;
        assert_eq!(classify(400, dup), Answer::Delivered);
        assert_eq!(classify(400, r#"{"error":{"message":"No such customer"}}"#), Answer::Failed);
        assert_eq!(classify(500, "already identifier"), Answer::Failed);
        assert_eq!(classify(429, ""), Answer::Failed);
    }

    #[test]
    fn backoff_and_breaker() {
        assert_eq!([backoff_ms(1), backoff_ms(2), backoff_ms(3), backoff_ms(20)], [30_000, 60_000, 120_000, 3_600_000]);
        let mut s = (0, 0);
        for i in 1..=4 {
            s = breaker_after(s.0, s.1, true, 1_000);
            assert_eq!(s, (i, 0));
        }
        assert_eq!(breaker_after(s.0, s.1, true, 1_000), (0, 1_000 + 15 * 60 * 1000), "the fifth failure opens it");
        assert_eq!(breaker_after(3, 0, false, 1_000), (0, 0), "a success resets the count");
    }
}
