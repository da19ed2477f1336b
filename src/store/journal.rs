//! The reconciliation journal: one row per payment and one per refund, the file an accountant
//! checks against the gateway's statement (`posd journal`, `GET /v1/journal`).

use rusqlite::{Connection, Row};

use crate::domain::money::{Amount, Currency};

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

/// Every payment and refund created or changed at or after `since` (epoch ms), in time order
/// (a sale from yesterday whose reversal the queue confirmed today is in today's file).
pub fn since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<JournalRow>> {
    let mut rows = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT payment_request_id, payment_id, order_ref, amount_minor, currency, state, \
         result_code, created_at, updated_at FROM payments \
         WHERE created_at >= ?1 OR updated_at >= ?1",
    )?;
    for row in stmt.query_map([since], |r| {
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
            created_at: r.get(7)?,
            updated_at: r.get(8)?,
        })
    })? {
        rows.push(row?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT r.payment_request_id, p.payment_id, r.refund_request_id, r.refund_id, p.order_ref, \
         r.kind, r.amount_minor, r.currency, r.state, r.result_code, r.created_at, r.updated_at \
         FROM refunds r JOIN payments p ON p.payment_request_id = r.payment_request_id \
         WHERE r.created_at >= ?1 OR r.updated_at >= ?1",
    )?;
    for row in stmt.query_map([since], |r| {
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
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
        })
    })? {
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
