//! The five AMS operations of the sandbox: parse the request body, apply the scenario rules to
//! the stored payment inside one transaction, and say what to answer (a JSON body, signed well
//! or deliberately wrongly, or no answer at all) and whether a notification is due.
//! Blocking (SQLite); the server runs it on the blocking pool.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scenario::{
    self, CancelAnswer, InquiryAnswer, PayAnswer, PaymentFacts, Scenario, Status,
};
use super::store::{self, PaymentRow, RefundRow, Store};
use crate::domain::code::mask;
use crate::gateway::wire::{
    CancelResponse, InquiryPaymentResponse, InquiryRefundRequest, InquiryRefundResponse,
    NotifyPayment, PayRequest, PayResponse, RefundRequest, RefundResponse, WireAmount, WireResult,
};

/// The AMS operations the sandbox serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `payments/pay`.
    Pay,
    /// `payments/inquiryPayment`.
    InquiryPayment,
    /// `payments/cancel`.
    Cancel,
    /// `payments/refund`.
    Refund,
    /// `payments/inquiryRefund`.
    InquiryRefund,
}

impl Op {
    /// The operation for the last path segment, `None` for anything else (404).
    pub fn from_segment(s: &str) -> Option<Op> {
        Some(match s {
            "pay" => Op::Pay,
            "inquiryPayment" => Op::InquiryPayment,
            "cancel" => Op::Cancel,
            "refund" => Op::Refund,
            "inquiryRefund" => Op::InquiryRefund,
            _ => return None,
        })
    }
}

/// How to sign an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Correctly.
    Good,
    /// Over different bytes, so it does not verify (scenario 88).
    Wrong,
}

/// What the server sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// HTTP 200 with this JSON body.
    Answer {
        /// The exact body bytes.
        body: Vec<u8>,
        /// How to sign it.
        signing: Signing,
    },
    /// Hold the request open (the client's deadline ends it).
    NoAnswer,
}

/// A notifyPayment to deliver in the background.
#[derive(Debug, Clone)]
pub struct NotifyJob {
    /// `paymentNotifyUrl` of the pay request.
    pub url: String,
    /// The merchant's client id (sent as `client-id`).
    pub client_id: String,
    /// The notification body.
    pub body: Vec<u8>,
}

/// The result of one operation.
#[derive(Debug, Clone)]
pub struct Done {
    /// The answer.
    pub reply: Reply,
    /// A notification that became due.
    pub notify: Option<NotifyJob>,
}

/// The current time, as the rules (milliseconds) and the wire (ISO 8601) want it.
#[derive(Debug, Clone)]
pub struct Now {
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
    /// ISO 8601 with offset, e.g. `2026-01-01T12:00:00+08:00`.
    pub iso: String,
}

impl Now {
    /// The wall clock now.
    pub fn current() -> Now {
        let t = chrono::Local::now();
        Now {
            ms: t.timestamp_millis(),
            iso: t.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        }
    }
}

/// Runs one operation against the store.
pub fn run(
    op: Op,
    store: &Store,
    body: &[u8],
    client_id: &str,
    now: &Now,
    outage: Duration,
) -> rusqlite::Result<Done> {
    match op {
        Op::Pay => pay(store, body, client_id, now),
        Op::InquiryPayment => inquiry(store, body, now),
        Op::Cancel => cancel(store, body, now, outage),
        Op::Refund => refund(store, body, now),
        Op::InquiryRefund => inquiry_refund(store, body),
    }
}

/// A signed `F` answer carrying only `result`.
pub fn failure_body(code: &str, detail: Option<&str>) -> Vec<u8> {
    #[derive(Serialize)]
    struct OnlyResult {
        result: WireResult,
    }
    json(&OnlyResult {
        result: result_f(code, detail),
    })
}

fn answer(body: Vec<u8>) -> Done {
    Done {
        reply: Reply::Answer {
            body,
            signing: Signing::Good,
        },
        notify: None,
    }
}

fn illegal(detail: &str) -> rusqlite::Result<Done> {
    Ok(answer(failure_body("PARAM_ILLEGAL", Some(detail))))
}

