//! The sandbox's second dialect: the mainland `alipay.trade.*` gateway (`POST /gateway.do`,
//! a signed form in, `{"<method>_response":{…},"sign":"…"}` out) over the same scenario rules
//! and the same store as the AMS face, so every row plays out the same way in both dialects.
//!
//! | row | pay | query `trade_status` | cancel |
//! |---|---|---|---|
//! | 00–79 | `10000` | `TRADE_SUCCESS` | `10000` `action=refund` |
//! | 80 / 81 / 89 | `40004` `ACQ.BUYER_BALANCE_NOT_ENOUGH` / `ACQ.PAYMENT_AUTH_CODE_INVALID` / `ACQ.PAYMENT_FAIL` | `ACQ.TRADE_NOT_EXIST` | `10000` `action=close` |
//! | 82 | `10003` | `WAIT_BUYER_PAY` twice, then `TRADE_SUCCESS` | — |
//! | 83 | `10003` | `WAIT_BUYER_PAY` | `10000` `action=close` |
//! | 84 | no answer (charged) | `TRADE_SUCCESS` | — |
//! | 85 | no answer (no charge) | no answer | `10000` `action=close` |
//! | 86 | `10003` | `WAIT_BUYER_PAY` | no answer for the outage, then `10000` |
//! | 87 | `10003` | `WAIT_BUYER_PAY` | `40004` `ACQ.TRADE_CANCEL_TIME_OUT`; refunds work |
//! | 88 | `10000` with a wrong `sign` | `TRADE_SUCCESS` | — |
//!
//! A repeated pay answers the trade as it stands (`40004 ACQ.TRADE_HAS_SUCCESS` once paid).
//! A request whose signature does not verify gets the gateway's unsigned `error_response`.
//! A trade that becomes paid (at the pay or at a query) is notified to the pay's loopback
//! `notify_url` as a signed `trade_status_sync` form, resent until the answer is `success`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::ops::Op;
use super::scenario::{
    self, CancelAnswer, InquiryAnswer, PayAnswer, PaymentFacts, Scenario, Status,
};
use super::server::App;
use super::store::{self, PaymentRow, RefundRow, Store};
use crate::domain::code::mask;
use crate::gateway::alipay_cn::sign::{sign_content, sign_rsa2, verify_rsa2};
use crate::gateway::alipay_cn::wire::{
    self, Method, Params, PayBiz, RefundBiz, RefundQueryBiz, TradeBiz,
};

/// The path the mainland face listens on.
pub const PATH: &str = "/gateway.do";

/// A `trade_status_sync` notification that became due: a form POST to the pay's `notify_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CnNotify {
    /// The pay's `notify_url`.
    pub url: String,
    /// The fields, `sign` and `sign_type` not yet added.
    pub fields: Vec<(String, String)>,
}

/// The notification of a trade that just became paid.
fn paid_notification(row: &PaymentRow, now: &CnNow) -> Option<CnNotify> {
    let url = row.notify_url.clone()?;
    let f = |k: &str, v: String| (k.to_string(), v);
    Some(CnNotify {
        url,
        fields: vec![
            f("notify_time", now.text.clone()),
            f("notify_type", "trade_status_sync".into()),
            f("notify_id", format!("{}{}", now.ms, row.payment_id)),
            f("app_id", row.client_id.clone()),
            f("charset", "utf-8".into()),
            f("version", "1.0".into()),
            f("trade_no", row.payment_id.clone()),
            f("out_trade_no", row.payment_request_id.clone()),
            f("trade_status", "TRADE_SUCCESS".into()),
            f("total_amount", yuan(row.facts.amount_minor)),
            f("receipt_amount", yuan(row.facts.amount_minor)),
            f("gmt_create", row.created_at.clone()),
            f(
                "gmt_payment",
                row.paid_at.clone().unwrap_or_else(|| now.text.clone()),
            ),
        ],
    })
}

