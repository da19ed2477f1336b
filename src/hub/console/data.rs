//! What the hub console reads from PostgreSQL: today's payments of every terminal (the UTC+8
//! business day, the statement's day), the terminals with when they were last seen, one
//! payment with its journal, refunds and queue items, the queue, and the journal rows of a
//! date range. Read only: every change goes through [`super::queue`] or
//! [`crate::hub::reconcile`].

use chrono::{NaiveDate, TimeZone};
use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;

use crate::api::journal::{business_date, BUSINESS_DAY_OFFSET_SECONDS};
use crate::domain::money::{Amount, Currency};

fn utc8() -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(BUSINESS_DAY_OFFSET_SECONDS).expect("UTC+8")
}

/// Epoch ms as a UTC+8 time, `YYYY-MM-DD HH:MM:SS`.
pub fn show_time(ms: i64) -> String {
    chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&utc8())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Epoch ms of 0:00 UTC+8 of `d`.
pub fn day_start_ms(d: NaiveDate) -> i64 {
    utc8()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

/// Today in UTC+8.
pub fn today() -> NaiveDate {
    chrono::Utc::now().with_timezone(&utc8()).date_naive()
}

/// A minor amount in its currency as a decimal (the raw number when the currency is unknown).
pub fn decimal(minor: i64, currency: &str) -> String {
    Currency::from_code(currency)
        .ok()
        .and_then(|c| Amount::from_minor(minor, c).ok())
        .map(|a| a.to_decimal())
        .unwrap_or_else(|| minor.to_string())
}

/// A payment as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentLine {
    /// paymentRequestId.
    pub payment_request_id: String,
    /// The terminal's client id at the hub.
    pub client_id: String,
    /// Its storeTerminalId.
    pub terminal_id: String,
    /// Its store.
    pub store_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// Hub state.
    pub state: String,
    /// Minor units (`None`: only a cancel was seen).
    pub amount_minor: Option<i64>,
    /// Currency.
    pub currency: Option<String>,
    /// Refunded so far, minor units.
    pub refunded_minor: i64,
    /// The upstream's id.
    pub payment_id: Option<String>,
    /// Why it needs attention.
    pub attention_reason: Option<String>,
    /// The order reference the terminal sent (user text).
    pub order_ref: Option<String>,
    /// When the hub received it, epoch ms.
    pub received_ms: i64,
}

impl PaymentLine {
    /// The amount as a decimal with its currency, or empty.
    pub fn amount(&self) -> String {
        match (self.amount_minor, &self.currency) {
            (Some(m), Some(c)) => format!("{} {c}", decimal(m, c)),
            _ => String::new(),
        }
    }
}

const LINE_COLUMNS: &str = "p.payment_request_id, p.client_id, t.terminal_id, t.store_id, \
     t.merchant_id, p.state, p.amount_minor, p.currency, p.refunded_minor, p.payment_id, \
     p.attention_reason, p.forward_body, (extract(epoch from p.received_at) * 1000)::bigint";

fn order_ref(body: Option<&[u8]>) -> Option<String> {
    let v: Value = serde_json::from_slice(body?).ok()?;
    v.pointer("/order/referenceOrderId")?
        .as_str()
        .map(str::to_string)
}

fn line(r: &tokio_postgres::Row) -> PaymentLine {
    let body: Option<Vec<u8>> = r.get(11);
    PaymentLine {
        payment_request_id: r.get(0),
        client_id: r.get(1),
        terminal_id: r.get(2),
        store_id: r.get(3),
        merchant_id: r.get(4),
        state: r.get(5),
        amount_minor: r.get(6),
        currency: r.get(7),
        refunded_minor: r.get(8),
        payment_id: r.get(9),
        attention_reason: r.get(10),
        order_ref: order_ref(body.as_deref()),
        received_ms: r.get(12),
    }
}

/// Payments received in `[from_ms, until_ms)`, newest first (at most `limit`).
pub async fn payments_between(
    pool: &Pool,
    from_ms: i64,
    until_ms: i64,
    limit: i64,
) -> anyhow::Result<Vec<PaymentLine>> {
    let c = pool.get().await?;
    let rows = c
        .query(
            &format!(
                "SELECT {LINE_COLUMNS} FROM hub_payments p JOIN hub_terminals t ON t.client_id = p.client_id \
                 WHERE p.received_at >= to_timestamp($1::float8) AND p.received_at < to_timestamp($2::float8) \
                 ORDER BY p.received_at DESC LIMIT $3"
            ),
            &[&(from_ms as f64 / 1000.0), &(until_ms as f64 / 1000.0), &limit],
        )
        .await?;
    Ok(rows.iter().map(line).collect())
}

