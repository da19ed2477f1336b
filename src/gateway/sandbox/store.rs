//! The sandbox's own SQLite file: its payments and refunds, so a daemon restart mid-payment
//! meets the same gateway state. The schema is created in code (`CREATE TABLE IF NOT
//! EXISTS`) and is separate from the daemon's migrations. Payment codes are never stored:
//! only their last two digits, a masked form and a SHA-256 fingerprint of the key fields.
//!
//! Every operation is one `BEGIN IMMEDIATE` transaction over a single connection behind a
//! mutex, so two requests for one payment never interleave their read-modify-write.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::scenario::{PaymentFacts, Scenario, Status};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_request_id TEXT PRIMARY KEY,
    payment_id         TEXT NOT NULL UNIQUE,
    amount_minor       INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    scenario           TEXT NOT NULL,      -- the code's last two digits
    code_masked        TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,      -- SHA-256 of the key fields, for REPEAT_REQ_INCONSISTENT
    status             TEXT NOT NULL,      -- PROCESSING / SUCCESS / FAIL / CANCELLED
    fail_code          TEXT,
    created_ms         INTEGER NOT NULL,   -- wall clock, scenario 86's outage window
    created_at         TEXT NOT NULL,
    paid_at            TEXT,
    cancelled_at       TEXT,
    inquiry_count      INTEGER NOT NULL DEFAULT 0,
    refunded_minor     INTEGER NOT NULL DEFAULT 0,
    client_id          TEXT NOT NULL,
    notify_url         TEXT
);
CREATE TABLE IF NOT EXISTS refunds (
    refund_request_id  TEXT PRIMARY KEY,
    refund_id          TEXT NOT NULL UNIQUE,
    payment_id         TEXT NOT NULL REFERENCES payments(payment_id),
    amount_minor       INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    refund_time        TEXT NOT NULL
);
";

/// One stored payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// The merchant's idempotency key.
    pub payment_request_id: String,
    /// The sandbox's id for it.
    pub payment_id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// The code with its middle starred.
    pub code_masked: String,
    /// SHA-256 hex of the key fields.
    pub fingerprint: String,
    /// `Client-Id` of the pay request (notifications are sent with it).
    pub client_id: String,
    /// `paymentNotifyUrl` of the pay request.
    pub notify_url: Option<String>,
    /// ISO 8601 creation time.
    pub created_at: String,
    /// ISO 8601 time the payment succeeded.
    pub paid_at: Option<String>,
    /// ISO 8601 time it was cancelled.
    pub cancelled_at: Option<String>,
    /// What the scenario rules read and change.
    pub facts: PaymentFacts,
}

/// One stored (successful) refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    /// The merchant's idempotency key.
    pub refund_request_id: String,
    /// The sandbox's id for it.
    pub refund_id: String,
    /// The payment refunded.
    pub payment_id: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// SHA-256 hex of the key fields.
    pub fingerprint: String,
    /// ISO 8601.
    pub refund_time: String,
}

/// The sandbox database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the file, in WAL mode, with the schema in place.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let conn = Connection::open(path)?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::overrides::SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction; commits when it returns `Ok`.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // A poisoned lock means another request panicked mid-transaction; SQLite rolled that
        // transaction back when it was dropped, so the connection is still consistent.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

const PAYMENT_COLUMNS: &str = "payment_request_id, payment_id, amount_minor, currency, scenario, \
     code_masked, fingerprint, status, fail_code, created_ms, created_at, paid_at, cancelled_at, \
     inquiry_count, refunded_minor, client_id, notify_url";

fn payment_from_row(r: &Row<'_>) -> rusqlite::Result<PaymentRow> {
    let scenario: String = r.get(4)?;
    let status: String = r.get(7)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("stored {what} {v:?} is not valid").into(),
        )
    };
    let scenario = scenario
        .parse::<u8>()
        .ok()
        .filter(|n| *n < 100)
        .map(Scenario::from_digits)
        .ok_or_else(|| bad("scenario", &scenario))?;
    let status = Status::parse(&status).ok_or_else(|| bad("status", &status))?;
    Ok(PaymentRow {
        payment_request_id: r.get(0)?,
        payment_id: r.get(1)?,
        currency: r.get(3)?,
        code_masked: r.get(5)?,
        fingerprint: r.get(6)?,
        created_at: r.get(10)?,
        paid_at: r.get(11)?,
        cancelled_at: r.get(12)?,
        client_id: r.get(15)?,
        notify_url: r.get(16)?,
        facts: PaymentFacts {
            scenario,
            status,
            fail_code: r.get(8)?,
            inquiry_count: r.get(13)?,
            created_ms: r.get(9)?,
            amount_minor: r.get(2)?,
            refunded_minor: r.get(14)?,
        },
    })
}

/// The payment with this `paymentRequestId`.
pub fn payment_by_request_id(c: &Connection, id: &str) -> rusqlite::Result<Option<PaymentRow>> {
    c.query_row(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_request_id = ?1"),
        [id],
        payment_from_row,
    )
    .optional()
}

