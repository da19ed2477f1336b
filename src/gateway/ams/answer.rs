//! What each AMS answer means to the machine: the only place that knows AMS result codes and
//! statuses (`ORDER_NOT_EXIST`, `CANCEL_WINDOW_EXCEED`, `paymentStatus`, …). Pure functions from
//! the client's classified [`Outcome`] to a [`Reply`] in the machine's terms.

use super::wire;
use crate::gateway::{Answer, Facts, Inquiry, Outcome, Refusal, Reply};

/// The AMS result code of a success.
pub const SUCCESS: &str = "SUCCESS";

/// What an AMS refusal code means.
pub fn refusal(code: &str) -> Refusal {
    match code {
        "ORDER_NOT_EXIST" => Refusal::NoSuchPayment,
        "CANCEL_WINDOW_EXCEED" => Refusal::CancelWindowPassed,
        _ => Refusal::Other,
    }
}

fn failed(code: String, message: String) -> Reply<Answer> {
    Reply {
        facts: Facts {
            result_code: Some(code.clone()),
            result_message: Some(message.clone()),
            ..Facts::default()
        },
        answer: Answer::Failed {
            refusal: refusal(&code),
            code,
            message,
        },
    }
}

fn success(facts: Facts) -> Reply<Answer> {
    Reply {
        answer: Answer::Success,
        facts: Facts {
            result_code: Some(SUCCESS.into()),
            ..facts
        },
    }
}

fn amount(a: Option<&wire::WireAmount>) -> Option<crate::domain::money::Amount> {
    a.and_then(wire::WireAmount::to_amount)
}

/// pay.
pub fn pay(o: Outcome<wire::PayResponse>) -> Reply<Answer> {
    match o {
        Outcome::Success(r) => success(Facts {
            amount: amount(r.payment_amount.as_ref()),
            payment_id: r.payment_id,
            time: r.payment_time,
            ..Facts::default()
        }),
        Outcome::Failed { code, message } => failed(code, message),
        Outcome::Unknown { why } => Reply::<Answer>::unknown(why),
    }
}

/// inquiryPayment: `paymentStatus` is the outcome; `result` only says whether the inquiry call
/// itself worked.
pub fn inquiry(o: Outcome<wire::InquiryPaymentResponse>) -> Reply<Inquiry> {
    match o {
        Outcome::Success(r) => {
            let mut facts = Facts {
                payment_id: r.payment_id.clone(),
                amount: amount(r.payment_amount.as_ref()),
                time: r.payment_time.clone(),
                ..Facts::default()
            };
            let answer = match r.payment_status.as_deref() {
                Some("SUCCESS") => {
                    facts.result_code = Some(SUCCESS.into());
                    Inquiry::Paid
                }
                Some("FAIL") => {
                    facts.result_message = r.payment_result_message.clone();
                    Inquiry::Declined {
                        code: r.payment_result_code.unwrap_or_else(|| "FAIL".into()),
                        message: r.payment_result_message.unwrap_or_default(),
                    }
                }
                Some("CANCELLED") => {
                    facts.result_code = Some("CANCELLED".into());
                    Inquiry::Closed
                }
                other => Inquiry::Pending {
                    status: other.unwrap_or("no paymentStatus").to_string(),
                },
            };
            Reply { answer, facts }
        }
        Outcome::Failed { code, message } => {
            let answer = match refusal(&code) {
                Refusal::NoSuchPayment => Inquiry::NotFound,
                _ => Inquiry::Failed { code: code.clone() },
            };
            let facts = Facts {
                result_message: (answer != Inquiry::NotFound).then_some(message),
                result_code: Some(code),
                ..Facts::default()
            };
            Reply { answer, facts }
        }
        Outcome::Unknown { why } => Reply::<Inquiry>::unknown(why),
    }
}

/// cancel.
pub fn cancel(o: Outcome<wire::CancelResponse>) -> Reply<Answer> {
    match o {
        Outcome::Success(r) => success(Facts {
            payment_id: r.payment_id,
            time: r.cancel_time,
            ..Facts::default()
        }),
        Outcome::Failed { code, message } => failed(code, message),
        Outcome::Unknown { why } => Reply::<Answer>::unknown(why),
    }
}

/// refund.
pub fn refund(o: Outcome<wire::RefundResponse>) -> Reply<Answer> {
    match o {
        Outcome::Success(r) => success(Facts {
            amount: amount(r.refund_amount.as_ref()),
            payment_id: r.payment_id,
            refund_id: r.refund_id,
            time: r.refund_time,
            ..Facts::default()
        }),
        Outcome::Failed { code, message } => failed(code, message),
        Outcome::Unknown { why } => Reply::<Answer>::unknown(why),
    }
}

