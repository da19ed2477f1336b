//! Protocol conversion (the seed's 协议转换): terminals keep speaking AMS to the hub while the
//! hub's upstream speaks another dialect through the [`Gateway`] trait the terminal's engine
//! uses. This file reads a terminal's AMS request body into the trait's domain orders and
//! writes the trait's typed answer back as an AMS answer body, so everything after the call
//! (the record, the queue, the relay to the terminal, signed with the hub's key) is the same
//! for every upstream. Rule 2 holds because the trait's adapters already turn an unverified
//! `S`/`U` into unknown, and unknown here is never a success or a refusal.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Map, Value};

use super::intake::{amount_at, str_at};
use super::upstream::Answer;
use crate::domain::code::{CodeRules, PaymentCode};
use crate::domain::money::Amount;
use crate::gateway::ams::answer::SUCCESS;
use crate::gateway::wire::WireAmount;
use crate::gateway::{self, Facts, Inquiry, PayOrder, RefundOrder, Refusal, Reply};

fn time_at(v: &Value, path: &[&str]) -> Option<DateTime<FixedOffset>> {
    str_at(v, path).and_then(|s| DateTime::parse_from_rfc3339(s).ok())
}

/// What a pay body names besides the order: the store and terminal the registry fixed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayPlace {
    /// `order.merchant.store.referenceStoreId`.
    pub store_id: Option<String>,
    /// `order.env.storeTerminalId`.
    pub terminal_id: Option<String>,
}

/// Reads a terminal's AMS pay body into the order the gateway trait charges. `Err` says why
/// the body cannot be carried (nothing is sent then).
pub fn pay_order(body: &[u8]) -> Result<(PayOrder, PayPlace), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("pay body: {e}"))?;
    let id = str_at(&v, &["paymentRequestId"])
        .filter(|s| !s.is_empty())
        .ok_or("paymentRequestId is missing")?;
    let amount = amount_at(&v, "paymentAmount")?;
    let raw_code =
        str_at(&v, &["paymentMethod", "paymentMethodId"]).ok_or("paymentMethodId is missing")?;
    let code = PaymentCode::parse(raw_code, &CodeRules::default())
        .map_err(|e| format!("paymentMethodId is not a payment code: {e}"))?;
    let order = PayOrder {
        payment_request_id: id.to_string(),
        amount,
        code,
        order_ref: str_at(&v, &["order", "referenceOrderId"]).map(str::to_string),
        description: str_at(&v, &["order", "orderDescription"])
            .unwrap_or("payment")
            .to_string(),
        terminal_time: time_at(&v, &["order", "env", "storeTerminalRequestTime"])
            .unwrap_or_else(|| Utc::now().fixed_offset()),
        expires_at: time_at(&v, &["paymentExpiryTime"]),
    };
    let place = PayPlace {
        store_id: str_at(&v, &["order", "merchant", "store", "referenceStoreId"])
            .map(str::to_string),
        terminal_id: str_at(&v, &["order", "env", "storeTerminalId"]).map(str::to_string),
    };
    Ok((order, place))
}

/// Reads the `paymentRequestId` of an inquiry or cancel body.
pub fn payment_request_id(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    str_at(&v, &["paymentRequestId"])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "paymentRequestId is missing".into())
}

/// Reads a refund body into the trait's refund order.
pub fn refund_order(body: &[u8]) -> Result<RefundOrder, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("refund body: {e}"))?;
    let rid = str_at(&v, &["refundRequestId"])
        .filter(|s| !s.is_empty())
        .ok_or("refundRequestId is missing")?;
    let pid = str_at(&v, &["paymentId"])
        .filter(|s| !s.is_empty())
        .ok_or("paymentId is missing")?;
    Ok(RefundOrder {
        refund_request_id: rid.to_string(),
        payment_id: pid.to_string(),
        amount: amount_at(&v, "refundAmount")?,
        reason: str_at(&v, &["refundReason"]).map(str::to_string),
    })
}

/// Reads an inquiryRefund body: the `refundRequestId`, and the `paymentId` the hub adds from
/// its record when it has one (the mainland refund query needs the trade).
pub fn refund_inquiry(body: &[u8]) -> Result<(String, Option<String>), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let rid = str_at(&v, &["refundRequestId"])
        .filter(|s| !s.is_empty())
        .ok_or("refundRequestId is missing")?;
    Ok((
        rid.to_string(),
        str_at(&v, &["paymentId"]).map(str::to_string),
    ))
}

