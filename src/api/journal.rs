//! `GET /v1/journal?since=…&until=…&format=csv|json`: the reconciliation journal, one row per
//! payment and one per refund, and its CSV form (the CLI and the console reuse both).

use axum::extract::{Query, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, TimeZone};
use serde::{Deserialize, Serialize};

use super::wire::rfc3339;
use super::ApiError;
use crate::engine::{local_time, EngineError};
use crate::store::journal::{self, JournalRow};
use crate::store::notifications::NotificationRecord;

/// The gateway's statement days run 0:00–23:59:59 in UTC+8, whatever the terminal's zone.
pub const BUSINESS_DAY_OFFSET_SECONDS: i32 = 8 * 3600;

/// Who wrote the journal: stamped on every row, so the hub and the gateway's
/// `referenceStoreId` can be matched.
#[derive(Debug, Clone)]
pub struct JournalIdentity {
    /// `[terminal] id`.
    pub terminal_id: String,
    /// `[terminal] store_id` (sent to the gateway as `referenceStoreId`).
    pub store_id: String,
    /// The terminal's zone for local times; `None` = system local.
    pub timezone: Option<crate::config::Tz>,
}

/// The statement's business date (UTC+8) of a time given by the gateway (ISO 8601 with an
/// offset), or of an epoch-ms time when the gateway gave none.
pub fn business_date(gateway_time: Option<&str>, fallback_ms: i64) -> NaiveDate {
    let utc8 = chrono::FixedOffset::east_opt(BUSINESS_DAY_OFFSET_SECONDS).expect("UTC+8");
    if let Some(t) = gateway_time.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        return t.with_timezone(&utc8).date_naive();
    }
    chrono::Utc
        .timestamp_millis_opt(fallback_ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&utc8)
        .date_naive()
}

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
    /// The terminal that wrote the row.
    #[serde(default)]
    pub terminal_id: String,
    /// Its store (`referenceStoreId`).
    #[serde(default)]
    pub store_id: String,
    /// The amount in minor units.
    #[serde(default)]
    pub amount_minor: i64,
    /// The currency's exponent (2 for CNY, 0 for KRW).
    #[serde(default)]
    pub currency_exponent: u8,
    /// The gateway's `paymentTime` / `refundTime`, as it sent it.
    #[serde(default)]
    pub gateway_time: Option<String>,
    /// When the row was created, in the terminal's zone with its offset.
    #[serde(default)]
    pub local_time: String,
    /// The gateway statement's day (UTC+8) this row belongs to.
    #[serde(default)]
    pub business_date: String,
    /// Whether the payment was ever SUCCEEDED (a reversal of a paid sale shows at the gateway
    /// as a PAYMENT and a CANCEL; a cancel of a never-paid one shows nothing).
    #[serde(default)]
    pub ever_succeeded: bool,
}

