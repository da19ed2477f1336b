//! The reconciliation journal: one row per payment and one per refund, the file an accountant
//! checks against the gateway's statement (`posd journal`, `GET /v1/journal`), and the reads
//! `posd reconcile` matches a statement with.

use rusqlite::{Connection, OptionalExtension, Row};

use crate::domain::money::{Amount, Currency};
use crate::store::notifications::{self, NotificationRecord};

/// One row of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    /// `PAYMENT` or `REFUND`.
    pub record_type: &'static str,
    /// Our `paymentRequestId`.
    pub payment_request_id: String,
    /// The gateway's `paymentId`.
    pub payment_id: Option<String>,
    /// Our `refundRequestId` (refund rows).
    pub refund_request_id: Option<String>,
    /// The gateway's `refundId` (refund rows).
    pub refund_id: Option<String>,
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// `SALE`, or the refund's kind (`REVERSAL`, `REQUESTED`).
    pub kind: String,
    /// Amount of the sale or of the refund.
    pub amount: Amount,
    /// The payment's or the refund's state.
    pub state: String,
    /// The last gateway result code that decided something.
    pub result_code: Option<String>,
    /// The gateway's `paymentTime` (payment rows) or `refundTime` (refund rows), as sent.
    pub gateway_time: Option<String>,
    /// Whether the payment was ever SUCCEEDED (for a refund row: its payment).
    pub ever_succeeded: bool,
    /// Why a human must act (payment rows in NEEDS_ATTENTION).
    pub attention_reason: Option<String>,
    /// Created, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

fn amount(r: &Row<'_>, minor: usize, currency: usize) -> rusqlite::Result<Amount> {
    let code: String = r.get(currency)?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(
            currency,
            rusqlite::types::Type::Text,
            what.into(),
        )
    };
    let c = Currency::from_code(&code).map_err(|e| bad(e.to_string()))?;
    Amount::from_minor(r.get(minor)?, c).map_err(|e| bad(e.to_string()))
}

const PAYMENT_SELECT: &str = "SELECT p.payment_request_id, p.payment_id, p.order_ref, \
     p.amount_minor, p.currency, p.state, p.result_code, p.gateway_time, \
     EXISTS (SELECT 1 FROM payment_events e WHERE e.payment_request_id = p.payment_request_id \
             AND e.to_state = 'SUCCEEDED'), \
     p.attention_reason, p.created_at, p.updated_at FROM payments p";

fn payment_row(r: &Row<'_>) -> rusqlite::Result<JournalRow> {
    Ok(JournalRow {
        record_type: "PAYMENT",
        payment_request_id: r.get(0)?,
        payment_id: r.get(1)?,
        refund_request_id: None,
        refund_id: None,
        order_ref: r.get(2)?,
        kind: "SALE".into(),
        amount: amount(r, 3, 4)?,
        state: r.get(5)?,
        result_code: r.get(6)?,
        gateway_time: r.get(7)?,
        ever_succeeded: r.get(8)?,
        attention_reason: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

const REFUND_SELECT: &str = "SELECT r.payment_request_id, p.payment_id, r.refund_request_id, \
     r.refund_id, p.order_ref, r.kind, r.amount_minor, r.currency, r.state, r.result_code, \
     r.gateway_time, r.created_at, r.updated_at \
     FROM refunds r JOIN payments p ON p.payment_request_id = r.payment_request_id";

fn refund_row(r: &Row<'_>) -> rusqlite::Result<JournalRow> {
    Ok(JournalRow {
        record_type: "REFUND",
        payment_request_id: r.get(0)?,
        payment_id: r.get(1)?,
        refund_request_id: r.get(2)?,
        refund_id: r.get(3)?,
        order_ref: r.get(4)?,
        kind: r.get(5)?,
        amount: amount(r, 6, 7)?,
        state: r.get(8)?,
        result_code: r.get(9)?,
        gateway_time: r.get(10)?,
        ever_succeeded: true,
        attention_reason: None,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

/// Every payment and refund created or changed at or after `since` (epoch ms), in time order
/// (a sale from yesterday whose reversal the queue confirmed today is in today's file).
pub fn since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<JournalRow>> {
    between(conn, since, i64::MAX)
}

/// Every payment and refund created or changed in `[from, until)` (epoch ms), in time order.
pub fn between(conn: &Connection, from: i64, until: i64) -> rusqlite::Result<Vec<JournalRow>> {
    let mut rows = Vec::new();
    let mut stmt = conn.prepare_cached(&format!(
        "{PAYMENT_SELECT} WHERE (p.created_at >= ?1 AND p.created_at < ?2) \
         OR (p.updated_at >= ?1 AND p.updated_at < ?2)"
    ))?;
    for row in stmt.query_map([from, until], payment_row)? {
        rows.push(row?);
    }
    let mut stmt = conn.prepare_cached(&format!(
        "{REFUND_SELECT} WHERE (r.created_at >= ?1 AND r.created_at < ?2) \
         OR (r.updated_at >= ?1 AND r.updated_at < ?2)"
    ))?;
    for row in stmt.query_map([from, until], refund_row)? {
        rows.push(row?);
    }
    rows.sort_by(|a, b| {
        (a.created_at, a.record_type, &a.payment_request_id).cmp(&(
            b.created_at,
            b.record_type,
            &b.payment_request_id,
        ))
    });
    Ok(rows)
}

/// The journal from `since` (epoch ms) and the notifications for payments this terminal does
/// not know received in the period (the back office must see those too).
pub fn with_unknown_notifications(
    conn: &Connection,
    since: i64,
    until: i64,
) -> rusqlite::Result<(Vec<JournalRow>, Vec<NotificationRecord>)> {
    let rows = between(conn, since, until)?;
    let notes = notifications::since(conn, since, true)?
        .into_iter()
        .filter(|n| n.received_at < until)
        .collect();
    Ok((rows, notes))
}

/// The journal row of one payment, by our id.
pub fn payment(
    conn: &Connection,
    payment_request_id: &str,
) -> rusqlite::Result<Option<JournalRow>> {
    conn.prepare_cached(&format!("{PAYMENT_SELECT} WHERE p.payment_request_id = ?1"))?
        .query_row([payment_request_id], payment_row)
        .optional()
}

/// The journal row of one payment, by the gateway's `paymentId`.
pub fn payment_by_gateway_id(
    conn: &Connection,
    payment_id: &str,
) -> rusqlite::Result<Option<JournalRow>> {
    conn.prepare_cached(&format!("{PAYMENT_SELECT} WHERE p.payment_id = ?1"))?
        .query_row([payment_id], payment_row)
        .optional()
}

/// The journal row of one refund, by our id.
pub fn refund(conn: &Connection, refund_request_id: &str) -> rusqlite::Result<Option<JournalRow>> {
    conn.prepare_cached(&format!("{REFUND_SELECT} WHERE r.refund_request_id = ?1"))?
        .query_row([refund_request_id], refund_row)
        .optional()
}

/// The journal rows of every refund of a payment, oldest first.
pub fn refunds_of(
    conn: &Connection,
    payment_request_id: &str,
) -> rusqlite::Result<Vec<JournalRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{REFUND_SELECT} WHERE r.payment_request_id = ?1 ORDER BY r.created_at"
    ))?;
    let rows = stmt.query_map([payment_request_id], refund_row)?;
    rows.collect()
}

/// The queue item that still owes a reversal (cancel or refund) of the payment, if any.
pub fn open_reversal(conn: &Connection, payment_request_id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM reversal_queue WHERE payment_request_id = ?1 AND status = 'PENDING' \
         ORDER BY id LIMIT 1",
    )?
    .query_row([payment_request_id], |r| r.get(0))
    .optional()
}

/// The journal rows of the payments in `state`, most recently changed first (the console's
/// NEEDS_ATTENTION list and open payments).
pub fn payments_in_state(
    conn: &Connection,
    state: &str,
    limit: i64,
) -> rusqlite::Result<Vec<JournalRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{PAYMENT_SELECT} WHERE p.state = ?1 ORDER BY p.updated_at DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(rusqlite::params![state, limit], payment_row)?;
    rows.collect()
}

/// A journal row with the queue item still owing its payment's reversal (reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    /// The row.
    pub row: JournalRow,
    /// For payment rows: the pending queue item that owes its reversal.
    pub open_reversal: Option<i64>,
}