/// Signs and delivers a notification (loopback only), resending until the merchant answers
/// exactly `success`, like the AMS face.
pub async fn deliver(
    job: CnNotify,
    key: Arc<crate::gateway::sign::PrivateKey>,
    http: reqwest::Client,
    counters: Arc<super::Counters>,
    token: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let Some(url) = super::notify::loopback_url(&job.url) else {
        tracing::warn!(
            "sandbox (mainland): notify_url is not a loopback URL; no notification sent"
        );
        return;
    };
    let content = sign_content(
        job.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &["sign", "sign_type"],
        true,
    );
    let body = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &job.fields {
            form.append_pair(k, v);
        }
        form.append_pair("sign", &sign_rsa2(&key, &content));
        form.append_pair("sign_type", "RSA2");
        form.finish()
    };
    let mut backoff = super::notify::FIRST_BACKOFF;
    for attempt in 1..=super::notify::ATTEMPTS {
        counters.notifications.fetch_add(1, Ordering::Relaxed);
        let sent = http
            .post(url.clone())
            .timeout(super::notify::SEND_TIMEOUT)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body.clone())
            .send();
        let acked = tokio::select! {
            _ = token.cancelled() => return,
            r = sent => match r {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    ok && resp.bytes().await.is_ok_and(|b| b.as_ref() == b"success")
                }
                Err(_) => false,
            },
        };
        if acked {
            counters.notifications_acked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if attempt < super::notify::ATTEMPTS {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff *= 2;
        }
    }
    tracing::warn!("sandbox (mainland): notification never acknowledged; giving up");
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub enum CnReply {
    /// The `<method>_response` object, signed (well or, for row 88, wrongly).
    Answer {
        /// The answer object.
        object: Value,
        /// Sign it over other bytes so it does not verify.
        wrong_sign: bool,
    },
    /// Hold the request open.
    NoAnswer,
}

fn ok(mut fields: Map<String, Value>) -> CnReply {
    let mut object = Map::new();
    object.insert("code".into(), json!("10000"));
    object.insert("msg".into(), json!("Success"));
    object.append(&mut fields);
    CnReply::Answer {
        object: Value::Object(object),
        wrong_sign: false,
    }
}

fn business_failure(sub_code: &str, extra: Map<String, Value>) -> CnReply {
    let mut object = Map::new();
    object.insert("code".into(), json!("40004"));
    object.insert("msg".into(), json!("Business Failed"));
    object.insert("sub_code".into(), json!(sub_code));
    object.insert("sub_msg".into(), json!(sub_message(sub_code)));
    let mut extra = extra;
    object.append(&mut extra);
    CnReply::Answer {
        object: Value::Object(object),
        wrong_sign: false,
    }
}

fn invalid(detail: &str) -> CnReply {
    let mut m = Map::new();
    m.insert(
        "sub_msg".into(),
        json!(format!("参数无效 (invalid parameter): {detail}")),
    );
    let mut r = business_failure("ACQ.INVALID_PARAMETER", Map::new());
    if let CnReply::Answer { object, .. } = &mut r {
        object["sub_msg"] = m["sub_msg"].clone();
    }
    r
}

fn fields(pairs: &[(&str, Option<String>)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), json!(v))))
        .collect()
}

/// The text of a sub code.
pub fn sub_message(sub_code: &str) -> &'static str {
    match sub_code {
        "ACQ.BUYER_BALANCE_NOT_ENOUGH" => "买家余额不足 (buyer balance not enough)",
        "ACQ.PAYMENT_AUTH_CODE_INVALID" => "付款码无效，请顾客刷新付款码 (payment code invalid)",
        "ACQ.PAYMENT_FAIL" => "支付失败 (rejected by risk control)",
        "ACQ.TRADE_HAS_SUCCESS" => "交易已被支付 (trade already paid)",
        "ACQ.TRADE_HAS_CLOSE" => "交易已经关闭 (trade closed)",
        "ACQ.TRADE_NOT_EXIST" => "交易不存在 (trade does not exist)",
        "ACQ.TRADE_CANCEL_TIME_OUT" => "超过撤销时间范围，请发起退款 (too late to cancel: refund)",
        "ACQ.TRADE_STATUS_ERROR" => "交易状态不合法 (trade status invalid for this call)",
        "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL" => "退款金额超限 (refund exceeds what is left)",
        "ACQ.TRADE_HAS_EXIST" => {
            "交易号重复，请求内容不同 (repeated out_trade_no with other content)"
        }
        _ => "处理失败 (failed)",
    }
}

