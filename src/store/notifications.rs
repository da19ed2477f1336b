//! Received notifyPayment messages: each verified notification is recorded in the same
//! transaction as the state change it causes (or does not cause), so the ACK the gateway gets
//! always stands for a durable outcome. Also the read-only figures that health checks and
//! metrics need (database ping, reversal-queue depth).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::payments::{self, Change, PaymentRecord};
use crate::domain::machine::State;

/// A verified notification, as received.
#[derive(Debug, Clone, Default)]
pub struct NewNotification {
    /// `paymentRequestId` as the notification states it.
    pub claimed_request_id: Option<String>,
    /// `paymentId`.
    pub payment_id: Option<String>,
    /// `notifyType`.
    pub notify_type: Option<String>,
    /// `result.resultStatus`.
    pub result_status: Option<String>,
    /// `result.resultCode`.
    pub result_code: Option<String>,
    /// `paymentAmount.value`, verbatim.
    pub amount_value: Option<String>,
    /// `paymentAmount.currency`.
    pub currency: Option<String>,
    /// The `request-time` header.
    pub request_time: String,
    /// SHA-256 of the raw body, lowercase hex.
    pub body_sha256: String,
    /// The raw body (UTF-8; it was parsed as JSON).
    pub body: String,
}

/// What a notification did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It moved the payment.
    Applied,
    /// The payment was final or being cancelled: nothing changed (a cancel stays owed).
    Ignored,
    /// The same body was recorded before: nothing changed.
    Duplicate,
    /// No such payment here: kept for the back office.
    UnknownPayment,
    /// `PAYMENT_PENDING`, or a result that is neither S nor F: nothing changed.
    Pending,
}

impl Outcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "APPLIED",
            Outcome::Ignored => "IGNORED",
            Outcome::Duplicate => "DUPLICATE",
            Outcome::UnknownPayment => "UNKNOWN_PAYMENT",
            Outcome::Pending => "PENDING",
        }
    }
}

/// What [`record`] wrote.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Row id in `notifications`.
    pub id: i64,
    /// What it did.
    pub outcome: Outcome,
    /// The payment after the notification (when known).
    pub payment: Option<PaymentRecord>,
    /// Its state before.
    pub state_before: Option<State>,
}

/// How [`record`] treats a known payment.
pub enum Decide<'a> {
    /// Change nothing (a pending notification).
    Nothing,
    /// Ask `f` with the current payment: `Some(change)` applies it with compare-and-set.
    With(&'a mut dyn FnMut(&PaymentRecord) -> Option<Change>),
}

/// Records a verified notification and its effect in one `BEGIN IMMEDIATE` transaction: the
/// duplicate check, the read of the payment, the compare-and-set and the `notifications` row
/// commit together or not at all (rule 5: it cannot interleave with an inquiry's commit).
pub fn record(
    conn: &mut Connection,
    n: &NewNotification,
    mut decide: Decide<'_>,
    now: i64,
) -> rusqlite::Result<Recorded> {
    let tx = conn.savepoint()?;
    let duplicate: bool = tx
        .prepare_cached("SELECT 1 FROM notifications WHERE body_sha256 = ?1 LIMIT 1")?
        .query_row([&n.body_sha256], |_| Ok(()))
        .optional()?
        .is_some();
    let payment = match &n.claimed_request_id {
        Some(id) => payments::get(&tx, id)?,
        None => None,
    };
    let state_before = payment.as_ref().map(|p| p.state);
    let (outcome, after) = match (&payment, &mut decide) {
        (None, _) => (Outcome::UnknownPayment, None),
        (Some(p), _) if duplicate => (Outcome::Duplicate, Some(p.clone())),
        (Some(p), Decide::Nothing) => (Outcome::Pending, Some(p.clone())),
        (Some(p), Decide::With(f)) => match f(p) {
            None => (Outcome::Ignored, Some(p.clone())),
            Some(change) => {
                match payments::apply_in(&tx, &p.payment_request_id, p.state, &change, now)? {
                    Some(new) => (Outcome::Applied, Some(new)),
                    // BEGIN IMMEDIATE holds the write lock since before the read, so the
                    // state cannot have moved; fail rather than record something untrue.
                    None => return Err(rusqlite::Error::QueryReturnedNoRows),
                }
            }
        },
    };
    tx.execute(
        "INSERT INTO notifications (received_at, payment_request_id, claimed_request_id, payment_id, \
         notify_type, result_status, result_code, amount_value, currency, request_time, \
         body_sha256, body, outcome, state_before, state_after) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)",
        params![
            now,
            payment.as_ref().map(|p| p.payment_request_id.as_str()),
            n.claimed_request_id,
            n.payment_id,
            n.notify_type,
            n.result_status,
            n.result_code,
            n.amount_value,
            n.currency,
            n.request_time,
            n.body_sha256,
            n.body,
            outcome.as_str(),
            state_before.map(State::as_str),
            after.as_ref().map(|p| p.state.as_str()),
        ],
    )?;
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(Recorded {
        id,
        outcome,
        payment: after,
        state_before,
    })
}

