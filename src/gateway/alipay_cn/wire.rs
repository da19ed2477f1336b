//! The mainland wire: the five `alipay.trade.*` methods, their common parameters and
//! `biz_content`, the form body, and the answer objects as the gateway sends them.
//!
//! Every parameter goes in the `application/x-www-form-urlencoded` POST body, none in the URL
//! (`biz_content` carries the payment code), and an empty value is never sent (the official
//! SDKs disagree on whether empty values are signed).

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::money::Amount;

/// The production gateway.
pub const PRODUCTION_URL: &str = "https://openapi.alipay.com/gateway.do";

/// The methods a terminal calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `alipay.trade.pay` (scene `bar_code`).
    Pay,
    /// `alipay.trade.query`.
    Query,
    /// `alipay.trade.cancel`.
    Cancel,
    /// `alipay.trade.refund`.
    Refund,
    /// `alipay.trade.fastpay.refund.query`.
    RefundQuery,
}

impl Method {
    /// All of them.
    pub const ALL: [Method; 5] = [
        Method::Pay,
        Method::Query,
        Method::Cancel,
        Method::Refund,
        Method::RefundQuery,
    ];

    /// The `method` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Method::Pay => "alipay.trade.pay",
            Method::Query => "alipay.trade.query",
            Method::Cancel => "alipay.trade.cancel",
            Method::Refund => "alipay.trade.refund",
            Method::RefundQuery => "alipay.trade.fastpay.refund.query",
        }
    }

    /// The method for a `method` parameter.
    pub fn from_name(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The answer's key: dots become underscores, plus `_response`.
    pub fn response_key(self) -> String {
        format!("{}_response", self.name().replace('.', "_"))
    }

    /// Name for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Method::Pay => "pay",
            Method::Query => "query",
            Method::Cancel => "cancel",
            Method::Refund => "refund",
            Method::RefundQuery => "refund_query",
        }
    }
}

/// `timestamp`: `yyyy-MM-dd HH:mm:ss` in UTC+8 (the gateway's zone) whatever the terminal's.
pub fn timestamp(now: DateTime<Utc>) -> String {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    now.with_timezone(&beijing)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// An amount in yuan with exactly two decimals (`total_amount`, `refund_amount`). `None` for
/// a currency other than CNY: the mainland gateway settles in yuan only.
pub fn yuan(amount: &Amount) -> Option<String> {
    (amount.currency().code() == "CNY").then(|| amount.to_decimal())
}

/// Whether `s` may be an `out_trade_no` / `out_request_no`: 1–64 letters, digits, `_`.
pub fn is_trade_no(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A `subject` the gateway takes: `/ = &` removed (it refuses them), at most 256 characters,
/// never empty.
pub fn clean_subject(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| !matches!(c, '/' | '=' | '&'))
        .take(256)
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "POS sale".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The parameters of one call, in the order added; empty values are dropped on insert.
#[derive(Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // biz_content may hold the clear payment code: list the keys only.
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Params {
    /// Adds `k=v` unless `v` is empty.
    pub fn push(&mut self, k: &str, v: impl Into<String>) {
        let v = v.into();
        if !v.is_empty() {
            self.0.push((k.to_string(), v));
        }
    }

    /// Adds `k=v` when there is a non-empty `v`.
    pub fn push_opt(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.push(k, v);
        }
    }

    /// The value of `k`.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// `(key, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The form body, UTF-8, percent-encoded (`application/x-www-form-urlencoded`).
    pub fn form_body(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.iter() {
            s.append_pair(k, v);
        }
        s.finish()
    }

    /// Parses a form body; `None` when a key repeats (the gateway's signature would cover an
    /// ambiguous set).
    pub fn parse_form(body: &[u8]) -> Option<Params> {
        let mut p = Params::default();
        for (k, v) in url::form_urlencoded::parse(body) {
            if p.0.iter().any(|(seen, _)| *seen == k) {
                return None;
            }
            p.0.push((k.into_owned(), v.into_owned()));
        }
        Some(p)
    }
}

/// The common parameters every call carries (`sign` is added after signing).
#[derive(Debug, Clone)]
pub struct Common<'a> {
    /// `app_id`.
    pub app_id: &'a str,
    /// `notify_url` (pay only).
    pub notify_url: Option<&'a str>,
    /// `app_auth_token` (ISV).
    pub app_auth_token: Option<&'a str>,
    /// `timestamp`, already in UTC+8.
    pub timestamp: &'a str,
}

/// The unsigned parameters of a call: the common ones plus `biz_content`.
pub fn params(method: Method, common: &Common<'_>, biz_content: &str) -> Params {
    let mut p = Params::default();
    p.push("app_id", common.app_id);
    p.push("method", method.name());
    p.push("format", "JSON");
    p.push("charset", "utf-8");
    p.push("sign_type", "RSA2");
    p.push("timestamp", common.timestamp);
    p.push("version", "1.0");
    if method == Method::Pay {
        p.push_opt("notify_url", common.notify_url);
    }
    p.push_opt("app_auth_token", common.app_auth_token);
    p.push("biz_content", biz_content);
    p
}