fn result(code: &str, status: &str) -> WireResult {
    WireResult {
        result_code: code.to_string(),
        result_status: status.to_string(),
        result_message: scenario::message_for(code).to_string(),
    }
}

fn result_f(code: &str, detail: Option<&str>) -> WireResult {
    let mut r = result(code, "F");
    if let Some(d) = detail {
        r.result_message = format!("{}: {d}", r.result_message);
    }
    r
}

/// Serializes an answer, leaving out the optional fields that are absent (AMS omits them
/// rather than sending `null`).
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut value = serde_json::to_value(v).expect("wire types always serialize");
    if let serde_json::Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    serde_json::to_vec(&value).expect("a JSON value always serializes")
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        // A separator that cannot occur in the fields keeps ("ab","c") apart from ("a","bc").
        h.update([0x1f]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_id(prefix: &str, now: &Now) -> String {
    use rand::Rng;
    format!(
        "{prefix}{}{:09}",
        now.ms,
        rand::thread_rng().gen_range(0..1_000_000_000u32)
    )
}

fn amount(minor: i64, currency: &str) -> WireAmount {
    WireAmount {
        currency: currency.to_string(),
        value: minor.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// pay

fn pay(store: &Store, body: &[u8], client_id: &str, now: &Now) -> rusqlite::Result<Done> {
    let req: PayRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return illegal(&format!("pay body: {e}")),
    };
    let code = req.payment_method.payment_method_id.trim();
    let id = req.payment_request_id.as_str();
    if id.is_empty() || id.len() > 64 {
        return illegal("paymentRequestId must be 1 to 64 characters");
    }
    if req.product_code != "IN_STORE_PAYMENT" {
        return illegal("productCode must be IN_STORE_PAYMENT");
    }
    let Some(amt) = req.payment_amount.to_amount().filter(|a| a.minor() > 0) else {
        return illegal("paymentAmount is not a positive amount in a known currency");
    };
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return illegal("paymentMethodId must be digits");
    }
    let (Some(digits), Some(scen)) = (scenario::last_two_digits(code), Scenario::from_code(code))
    else {
        return illegal("paymentMethodId is too short");
    };
    // A pay that reaches the gateway after its paymentExpiryTime is not processed.
    let expiry = match req.payment_expiry_time.as_deref() {
        None => None,
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => return illegal("paymentExpiryTime must be ISO 8601 with an offset"),
        },
    };
    let fingerprint = sha256_hex(&[
        &req.payment_amount.value,
        &req.payment_amount.currency,
        &req.payment_method.payment_method_type,
        &req.payment_factor.in_store_payment_scenario,
        code,
    ]);

    store.transaction(|c| {
        let (row, reply, fresh) = match store::payment_by_request_id(c, id)? {
            Some(row) if row.fingerprint != fingerprint => {
                tracing::warn!(
                    payment_request_id = id,
                    "sandbox: repeated pay with different key fields"
                );
                return Ok(answer(failure_body("REPEAT_REQ_INCONSISTENT", None)));
            }
            Some(row) => {
                let reply = scenario::repeat_pay(&row.facts);
                (row, reply, false)
            }
            None if expiry.is_some_and(|at| now.ms > at) => {
                tracing::warn!(
                    payment_request_id = id,
                    "sandbox: pay arrived after its paymentExpiryTime; not processed"
                );
                return Ok(answer(failure_body(
                    "ORDER_IS_CLOSED",
                    Some("the pay arrived after its paymentExpiryTime"),
                )));
            }
            None => {
                // A sticky override or a delayed outcome replaces the code's own row.
                let (scen, digits, approve_at) = super::overrides::pick(c, scen, digits, now.ms)?;
                let digits = digits.as_str();
                let (status, fail_code, reply) = scenario::first_pay(scen);
                let row = PaymentRow {
                    payment_request_id: id.to_string(),
                    payment_id: new_id("SBX", now),
                    currency: amt.currency().code().to_string(),
                    code_masked: mask(code),
                    fingerprint: fingerprint.clone(),
                    client_id: client_id.to_string(),
                    notify_url: req.payment_notify_url.clone(),
                    created_at: now.iso.clone(),
                    paid_at: (status == Status::Success).then(|| now.iso.clone()),
                    cancelled_at: None,
                    facts: PaymentFacts {
                        scenario: scen,
                        status,
                        fail_code: fail_code.map(str::to_string),
                        inquiry_count: 0,
                        created_ms: now.ms,
                        amount_minor: amt.minor(),
                        refunded_minor: 0,
                    },
                };
                store::insert_payment(c, &row, digits)?;
                if let Some(at) = approve_at {
                    super::overrides::record_delay(c, &row.payment_request_id, at)?;
                }
                tracing::info!(
                    payment_request_id = id,
                    code = %row.code_masked,
                    scenario = digits,
                    status = status.as_str(),
                    "sandbox: new payment"
                );
                (row, reply, true)
            }
        };
        let notify = if fresh && row.facts.status.is_payment_result() {
            notify_job(&row)
        } else {
            None
        };
        Ok(Done {
            reply: pay_reply(&row, &reply),
            notify,
        })
    })
}