/// inquiryRefund: `refundStatus` SUCCESS is done, FAIL refused, anything else still unknown.
pub fn inquiry_refund(o: Outcome<wire::InquiryRefundResponse>) -> Reply<Answer> {
    match o {
        Outcome::Success(r) => {
            let facts = Facts {
                amount: amount(r.refund_amount.as_ref()),
                refund_id: r.refund_id,
                ..Facts::default()
            };
            match r.refund_status.as_deref() {
                Some("SUCCESS") => success(facts),
                Some("FAIL") => Reply {
                    answer: Answer::Failed {
                        refusal: Refusal::Other,
                        code: "FAIL".into(),
                        message: "the gateway reports the refund failed".into(),
                    },
                    facts: Facts {
                        result_code: Some("FAIL".into()),
                        ..facts
                    },
                },
                other => Reply {
                    answer: Answer::Unknown {
                        why: format!("refund {}", other.unwrap_or("has no refundStatus")),
                    },
                    facts,
                },
            }
        }
        Outcome::Failed { code, message } => failed(code, message),
        Outcome::Unknown { why } => Reply::<Answer>::unknown(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_map_to_their_meaning() {
        assert_eq!(refusal("ORDER_NOT_EXIST"), Refusal::NoSuchPayment);
        assert_eq!(refusal("CANCEL_WINDOW_EXCEED"), Refusal::CancelWindowPassed);
        assert_eq!(refusal("ORDER_STATUS_INVALID"), Refusal::Other);
        // Codes are case-sensitive on the wire.
        assert_eq!(refusal("order_not_exist"), Refusal::Other);
    }

    #[test]
    fn inquiry_statuses_and_refusals() {
        let ok = |status: Option<&str>| {
            Outcome::Success(wire::InquiryPaymentResponse {
                payment_status: status.map(str::to_string),
                payment_id: Some("G1".into()),
                payment_result_code: Some("USER_BALANCE_NOT_ENOUGH".into()),
                ..Default::default()
            })
        };
        assert_eq!(inquiry(ok(Some("SUCCESS"))).answer, Inquiry::Paid);
        assert_eq!(
            inquiry(ok(Some("SUCCESS"))).facts.payment_id.as_deref(),
            Some("G1")
        );
        assert_eq!(inquiry(ok(Some("CANCELLED"))).answer, Inquiry::Closed);
        assert!(matches!(
            inquiry(ok(Some("FAIL"))).answer,
            Inquiry::Declined { code, .. } if code == "USER_BALANCE_NOT_ENOUGH"
        ));
        assert_eq!(
            inquiry(ok(None)).answer,
            Inquiry::Pending {
                status: "no paymentStatus".into()
            }
        );
        let f = |code: &str| Outcome::<wire::InquiryPaymentResponse>::Failed {
            code: code.into(),
            message: "m".into(),
        };
        assert_eq!(inquiry(f("ORDER_NOT_EXIST")).answer, Inquiry::NotFound);
        assert_eq!(
            inquiry(f("ACCESS_DENIED")).answer,
            Inquiry::Failed {
                code: "ACCESS_DENIED".into()
            }
        );
        assert!(!inquiry(Outcome::Unknown { why: "t".into() }).is_certain());
    }

    #[test]
    fn cancel_and_refund_answers() {
        let window = cancel(Outcome::Failed {
            code: "CANCEL_WINDOW_EXCEED".into(),
            message: "m".into(),
        });
        assert!(matches!(
            window.answer,
            Answer::Failed {
                refusal: Refusal::CancelWindowPassed,
                ..
            }
        ));
        assert_eq!(window.facts.result_message.as_deref(), Some("m"));
        let done = refund(Outcome::Success(wire::RefundResponse {
            refund_id: Some("RF1".into()),
            ..Default::default()
        }));
        assert_eq!(done.answer, Answer::Success);
        assert_eq!(done.facts.refund_id.as_deref(), Some("RF1"));
        assert_eq!(done.facts.result_code.as_deref(), Some(SUCCESS));
        let processing = inquiry_refund(Outcome::Success(wire::InquiryRefundResponse {
            refund_status: Some("PROCESSING".into()),
            ..Default::default()
        }));
        assert!(!processing.is_certain());
    }
}