/// Payments in one of `states` (any day), most recently changed first.
pub async fn payments_in(
    pool: &Pool,
    states: &[&str],
    limit: i64,
) -> anyhow::Result<Vec<PaymentLine>> {
    let c = pool.get().await?;
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let rows = c
        .query(
            &format!(
                "SELECT {LINE_COLUMNS} FROM hub_payments p JOIN hub_terminals t ON t.client_id = p.client_id \
                 WHERE p.state = ANY($1) ORDER BY p.updated_at DESC LIMIT $2"
            ),
            &[&states, &limit],
        )
        .await?;
    Ok(rows.iter().map(line).collect())
}

/// One payment.
pub async fn payment(pool: &Pool, id: &str) -> anyhow::Result<Option<PaymentLine>> {
    let c = pool.get().await?;
    let row = c
        .query_opt(
            &format!(
                "SELECT {LINE_COLUMNS} FROM hub_payments p JOIN hub_terminals t ON t.client_id = p.client_id \
                 WHERE p.payment_request_id = $1"
            ),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(line))
}

/// One journal event of a payment.
#[derive(Debug, Clone)]
pub struct EventLine {
    /// When, epoch ms.
    pub at_ms: i64,
    /// The instance that decided.
    pub instance: String,
    /// What.
    pub kind: String,
    /// From state.
    pub from: Option<String>,
    /// To state.
    pub to: Option<String>,
    /// Result code.
    pub result_code: Option<String>,
    /// Detail (may carry operator text).
    pub detail: Option<String>,
}

/// A payment's journal, oldest first.
pub async fn events(pool: &Pool, id: &str) -> anyhow::Result<Vec<EventLine>> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT (extract(epoch from at) * 1000)::bigint, instance, kind, from_state, to_state, \
             result_code, detail FROM hub_events WHERE payment_request_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EventLine {
            at_ms: r.get(0),
            instance: r.get(1),
            kind: r.get(2),
            from: r.get(3),
            to: r.get(4),
            result_code: r.get(5),
            detail: r.get(6),
        })
        .collect())
}

/// A refund as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RefundLine {
    /// refundRequestId.
    pub refund_request_id: String,
    /// Its payment.
    pub payment_request_id: String,
    /// Minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: String,
    /// REFUNDING, REFUNDED, FAILED.
    pub state: String,
    /// terminal | hub.
    pub origin: String,
    /// Result code of a refusal.
    pub result_code: Option<String>,
    /// The terminal's client id.
    pub client_id: String,
    /// When, epoch ms.
    pub created_ms: i64,
}

const REFUND_COLUMNS: &str = "r.refund_request_id, r.payment_request_id, r.amount_minor, \
     r.currency, r.state, r.origin, r.result_code, r.client_id, \
     (extract(epoch from r.created_at) * 1000)::bigint";

fn refund_line(r: &tokio_postgres::Row) -> RefundLine {
    RefundLine {
        refund_request_id: r.get(0),
        payment_request_id: r.get(1),
        amount_minor: r.get(2),
        currency: r.get(3),
        state: r.get(4),
        origin: r.get(5),
        result_code: r.get(6),
        client_id: r.get(7),
        created_ms: r.get(8),
    }
}

/// A payment's refunds.
pub async fn refunds(pool: &Pool, id: &str) -> anyhow::Result<Vec<RefundLine>> {
    let c = pool.get().await?;
    let rows = c
        .query(
            &format!(
                "SELECT {REFUND_COLUMNS} FROM hub_refunds r WHERE r.payment_request_id = $1 ORDER BY r.created_at"
            ),
            &[&id],
        )
        .await?;
    Ok(rows.iter().map(refund_line).collect())
}

/// A queue item as the console lists it.
#[derive(Debug, Clone)]
pub struct QueueLine {
    /// Row id.
    pub id: i64,
    /// cancel | refund.
    pub kind: String,
    /// Its payment.
    pub payment_request_id: String,
    /// Its refund.
    pub refund_request_id: Option<String>,
    /// terminal | active | advice | hub.
    pub origin: String,
    /// PENDING, DONE, DEAD, ABANDONED.
    pub status: String,
    /// Sends so far.
    pub attempts: i32,
    /// The last error, or why it was abandoned.
    pub last_error: Option<String>,
    /// When it was queued, epoch ms.
    pub created_ms: i64,
    /// When it is next due, epoch ms.
    pub next_ms: i64,
}