fn pay_reply(row: &PaymentRow, reply: &PayAnswer) -> Reply {
    let base = PayResponse {
        payment_request_id: Some(row.payment_request_id.clone()),
        ..PayResponse::default()
    };
    let (resp, signing) = match reply {
        PayAnswer::NoAnswer => return Reply::NoAnswer,
        PayAnswer::Success { bad_signature } => (
            PayResponse {
                result: result("SUCCESS", "S"),
                payment_id: Some(row.payment_id.clone()),
                payment_amount: Some(amount(row.facts.amount_minor, &row.currency)),
                payment_time: row.paid_at.clone(),
                payment_create_time: Some(row.created_at.clone()),
                ..base
            },
            if *bad_signature {
                Signing::Wrong
            } else {
                Signing::Good
            },
        ),
        PayAnswer::InProcess => (
            PayResponse {
                result: result("PAYMENT_IN_PROCESS", "U"),
                payment_id: Some(row.payment_id.clone()),
                payment_amount: Some(amount(row.facts.amount_minor, &row.currency)),
                payment_create_time: Some(row.created_at.clone()),
                ..base
            },
            Signing::Good,
        ),
        PayAnswer::Failed(code) => (
            PayResponse {
                result: result_f(code, None),
                ..base
            },
            Signing::Good,
        ),
    };
    Reply::Answer {
        body: json(&resp),
        signing,
    }
}

fn notify_job(row: &PaymentRow) -> Option<NotifyJob> {
    let url = row.notify_url.clone()?;
    let result = match row.facts.status {
        Status::Success => result("SUCCESS", "S"),
        Status::Fail => result_f(
            row.facts.fail_code.as_deref().unwrap_or("PROCESS_FAIL"),
            None,
        ),
        Status::Processing | Status::Cancelled => return None,
    };
    let body = NotifyPayment {
        notify_type: Some("PAYMENT_RESULT".into()),
        result,
        payment_request_id: Some(row.payment_request_id.clone()),
        payment_id: Some(row.payment_id.clone()),
        payment_amount: Some(amount(row.facts.amount_minor, &row.currency)),
        payment_create_time: Some(row.created_at.clone()),
        payment_time: row.paid_at.clone(),
    };
    Some(NotifyJob {
        url,
        client_id: row.client_id.clone(),
        body: json(&body),
    })
}

// ---------------------------------------------------------------------------------------------
// inquiryPayment and cancel

/// inquiryPayment / cancel body: by `paymentId` or `paymentRequestId` (`paymentId` wins).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lookup {
    #[serde(default)]
    payment_request_id: Option<String>,
    #[serde(default)]
    payment_id: Option<String>,
}