/// The mainland sub code for a rule's failure code.
fn sub_code_for(code: &str) -> &'static str {
    match code {
        "USER_BALANCE_NOT_ENOUGH" => "ACQ.BUYER_BALANCE_NOT_ENOUGH",
        "EXPIRED_CODE" => "ACQ.PAYMENT_AUTH_CODE_INVALID",
        "RISK_REJECT" => "ACQ.PAYMENT_FAIL",
        "ORDER_IS_CLOSED" => "ACQ.TRADE_HAS_CLOSE",
        "ORDER_NOT_EXIST" => "ACQ.TRADE_NOT_EXIST",
        "CANCEL_WINDOW_EXCEED" => "ACQ.TRADE_CANCEL_TIME_OUT",
        "ORDER_STATUS_INVALID" => "ACQ.TRADE_STATUS_ERROR",
        "REFUND_AMOUNT_EXCEED" => "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
        "REPEAT_REQ_INCONSISTENT" => "ACQ.TRADE_HAS_EXIST",
        "PARAM_ILLEGAL" => "ACQ.INVALID_PARAMETER",
        _ => "ACQ.SYSTEM_ERROR",
    }
}

/// Yuan with exactly two decimals, as minor units.
fn parse_yuan(s: &str) -> Option<i64> {
    let (int, frac) = s.split_once('.')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (int.len() > 1 && int.starts_with('0')) || frac.len() != 2 || !digits(frac) {
        return None;
    }
    format!("{int}{frac}").parse().ok()
}