/// One stored notification, for the back office.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// Row id.
    pub id: i64,
    /// Epoch ms.
    pub received_at: i64,
    /// The matched payment, or `None` for an unknown one.
    pub payment_request_id: Option<String>,
    /// The id the notification named.
    pub claimed_request_id: Option<String>,
    /// `paymentId`.
    pub payment_id: Option<String>,
    /// `notifyType`.
    pub notify_type: Option<String>,
    /// `result.resultStatus`.
    pub result_status: Option<String>,
    /// `result.resultCode`.
    pub result_code: Option<String>,
    /// `paymentAmount.value`.
    pub amount_value: Option<String>,
    /// `paymentAmount.currency`.
    pub currency: Option<String>,
    /// `APPLIED`, `IGNORED`, `DUPLICATE`, `UNKNOWN_PAYMENT` or `PENDING`.
    pub outcome: String,
    /// State before.
    pub state_before: Option<String>,
    /// State after.
    pub state_after: Option<String>,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<NotificationRecord> {
    Ok(NotificationRecord {
        id: r.get(0)?,
        received_at: r.get(1)?,
        payment_request_id: r.get(2)?,
        claimed_request_id: r.get(3)?,
        payment_id: r.get(4)?,
        notify_type: r.get(5)?,
        result_status: r.get(6)?,
        result_code: r.get(7)?,
        amount_value: r.get(8)?,
        currency: r.get(9)?,
        outcome: r.get(10)?,
        state_before: r.get(11)?,
        state_after: r.get(12)?,
    })
}

const COLUMNS: &str = "id, received_at, payment_request_id, claimed_request_id, payment_id, \
    notify_type, result_status, result_code, amount_value, currency, outcome, state_before, \
    state_after";

/// Notifications received at or after `since` (epoch ms), oldest first; `unknown_only` keeps
/// those for payments this terminal does not know (the back office's work list).
pub fn since(
    conn: &Connection,
    since: i64,
    unknown_only: bool,
) -> rusqlite::Result<Vec<NotificationRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE received_at >= ?1 \
         AND (?2 = 0 OR outcome = 'UNKNOWN_PAYMENT') ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![since, unknown_only], from_row)?;
    rows.collect()
}

/// Notifications about one payment, oldest first.
pub fn of_payment(conn: &Connection, id: &str) -> rusqlite::Result<Vec<NotificationRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE payment_request_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([id], from_row)?;
    rows.collect()
}

/// The cheapest query that proves the database answers.
pub fn ping(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}

/// Pending reversals: how many, and when the oldest was queued (epoch ms).
pub fn queue_pending(conn: &Connection) -> rusqlite::Result<(i64, Option<i64>)> {
    conn.query_row(
        "SELECT count(*), min(created_at) FROM reversal_queue WHERE status = 'PENDING'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::{Amount, Currency};
    use crate::store::payments::NewPayment;
    use crate::store::Store;

    fn payment(c: &mut Connection, state: State) -> String {
        let cny = Currency::from_code("CNY").unwrap();
        payments::create(
            c,
            &NewPayment {
                order_ref: None,
                amount: Amount::from_minor(1234, cny).unwrap(),
                state,
                code_masked: None,
                terminal_time: "2026-11-21T10:15:30+08:00".into(),
                pay_expires_at: None,
            },
            1,
            |seq| format!("P{seq}"),
        )
        .unwrap()
        .payment_request_id
    }

    fn note(id: &str, body: &str) -> NewNotification {
        NewNotification {
            claimed_request_id: Some(id.into()),
            request_time: "t".into(),
            body_sha256: format!("{:x}", sha2::Sha256::digest(body.as_bytes())),
            body: body.into(),
            ..Default::default()
        }
    }

    use sha2::Digest;

    #[test]
    fn records_applies_and_spots_duplicates() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let id = payment(c, State::Inquiring);
            let mut to_success = |_: &PaymentRecord| {
                Some(Change {
                    to: Some(State::Succeeded),
                    cause: "notification: paid".into(),
                    payment_id: Some("G1".into()),
                    ..Default::default()
                })
            };
            let r = record(c, &note(&id, "{a}"), Decide::With(&mut to_success), 5)?;
            assert_eq!(r.outcome, Outcome::Applied);
            assert_eq!(r.state_before, Some(State::Inquiring));
            let p = r.payment.unwrap();
            assert_eq!(
                (p.state, p.payment_id.as_deref()),
                (State::Succeeded, Some("G1"))
            );
            // The same body again: recorded as a duplicate, nothing asked, nothing changed.
            let mut never = |_: &PaymentRecord| -> Option<Change> { panic!("not asked") };
            let r2 = record(c, &note(&id, "{a}"), Decide::With(&mut never), 6)?;
            assert_eq!(r2.outcome, Outcome::Duplicate);
            let rows = of_payment(c, &id)?;
            assert_eq!(rows.len(), 2);
            assert_eq!(rows[0].state_after.as_deref(), Some("SUCCEEDED"));
            assert_eq!(payments::events(c, &id)?.len(), 2);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn unknown_payments_are_kept_for_the_back_office() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            let r = record(c, &note("NOPE", "{b}"), Decide::Nothing, 7)?;
            assert_eq!(r.outcome, Outcome::UnknownPayment);
            assert!(r.payment.is_none());
            let listed = since(c, 0, true)?;
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].claimed_request_id.as_deref(), Some("NOPE"));
            assert_eq!(listed[0].payment_request_id, None);
            assert!(since(c, 8, false)?.is_empty());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn queue_figures_and_ping() {
        let s = Store::open_in_memory().unwrap();
        s.call_blocking(|c| {
            ping(c)?;
            assert_eq!(queue_pending(c)?, (0, None));
            for (at, status) in [(100, "PENDING"), (50, "DONE"), (200, "PENDING")] {
                let id = payment(c, State::CancelQueued);
                c.execute(
                    "INSERT INTO reversal_queue (kind, payment_request_id, payload_version, \
                     payload, status, next_attempt_at, created_at, updated_at) \
                     VALUES ('CANCEL', ?1, 1, '{}', ?2, 0, ?3, ?3)",
                    params![id, status, at],
                )?;
            }
            // The DONE row is older but does not count.
            assert_eq!(queue_pending(c)?, (2, Some(100)));
            Ok(())
        })
        .unwrap();
    }
}
