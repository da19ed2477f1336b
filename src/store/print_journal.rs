//! The print journal: one SQLite row per slip, from the moment a payment's final state is
//! recorded until the slip is on paper.
//!
//! # Durability
//! The engine calls [`enqueue`] inside the transaction that records the final state (write
//! ahead), so a committed SALE, CANCEL or REFUND always has its slip row. Printing happens
//! later, in `devices::print_worker`, and never holds up that transaction.
//!
//! # Retry
//! A slip that fails to print stays `PENDING` with `attempts`, `last_error`, the printer's
//! status and `next_attempt_at` (unix ms, from the caller's clock). [`retry_now`] makes every
//! pending slip due at once, for when the printer comes back. A slip is never dropped.
//!
//! # Compatibility
//! The slip's data is stored as columns, with `payload_version` = 1; a later layout reads
//! old rows. Rows are never deleted.

use chrono::NaiveDateTime;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::money::{Amount, Currency};
use crate::domain::slip::{SlipData, SlipKind};

/// The format of `local_time`.
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// Whether a slip is on paper yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlipStatus {
    /// Not printed yet (new, or failed and waiting for a retry).
    Pending,
    /// Printed.
    Printed,
}

/// One row of the print journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlipRow {
    /// The slip's id.
    pub id: i64,
    /// What the slip shows.
    pub data: SlipData,
    /// Pending or printed.
    pub status: SlipStatus,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The printer status seen at the last attempt (`READY`, `PAPER_OUT`, ...).
    pub printer_status: Option<String>,
    /// When the next attempt is due (unix ms; 0 = now).
    pub next_attempt_at: i64,
    /// When the slip was printed (unix ms).
    pub printed_at: Option<i64>,
}

const COLUMNS: &str =
    "id, payment_request_id, kind, copy, merchant_name, store_name, terminal_id, \
     amount_minor, currency, payment_id, refund_request_id, local_time, status, attempts, \
     last_error, printer_status, next_attempt_at, printed_at";

fn conversion(i: usize, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<SlipRow> {
    let kind: String = r.get(2)?;
    let kind =
        SlipKind::parse(&kind).ok_or_else(|| conversion(2, format!("slip kind {kind:?}")))?;
    let currency: String = r.get(8)?;
    let currency = Currency::from_code(&currency).map_err(|e| conversion(8, e.to_string()))?;
    let amount =
        Amount::from_minor(r.get(7)?, currency).map_err(|e| conversion(7, e.to_string()))?;
    let time: String = r.get(11)?;
    let local_time = NaiveDateTime::parse_from_str(&time, TIME_FORMAT)
        .map_err(|e| conversion(11, format!("local_time {time:?}: {e}")))?;
    let status = match r.get::<_, String>(12)?.as_str() {
        "PRINTED" => SlipStatus::Printed,
        _ => SlipStatus::Pending,
    };
    Ok(SlipRow {
        id: r.get(0)?,
        data: SlipData {
            kind,
            payment_request_id: r.get(1)?,
            copy: r.get(3)?,
            merchant_name: r.get(4)?,
            store_name: r.get(5)?,
            terminal_id: r.get(6)?,
            amount,
            payment_id: r.get(9)?,
            refund_request_id: r.get(10)?,
            local_time,
        },
        status,
        attempts: r.get(13)?,
        last_error: r.get(14)?,
        printer_status: r.get(15)?,
        next_attempt_at: r.get(16)?,
        printed_at: r.get(17)?,
    })
}

/// Adds a slip, due at once, and returns its id. Pass the engine's open transaction (a
/// `&Transaction` derefs to `&Connection`) so the slip commits with the payment's state.
pub fn enqueue(conn: &Connection, slip: &SlipData) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "INSERT INTO print_slips (payment_request_id, kind, copy, merchant_name, store_name, \
         terminal_id, amount_minor, currency, payment_id, refund_request_id, local_time) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        slip.payment_request_id,
        slip.kind.as_str(),
        slip.copy,
        slip.merchant_name,
        slip.store_name,
        slip.terminal_id,
        slip.amount.minor(),
        slip.amount.currency().code(),
        slip.payment_id,
        slip.refund_request_id,
        slip.local_time.format(TIME_FORMAT).to_string(),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One slip by id.
pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<SlipRow>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM print_slips WHERE id = ?1"))?
        .query_row([id], from_row)
        .optional()
}

/// Pending slips due at `now_ms`, oldest first, at most `limit`.
pub fn due(conn: &Connection, now_ms: i64, limit: usize) -> rusqlite::Result<Vec<SlipRow>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM print_slips WHERE status = 'PENDING' AND next_attempt_at <= ?1 \
         ORDER BY id LIMIT ?2"
    ))?
    .query_map(params![now_ms, limit], from_row)?
    .collect()
}

/// Every pending slip, oldest first (for the back office and `/metrics`).
pub fn pending(conn: &Connection) -> rusqlite::Result<Vec<SlipRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM print_slips WHERE status = 'PENDING' ORDER BY id"
    ))?
    .query_map([], from_row)?
    .collect()
}

/// The earliest `next_attempt_at` of a pending slip, if any.
pub fn next_due_at(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT MIN(next_attempt_at) FROM print_slips WHERE status = 'PENDING'")?
        .query_row([], |r| r.get(0))
}

/// Marks a slip printed. Returns false if it was not pending.
pub fn mark_printed(conn: &Connection, id: i64, now_ms: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE print_slips SET status = 'PRINTED', printed_at = ?2, last_error = NULL \
             WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![id, now_ms])?;
    Ok(n == 1)
}