fn yuan(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn trade_no(now_ms: i64) -> String {
    use rand::Rng;
    format!(
        "{now_ms}{:010}",
        rand::thread_rng().gen_range(0..10_000_000_000u64)
    )
}

fn biz<T: serde::de::DeserializeOwned>(p: &Params) -> Result<T, CnReply> {
    let text = p
        .get("biz_content")
        .ok_or_else(|| invalid("biz_content is required"))?;
    serde_json::from_str(text).map_err(|e| invalid(&format!("biz_content: {e}")))
}

/// The wall clock as the rules (ms) and the mainland wire (`yyyy-MM-dd HH:mm:ss` UTC+8) want it.
#[derive(Debug, Clone)]
pub struct CnNow {
    /// Milliseconds since the epoch.
    pub ms: i64,
    /// Beijing time text.
    pub text: String,
}

impl CnNow {
    /// Now.
    pub fn current() -> CnNow {
        let t = Utc::now();
        CnNow {
            ms: t.timestamp_millis(),
            text: wire::timestamp(t),
        }
    }
}

thread_local! {
    /// Notifications that became due during the call running on this thread (collected by
    /// [`run`]; a rolled-back transaction's are dropped with its error).
    static DUE: std::cell::RefCell<Vec<CnNotify>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn pending_notify(n: CnNotify) {
    DUE.with(|d| d.borrow_mut().push(n));
}

/// Runs one verified call against the store; returns the answer and the notifications due.
pub fn run(
    store: &Store,
    method: Method,
    p: &Params,
    now: &CnNow,
    outage: std::time::Duration,
) -> rusqlite::Result<(CnReply, Vec<CnNotify>)> {
    DUE.with(|d| d.borrow_mut().clear());
    let reply = run_inner(store, method, p, now, outage);
    let due = DUE.with(|d| std::mem::take(&mut *d.borrow_mut()));
    Ok((reply?, due))
}

fn run_inner(
    store: &Store,
    method: Method,
    p: &Params,
    now: &CnNow,
    outage: std::time::Duration,
) -> rusqlite::Result<CnReply> {
    let app_id = p.get("app_id").unwrap_or("");
    match method {
        Method::Pay => match biz::<PayBiz>(p) {
            Ok(b) => pay(store, b, app_id, p.get("notify_url"), now),
            Err(r) => Ok(r),
        },
        Method::Query => match biz::<TradeBiz>(p) {
            Ok(b) => query(store, b, now),
            Err(r) => Ok(r),
        },
        Method::Cancel => match biz::<TradeBiz>(p) {
            Ok(b) => cancel(store, b, now, outage),
            Err(r) => Ok(r),
        },
        Method::Refund => match biz::<RefundBiz>(p) {
            Ok(b) => refund(store, b, now),
            Err(r) => Ok(r),
        },
        Method::RefundQuery => match biz::<RefundQueryBiz>(p) {
            Ok(b) => refund_query(store, b),
            Err(r) => Ok(r),
        },
    }
}

fn pay_fields(row: &PaymentRow) -> Map<String, Value> {
    fields(&[
        ("out_trade_no", Some(row.payment_request_id.clone())),
        ("trade_no", Some(row.payment_id.clone())),
        ("total_amount", Some(yuan(row.facts.amount_minor))),
        ("buyer_logon_id", Some("sbx***@sandbox".into())),
        ("gmt_payment", row.paid_at.clone()),
    ])
}

fn pay(
    store: &Store,
    b: PayBiz,
    app_id: &str,
    notify_url: Option<&str>,
    now: &CnNow,
) -> rusqlite::Result<CnReply> {
    if !wire::is_trade_no(&b.out_trade_no) {
        return Ok(invalid(
            "out_trade_no must be 1-64 letters, digits or underscores",
        ));
    }
    if b.scene != "bar_code" || b.product_code != "FACE_TO_FACE_PAYMENT" {
        return Ok(invalid(
            "scene must be bar_code and product_code FACE_TO_FACE_PAYMENT",
        ));
    }
    if b.subject.is_empty() || b.subject.contains(['/', '=', '&']) {
        return Ok(invalid("subject is required and must not contain / = &"));
    }
    let Some(minor) = parse_yuan(&b.total_amount).filter(|m| *m > 0) else {
        return Ok(invalid(
            "total_amount must be yuan with exactly two decimals",
        ));
    };
    let code = b.auth_code.trim();
    if code.is_empty() || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Ok(invalid("auth_code must be digits"));
    }
    let (Some(digits), Some(scen)) = (scenario::last_two_digits(code), Scenario::from_code(code))
    else {
        return Ok(invalid("auth_code is too short"));
    };
    // A pay that reaches the gateway after its time_expire is not processed.
    let expiry = match b.time_expire.as_deref() {
        None => None,
        Some(t) => match wire::parse_timestamp(t) {
            Some(ms) => Some(ms),
            None => return Ok(invalid("time_expire must be yyyy-MM-dd HH:mm:ss")),
        },
    };
    let fingerprint = sha256_hex(&["alipay_cn", &b.total_amount, code]);
    store.transaction(|c| {
        let (row, reply) = match store::payment_by_request_id(c, &b.out_trade_no)? {
            Some(row) if row.fingerprint != fingerprint => {
                return Ok(business_failure("ACQ.TRADE_HAS_EXIST", Map::new()));
            }
            Some(row) => {
                let reply = scenario::repeat_pay(&row.facts);
                return Ok(pay_reply(&row, &reply, true));
            }
            None if expiry.is_some_and(|at| now.ms > at) => {
                tracing::warn!(out_trade_no = %b.out_trade_no, "sandbox (mainland): pay arrived after its time_expire; not processed");
                return Ok(business_failure("ACQ.TRADE_HAS_CLOSE", Map::new()));
            }
            None => {
                // A sticky override or a delayed outcome replaces the code's own row.
                let (scen, digits, approve_at) =
                    super::overrides::pick(c, scen, digits, now.ms)?;
                let digits = digits.as_str();
                let (status, fail_code, reply) = scenario::first_pay(scen);
                let row = PaymentRow {
                    payment_request_id: b.out_trade_no.clone(),
                    payment_id: trade_no(now.ms),
                    currency: "CNY".into(),
                    code_masked: mask(code),
                    fingerprint: fingerprint.clone(),
                    client_id: app_id.to_string(),
                    notify_url: notify_url.map(str::to_string),
                    created_at: now.text.clone(),
                    paid_at: (status == Status::Success).then(|| now.text.clone()),
                    cancelled_at: None,
                    facts: PaymentFacts {
                        scenario: scen,
                        status,
                        fail_code: fail_code.map(str::to_string),
                        inquiry_count: 0,
                        created_ms: now.ms,
                        amount_minor: minor,
                        refunded_minor: 0,
                    },
                };
                store::insert_payment(c, &row, digits)?;
                if let Some(at) = approve_at {
                    super::overrides::record_delay(c, &row.payment_request_id, at)?;
                }
                tracing::info!(
                    out_trade_no = %row.payment_request_id,
                    code = %row.code_masked,
                    scenario = digits,
                    status = status.as_str(),
                    "sandbox (mainland): new trade"
                );
                (row, reply)
            }
        };
        if row.facts.status == Status::Success {
            if let Some(n) = paid_notification(&row, now) {
                pending_notify(n);
            }
        }
        Ok(pay_reply(&row, &reply, false))
    })
}

fn pay_reply(row: &PaymentRow, reply: &PayAnswer, repeat: bool) -> CnReply {
    match reply {
        PayAnswer::NoAnswer => CnReply::NoAnswer,
        PayAnswer::Success { bad_signature } if repeat => {
            let mut r = business_failure("ACQ.TRADE_HAS_SUCCESS", pay_fields(row));
            if let CnReply::Answer { wrong_sign, .. } = &mut r {
                *wrong_sign = *bad_signature;
            }
            r
        }
        PayAnswer::Success { bad_signature } => {
            let mut r = ok(pay_fields(row));
            if let CnReply::Answer { wrong_sign, .. } = &mut r {
                *wrong_sign = *bad_signature;
            }
            r
        }
        PayAnswer::InProcess => {
            let mut object = Map::new();
            object.insert("code".into(), json!("10003"));
            object.insert("msg".into(), json!(" order success pay inprocess"));
            object.append(&mut fields(&[
                ("out_trade_no", Some(row.payment_request_id.clone())),
                ("trade_no", Some(row.payment_id.clone())),
                ("total_amount", Some(yuan(row.facts.amount_minor))),
            ]));
            CnReply::Answer {
                object: Value::Object(object),
                wrong_sign: false,
            }
        }
        PayAnswer::Failed(code) => business_failure(sub_code_for(code), Map::new()),
    }
}

fn find(c: &rusqlite::Connection, b: &TradeBiz) -> rusqlite::Result<Option<PaymentRow>> {
    match (b.trade_no.as_deref(), b.out_trade_no.as_deref()) {
        (Some(t), _) if !t.is_empty() => store::payment_by_payment_id(c, t),
        (_, Some(o)) if !o.is_empty() => store::payment_by_request_id(c, o),
        _ => Ok(None),
    }
}

fn query(store: &Store, b: TradeBiz, now: &CnNow) -> rusqlite::Result<CnReply> {
    store.transaction(|c| {
        let Some(mut row) = find(c, &b)? else {
            return Ok(business_failure("ACQ.TRADE_NOT_EXIST", Map::new()));
        };
        super::overrides::settle_delay(c, &mut row, now.ms)?;
        let (answer, next) = scenario::inquiry(&row.facts);
        let InquiryAnswer::Status(status) = answer else {
            return Ok(CnReply::NoAnswer);
        };
        let became_paid = next.status == Status::Success && row.paid_at.is_none();
        if became_paid {
            row.paid_at = Some(now.text.clone());
        }
        row.facts = next;
        store::update_payment(c, &row)?;
        if became_paid {
            if let Some(n) = paid_notification(&row, now) {
                pending_notify(n);
            }
        }
        let trade_status = match status {
            // A declined bar-code pay leaves no trade behind.
            Status::Fail => return Ok(business_failure("ACQ.TRADE_NOT_EXIST", Map::new())),
            Status::Processing => "WAIT_BUYER_PAY",
            Status::Success if row.facts.refunded_minor >= row.facts.amount_minor => "TRADE_CLOSED",
            Status::Success => "TRADE_SUCCESS",
            Status::Cancelled => "TRADE_CLOSED",
        };
        let mut f = pay_fields(&row);
        f.insert("trade_status".into(), json!(trade_status));
        if let Some(paid) = row.paid_at.clone().filter(|_| status == Status::Success) {
            f.insert("send_pay_date".into(), json!(paid));
        }
        f.remove("gmt_payment");
        Ok(ok(f))
    })
}

fn cancel(
    store: &Store,
    b: TradeBiz,
    now: &CnNow,
    outage: std::time::Duration,
) -> rusqlite::Result<CnReply> {
    store.transaction(|c| {
        let Some(mut row) = find(c, &b)? else {
            // Nothing to cancel: the gateway answers success without an action.
            return Ok(ok(fields(&[
                ("out_trade_no", b.out_trade_no.clone()),
                ("retry_flag", Some("N".into())),
            ])));
        };
        let was_charged = scenario::charged(&row.facts);
        let (answer, next) = scenario::cancel(&row.facts, now.ms, outage);
        let ids = || {
            fields(&[
                ("out_trade_no", Some(row.payment_request_id.clone())),
                ("trade_no", Some(row.payment_id.clone())),
                ("retry_flag", Some("N".into())),
            ])
        };
        match answer {
            CancelAnswer::NoAnswer => Ok(CnReply::NoAnswer),
            CancelAnswer::Failed(code) => Ok(business_failure(sub_code_for(code), ids())),
            CancelAnswer::Success => {
                let already = row.facts.status == Status::Cancelled;
                let mut f = ids();
                // A trade cancelled before keeps the action it had: a charge stays refunded.
                let refunded = if already { row.paid_at.is_some() } else { was_charged };
                f.insert("action".into(), json!(if refunded { "refund" } else { "close" }));
                if row.cancelled_at.is_none() {
                    row.cancelled_at = Some(now.text.clone());
                    tracing::info!(out_trade_no = %row.payment_request_id, refunded, "sandbox (mainland): trade cancelled");
                }
                row.facts = next;
                store::update_payment(c, &row)?;
                Ok(ok(f))
            }
        }
    })
}

fn refund(store: &Store, b: RefundBiz, now: &CnNow) -> rusqlite::Result<CnReply> {
    if !wire::is_trade_no(&b.out_request_no) {
        return Ok(invalid(
            "out_request_no must be 1-64 letters, digits or underscores",
        ));
    }
    let Some(minor) = parse_yuan(&b.refund_amount) else {
        return Ok(invalid(
            "refund_amount must be yuan with exactly two decimals",
        ));
    };
    let lookup = TradeBiz {
        out_trade_no: b.out_trade_no.clone(),
        trade_no: b.trade_no.clone(),
    };
    store.transaction(|c| {
        let Some(mut payment) = find(c, &lookup)? else {
            return Ok(business_failure("ACQ.TRADE_NOT_EXIST", Map::new()));
        };
        let fingerprint = sha256_hex(&[&payment.payment_id, &b.refund_amount]);
        let answer = |p: &PaymentRow, moved: bool| {
            ok(fields(&[
                ("out_trade_no", Some(p.payment_request_id.clone())),
                ("trade_no", Some(p.payment_id.clone())),
                ("buyer_logon_id", Some("sbx***@sandbox".into())),
                ("fund_change", Some(if moved { "Y" } else { "N" }.into())),
                ("refund_fee", Some(yuan(p.facts.refunded_minor))),
                ("gmt_refund_pay", Some(now.text.clone())),
            ]))
        };
        if let Some(r) = store::refund_by_request_id(c, &b.out_request_no)? {
            if r.fingerprint != fingerprint {
                return Ok(business_failure("ACQ.TRADE_HAS_EXIST", Map::new()));
            }
            return Ok(answer(&payment, false));
        }
        let next = match scenario::refund(&payment.facts, minor) {
            Ok(next) => next,
            Err(code) => return Ok(business_failure(sub_code_for(code), Map::new())),
        };
        payment.facts = next;
        store::update_payment(c, &payment)?;
        store::insert_refund(
            c,
            &RefundRow {
                refund_request_id: b.out_request_no.clone(),
                refund_id: trade_no(now.ms),
                payment_id: payment.payment_id.clone(),
                amount_minor: minor,
                currency: payment.currency.clone(),
                fingerprint: fingerprint.clone(),
                refund_time: now.text.clone(),
            },
        )?;
        tracing::info!(out_request_no = %b.out_request_no, out_trade_no = %payment.payment_request_id, minor, "sandbox (mainland): refund");
        Ok(answer(&payment, true))
    })
}

fn refund_query(store: &Store, b: RefundQueryBiz) -> rusqlite::Result<CnReply> {
    store.transaction(|c| {
        let Some(r) = store::refund_by_request_id(c, &b.out_request_no)? else {
            // The gateway answers success without refund_status: no such refund.
            return Ok(ok(fields(&[(
                "out_request_no",
                Some(b.out_request_no.clone()),
            )])));
        };
        let payment = store::payment_by_payment_id(c, &r.payment_id)?;
        Ok(ok(fields(&[
            ("out_request_no", Some(r.refund_request_id.clone())),
            ("trade_no", Some(r.payment_id.clone())),
            ("out_trade_no", payment.map(|p| p.payment_request_id)),
            ("refund_amount", Some(yuan(r.amount_minor))),
            ("total_amount", Some(yuan(r.amount_minor))),
            ("refund_status", Some("REFUND_SUCCESS".into())),
            ("gmt_refund_pay", Some(r.refund_time.clone())),
        ])))
    })
}

/// The body for an answer: the object serialized once, signed over exactly those bytes.
pub fn answer_body(
    key: &crate::gateway::sign::PrivateKey,
    method: Method,
    object: &Value,
    wrong_sign: bool,
) -> String {
    let text = serde_json::to_string(object).expect("a JSON value serializes");
    let signed = if wrong_sign {
        format!("{text} ")
    } else {
        text.clone()
    };
    format!(
        r#"{{"{}":{text},"sign":"{}"}}"#,
        method.response_key(),
        sign_rsa2(key, &signed)
    )
}

fn op_of(m: Method) -> Op {
    match m {
        Method::Pay => Op::Pay,
        Method::Query => Op::InquiryPayment,
        Method::Cancel => Op::Cancel,
        Method::Refund => Op::Refund,
        Method::RefundQuery => Op::InquiryRefund,
    }
}

fn text_response(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/html;charset=utf-8"),
    );
    r
}