/// `alipay.trade.pay` biz_content (bar code). Holds the clear code: never log it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PayBiz {
    /// Our paymentRequestId.
    pub out_trade_no: String,
    /// `bar_code`.
    pub scene: String,
    /// The payment code.
    pub auth_code: String,
    /// Yuan, two decimals.
    pub total_amount: String,
    /// Without `/ = &`.
    pub subject: String,
    /// `FACE_TO_FACE_PAYMENT`.
    pub product_code: String,
    /// Merchant-defined store id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// Merchant-defined terminal id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_id: Option<String>,
    /// How long the trade stays open, e.g. `3m` (sent only without `time_expire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_express: Option<String>,
    /// The absolute time after which the gateway must not process the pay,
    /// `yyyy-MM-dd HH:mm:ss` UTC+8 (wins over `timeout_express`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_expire: Option<String>,
}

/// Parses a `yyyy-MM-dd HH:mm:ss` UTC+8 time into milliseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    let beijing = FixedOffset::east_opt(8 * 3600)?;
    Some(
        naive
            .and_local_timezone(beijing)
            .single()?
            .timestamp_millis(),
    )
}

impl std::fmt::Debug for PayBiz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayBiz")
            .field("out_trade_no", &self.out_trade_no)
            .field("auth_code", &crate::domain::code::mask(&self.auth_code))
            .field("total_amount", &self.total_amount)
            .finish_non_exhaustive()
    }
}

/// biz_content of query and cancel: by `out_trade_no`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TradeBiz {
    /// Our paymentRequestId.
    #[serde(default)]
    pub out_trade_no: Option<String>,
    /// The gateway's id (the sandbox also accepts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
}

/// `alipay.trade.refund` biz_content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefundBiz {
    /// The payment's paymentRequestId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    /// The gateway's trade id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
    /// Yuan, two decimals.
    pub refund_amount: String,
    /// Our refundRequestId: the idempotency key of this refund.
    pub out_request_no: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_reason: Option<String>,
}

/// `alipay.trade.fastpay.refund.query` biz_content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefundQueryBiz {
    /// The payment's paymentRequestId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    /// The gateway's trade id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
    /// Our refundRequestId.
    pub out_request_no: String,
}

/// The fields of every answer object this client reads (one struct: the methods share them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// `10000` success, `10003` waiting for the buyer, `20000` unknown, `4000x` failure.
    pub code: String,
    /// Text of `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// The business reason, e.g. `ACQ.TRADE_NOT_EXIST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_code: Option<String>,
    /// Text of `sub_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_msg: Option<String>,
    /// The gateway's trade id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_no: Option<String>,
    /// Our paymentRequestId, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_trade_no: Option<String>,
    /// Yuan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_amount: Option<String>,
    /// Pay: when the buyer paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmt_payment: Option<String>,
    /// Query: `WAIT_BUYER_PAY`, `TRADE_SUCCESS`, `TRADE_FINISHED`, `TRADE_CLOSED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trade_status: Option<String>,
    /// Query: when the payment was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_pay_date: Option<String>,
    /// Cancel: `close` (never charged) or `refund` (charged, refunded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Cancel: `Y` to resend the identical cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_flag: Option<String>,
    /// Refund: `Y` when this call moved money.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fund_change: Option<String>,
    /// Refund: cumulative refunded amount, yuan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_fee: Option<String>,
    /// Refund: when it was paid back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gmt_refund_pay: Option<String>,
    /// Refund query: our refundRequestId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_request_no: Option<String>,
    /// Refund query: this refund's amount, yuan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_amount: Option<String>,
    /// Refund query: `REFUND_SUCCESS`; absent when the refund was not received or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamp_is_beijing_time_whatever_the_zone() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 20, 30, 5).unwrap();
        assert_eq!(timestamp(t), "2026-01-02 04:30:05");
        assert_eq!(
            parse_timestamp("2026-01-02 04:30:05"),
            Some(t.timestamp_millis())
        );
        assert_eq!(parse_timestamp("2026-01-02T04:30:05Z"), None);
    }

    #[test]
    fn method_names_and_response_keys() {
        assert_eq!(
            Method::RefundQuery.response_key(),
            "alipay_trade_fastpay_refund_query_response"
        );
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("alipay.trade.create"), None);
    }

    #[test]
    fn trade_numbers_and_subjects() {
        assert!(is_trade_no("T1_0001_abc"));
        assert!(!is_trade_no("T1-0001"));
        assert!(!is_trade_no(""));
        assert!(!is_trade_no(&"a".repeat(65)));
        assert_eq!(clean_subject("a/b=c&d"), "abcd");
        assert_eq!(clean_subject(" /=& "), "POS sale");
    }

    #[test]
    fn empty_values_are_never_sent_and_the_form_round_trips() {
        let common = Common {
            app_id: "2021",
            notify_url: Some(""),
            app_auth_token: None,
            timestamp: "2026-01-02 04:30:05",
        };
        let p = params(Method::Pay, &common, r#"{"subject":"a b+c&d"}"#);
        assert_eq!(p.get("notify_url"), None);
        let body = p.form_body();
        assert!(body.contains("timestamp=2026-01-02+04%3A30%3A05"), "{body}");
        let back = Params::parse_form(body.as_bytes()).unwrap();
        assert_eq!(back.get("biz_content"), Some(r#"{"subject":"a b+c&d"}"#));
        assert!(Params::parse_form(b"a=1&a=2").is_none());
    }
}