impl JournalRowJson {
    /// A journal row as the outside sees it, stamped with the terminal's identity.
    pub fn new(r: &JournalRow, who: &JournalIdentity) -> Self {
        JournalRowJson {
            terminal_id: who.terminal_id.clone(),
            store_id: who.store_id.clone(),
            amount_minor: r.amount.minor(),
            currency_exponent: r.amount.currency().exponent(),
            gateway_time: r.gateway_time.clone(),
            local_time: local_time(
                who.timezone,
                chrono::Utc
                    .timestamp_millis_opt(r.created_at)
                    .single()
                    .unwrap_or_default(),
            )
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            business_date: business_date(r.gateway_time.as_deref(), r.created_at).to_string(),
            ever_succeeded: r.ever_succeeded,
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

impl JournalRowJson {
    /// A notification for a payment this terminal does not know, kept for the back office:
    /// amount and currency exactly as the gateway sent them.
    pub fn unknown_notification(n: &NotificationRecord, who: &JournalIdentity) -> Self {
        JournalRowJson {
            terminal_id: who.terminal_id.clone(),
            store_id: who.store_id.clone(),
            amount_minor: 0,
            currency_exponent: 0,
            gateway_time: None,
            local_time: local_time(
                who.timezone,
                chrono::Utc
                    .timestamp_millis_opt(n.received_at)
                    .single()
                    .unwrap_or_default(),
            )
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            business_date: business_date(None, n.received_at).to_string(),
            ever_succeeded: false,
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

/// The journal in `[since, until)` (epoch ms): payments and refunds, then the notifications
/// for unknown payments received in the period.
pub fn rows(
    rows: &[JournalRow],
    notes: &[NotificationRecord],
    who: &JournalIdentity,
) -> Vec<JournalRowJson> {
    let mut out: Vec<JournalRowJson> = rows.iter().map(|r| JournalRowJson::new(r, who)).collect();
    out.extend(
        notes
            .iter()
            .map(|n| JournalRowJson::unknown_notification(n, who)),
    );
    out
}

/// Reads the journal of `[since, until)` from the store.
pub async fn load(
    store: &crate::store::Store,
    who: &JournalIdentity,
    since: i64,
    until: i64,
) -> anyhow::Result<Vec<JournalRowJson>> {
    let (r, n) = store
        .read(move |c| Ok(journal::with_unknown_notifications(c, since, until)?))
        .await?;
    Ok(rows(&r, &n, who))
}

/// `GET /v1/journal?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalJson {
    /// The start of the period, RFC 3339.
    pub since: String,
    /// The end of the period (exclusive), RFC 3339; absent = up to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The rows, in time order.
    pub rows: Vec<JournalRowJson>,
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 21] = [
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
    "terminal_id",
    "store_id",
    "amount_minor",
    "currency_exponent",
    "gateway_time",
    "local_time",
    "business_date",
    "ever_succeeded",
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
            field(&r.terminal_id, false),
            field(&r.store_id, false),
            r.amount_minor.to_string(),
            r.currency_exponent.to_string(),
            field(&o(&r.gateway_time), false),
            field(&r.local_time, false),
            field(&r.business_date, false),
            r.ever_succeeded.to_string(),
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
    tz: Option<crate::config::Tz>,
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
    local_midnight(date, tz)
}

/// Parses `until`: a date (the whole day is included: up to the next local midnight), an
/// RFC 3339 time (exclusive), or nothing (no end). Returns epoch ms.
pub fn parse_until(until: Option<&str>, tz: Option<crate::config::Tz>) -> Result<i64, String> {
    let Some(s) = until.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(i64::MAX);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        format!("until={s:?}: give a date like 2026-11-21 (included) or a time like 2026-11-22T00:00:00+08:00")
    })?;
    let next = date
        .succ_opt()
        .ok_or_else(|| format!("until={s:?} is too far in the future"))?;
    local_midnight(next, tz)
}

fn local_midnight(date: NaiveDate, tz: Option<crate::config::Tz>) -> Result<i64, String> {
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

/// Journal output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFormat {
    /// RFC 4180 CSV.
    Csv,
    /// One JSON object.
    Json,
}

impl JournalFormat {
    /// Parses `format=` (absent = CSV).
    pub fn parse(f: Option<&str>) -> Result<JournalFormat, String> {
        match f {
            None | Some("csv") => Ok(JournalFormat::Csv),
            Some("json") => Ok(JournalFormat::Json),
            Some(f) => Err(format!("format={f:?}: use csv or json")),
        }
    }
}

/// The journal of a period as an HTTP answer (the API and the console's download).
pub async fn answer(
    engine: &crate::engine::Engine,
    who: &JournalIdentity,
    since: Option<&str>,
    until: Option<&str>,
    format: Option<&str>,
    attachment: bool,
) -> Result<Response, ApiError> {
    let tz = who.timezone;
    let since_ms = parse_since(since, tz, chrono::Utc::now())
        .map_err(|m| ApiError::bad("invalid_since", m))?;
    let until_ms = parse_until(until, tz).map_err(|m| ApiError::bad("invalid_until", m))?;
    if until_ms <= since_ms {
        return Err(ApiError::bad(
            "invalid_until",
            "until must be after since; give until as the last day to include",
        ));
    }
    let fmt = JournalFormat::parse(format).map_err(|m| ApiError::bad("invalid_format", m))?;
    let rows = load(engine.store(), who, since_ms, until_ms)
        .await
        .map_err(EngineError::Internal)?;
    let name = format!(
        "journal_{}_{}.{}",
        who.terminal_id,
        rfc3339(since_ms).get(..10).unwrap_or("start"),
        if fmt == JournalFormat::Csv {
            "csv"
        } else {
            "json"
        }
    );
    let mut resp = match fmt {
        JournalFormat::Csv => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&rows),
        )
            .into_response(),
        JournalFormat::Json => Json(JournalJson {
            since: rfc3339(since_ms),
            until: (until_ms != i64::MAX).then(|| rfc3339(until_ms)),
            rows,
        })
        .into_response(),
    };
    if attachment {
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(resp)
}

/// The journal routes.
pub fn routes() -> Router<crate::backoffice::BackOffice> {
    Router::new().route("/v1/journal", get(get_journal))
}

#[derive(Debug, Deserialize)]
struct JournalQuery {
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

async fn get_journal(
    AxState(bo): AxState<crate::backoffice::BackOffice>,
    Query(jq): Query<JournalQuery>,
) -> Result<Response, ApiError> {
    answer(
        bo.engine(),
        bo.identity(),
        jq.since.as_deref(),
        jq.until.as_deref(),
        jq.format.as_deref(),
        false,
    )
    .await
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
            terminal_id: "T1".into(),
            store_id: "S1".into(),
            amount_minor: 1234,
            currency_exponent: 2,
            gateway_time: None,
            local_time: "l".into(),
            business_date: "2026-11-21".into(),
            ever_succeeded: true,
        };
        let csv = to_csv(&[row]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines[0].split(',').count(), 21);
        assert_eq!(
            lines[1],
            "PAYMENT,P1,,,,\"A,1\",SALE,12.34,CNY,SUCCEEDED,SUCCESS,t0,t1,T1,S1,1234,2,,l,2026-11-21,true"
        );
    }

    #[test]
    fn since_takes_a_local_date_an_rfc3339_time_or_today() {
        let tz = Some(crate::config::Tz::named("Asia/Shanghai").unwrap());
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
        // A date as `until` includes the whole day.
        assert_eq!(
            rfc3339(parse_until(Some("2026-11-21"), tz).unwrap()),
            "2026-11-21T16:00:00.000Z"
        );
        assert_eq!(parse_until(None, tz).unwrap(), i64::MAX);
        assert!(parse_until(Some("soon"), tz).is_err());
    }

    #[test]
    fn the_business_date_is_the_gateway_day_in_utc_plus_8() {
        // 23:30 in Berlin is already the next morning in UTC+8.
        assert_eq!(
            business_date(Some("2026-11-21T23:30:00+01:00"), 0).to_string(),
            "2026-11-22"
        );
        // Without a gateway time: the epoch-ms fallback, also in UTC+8.
        let ms = DateTime::parse_from_rfc3339("2026-11-21T15:59:59Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(business_date(None, ms).to_string(), "2026-11-21");
        assert_eq!(
            business_date(Some("garbage"), ms + 1000).to_string(),
            "2026-11-22"
        );
    }
}