/// The payment with this `paymentId`.
pub fn payment_by_payment_id(c: &Connection, id: &str) -> rusqlite::Result<Option<PaymentRow>> {
    c.query_row(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = ?1"),
        [id],
        payment_from_row,
    )
    .optional()
}

/// Inserts a new payment.
pub fn insert_payment(
    c: &Connection,
    p: &PaymentRow,
    scenario_digits: &str,
) -> rusqlite::Result<()> {
    c.execute(
        &format!(
            "INSERT INTO payments ({PAYMENT_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        params![
            p.payment_request_id,
            p.payment_id,
            p.facts.amount_minor,
            p.currency,
            scenario_digits,
            p.code_masked,
            p.fingerprint,
            p.facts.status.as_str(),
            p.facts.fail_code,
            p.facts.created_ms,
            p.created_at,
            p.paid_at,
            p.cancelled_at,
            p.facts.inquiry_count,
            p.facts.refunded_minor,
            p.client_id,
            p.notify_url,
        ],
    )?;
    Ok(())
}

/// Writes back the mutable part of a payment.
pub fn update_payment(c: &Connection, p: &PaymentRow) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE payments SET status = ?2, fail_code = ?3, paid_at = ?4, cancelled_at = ?5, \
         inquiry_count = ?6, refunded_minor = ?7 WHERE payment_request_id = ?1",
        params![
            p.payment_request_id,
            p.facts.status.as_str(),
            p.facts.fail_code,
            p.paid_at,
            p.cancelled_at,
            p.facts.inquiry_count,
            p.facts.refunded_minor,
        ],
    )?;
    Ok(())
}

/// The refund with this `refundRequestId`.
pub fn refund_by_request_id(c: &Connection, id: &str) -> rusqlite::Result<Option<RefundRow>> {
    c.query_row(
        "SELECT refund_request_id, refund_id, payment_id, amount_minor, currency, fingerprint, \
         refund_time FROM refunds WHERE refund_request_id = ?1",
        [id],
        |r| {
            Ok(RefundRow {
                refund_request_id: r.get(0)?,
                refund_id: r.get(1)?,
                payment_id: r.get(2)?,
                amount_minor: r.get(3)?,
                currency: r.get(4)?,
                fingerprint: r.get(5)?,
                refund_time: r.get(6)?,
            })
        },
    )
    .optional()
}

/// Inserts a successful refund.
pub fn insert_refund(c: &Connection, r: &RefundRow) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO refunds (refund_request_id, refund_id, payment_id, amount_minor, currency, \
         fingerprint, refund_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            r.refund_request_id,
            r.refund_id,
            r.payment_id,
            r.amount_minor,
            r.currency,
            r.fingerprint,
            r.refund_time,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> PaymentRow {
        PaymentRow {
            payment_request_id: id.into(),
            payment_id: format!("P-{id}"),
            currency: "CNY".into(),
            code_masked: "2812**********3482".into(),
            fingerprint: "ab".into(),
            client_id: "SANDBOX_1".into(),
            notify_url: None,
            created_at: "2026-01-01T00:00:00+00:00".into(),
            paid_at: None,
            cancelled_at: None,
            facts: PaymentFacts {
                scenario: Scenario::SlowSuccess,
                status: Status::Processing,
                fail_code: None,
                inquiry_count: 0,
                created_ms: 5,
                amount_minor: 1234,
                refunded_minor: 0,
            },
        }
    }

    #[test]
    fn payments_and_refunds_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.sqlite3");
        let mut p = row("A");
        {
            let s = Store::open(&path).unwrap();
            s.transaction(|c| insert_payment(c, &p, "82")).unwrap();
            p.facts.inquiry_count = 2;
            p.facts.status = Status::Success;
            p.facts.refunded_minor = 100;
            s.transaction(|c| update_payment(c, &p)).unwrap();
            let r = RefundRow {
                refund_request_id: "R1".into(),
                refund_id: "RF1".into(),
                payment_id: p.payment_id.clone(),
                amount_minor: 100,
                currency: "CNY".into(),
                fingerprint: "cd".into(),
                refund_time: "t".into(),
            };
            s.transaction(|c| insert_refund(c, &r)).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let got = s.transaction(|c| payment_by_request_id(c, "A")).unwrap();
        assert_eq!(got.as_ref(), Some(&p));
        let by_pid = s.transaction(|c| payment_by_payment_id(c, "P-A")).unwrap();
        assert_eq!(by_pid, Some(p));
        let r = s
            .transaction(|c| refund_by_request_id(c, "R1"))
            .unwrap()
            .unwrap();
        assert_eq!(r.amount_minor, 100);
        assert_eq!(
            s.transaction(|c| payment_by_request_id(c, "nope")).unwrap(),
            None
        );
    }

    #[test]
    fn a_failed_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite3")).unwrap();
        let p = row("B");
        let res: rusqlite::Result<()> = s.transaction(|c| {
            insert_payment(c, &p, "82")?;
            insert_payment(c, &p, "82") // duplicate key: the whole transaction rolls back
        });
        assert!(res.is_err());
        assert_eq!(
            s.transaction(|c| payment_by_request_id(c, "B")).unwrap(),
            None
        );
    }
}