fn unsigned_error(code: &str, msg: &str, sub_code: &str, sub_msg: &str) -> Response {
    text_response(
        json!({"error_response": {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}})
            .to_string(),
    )
}

/// `POST /gateway.do`.
pub async fn handle(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let Some(params) = Params::parse_form(&body) else {
        return unsigned_error(
            "40002",
            "Invalid Arguments",
            "isv.invalid-parameter",
            "form keys repeat",
        );
    };
    let Some(method) = params.get("method").and_then(Method::from_name) else {
        return unsigned_error(
            "40002",
            "Invalid Arguments",
            "isv.invalid-method",
            "unknown method",
        );
    };
    app.counters.count(op_of(method));
    let content = sign_content(params.iter(), &["sign"], true);
    let verified = params.get("sign_type") == Some("RSA2")
        && params
            .get("sign")
            .is_some_and(|s| verify_rsa2(&app.merchant_key, content.as_bytes(), s));
    if !verified {
        app.counters
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            method = method.name(),
            "sandbox (mainland): request signature refused"
        );
        return unsigned_error(
            "40002",
            "Invalid Arguments",
            "isv.invalid-signature",
            "验签出错 (the request signature does not verify)",
        );
    }
    let worker = app.clone();
    let ran = tokio::task::spawn_blocking(move || {
        run(
            &worker.store,
            method,
            &params,
            &CnNow::current(),
            worker.cancel_outage,
        )
    })
    .await;
    let reply = match ran {
        Ok(Ok((r, due))) => {
            for job in due {
                app.tracker.spawn(deliver(
                    job,
                    app.gateway_key.clone(),
                    app.http.clone(),
                    app.counters.clone(),
                    app.token.clone(),
                ));
            }
            r
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "sandbox (mainland): database error");
            CnReply::Answer {
                object: json!({"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "ACQ.SYSTEM_ERROR", "sub_msg": "系统错误"}),
                wrong_sign: false,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "sandbox (mainland): operation panicked");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    match reply {
        CnReply::Answer { object, wrong_sign } => {
            text_response(answer_body(&app.gateway_key, method, &object, wrong_sign))
        }
        CnReply::NoAnswer => {
            tokio::select! {
                _ = tokio::time::sleep(app.no_answer_stall) => {}
                _ = app.token.cancelled() => {}
            }
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_is_exactly_two_decimals() {
        assert_eq!(parse_yuan("12.34"), Some(1234));
        assert_eq!(parse_yuan("0.01"), Some(1));
        for bad in ["12.3", "12", "012.34", "12.345", "-1.00", "1,00"] {
            assert_eq!(parse_yuan(bad), None, "{bad}");
        }
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(5), "0.05");
    }

    #[test]
    fn every_rule_failure_has_a_mainland_sub_code() {
        for code in [
            "USER_BALANCE_NOT_ENOUGH",
            "EXPIRED_CODE",
            "RISK_REJECT",
            "ORDER_IS_CLOSED",
            "CANCEL_WINDOW_EXCEED",
            "ORDER_STATUS_INVALID",
            "REFUND_AMOUNT_EXCEED",
            "PARAM_ILLEGAL",
        ] {
            assert_ne!(sub_code_for(code), "ACQ.SYSTEM_ERROR", "{code}");
        }
    }
}
