//! The rows the drain works through: ready audit rows (and an earlier build's queued rows) and
//! their removal once D1 has them, what is still pending, idempotency retention, the queued
//! rows' sums for reconciliation, and alerts due for delivery. Synchronous, like every statement
//! of the store.

use serde::Deserialize;

use super::{int, text, uint, Store, StoreResult, N};
use crate::org::rules::LedgerAgg;
use crate::org::OutboxRow;
use crate::policy::Timestamp;
use worker::SqlStorageValue;

/// Rows a flush round reads: 50 D1 statements, far under D1's 1,000 queries per invocation.
const ROWS_PER_ROUND: u64 = 550;

/// An alert waiting for delivery.
#[derive(Debug, Deserialize)]
pub struct DueAlert {
    pub id: String,
    pub payload: String,
    pub attempts: u32,
}

impl Store {
    /// Up to `ROWS_PER_ROUND` outbox rows that are ready, oldest first.
    pub fn ready(&self, now: Timestamp) -> StoreResult<Vec<OutboxRow>> {
        self.all(
            "SELECT seq, event_id, meter, quantity, ts, source, metadata, ready_at, audit FROM ledger_outbox \
             WHERE ready_at <= ? ORDER BY seq LIMIT ?",
            vec![int(now.millis())?, int(ROWS_PER_ROUND)?],
        )
    }

    /// Deletes exactly the rows D1 confirmed (new ones may have arrived meanwhile).
    pub fn flushed(&self, rows: &[OutboxRow]) -> StoreResult<()> {
        for chunk in rows.chunks(100) {
            let marks = vec!["?"; chunk.len()].join(",");
            let args = chunk.iter().map(|r| int(r.seq)).collect::<StoreResult<Vec<_>>>()?;
            self.write(&format!("DELETE FROM ledger_outbox WHERE seq IN ({marks})"), args)?;
        }
        Ok(())
    }

    /// (rows left, when the earliest becomes ready).
    pub fn pending(&self) -> StoreResult<(u64, Option<Timestamp>)> {
        #[derive(Deserialize)]
        struct P {
            n: i64,
            next: Option<i64>,
        }
        let p: Vec<P> = self.all("SELECT COUNT(*) AS n, MIN(ready_at) AS next FROM ledger_outbox", Vec::new())?;
        Ok(p.into_iter().next().map_or((0, None), |p| (uint(p.n), p.next.map(|n| Timestamp::from_millis(uint(n))))))
    }

    /// Idempotency records past their window go; so do the oldest settled ones past `cap` (a
    /// retry of an evicted key is counted as new: eviction never loses counted usage). A
    /// record whose request is in flight stays.
    pub fn prune_idempotency(&self, before: Timestamp, now: Timestamp, cap: u64) -> StoreResult<()> {
        self.write("DELETE FROM idempotency_keys WHERE at < ?", vec![int(before.millis())?])?;
        // LIMIT is clamped at 0: SQLite reads a negative LIMIT as no limit at all.
        self.write(
            "DELETE FROM idempotency_keys WHERE id IN (SELECT id FROM idempotency_keys WHERE busy_until <= ?1 \
             ORDER BY at LIMIT max(0, (SELECT COUNT(*) FROM idempotency_keys) - ?2))",
            vec![int(now.millis())?, int(cap)?],
        )
    }

    /// The sums of an earlier build's queued rows (counted usage, not audit rows) over one
    /// window of one meter, for reconciliation.
    pub fn queued(&self, meter: &str, from: u64, to: u64) -> StoreResult<LedgerAgg> {
        let rows: Vec<LedgerAgg> = self.all(
            // At most 2^53 − 1, as every count read back through JS (see ledger::usage).
            concat!(
                "SELECT COALESCE(MIN(SUM(quantity), ",
                max_safe_sql!(),
                "), 0) AS total, COALESCE(MAX(quantity), 0) AS peak, \
                 (SELECT quantity FROM ledger_outbox WHERE audit = 0 AND meter = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts DESC, seq DESC LIMIT 1) AS last, \
                 MAX(ts) AS last_ts FROM ledger_outbox WHERE audit = 0 AND meter = ?1 AND ts >= ?2 AND ts < ?3"
            ),
            vec![text(meter), int(from)?, int(to)?],
        )?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    /// Alerts due for delivery.
    pub fn due_alerts(&self, now: Timestamp) -> StoreResult<Vec<DueAlert>> {
        self.all(
            "SELECT id, payload, attempts FROM alerts WHERE status = 'pending' AND next_at <= ? ORDER BY next_at LIMIT 20",
            vec![int(now.millis())?],
        )
    }

    pub fn alert_attempted(
        &self,
        id: &str,
        attempts: u32,
        status: &str,
        next: Timestamp,
        error: Option<&str>,
    ) -> StoreResult<()> {
        self.write(
            "UPDATE alerts SET attempts = ?, status = ?, next_at = ?, last_error = ? WHERE id = ?",
            vec![
                SqlStorageValue::Integer(i64::from(attempts)),
                text(status),
                int(next.millis())?,
                error.map_or(SqlStorageValue::Null, text),
                text(id),
            ],
        )
    }

    /// When the next pending alert is due.
    pub fn next_alert(&self) -> StoreResult<Option<Timestamp>> {
        let r: Vec<N> = self.all("SELECT MIN(next_at) AS n FROM alerts WHERE status = 'pending'", Vec::new())?;
        Ok(r.into_iter().next().and_then(|r| r.n).map(|n| Timestamp::from_millis(uint(n))))
    }
}