fn find_payment(c: &rusqlite::Connection, l: &Lookup) -> rusqlite::Result<Option<PaymentRow>> {
    match (l.payment_id.as_deref(), l.payment_request_id.as_deref()) {
        (Some(pid), _) if !pid.is_empty() => store::payment_by_payment_id(c, pid),
        (_, Some(rid)) => store::payment_by_request_id(c, rid),
        _ => Ok(None),
    }
}

fn parse_lookup(body: &[u8]) -> Result<Lookup, String> {
    let l: Lookup = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let present = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if !present(&l.payment_id) && !present(&l.payment_request_id) {
        return Err("paymentRequestId or paymentId is required".into());
    }
    Ok(l)
}

fn inquiry(store: &Store, body: &[u8], now: &Now) -> rusqlite::Result<Done> {
    let l = match parse_lookup(body) {
        Ok(l) => l,
        Err(e) => return illegal(&e),
    };
    store.transaction(|c| {
        let Some(mut row) = find_payment(c, &l)? else {
            return Ok(answer(failure_body("ORDER_NOT_EXIST", None)));
        };
        super::overrides::settle_delay(c, &mut row, now.ms)?;
        let (reply, next) = scenario::inquiry(&row.facts);
        let InquiryAnswer::Status(status) = reply else {
            return Ok(Done {
                reply: Reply::NoAnswer,
                notify: None,
            });
        };
        let became_result =
            !row.facts.status.is_payment_result() && next.status.is_payment_result();
        if next.status == Status::Success && row.paid_at.is_none() {
            row.paid_at = Some(now.iso.clone());
        }
        row.facts = next;
        store::update_payment(c, &row)?;
        let resp = InquiryPaymentResponse {
            result: result("SUCCESS", "S"),
            payment_status: Some(status.as_str().to_string()),
            payment_result_code: (status == Status::Fail)
                .then(|| row.facts.fail_code.clone())
                .flatten(),
            payment_result_message: (status == Status::Fail).then(|| {
                scenario::message_for(row.facts.fail_code.as_deref().unwrap_or("")).to_string()
            }),
            payment_request_id: Some(row.payment_request_id.clone()),
            payment_id: Some(row.payment_id.clone()),
            payment_amount: Some(amount(row.facts.amount_minor, &row.currency)),
            payment_time: (status == Status::Success)
                .then(|| row.paid_at.clone())
                .flatten(),
        };
        Ok(Done {
            reply: Reply::Answer {
                body: json(&resp),
                signing: Signing::Good,
            },
            notify: if became_result {
                notify_job(&row)
            } else {
                None
            },
        })
    })
}