/// Records a failed attempt: the slip stays pending until `next_attempt_at` (unix ms).
pub fn mark_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    printer_status: &str,
    next_attempt_at: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE print_slips SET attempts = attempts + 1, last_error = ?2, \
             printer_status = ?3, next_attempt_at = ?4 WHERE id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![id, error, printer_status, next_attempt_at])?;
    Ok(n == 1)
}

/// Makes every pending slip due now (the printer came back). Returns how many.
pub fn retry_now(conn: &Connection) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE print_slips SET next_attempt_at = 0 WHERE status = 'PENDING' AND next_attempt_at > 0",
    )?
    .execute([])
}

/// The most recent slip of a payment (an original or a copy), if any.
pub fn latest_for_payment(
    conn: &Connection,
    payment_request_id: &str,
) -> rusqlite::Result<Option<SlipRow>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM print_slips WHERE payment_request_id = ?1 ORDER BY id DESC LIMIT 1"
    ))?
    .query_row([payment_request_id], from_row)
    .optional()
}

/// `posd reprint ID` / `POST /v1/payments/{id}/receipt`: enqueues a copy of the payment's
/// latest slip, marked COPY. Returns the new slip's id, or `None` if the payment has no slip.
pub fn reprint(conn: &Connection, payment_request_id: &str) -> rusqlite::Result<Option<i64>> {
    match latest_for_payment(conn, payment_request_id)? {
        None => Ok(None),
        Some(row) => {
            let copy = SlipData {
                copy: true,
                ..row.data
            };
            enqueue(conn, &copy).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::slip::tests::sample;

    /// Runs `f` on the real store (every migration, foreign keys on) holding the sample's
    /// payment, created as the engine creates it.
    fn with_db(f: impl FnOnce(&mut Connection)) {
        let store = crate::store::Store::open_in_memory().unwrap();
        store
            .call_blocking(|c| {
                let s = sample(SlipKind::Sale);
                let new = crate::store::payments::NewPayment {
                    order_ref: None,
                    amount: s.amount,
                    state: crate::domain::machine::State::Paying,
                    code_masked: None,
                    terminal_time: "2026-11-21T14:03:05+08:00".into(),
                    pay_expires_at: None,
                };
                crate::store::payments::create(c, &new, 0, |_| s.payment_request_id.clone())?;
                f(c);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn enqueue_round_trips_and_is_due_at_once() {
        with_db(|c| {
            let s = sample(SlipKind::Sale);
            let id = enqueue(c, &s).unwrap();
            let row = get(c, id).unwrap().unwrap();
            assert_eq!(row.data, s);
            assert_eq!(
                (row.status, row.attempts, row.next_attempt_at),
                (SlipStatus::Pending, 0, 0)
            );
            assert_eq!(due(c, 0, 10).unwrap().len(), 1);
        });
    }

    #[test]
    fn failure_keeps_the_slip_pending_until_due_then_printed_once() {
        with_db(|c| {
            let id = enqueue(c, &sample(SlipKind::Sale)).unwrap();
            assert!(mark_failed(c, id, "printer offline", "OFFLINE", 5_000).unwrap());
            let row = get(c, id).unwrap().unwrap();
            assert_eq!(row.attempts, 1);
            assert_eq!(row.printer_status.as_deref(), Some("OFFLINE"));
            assert!(due(c, 4_999, 10).unwrap().is_empty());
            assert_eq!(pending(c).unwrap().len(), 1);
            assert_eq!(next_due_at(c).unwrap(), Some(5_000));
            assert_eq!(retry_now(c).unwrap(), 1);
            assert_eq!(due(c, 0, 10).unwrap().len(), 1);
            assert!(mark_printed(c, id, 6_000).unwrap());
            assert!(!mark_printed(c, id, 7_000).unwrap(), "printed twice");
            assert!(!mark_failed(c, id, "late", "UNKNOWN", 0).unwrap());
            assert!(pending(c).unwrap().is_empty());
            assert_eq!(get(c, id).unwrap().unwrap().printed_at, Some(6_000));
        });
    }

    #[test]
    fn reprint_copies_the_latest_slip_as_copy() {
        with_db(|c| {
            assert_eq!(reprint(c, "nope").unwrap(), None);
            let sale = sample(SlipKind::Sale);
            let first = enqueue(c, &sale).unwrap();
            mark_printed(c, first, 1).unwrap();
            let refund = SlipData {
                kind: SlipKind::Refund,
                refund_request_id: Some("R1".into()),
                ..sale.clone()
            };
            enqueue(c, &refund).unwrap();
            let copy = reprint(c, &sale.payment_request_id).unwrap().unwrap();
            let row = get(c, copy).unwrap().unwrap();
            assert!(row.data.copy);
            assert_eq!(row.data.kind, SlipKind::Refund);
            assert_eq!(row.status, SlipStatus::Pending);
            assert_eq!(
                latest_for_payment(c, &sale.payment_request_id)
                    .unwrap()
                    .unwrap()
                    .id,
                copy
            );
        });
    }

    #[test]
    fn enqueue_commits_or_rolls_back_with_the_callers_transaction() {
        with_db(|c| {
            let tx = c.savepoint().unwrap();
            enqueue(&tx, &sample(SlipKind::Cancel)).unwrap();
            drop(tx);
            assert!(pending(c).unwrap().is_empty());
            let tx = c.savepoint().unwrap();
            enqueue(&tx, &sample(SlipKind::Cancel)).unwrap();
            tx.commit().unwrap();
            assert_eq!(pending(c).unwrap().len(), 1);
        });
    }
}
