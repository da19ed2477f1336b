//! Refunds as stored: their kind and state with the SQL text of each in one place, and the
//! reads. A refund row is written and settled only by `store::transition` (with its
//! payment's compare-and-set).

use rusqlite::{Connection, OptionalExtension, Row};

use crate::domain::machine::RefundKind;
use crate::domain::money::{Amount, Currency};

impl RefundKind {
    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundKind::Reversal => "REVERSAL",
            RefundKind::Requested => "REQUESTED",
        }
    }

    /// Parses [`RefundKind::as_str`].
    pub fn parse(s: &str) -> Option<RefundKind> {
        [RefundKind::Reversal, RefundKind::Requested]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Where a refund is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundState {
    /// Written, being sent by the payment's task.
    Pending,
    /// In the reversal queue.
    Queued,
    /// Confirmed by the gateway.
    Succeeded,
    /// Refused by the gateway (or its queue item died).
    Failed,
    /// Given up by the back office.
    Abandoned,
}

impl RefundState {
    /// Every state.
    pub const ALL: [RefundState; 5] = [
        RefundState::Pending,
        RefundState::Queued,
        RefundState::Succeeded,
        RefundState::Failed,
        RefundState::Abandoned,
    ];

    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundState::Pending => "PENDING",
            RefundState::Queued => "QUEUED",
            RefundState::Succeeded => "SUCCEEDED",
            RefundState::Failed => "FAILED",
            RefundState::Abandoned => "ABANDONED",
        }
    }

    /// Parses [`RefundState::as_str`].
    pub fn parse(s: &str) -> Option<RefundState> {
        RefundState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Still owed to the customer (counts against what may be refunded).
    pub fn is_open(self) -> bool {
        matches!(self, RefundState::Pending | RefundState::Queued)
    }
}

/// One refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    /// Our id (`refundRequestId`).
    pub refund_request_id: String,
    /// The payment.
    pub payment_request_id: String,
    /// A reversal or a requested refund.
    pub kind: RefundKind,
    /// Amount.
    pub amount: Amount,
    /// Why.
    pub reason: Option<String>,
    /// Where the refund is.
    pub state: RefundState,
    /// Gateway's refund id.
    pub refund_id: Option<String>,
    /// Result code.
    pub result_code: Option<String>,
    /// Created, epoch ms.
    pub created_at: i64,
    /// Updated, epoch ms.
    pub updated_at: i64,
}

fn refund_from_row(r: &Row<'_>) -> rusqlite::Result<RefundRecord> {
    let currency: String = r.get(4)?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, what.into())
    };
    let cur = Currency::from_code(&currency).map_err(|e| bad(e.to_string()))?;
    Ok(RefundRecord {
        refund_request_id: r.get(0)?,
        payment_request_id: r.get(1)?,
        kind: {
            let k: String = r.get(2)?;
            RefundKind::parse(&k).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    format!("unknown refund kind {k}").into(),
                )
            })?
        },
        amount: Amount::from_minor(r.get(3)?, cur).map_err(|e| bad(e.to_string()))?,
        reason: r.get(5)?,
        state: {
            let st: String = r.get(6)?;
            RefundState::parse(&st).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    rusqlite::types::Type::Text,
                    format!("unknown refund state {st}").into(),
                )
            })?
        },
        refund_id: r.get(7)?,
        result_code: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

const REFUND_COLUMNS: &str =
    "refund_request_id, payment_request_id, kind, amount_minor, currency, \
    reason, state, refund_id, result_code, created_at, updated_at";

/// One refund.
pub fn get_refund(conn: &Connection, id: &str) -> rusqlite::Result<Option<RefundRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE refund_request_id = ?1"
    ))?
    .query_row([id], refund_from_row)
    .optional()
}

/// Refunds of a payment, oldest first.
pub fn refunds_of(
    conn: &Connection,
    payment_request_id: &str,
) -> rusqlite::Result<Vec<RefundRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_request_id = ?1 ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([payment_request_id], refund_from_row)?;
    rows.collect()
}

/// Refunds created at or after `since`.
pub fn refunds_since(conn: &Connection, since: i64) -> rusqlite::Result<Vec<RefundRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE created_at >= ?1 ORDER BY created_at"
    ))?;
    let rows = stmt.query_map([since], refund_from_row)?;
    rows.collect()
}

/// The sum of a payment's refunds still on their way (pending or queued), minor units.
pub fn open_sum(conn: &Connection, payment_request_id: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT ifnull(sum(amount_minor), 0) FROM refunds \
         WHERE payment_request_id = ?1 AND state IN ('PENDING','QUEUED')",
        [payment_request_id],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_their_sql_text() {
        for k in [RefundKind::Reversal, RefundKind::Requested] {
            assert_eq!(RefundKind::parse(k.as_str()), Some(k));
        }
        for st in RefundState::ALL {
            assert_eq!(RefundState::parse(st.as_str()), Some(st));
        }
        assert_eq!(RefundState::parse("queued"), None);
        // The open states are exactly the ones `open_sum` counts.
        let open: Vec<_> = RefundState::ALL
            .into_iter()
            .filter(|s| s.is_open())
            .map(RefundState::as_str)
            .collect();
        assert_eq!(open, ["PENDING", "QUEUED"]);
    }
}
