//! `GET /v1/journal?since=…&format=csv|json`: the reconciliation journal, one row per
//! payment and one per refund, and its CSV form (the CLI reuses both).

use axum::extract::{Query, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, TimeZone};
use serde::{Deserialize, Serialize};

use super::wire::rfc3339;
use super::{ApiError, ApiState};
use crate::engine::{local_time, EngineError};
use crate::store::journal::{self, JournalRow};
use crate::store::notifications::{self, NotificationRecord};

/// One row of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalRowJson {
    /// `PAYMENT`, `REFUND`, or `UNKNOWN_NOTIFICATION` (a notification for a payment this
    /// terminal does not know).
    pub record_type: String,
    /// Our `paymentRequestId`.
    pub payment_request_id: String,
    /// The gateway's `paymentId`.
    pub payment_id: Option<String>,
    /// Our `refundRequestId`.
    pub refund_request_id: Option<String>,
    /// The gateway's `refundId`.
    pub refund_id: Option<String>,
    /// The POS's order reference.
    pub order_ref: Option<String>,
    /// `SALE`, `REVERSAL` or `REQUESTED`.
    pub kind: String,
    /// Decimal amount.
    pub amount: String,
    /// ISO 4217.
    pub currency: String,
    /// State of the payment or the refund.
    pub state: String,
    /// Gateway result code.
    pub result_code: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

