//! The machine's pure rules (`org::rules`) on their own: the counter row's encoding, and the
//! wake-up time as the earliest of the machine's needs.

use std::collections::BTreeMap;

use super::{at, T0};
use crate::org::rules::{decode_counters, encode_counters, Wake};
use crate::policy::Counter;

#[test]
fn counter_rows_round_trip_and_refuse_damage() {
    let mut c = BTreeMap::new();
    c.insert("requests-minute".to_owned(), Counter::Gcra { at: at(5), backlog: u64::MAX });
    c.insert("requests-month".to_owned(), Counter::Window { start: at(0), used: 7, reserved: 2 });
    let row = encode_counters(c.iter());
    assert_eq!(row, format!("requests-minute=g,{},{};requests-month=w,{T0},7,2", T0 + 5, u64::MAX));
    assert_eq!(decode_counters(&row), Some(c));
    assert_eq!(decode_counters(""), Some(BTreeMap::new()));
    for bad in [
        "x",
        "a=q,1,2",
        "a=g,1",
        "a=w,1,2,x",
        "a=g,1,2,3",
        "a=w,1,,2",
        "a=w,1,2,3,",
        "a=g,+1,2",
        "a=g,18446744073709551616,1",
        "a=",
        "a=g1,2",
    ] {
        assert_eq!(decode_counters(bad), None, "{bad}");
    }
}

#[test]
fn the_wake_is_the_earliest_need_and_a_retry_replaces_the_outbox_time() {
    let w = Wake {
        outbox_ready: Some(at(50)),
        flush_retry: Some(at(90)),
        alert_due: None,
        reservation_expires: Some(at(70)),
        counts_due: None,
        ledger_due: Some(at(40)),
        report_due: None,
    };
    assert_eq!(w.next(), Some(at(70)));
    assert_eq!(Wake { reservation_expires: None, ..w }.next(), Some(at(90)));
    assert_eq!(Wake::default().next(), None);
}