fn cancel(store: &Store, body: &[u8], now: &Now, outage: Duration) -> rusqlite::Result<Done> {
    let l = match parse_lookup(body) {
        Ok(l) => l,
        Err(e) => return illegal(&e),
    };
    store.transaction(|c| {
        let Some(mut row) = find_payment(c, &l)? else {
            return Ok(answer(failure_body("ORDER_NOT_EXIST", None)));
        };
        let (reply, next) = scenario::cancel(&row.facts, now.ms, outage);
        match reply {
            CancelAnswer::NoAnswer => Ok(Done {
                reply: Reply::NoAnswer,
                notify: None,
            }),
            CancelAnswer::Failed(code) => Ok(answer(json(&CancelResponse {
                result: result_f(code, None),
                payment_id: Some(row.payment_id.clone()),
                payment_request_id: Some(row.payment_request_id.clone()),
                cancel_time: None,
            }))),
            CancelAnswer::Success => {
                if row.cancelled_at.is_none() {
                    row.cancelled_at = Some(now.iso.clone());
                    tracing::info!(payment_request_id = %row.payment_request_id, "sandbox: payment cancelled");
                }
                row.facts = next;
                store::update_payment(c, &row)?;
                Ok(answer(json(&CancelResponse {
                    result: result("SUCCESS", "S"),
                    payment_id: Some(row.payment_id.clone()),
                    payment_request_id: Some(row.payment_request_id.clone()),
                    cancel_time: row.cancelled_at.clone(),
                })))
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// refund and inquiryRefund

fn refund_answer(r: &RefundRow) -> Done {
    answer(json(&RefundResponse {
        result: result("SUCCESS", "S"),
        refund_request_id: Some(r.refund_request_id.clone()),
        refund_id: Some(r.refund_id.clone()),
        payment_id: Some(r.payment_id.clone()),
        refund_amount: Some(amount(r.amount_minor, &r.currency)),
        refund_time: Some(r.refund_time.clone()),
    }))
}

fn refund(store: &Store, body: &[u8], now: &Now) -> rusqlite::Result<Done> {
    let req: RefundRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return illegal(&format!("refund body: {e}")),
    };
    let rid = req.refund_request_id.as_str();
    if rid.is_empty() || rid.len() > 64 || req.payment_id.is_empty() {
        return illegal("refundRequestId (1 to 64 characters) and paymentId are required");
    }
    let Some(amt) = req.refund_amount.to_amount() else {
        return illegal("refundAmount is not an amount in a known currency");
    };
    let fingerprint = sha256_hex(&[
        &req.payment_id,
        &req.refund_amount.value,
        &req.refund_amount.currency,
    ]);
    store.transaction(|c| {
        if let Some(r) = store::refund_by_request_id(c, rid)? {
            if r.fingerprint != fingerprint {
                return Ok(answer(failure_body("REPEAT_REQ_INCONSISTENT", None)));
            }
            return Ok(refund_answer(&r));
        }
        let Some(mut payment) = store::payment_by_payment_id(c, &req.payment_id)? else {
            return Ok(answer(failure_body("ORDER_NOT_EXIST", None)));
        };
        if payment.currency != amt.currency().code() {
            return illegal("refundAmount currency differs from the payment's");
        }
        let next = match scenario::refund(&payment.facts, amt.minor()) {
            Ok(next) => next,
            Err(code) => return Ok(answer(failure_body(code, None))),
        };
        payment.facts = next;
        store::update_payment(c, &payment)?;
        let r = RefundRow {
            refund_request_id: rid.to_string(),
            refund_id: new_id("SBXR", now),
            payment_id: payment.payment_id.clone(),
            amount_minor: amt.minor(),
            currency: payment.currency.clone(),
            fingerprint: fingerprint.clone(),
            refund_time: now.iso.clone(),
        };
        store::insert_refund(c, &r)?;
        tracing::info!(
            refund_request_id = rid,
            payment_request_id = %payment.payment_request_id,
            amount_minor = r.amount_minor,
            "sandbox: refund"
        );
        Ok(refund_answer(&r))
    })
}

fn inquiry_refund(store: &Store, body: &[u8]) -> rusqlite::Result<Done> {
    let req: InquiryRefundRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return illegal(&format!("inquiryRefund body: {e}")),
    };
    store.transaction(|c| {
        let Some(r) = store::refund_by_request_id(c, &req.refund_request_id)? else {
            return Ok(answer(failure_body("ORDER_NOT_EXIST", None)));
        };
        Ok(answer(json(&InquiryRefundResponse {
            result: result("SUCCESS", "S"),
            refund_status: Some("SUCCESS".into()),
            refund_request_id: Some(r.refund_request_id.clone()),
            refund_id: Some(r.refund_id.clone()),
            refund_amount: Some(amount(r.amount_minor, &r.currency)),
        })))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_separate_their_fields() {
        assert_ne!(sha256_hex(&["ab", "c"]), sha256_hex(&["a", "bc"]));
        assert_eq!(sha256_hex(&["x"]).len(), 64);
    }

    #[test]
    fn answers_leave_out_absent_fields() {
        let body = failure_body("ORDER_NOT_EXIST", None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["result"]["resultStatus"], "F");
        assert_eq!(v["result"]["resultCode"], "ORDER_NOT_EXIST");
        let s = String::from_utf8(json(&PayResponse::default())).unwrap();
        assert!(!s.contains("null"), "{s}");
    }

    #[test]
    fn only_known_operations_route() {
        assert_eq!(Op::from_segment("inquiryPayment"), Some(Op::InquiryPayment));
        assert_eq!(Op::from_segment("cancelPayment"), None);
    }
}