/// What reconciling a statement reads: every row created or changed in `[from, until)`, and
/// every payment or refund named by one of `request_ids` (ours) or `gateway_ids` (the
/// gateway's `paymentId`s). Rows may repeat; the caller keys them by id.
pub fn for_statement(
    conn: &Connection,
    from: i64,
    until: i64,
    request_ids: &[String],
    gateway_ids: &[String],
) -> rusqlite::Result<Vec<LedgerRow>> {
    let mut rows = if from < until {
        between(conn, from, until)?
    } else {
        Vec::new()
    };
    for id in request_ids {
        rows.extend(payment(conn, id)?);
        rows.extend(refund(conn, id)?);
    }
    for id in gateway_ids {
        rows.extend(payment_by_gateway_id(conn, id)?);
    }
    rows.into_iter()
        .map(|row| {
            let open_reversal = if row.record_type == "PAYMENT" {
                open_reversal(conn, &row.payment_request_id)?
            } else {
                None
            };
            Ok(LedgerRow { row, open_reversal })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::machine::State;
    use crate::store::payments::{self, Change, NewPayment};
    use crate::store::Store;

    #[test]
    fn rows_carry_the_gateway_time_and_whether_the_sale_ever_succeeded() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let cny = Currency::from_code("CNY").unwrap();
            let new = NewPayment {
                order_ref: Some("A-1".into()),
                amount: Amount::from_minor(1234, cny).unwrap(),
                state: State::Paying,
                code_masked: None,
                terminal_time: "2026-11-21T10:15:30+08:00".into(),
                pay_expires_at: None,
            };
            payments::create(c, &new, 1_000, |q| format!("id{q}"))?;
            let paid = Change {
                to: Some(State::Succeeded),
                cause: "pay succeeded".into(),
                payment_id: Some("G1".into()),
                gateway_time: Some("2026-11-21T10:15:31+08:00".into()),
                ..Default::default()
            };
            payments::apply(c, "id1", State::Paying, &paid, 2_000)?.unwrap();
            // A later answer never overwrites the first time the gateway gave.
            let again = Change {
                to: Some(State::Succeeded),
                cause: "late".into(),
                gateway_time: Some("2099-01-01T00:00:00+08:00".into()),
                ..Default::default()
            };
            payments::apply(c, "id1", State::Succeeded, &again, 3_000)?.unwrap();
            let row = payment(c, "id1")?.unwrap();
            assert_eq!(
                row.gateway_time.as_deref(),
                Some("2026-11-21T10:15:31+08:00")
            );
            assert!(row.ever_succeeded);
            assert_eq!(
                payment_by_gateway_id(c, "G1")?.unwrap().payment_request_id,
                "id1"
            );
            assert_eq!(between(c, 0, 500)?.len(), 0);
            assert_eq!(between(c, 0, 5_000)?.len(), 1);
            assert!(open_reversal(c, "id1")?.is_none());
            Ok(())
        })
        .unwrap();
    }
}