/// The AMS result code that carries a refusal's meaning to an AMS terminal: the two codes
/// the terminal branches on, and the upstream's own code for anything else (a human reads
/// it, as without the hub).
pub fn ams_code(refusal: &Refusal, code: &str) -> String {
    match refusal {
        Refusal::NoSuchPayment => "ORDER_NOT_EXIST".into(),
        Refusal::CancelWindowPassed => "CANCEL_WINDOW_EXCEED".into(),
        Refusal::Other => code.to_string(),
    }
}

fn result(status: &str, code: &str, message: &str) -> Value {
    json!({"resultCode": code, "resultStatus": status, "resultMessage": message})
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
}

fn put_amount(m: &mut Map<String, Value>, k: &str, a: Option<&Amount>) {
    if let Some(a) = a {
        m.insert(
            k.to_string(),
            serde_json::to_value(WireAmount::from(a)).expect("plain strings"),
        );
    }
}

fn body(m: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(m)).expect("json")
}

fn ids(id_key: &str, id: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(id_key.into(), Value::String(id.to_string()));
    m
}

/// Writes an answer of pay, cancel, refund or inquiryRefund as the AMS answer an AMS gateway
/// would have given; `id` is the `paymentRequestId` (pay, cancel) or `refundRequestId`.
pub fn answer(op_fields: OpFields, id: &str, reply: &Reply<gateway::Answer>) -> Answer {
    let f = &reply.facts;
    let mut m = ids(op_fields.id_key(), id);
    match &reply.answer {
        gateway::Answer::Success => {
            m.insert("result".into(), result("S", SUCCESS, "Success"));
            put(&mut m, "paymentId", f.payment_id.as_deref());
            match op_fields {
                OpFields::Pay => {
                    put_amount(&mut m, "paymentAmount", f.amount.as_ref());
                    put(&mut m, "paymentTime", f.time.as_deref());
                }
                OpFields::Cancel => put(&mut m, "cancelTime", f.time.as_deref()),
                OpFields::Refund => {
                    put(&mut m, "refundId", f.refund_id.as_deref());
                    put_amount(&mut m, "refundAmount", f.amount.as_ref());
                    put(&mut m, "refundTime", f.time.as_deref());
                }
                OpFields::InquiryRefund => {
                    m.insert("refundStatus".into(), Value::String("SUCCESS".into()));
                    put(&mut m, "refundId", f.refund_id.as_deref());
                    put_amount(&mut m, "refundAmount", f.amount.as_ref());
                }
            }
            Answer::Success(body(m))
        }
        gateway::Answer::Failed {
            refusal,
            code,
            message,
        } => {
            let code = ams_code(refusal, code);
            m.insert("result".into(), result("F", &code, message));
            Answer::Failed {
                code,
                body: body(m),
            }
        }
        gateway::Answer::Unknown { why } => Answer::Unknown {
            why: why.clone(),
            code: None,
        },
    }
}

/// Which call an [`answer`] belongs to (which AMS fields it carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFields {
    /// pay.
    Pay,
    /// cancel.
    Cancel,
    /// refund.
    Refund,
    /// inquiryRefund.
    InquiryRefund,
}

impl OpFields {
    fn id_key(self) -> &'static str {
        match self {
            OpFields::Pay | OpFields::Cancel => "paymentRequestId",
            OpFields::Refund | OpFields::InquiryRefund => "refundRequestId",
        }
    }
}

/// Writes an inquiry answer as AMS inquiryPayment: `result` says the call worked,
/// `paymentStatus` the outcome; "no such payment" is `F ORDER_NOT_EXIST`, as AMS says it.
pub fn inquiry(id: &str, reply: &Reply<Inquiry>) -> Answer {
    let f: &Facts = &reply.facts;
    let mut m = ids("paymentRequestId", id);
    let status = match &reply.answer {
        Inquiry::Paid => "SUCCESS",
        Inquiry::Declined { code, message } => {
            put(&mut m, "paymentResultCode", Some(code));
            put(&mut m, "paymentResultMessage", Some(message));
            "FAIL"
        }
        Inquiry::Closed => "CANCELLED",
        Inquiry::Pending { .. } => "PROCESSING",
        Inquiry::NotFound => {
            let code = "ORDER_NOT_EXIST";
            m.insert(
                "result".into(),
                result("F", code, "the gateway has no such payment"),
            );
            return Answer::Failed {
                code: code.into(),
                body: body(m),
            };
        }
        Inquiry::Failed { code } => {
            let message = f.result_message.as_deref().unwrap_or("inquiry refused");
            m.insert("result".into(), result("F", code, message));
            return Answer::Failed {
                code: code.clone(),
                body: body(m),
            };
        }
        Inquiry::Unknown { why } => {
            return Answer::Unknown {
                why: why.clone(),
                code: None,
            }
        }
    };
    m.insert("result".into(), result("S", SUCCESS, "Success"));
    m.insert("paymentStatus".into(), Value::String(status.into()));
    put(&mut m, "paymentId", f.payment_id.as_deref());
    put_amount(&mut m, "paymentAmount", f.amount.as_ref());
    put(&mut m, "paymentTime", f.time.as_deref());
    Answer::Success(body(m))
}