/// The queue: pending and dead first, then the newest (at most `limit`); `payment` limits it
/// to one payment.
pub async fn queue(
    pool: &Pool,
    payment: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<QueueLine>> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id, kind, payment_request_id, refund_request_id, origin, status, attempts, \
             last_error, (extract(epoch from created_at) * 1000)::bigint, \
             (extract(epoch from next_at) * 1000)::bigint FROM hub_queue \
             WHERE $1::text IS NULL OR payment_request_id = $1 \
             ORDER BY (status IN ('PENDING','DEAD')) DESC, id DESC LIMIT $2",
            &[&payment, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| QueueLine {
            id: r.get(0),
            kind: r.get(1),
            payment_request_id: r.get(2),
            refund_request_id: r.get(3),
            origin: r.get(4),
            status: r.get(5),
            attempts: r.get(6),
            last_error: r.get(7),
            created_ms: r.get(8),
            next_ms: r.get(9),
        })
        .collect())
}

/// A terminal with when it was last seen.
#[derive(Debug, Clone)]
pub struct TerminalLine {
    /// The registry row.
    pub terminal: crate::hub::registry::Terminal,
    /// Its newest payment, epoch ms.
    pub last_seen_ms: Option<i64>,
    /// Payments today (UTC+8).
    pub today: i64,
}