impl From<&JournalRow> for JournalRowJson {
    fn from(r: &JournalRow) -> Self {
        JournalRowJson {
            record_type: r.record_type.into(),
            payment_request_id: r.payment_request_id.clone(),
            payment_id: r.payment_id.clone(),
            refund_request_id: r.refund_request_id.clone(),
            refund_id: r.refund_id.clone(),
            order_ref: r.order_ref.clone(),
            kind: r.kind.clone(),
            amount: r.amount.to_decimal(),
            currency: r.amount.currency().code().into(),
            state: r.state.clone(),
            result_code: r.result_code.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

impl From<&NotificationRecord> for JournalRowJson {
    /// A notification for a payment this terminal does not know, kept for the back office:
    /// amount and currency exactly as the gateway sent them.
    fn from(n: &NotificationRecord) -> Self {
        JournalRowJson {
            record_type: "UNKNOWN_NOTIFICATION".into(),
            payment_request_id: n.claimed_request_id.clone().unwrap_or_default(),
            payment_id: n.payment_id.clone(),
            refund_request_id: None,
            refund_id: None,
            order_ref: None,
            kind: n
                .notify_type
                .clone()
                .unwrap_or_else(|| "PAYMENT_RESULT".into()),
            amount: n.amount_value.clone().unwrap_or_default(),
            currency: n.currency.clone().unwrap_or_default(),
            state: n.result_status.clone().unwrap_or_default(),
            result_code: n.result_code.clone(),
            created_at: rfc3339(n.received_at),
            updated_at: rfc3339(n.received_at),
        }
    }
}

/// The journal from `since` (epoch ms): payments and refunds, then the notifications for
/// unknown payments received in the period.
pub fn rows_since(c: &rusqlite::Connection, since: i64) -> rusqlite::Result<Vec<JournalRowJson>> {
    let mut rows: Vec<JournalRowJson> = journal::since(c, since)?
        .iter()
        .map(JournalRowJson::from)
        .collect();
    rows.extend(
        notifications::since(c, since, true)?
            .iter()
            .map(JournalRowJson::from),
    );
    Ok(rows)
}

/// `GET /v1/journal?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalJson {
    /// The start of the period, RFC 3339.
    pub since: String,
    /// The rows, in time order.
    pub rows: Vec<JournalRowJson>,
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 13] = [
    "record_type",
    "payment_request_id",
    "payment_id",
    "refund_request_id",
    "refund_id",
    "order_ref",
    "kind",
    "amount",
    "currency",
    "state",
    "result_code",
    "created_at",
    "updated_at",
];

/// Quotes one CSV field (RFC 4180). A free-text field that a spreadsheet would run as a
/// formula (`=`, `+`, `-`, `@`, tab, CR first) gets a leading `'`.
fn field(s: &str, free_text: bool) -> String {
    let guarded;
    let s = if free_text && s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The rows as CSV with a header line, CRLF line ends.
pub fn to_csv(rows: &[JournalRowJson]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for r in rows {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        let cols = [
            field(&r.record_type, false),
            field(&r.payment_request_id, false),
            field(&o(&r.payment_id), false),
            field(&o(&r.refund_request_id), false),
            field(&o(&r.refund_id), false),
            field(&o(&r.order_ref), true),
            field(&r.kind, false),
            field(&r.amount, false),
            field(&r.currency, false),
            field(&r.state, false),
            field(&o(&r.result_code), false),
            field(&r.created_at, false),
            field(&r.updated_at, false),
        ];
        out.push_str(&cols.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Parses `since`: a date (`2026-11-21`, local midnight in the terminal's zone), an RFC 3339
/// time, or nothing (today's local midnight). Returns epoch ms.
pub fn parse_since(
    since: Option<&str>,
    tz: Option<chrono_tz::Tz>,
    now: DateTime<chrono::Utc>,
) -> Result<i64, String> {
    let date = match since.map(str::trim).filter(|s| !s.is_empty()) {
        None => local_time(tz, now).date_naive(),
        Some(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Ok(t.timestamp_millis());
            }
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
                format!("since={s:?}: give a date like 2026-11-21 or a time like 2026-11-21T08:00:00+08:00")
            })?
        }
    };
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    let ms = match tz {
        Some(tz) => tz
            .from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.timestamp_millis()),
        None => chrono::Local
            .from_local_datetime(&midnight)
            .earliest()
            .map(|t| t.timestamp_millis()),
    };
    ms.ok_or_else(|| format!("{date} has no local midnight in the terminal's time zone"))
}

/// The journal routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/v1/journal", get(get_journal))
}

#[derive(Debug, Deserialize)]
struct JournalQuery {
    since: Option<String>,
    format: Option<String>,
}

async fn get_journal(
    AxState(st): AxState<ApiState>,
    Query(jq): Query<JournalQuery>,
) -> Result<Response, ApiError> {
    let since = parse_since(
        jq.since.as_deref(),
        st.engine.settings().timezone,
        chrono::Utc::now(),
    )
    .map_err(|m| ApiError::bad("invalid_since", m))?;
    let csv = match jq.format.as_deref() {
        None | Some("csv") => true,
        Some("json") => false,
        Some(f) => {
            return Err(ApiError::bad(
                "invalid_format",
                format!("format={f:?}: use csv or json"),
            ))
        }
    };
    let rows = st
        .engine
        .store()
        .read(move |c| Ok(rows_since(c, since)?))
        .await
        .map_err(EngineError::Internal)?;
    Ok(if csv {
        (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&rows),
        )
            .into_response()
    } else {
        Json(JournalJson {
            since: rfc3339(since),
            rows,
        })
        .into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting_and_defuses_formulas() {
        assert_eq!(field("plain", true), "plain");
        assert_eq!(field("a,b", false), "\"a,b\"");
        assert_eq!(field("say \"hi\"", false), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines", false), "\"two\nlines\"");
        assert_eq!(
            field("=HYPERLINK(\"x\")", true),
            "\"'=HYPERLINK(\"\"x\"\")\""
        );
        assert_eq!(field("-1", false), "-1");
        let row = JournalRowJson {
            record_type: "PAYMENT".into(),
            payment_request_id: "P1".into(),
            payment_id: None,
            refund_request_id: None,
            refund_id: None,
            order_ref: Some("A,1".into()),
            kind: "SALE".into(),
            amount: "12.34".into(),
            currency: "CNY".into(),
            state: "SUCCEEDED".into(),
            result_code: Some("SUCCESS".into()),
            created_at: "t0".into(),
            updated_at: "t1".into(),
        };
        let csv = to_csv(&[row]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0].split(',').count(), 13);
        assert_eq!(
            lines[1],
            "PAYMENT,P1,,,,\"A,1\",SALE,12.34,CNY,SUCCEEDED,SUCCESS,t0,t1"
        );
    }

    #[test]
    fn since_takes_a_local_date_an_rfc3339_time_or_today() {
        let tz = Some(chrono_tz::Asia::Shanghai);
        let now = DateTime::parse_from_rfc3339("2026-11-21T20:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let day = parse_since(Some("2026-11-21"), tz, now).unwrap();
        assert_eq!(rfc3339(day), "2026-11-20T16:00:00.000Z");
        // 20:00 UTC is already the 22nd in Shanghai.
        assert_eq!(
            rfc3339(parse_since(None, tz, now).unwrap()),
            "2026-11-21T16:00:00.000Z"
        );
        let t = parse_since(Some("2026-11-21T08:00:00+08:00"), tz, now).unwrap();
        assert_eq!(rfc3339(t), "2026-11-21T00:00:00.000Z");
        let e = parse_since(Some("yesterday"), tz, now).unwrap_err();
        assert!(e.contains("2026-11-21"), "{e}");
    }
}