/// A request the upstream was never sent because the body could not be carried: a
/// definitive refusal (nothing reached the upstream), answered `F PARAM_ILLEGAL`.
pub fn not_carried(id_key: &str, id: &str, why: &str) -> Answer {
    let mut m = Map::new();
    if !id.is_empty() {
        m.insert(id_key.into(), Value::String(id.to_string()));
    }
    m.insert(
        "result".into(),
        result("F", "PARAM_ILLEGAL", &format!("not sent upstream: {why}")),
    );
    Answer::Failed {
        code: "PARAM_ILLEGAL".into(),
        body: body(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Answer as G;

    fn v(a: &Answer) -> Value {
        match a {
            Answer::Success(b) | Answer::Failed { body: b, .. } => {
                serde_json::from_slice(b).unwrap()
            }
            Answer::Unknown { .. } => Value::Null,
        }
    }

    const PAY: &str = r#"{"productCode":"IN_STORE_PAYMENT","paymentRequestId":"P1",
        "paymentAmount":{"currency":"CNY","value":"1234"},
        "paymentMethod":{"paymentMethodType":"CONNECT_WALLET","paymentMethodId":"281234567890123456"},
        "paymentFactor":{"inStorePaymentScenario":"PaymentCode"},
        "order":{"referenceOrderId":"O-9","orderDescription":"Coffee","orderAmount":{"currency":"CNY","value":"1234"},
          "merchant":{"referenceMerchantId":"M1","merchantMCC":"5812","merchantName":"M","store":{"referenceStoreId":"S1","storeName":"S","storeMCC":"5812"}},
          "env":{"storeTerminalId":"T1","storeTerminalRequestTime":"2026-12-01T10:00:00+08:00"}},
        "paymentExpiryTime":"2026-12-01T10:03:00+08:00"}"#;

    #[test]
    fn a_terminal_pay_body_becomes_the_order_the_trait_charges() {
        let (o, place) = pay_order(PAY.as_bytes()).unwrap();
        assert_eq!(o.payment_request_id, "P1");
        assert_eq!(o.amount.minor(), 1234);
        assert_eq!(o.amount.currency().code(), "CNY");
        assert_eq!(o.code.expose(), "281234567890123456");
        assert_eq!(o.order_ref.as_deref(), Some("O-9"));
        assert_eq!(o.description, "Coffee");
        assert_eq!(o.terminal_time.to_rfc3339(), "2026-12-01T10:00:00+08:00");
        assert_eq!(
            o.expires_at.map(|t| t.to_rfc3339()).as_deref(),
            Some("2026-12-01T10:03:00+08:00")
        );
        assert_eq!(place.store_id.as_deref(), Some("S1"));
        assert_eq!(place.terminal_id.as_deref(), Some("T1"));
        // The masked code never leaks through Debug.
        assert!(!format!("{o:?}").contains("281234567890123456"));
    }

    #[test]
    fn bodies_that_cannot_be_carried_say_why() {
        let no_amount = PAY.replace(r#""paymentAmount":{"currency":"CNY","value":"1234"},"#, "");
        assert!(pay_order(no_amount.as_bytes())
            .unwrap_err()
            .contains("paymentAmount"));
        let bad_code = PAY.replace("281234567890123456", "12");
        assert!(pay_order(bad_code.as_bytes())
            .unwrap_err()
            .contains("paymentMethodId"));
        assert!(pay_order(b"[1]").is_err());
        assert!(refund_order(br#"{"refundRequestId":"R1"}"#)
            .unwrap_err()
            .contains("paymentId"));
        let a = not_carried("paymentRequestId", "P1", "CNY only");
        assert!(matches!(&a, Answer::Failed { code, .. } if code == "PARAM_ILLEGAL"));
        assert_eq!(v(&a)["result"]["resultStatus"], "F");
    }

    #[test]
    fn a_refund_body_becomes_a_refund_order() {
        let o = refund_order(
            br#"{"refundRequestId":"R1","paymentId":"G1","refundAmount":{"currency":"CNY","value":"500"},"refundReason":"r"}"#,
        )
        .unwrap();
        assert_eq!(o.refund_request_id, "R1");
        assert_eq!(o.payment_id, "G1");
        assert_eq!(o.amount.minor(), 500);
        assert_eq!(o.reason.as_deref(), Some("r"));
        assert_eq!(
            refund_inquiry(br#"{"refundRequestId":"R1","paymentId":"G1"}"#).unwrap(),
            ("R1".into(), Some("G1".into()))
        );
    }

    #[test]
    fn answers_read_back_by_the_ams_rules_mean_what_the_trait_said() {
        let paid = Reply {
            answer: G::Success,
            facts: Facts {
                payment_id: Some("2026T1".into()),
                amount: Some(Amount::from_wire("1234", "CNY").unwrap()),
                time: Some("2026-12-01 10:00:01".into()),
                ..Facts::default()
            },
        };
        let a = answer(OpFields::Pay, "P1", &paid);
        let b = v(&a);
        assert!(matches!(a, Answer::Success(_)));
        assert_eq!(b["result"]["resultStatus"], "S");
        assert_eq!(b["paymentId"], "2026T1");
        assert_eq!(b["paymentAmount"]["value"], "1234");
        assert_eq!(b["paymentAmount"]["currency"], "CNY");
        assert_eq!(b["paymentRequestId"], "P1");

        // The two refusals an AMS terminal branches on get the AMS codes; any other keeps
        // the upstream's code for the human who reads it.
        for (refusal, code, want) in [
            (
                Refusal::NoSuchPayment,
                "ACQ.TRADE_NOT_EXIST",
                "ORDER_NOT_EXIST",
            ),
            (
                Refusal::CancelWindowPassed,
                "ACQ.TRADE_CANCEL_TIME_OUT",
                "CANCEL_WINDOW_EXCEED",
            ),
            (
                Refusal::Other,
                "ACQ.BUYER_BALANCE_NOT_ENOUGH",
                "ACQ.BUYER_BALANCE_NOT_ENOUGH",
            ),
        ] {
            let r = Reply::bare(G::Failed {
                refusal,
                code: code.into(),
                message: "no".into(),
            });
            let a = answer(OpFields::Cancel, "P1", &r);
            assert!(matches!(&a, Answer::Failed { code, .. } if code == want));
            assert_eq!(v(&a)["result"]["resultCode"], want);
            assert_eq!(
                crate::gateway::ams::answer::refusal(want),
                refusal,
                "an AMS terminal reads {want} as the same refusal"
            );
        }
        // Unknown stays unknown: never S, never F (rule 2).
        let u = answer(OpFields::Pay, "P1", &Reply::<G>::unknown("bad signature"));
        assert!(matches!(u, Answer::Unknown { code: None, .. }));

        let refunded = Reply {
            answer: G::Success,
            facts: Facts {
                refund_id: Some("RF1".into()),
                payment_id: Some("2026T1".into()),
                amount: Some(Amount::from_wire("500", "CNY").unwrap()),
                ..Facts::default()
            },
        };
        let b = v(&answer(OpFields::Refund, "R1", &refunded));
        assert_eq!(b["refundRequestId"], "R1");
        assert_eq!(b["refundId"], "RF1");
        assert_eq!(b["refundAmount"]["value"], "500");
        let b = v(&answer(OpFields::InquiryRefund, "R1", &refunded));
        assert_eq!(b["refundStatus"], "SUCCESS");
    }

    #[test]
    fn inquiries_become_ams_payment_statuses() {
        let with = |i: Inquiry| Reply {
            answer: i,
            facts: Facts {
                payment_id: Some("G".into()),
                ..Facts::default()
            },
        };
        for (i, status) in [
            (Inquiry::Paid, "SUCCESS"),
            (
                Inquiry::Declined {
                    code: "X".into(),
                    message: "m".into(),
                },
                "FAIL",
            ),
            (Inquiry::Closed, "CANCELLED"),
            (
                Inquiry::Pending {
                    status: "WAIT_BUYER_PAY".into(),
                },
                "PROCESSING",
            ),
        ] {
            let a = inquiry("P1", &with(i));
            assert!(matches!(a, Answer::Success(_)));
            assert_eq!(v(&a)["paymentStatus"], status);
            assert_eq!(v(&a)["paymentId"], "G");
        }
        let nf = inquiry("P1", &with(Inquiry::NotFound));
        assert!(matches!(&nf, Answer::Failed { code, .. } if code == "ORDER_NOT_EXIST"));
        let failed = inquiry(
            "P1",
            &with(Inquiry::Failed {
                code: "ACQ.X".into(),
            }),
        );
        assert!(matches!(&failed, Answer::Failed { code, .. } if code == "ACQ.X"));
        assert!(matches!(
            inquiry("P1", &Reply::<Inquiry>::unknown("timeout")),
            Answer::Unknown { .. }
        ));
    }
}