/// Every registered terminal, disabled ones included.
pub async fn terminals(pool: &Pool) -> anyhow::Result<Vec<TerminalLine>> {
    let all = crate::hub::registry::list(pool).await?;
    let c = pool.get().await?;
    let since = day_start_ms(today()) as f64 / 1000.0;
    let rows = c
        .query(
            "SELECT client_id, (extract(epoch from max(received_at)) * 1000)::bigint, \
             count(*) FILTER (WHERE received_at >= to_timestamp($1::float8)) \
             FROM hub_payments GROUP BY client_id",
            &[&since],
        )
        .await?;
    let seen: std::collections::HashMap<String, (Option<i64>, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok(all
        .into_iter()
        .map(|t| {
            let (last, today) = seen.get(&t.client_id).copied().unwrap_or((None, 0));
            TerminalLine {
                terminal: t,
                last_seen_ms: last,
                today,
            }
        })
        .collect())
}

/// One journal row (a payment or a refund) of the download.
#[derive(Debug, Clone, Serialize)]
pub struct JournalRow {
    /// PAYMENT or REFUND.
    pub record_type: &'static str,
    /// The terminal's client id.
    pub client_id: String,
    /// Its storeTerminalId.
    pub terminal_id: String,
    /// Its store.
    pub store_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// paymentRequestId.
    pub payment_request_id: String,
    /// The upstream's paymentId.
    pub payment_id: Option<String>,
    /// refundRequestId, for a refund.
    pub refund_request_id: Option<String>,
    /// Hub state.
    pub state: String,
    /// Minor units.
    pub amount_minor: Option<i64>,
    /// Currency.
    pub currency: Option<String>,
    /// Decimal amount.
    pub amount: String,
    /// The order reference the terminal sent.
    pub order_ref: Option<String>,
    /// When the hub received it (UTC+8).
    pub received_at: String,
    /// The UTC+8 business date (the statement's day).
    pub business_date: String,
}

/// The journal rows of the UTC+8 days `since..=until`.
pub async fn journal(
    pool: &Pool,
    since: NaiveDate,
    until: NaiveDate,
) -> anyhow::Result<Vec<JournalRow>> {
    let from = day_start_ms(since);
    let to = day_start_ms(until + chrono::Duration::days(1));
    let payments = payments_between(pool, from, to, 100_000).await?;
    let c = pool.get().await?;
    let rows = c
        .query(
            &format!(
                "SELECT {REFUND_COLUMNS}, t.terminal_id, t.store_id, t.merchant_id, p.payment_id \
                 FROM hub_refunds r JOIN hub_terminals t ON t.client_id = r.client_id \
                 JOIN hub_payments p ON p.payment_request_id = r.payment_request_id \
                 WHERE r.created_at >= to_timestamp($1::float8) AND r.created_at < to_timestamp($2::float8) \
                 ORDER BY r.created_at"
            ),
            &[&(from as f64 / 1000.0), &(to as f64 / 1000.0)],
        )
        .await?;
    let mut out: Vec<JournalRow> = payments
        .into_iter()
        .rev()
        .map(|p| JournalRow {
            record_type: "PAYMENT",
            amount: p
                .amount_minor
                .zip(p.currency.as_ref())
                .map(|(m, c)| decimal(m, c))
                .unwrap_or_default(),
            received_at: show_time(p.received_ms),
            business_date: business_date(None, p.received_ms).to_string(),
            client_id: p.client_id,
            terminal_id: p.terminal_id,
            store_id: p.store_id,
            merchant_id: p.merchant_id,
            payment_request_id: p.payment_request_id,
            payment_id: p.payment_id,
            refund_request_id: None,
            state: p.state,
            amount_minor: p.amount_minor,
            currency: p.currency,
            order_ref: p.order_ref,
        })
        .collect();
    for r in &rows {
        let x = refund_line(r);
        out.push(JournalRow {
            record_type: "REFUND",
            amount: decimal(x.amount_minor, &x.currency),
            received_at: show_time(x.created_ms),
            business_date: business_date(None, x.created_ms).to_string(),
            client_id: x.client_id,
            terminal_id: r.get(9),
            store_id: r.get(10),
            merchant_id: r.get(11),
            payment_request_id: x.payment_request_id,
            payment_id: r.get(12),
            refund_request_id: Some(x.refund_request_id),
            state: x.state,
            amount_minor: Some(x.amount_minor),
            currency: Some(x.currency),
            order_ref: None,
        });
    }
    Ok(out)
}

/// The journal as CSV (CRLF; free text guarded against spreadsheet formulas).
pub fn journal_csv(rows: &[JournalRow]) -> String {
    fn field(s: &str) -> String {
        let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{s}")
        } else {
            s.to_string()
        };
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    }
    let mut out = String::from(
        "record_type,merchant_id,store_id,terminal_id,client_id,payment_request_id,payment_id,\
         refund_request_id,state,amount_minor,currency,amount,order_ref,received_at,business_date\r\n",
    );
    for r in rows {
        let o = |v: &Option<String>| field(v.as_deref().unwrap_or(""));
        let cols = [
            r.record_type.to_string(),
            field(&r.merchant_id),
            field(&r.store_id),
            field(&r.terminal_id),
            field(&r.client_id),
            field(&r.payment_request_id),
            o(&r.payment_id),
            o(&r.refund_request_id),
            field(&r.state),
            r.amount_minor.map(|m| m.to_string()).unwrap_or_default(),
            o(&r.currency),
            field(&r.amount),
            o(&r.order_ref),
            field(&r.received_at),
            field(&r.business_date),
        ];
        out.push_str(&cols.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(order_ref: &str) -> JournalRow {
        JournalRow {
            record_type: "PAYMENT",
            client_id: "T_A".into(),
            terminal_id: "T0001".into(),
            store_id: "S01".into(),
            merchant_id: "M0001".into(),
            payment_request_id: "P1".into(),
            payment_id: None,
            refund_request_id: None,
            state: "SUCCEEDED".into(),
            amount_minor: Some(1234),
            currency: Some("CNY".into()),
            amount: "12.34".into(),
            order_ref: Some(order_ref.into()),
            received_at: "2026-11-21 10:15:30".into(),
            business_date: "2026-11-21".into(),
        }
    }

    #[test]
    fn the_journal_csv_quotes_and_defuses_user_text() {
        let csv = journal_csv(&[row("=HYPERLINK(\"x\"),1")]);
        let line = csv.lines().nth(1).unwrap();
        assert!(line.contains("\"'=HYPERLINK(\"\"x\"\"),1\""), "{line}");
        assert!(csv.ends_with("\r\n"));
        assert_eq!(csv.lines().next().unwrap().split(',').count(), 15);
    }

    #[test]
    fn business_days_start_at_midnight_utc8() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        // 2026-11-20T16:00:00Z
        assert_eq!(day_start_ms(d), 1_795_190_400_000);
        assert_eq!(show_time(day_start_ms(d)), "2026-11-21 00:00:00");
        assert_eq!(decimal(1234, "CNY"), "12.34");
        assert_eq!(decimal(18000, "KRW"), "18000");
    }
}
