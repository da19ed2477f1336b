//! What a mainland answer means, mapped into the machine's own answers: `code`, `sub_code`,
//! `trade_status`, `action` and `retry_flag` go no further than this file.
//!
//! | call | answer | meaning |
//! |---|---|---|
//! | pay | verified `10000`; verified `40004 ACQ.TRADE_HAS_SUCCESS` (a repeat) | success |
//! | pay | `10003` (buyer confirming), `20000`, `ACQ.SYSTEM_ERROR`, no answer | unknown → query |
//! | pay | `40004` (signed or unsigned), other `4000x` | failure with its `sub_code` |
//! | query | `WAIT_BUYER_PAY` / `TRADE_SUCCESS`, `TRADE_FINISHED` / `TRADE_CLOSED` | pending / paid / closed |
//! | query | `40004 ACQ.TRADE_NOT_EXIST` | not found yet |
//! | cancel | verified `10000`, `action=close` / `action=refund` / no `action` | closed / reversed after a charge / no such trade |
//! | cancel | `retry_flag=Y`, `20000`, no answer | resend the identical cancel |
//! | cancel | `40004 ACQ.TRADE_CANCEL_TIME_OUT` | the cancel window passed: refund instead |
//! | refund | verified `10000` | refunded (`fund_change` says whether this call moved money) |
//! | refund query | verified `10000` with `refund_status=REFUND_SUCCESS` / without it | refunded / not |
//!
//! An unsigned answer is read only as a failure (the gateway leaves its protocol errors
//! unsigned); an unsigned or wrongly signed success is unknown, and so is a wrongly signed
//! failure.

use super::wire::Reply;
use crate::domain::machine::{Answer, Inquiry, Refusal};
use crate::domain::money::{Amount, Currency};
use crate::gateway::{Facts, Reply as Answered};

/// The success code.
pub const SUCCESS: &str = "10000";
/// The buyer is confirming the payment on the phone (pay only).
pub const WAITING_FOR_BUYER: &str = "10003";
/// Service unavailable: the outcome is unknown.
pub const UNKNOWN: &str = "20000";

/// How far an answer's signature was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// `sign` verified with the gateway key.
    Verified,
    /// No `sign` at all.
    Unsigned,
    /// A `sign` that does not verify.
    Invalid,
}

/// One call's result before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The gateway answered with an object.
    Answer {
        /// The fields read from the signed object.
        reply: Box<Reply>,
        /// What the signature check found.
        signed: Signed,
    },
    /// Timeout, connection error, HTTP ≠ 200, unreadable body.
    NoAnswer {
        /// What happened.
        why: String,
    },
}

/// Whether a failure code asks the cashier to scan a fresh code (invalid or expired code).
pub fn asks_for_rescan(code: &str) -> bool {
    matches!(
        code,
        "ACQ.PAYMENT_AUTH_CODE_INVALID" | "ACQ.AUTH_CODE_INVALID"
    )
}

/// Yuan as the gateway writes it, read as a CNY amount.
fn yuan(s: Option<&String>) -> Option<Amount> {
    let cny = Currency::from_code("CNY").ok()?;
    Amount::parse(s?, cny).ok()
}

/// What an answer told us beyond its meaning. Only a verified answer's ids, amounts and
/// times are facts; of an unsigned one only its code and message are kept.
fn facts_of(reading: &Reading) -> Facts {
    let Reading::Answer { reply, signed } = reading else {
        return Facts::default();
    };
    let trusted = *signed == Signed::Verified;
    let (code, message) = failure(reply);
    Facts {
        payment_id: reply.trade_no.clone().filter(|_| trusted),
        refund_id: None,
        result_code: Some(code).filter(|c| !c.is_empty()),
        result_message: Some(message).filter(|m| !m.is_empty()),
        amount: yuan(reply.total_amount.as_ref()).filter(|_| trusted),
        time: reply
            .gmt_payment
            .clone()
            .or_else(|| reply.send_pay_date.clone())
            .or_else(|| reply.gmt_refund_pay.clone())
            .filter(|_| trusted),
        cancel_refunded: false,
    }
}

/// The refusal a failure code means to the machine.
fn refusal(sub_code: &str) -> Refusal {
    match sub_code {
        "ACQ.TRADE_NOT_EXIST" => Refusal::NoSuchPayment,
        "ACQ.TRADE_CANCEL_TIME_OUT" => Refusal::CancelWindowPassed,
        _ => Refusal::Other,
    }
}

fn failed(reply: &Reply) -> Answer {
    let (code, message) = failure(reply);
    Answer::Failed {
        refusal: refusal(&code),
        code,
        message,
    }
}

fn failure(reply: &Reply) -> (String, String) {
    let code = reply
        .sub_code
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| reply.code.clone());
    let message = reply
        .sub_msg
        .clone()
        .or_else(|| reply.msg.clone())
        .unwrap_or_default();
    (code, message)
}

/// `4000x`: the gateway refused the call for good.
fn is_failure_code(code: &str) -> bool {
    code.len() == 5 && code.starts_with("400") && code.bytes().all(|b| b.is_ascii_digit())
}

fn unknown_why(reply: &Reply, signed: Signed) -> String {
    let (code, message) = failure(reply);
    match signed {
        Signed::Invalid => format!("answer {code} with a signature that does not verify"),
        Signed::Unsigned => format!("unsigned answer {code} {message}"),
        Signed::Verified => format!("answer {code} {message}"),
    }
}

/// `alipay.trade.pay`.
pub fn pay(reading: &Reading) -> Answered<Answer> {
    let facts = facts_of(reading);
    let answer = match reading {
        Reading::NoAnswer { why } => Answer::Unknown { why: why.clone() },
        Reading::Answer { reply, signed } => {
            let sub = reply.sub_code.as_deref().unwrap_or("");
            match (reply.code.as_str(), *signed) {
                (_, Signed::Invalid) => Answer::Unknown {
                    why: unknown_why(reply, *signed),
                },
                (SUCCESS, Signed::Verified) => Answer::Success,
                (c, Signed::Verified) if is_failure_code(c) && sub == "ACQ.TRADE_HAS_SUCCESS" => {
                    Answer::Success
                }
                (WAITING_FOR_BUYER, _) => Answer::Unknown {
                    why: "waiting for the buyer to confirm (10003)".into(),
                },
                (c, _) if is_failure_code(c) && !ambiguous(sub) => failed(reply),
                _ => Answer::Unknown {
                    why: unknown_why(reply, *signed),
                },
            }
        }
    };
    Answered { answer, facts }
}

/// Sub codes that say nothing certain about the trade, whatever `code` says. The error
/// tables give `ACQ.SYSTEM_ERROR` as "the trade may have succeeded or failed: query it"; the
/// cancel's own enumeration also spells it `AQC.SYSTEM_ERROR`, read the same way.
fn ambiguous(sub_code: &str) -> bool {
    matches!(
        sub_code,
        "ACQ.SYSTEM_ERROR" | "AQC.SYSTEM_ERROR" | "ACQ.TRADE_HAS_SUCCESS" | "aop.ACQ.SYSTEM_ERROR"
    )
}

/// "No such trade": the refund query's error table lists it with and without the prefix.
fn no_such_trade(sub_code: &str) -> bool {
    matches!(sub_code, "ACQ.TRADE_NOT_EXIST" | "TRADE_NOT_EXIST")
}

/// `alipay.trade.query`.
pub fn query(reading: &Reading) -> Answered<Inquiry> {
    let facts = facts_of(reading);
    let inquiry = match reading {
        Reading::NoAnswer { why } => Inquiry::Unknown { why: why.clone() },
        Reading::Answer { reply, signed } => {
            let sub = reply.sub_code.as_deref().unwrap_or("");
            match (reply.code.as_str(), *signed) {
                (_, Signed::Invalid) => Inquiry::Unknown {
                    why: unknown_why(reply, *signed),
                },
                (SUCCESS, Signed::Verified) => match reply.trade_status.as_deref() {
                    Some("TRADE_SUCCESS") | Some("TRADE_FINISHED") => Inquiry::Paid,
                    Some("TRADE_CLOSED") => Inquiry::Closed,
                    other => Inquiry::Pending {
                        status: other.unwrap_or("").to_string(),
                    },
                },
                (c, _) if is_failure_code(c) && sub == "ACQ.TRADE_NOT_EXIST" => Inquiry::NotFound,
                (c, _) if is_failure_code(c) && !ambiguous(sub) => Inquiry::Failed {
                    code: failure(reply).0,
                },
                _ => Inquiry::Unknown {
                    why: unknown_why(reply, *signed),
                },
            }
        }
    };
    Answered {
        answer: inquiry,
        facts,
    }
}

/// What a cancel achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The trade is closed and was never charged (`action=close`).
    Closed,
    /// A success without an `action`: the gateway found no trade to cancel.
    NotFound,
    /// The trade had been charged and the cancel refunded it in full (`action=refund`).
    Reversed,
    /// Too late to cancel: the money goes back by refund.
    WindowPassed,
    /// A definitive refusal.
    Failed {
        /// `sub_code` or `code`.
        code: String,
        /// Its text.
        message: String,
    },
    /// Resend the identical cancel (`retry_flag=Y`, `20000`, no answer, bad signature).
    Retry {
        /// What happened.
        why: String,
    },
}

impl Cancel {
    /// The machine's answer: closed and reversed are both a confirmed cancel (no money stays
    /// with the merchant); a passed window is the refusal that turns the cancel into a refund.
    pub fn answer(&self) -> Answer {
        match self {
            Cancel::Closed | Cancel::Reversed => Answer::Success,
            // As an AMS cancel of an unknown payment: the machine decides what that means.
            Cancel::NotFound => Answer::Failed {
                refusal: Refusal::NoSuchPayment,
                code: "ACQ.TRADE_NOT_EXIST".into(),
                message: "the gateway found no trade to cancel (no action in the answer)".into(),
            },
            Cancel::WindowPassed => Answer::Failed {
                refusal: Refusal::CancelWindowPassed,
                code: "ACQ.TRADE_CANCEL_TIME_OUT".into(),
                message: "too late to cancel: refund instead".into(),
            },
            Cancel::Failed { code, message } => Answer::Failed {
                refusal: refusal(code),
                code: code.clone(),
                message: message.clone(),
            },
            Cancel::Retry { why } => Answer::Unknown { why: why.clone() },
        }
    }
}

/// `alipay.trade.cancel`.
pub fn cancel(reading: &Reading) -> (Cancel, Facts) {
    let facts = facts_of(reading);
    let verdict = match reading {
        Reading::NoAnswer { why } => Cancel::Retry { why: why.clone() },
        Reading::Answer { reply, signed } => {
            let sub = reply.sub_code.as_deref().unwrap_or("");
            let retry = reply.retry_flag.as_deref() == Some("Y");
            match (reply.code.as_str(), *signed) {
                (_, Signed::Invalid) => Cancel::Retry {
                    why: unknown_why(reply, *signed),
                },
                (SUCCESS, Signed::Verified) if reply.action.as_deref() == Some("refund") => {
                    Cancel::Reversed
                }
                (SUCCESS, Signed::Verified) if reply.action.as_deref() == Some("close") => {
                    Cancel::Closed
                }
                (SUCCESS, Signed::Verified) => Cancel::NotFound,
                _ if retry => Cancel::Retry {
                    why: format!("retry_flag=Y: {}", unknown_why(reply, *signed)),
                },
                (c, _) if is_failure_code(c) && sub == "ACQ.TRADE_CANCEL_TIME_OUT" => {
                    Cancel::WindowPassed
                }
                (c, _) if is_failure_code(c) && !ambiguous(sub) => {
                    let (code, message) = failure(reply);
                    Cancel::Failed { code, message }
                }
                _ => Cancel::Retry {
                    why: unknown_why(reply, *signed),
                },
            }
        }
    };
    (verdict, facts)
}

/// `alipay.trade.refund`: success, failure or unknown as for pay; the `bool` is
/// `fund_change` (whether this very call moved money) on a success.
pub fn refund(reading: &Reading) -> (Answered<Answer>, Option<bool>) {
    let facts = facts_of(reading);
    match reading {
        Reading::NoAnswer { why } => (
            Answered {
                answer: Answer::Unknown { why: why.clone() },
                facts,
            },
            None,
        ),
        Reading::Answer { reply, signed } => {
            let sub = reply.sub_code.as_deref().unwrap_or("");
            let answer = match (reply.code.as_str(), *signed) {
                (_, Signed::Invalid) => Answer::Unknown {
                    why: unknown_why(reply, *signed),
                },
                (SUCCESS, Signed::Verified) => Answer::Success,
                (c, _) if is_failure_code(c) && !ambiguous(sub) => failed(reply),
                _ => Answer::Unknown {
                    why: unknown_why(reply, *signed),
                },
            };
            let moved =
                (answer == Answer::Success).then(|| reply.fund_change.as_deref() == Some("Y"));
            let mut facts = facts;
            if answer == Answer::Success {
                // A refund answer's total_amount is the trade's; the refunded sum is refund_fee.
                facts.amount = yuan(reply.refund_fee.as_ref());
            }
            (Answered { answer, facts }, moved)
        }
    }
}

/// What a refund query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStatus {
    /// `REFUND_SUCCESS`.
    Refunded,
    /// The gateway has no successful refund under this `out_request_no`.
    NotRefunded,
    /// No certain answer.
    Unknown {
        /// What happened.
        why: String,
    },
}

/// `alipay.trade.fastpay.refund.query`.
pub fn refund_query(reading: &Reading) -> (RefundStatus, Facts) {
    let facts = facts_of(reading);
    let status = match reading {
        Reading::NoAnswer { why } => RefundStatus::Unknown { why: why.clone() },
        Reading::Answer { reply, signed } => {
            let sub = reply.sub_code.as_deref().unwrap_or("");
            match (reply.code.as_str(), *signed) {
                (_, Signed::Invalid) => RefundStatus::Unknown {
                    why: unknown_why(reply, *signed),
                },
                (SUCCESS, Signed::Verified) => {
                    if reply.refund_status.as_deref() == Some("REFUND_SUCCESS") {
                        RefundStatus::Refunded
                    } else {
                        RefundStatus::NotRefunded
                    }
                }
                (c, Signed::Verified) if is_failure_code(c) && no_such_trade(sub) => {
                    RefundStatus::NotRefunded
                }
                _ => RefundStatus::Unknown {
                    why: unknown_why(reply, *signed),
                },
            }
        }
    };
    (status, facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(code: &str, sub: Option<&str>, signed: Signed) -> Reading {
        Reading::Answer {
            reply: Box::new(Reply {
                code: code.into(),
                msg: Some("m".into()),
                sub_code: sub.map(str::to_string),
                trade_no: Some("2026".into()),
                ..Reply::default()
            }),
            signed,
        }
    }

    fn with(code: &str, signed: Signed, f: impl FnOnce(&mut Reply)) -> Reading {
        let mut r = read(code, None, signed);
        if let Reading::Answer { reply, .. } = &mut r {
            f(reply);
        }
        r
    }

    fn failed(code: &str) -> Answer {
        Answer::Failed {
            refusal: Refusal::Other,
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn pay_answers() {
        use Signed::*;
        assert_eq!(pay(&read("10000", None, Verified)).answer, Answer::Success);
        assert_eq!(
            pay(&read("10000", None, Verified))
                .facts
                .payment_id
                .as_deref(),
            Some("2026")
        );
        assert!(matches!(
            pay(&read("10000", None, Unsigned)).answer,
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            pay(&read("10000", None, Invalid)).answer,
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            pay(&read("10003", None, Verified)).answer,
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            pay(&read("20000", Some("ACQ.SYSTEM_ERROR"), Verified)).answer,
            Answer::Unknown { .. }
        ));
        let Answered {
            answer: a,
            facts: f,
        } = pay(&read(
            "40004",
            Some("ACQ.PAYMENT_AUTH_CODE_INVALID"),
            Verified,
        ));
        assert_eq!(a, failed("ACQ.PAYMENT_AUTH_CODE_INVALID"));
        assert!(asks_for_rescan(f.result_code.as_deref().unwrap()));
        assert_eq!(
            pay(&read("40004", Some("ACQ.TRADE_HAS_SUCCESS"), Verified)).answer,
            Answer::Success
        );
        assert!(matches!(
            pay(&read("40004", Some("ACQ.TRADE_HAS_SUCCESS"), Unsigned)).answer,
            Answer::Unknown { .. }
        ));
        // Unsigned protocol errors are failures; their ids are not facts.
        let Answered {
            answer: a,
            facts: f,
        } = pay(&read("40002", Some("isv.invalid-signature"), Unsigned));
        assert_eq!(a, failed("isv.invalid-signature"));
        assert_eq!(f.payment_id, None);
        assert!(matches!(
            pay(&read(
                "40004",
                Some("ACQ.BUYER_BALANCE_NOT_ENOUGH"),
                Invalid
            ))
            .answer,
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            pay(&read("99999", None, Verified)).answer,
            Answer::Unknown { .. }
        ));
        assert!(matches!(
            pay(&Reading::NoAnswer { why: "t".into() }).answer,
            Answer::Unknown { .. }
        ));
    }

    #[test]
    fn query_answers() {
        use Signed::*;
        let st = |s: &str| {
            query(&with("10000", Verified, |r| {
                r.trade_status = Some(s.into())
            }))
            .answer
        };
        assert_eq!(st("TRADE_SUCCESS"), Inquiry::Paid);
        assert_eq!(st("TRADE_FINISHED"), Inquiry::Paid);
        assert_eq!(st("TRADE_CLOSED"), Inquiry::Closed);
        assert_eq!(
            st("WAIT_BUYER_PAY"),
            Inquiry::Pending {
                status: "WAIT_BUYER_PAY".into()
            }
        );
        assert!(matches!(
            query(&with("10000", Unsigned, |r| r.trade_status =
                Some("TRADE_SUCCESS".into())))
            .answer,
            Inquiry::Unknown { .. }
        ));
        assert_eq!(
            query(&read("40004", Some("ACQ.TRADE_NOT_EXIST"), Verified)).answer,
            Inquiry::NotFound
        );
        assert_eq!(
            query(&read("40004", Some("ACQ.INVALID_PARAMETER"), Verified)).answer,
            Inquiry::Failed {
                code: "ACQ.INVALID_PARAMETER".into()
            }
        );
        assert!(matches!(
            query(&read("20000", None, Verified)).answer,
            Inquiry::Unknown { .. }
        ));
    }

    #[test]
    fn cancel_answers() {
        use Signed::*;
        let act = |a: Option<&str>| {
            cancel(&with("10000", Verified, |r| {
                r.action = a.map(str::to_string)
            }))
            .0
        };
        assert_eq!(act(Some("close")), Cancel::Closed);
        assert_eq!(act(None), Cancel::NotFound);
        assert!(matches!(
            Cancel::NotFound.answer(),
            Answer::Failed {
                refusal: Refusal::NoSuchPayment,
                ..
            }
        ));
        assert_eq!(act(Some("refund")), Cancel::Reversed);
        let retry = with("40004", Verified, |r| {
            r.sub_code = Some("ACQ.SYSTEM_ERROR".into());
            r.retry_flag = Some("Y".into());
        });
        assert!(matches!(cancel(&retry).0, Cancel::Retry { .. }));
        let retry_any = with("40004", Verified, |r| {
            r.sub_code = Some("ACQ.TRADE_STATUS_ERROR".into());
            r.retry_flag = Some("Y".into());
        });
        assert!(matches!(cancel(&retry_any).0, Cancel::Retry { .. }));
        assert_eq!(
            cancel(&read("40004", Some("ACQ.TRADE_CANCEL_TIME_OUT"), Verified)).0,
            Cancel::WindowPassed
        );
        assert!(matches!(
            cancel(&read("40004", Some("ACQ.TRADE_STATUS_ERROR"), Verified)).0,
            Cancel::Failed { .. }
        ));
        assert!(matches!(
            cancel(&read("10000", None, Unsigned)).0,
            Cancel::Retry { .. }
        ));
        assert!(matches!(
            cancel(&read("10000", None, Invalid)).0,
            Cancel::Retry { .. }
        ));
        assert!(matches!(
            cancel(&Reading::NoAnswer { why: "t".into() }).0,
            Cancel::Retry { .. }
        ));
    }

    #[test]
    fn refund_answers() {
        use Signed::*;
        let r = refund(&with("10000", Verified, |r| {
            r.fund_change = Some("Y".into())
        }));
        assert_eq!((r.0.answer, r.1), (Answer::Success, Some(true)));
        let r = refund(&with("10000", Verified, |r| {
            r.fund_change = Some("N".into())
        }));
        assert_eq!((r.0.answer, r.1), (Answer::Success, Some(false)));
        assert!(matches!(
            refund(&read("10000", None, Unsigned)).0.answer,
            Answer::Unknown { .. }
        ));
        assert_eq!(
            refund(&read(
                "40004",
                Some("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"),
                Verified
            ))
            .0
            .answer,
            failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL")
        );
        assert!(matches!(
            refund(&read("20000", None, Verified)).0.answer,
            Answer::Unknown { .. }
        ));
        let ok = with("10000", Verified, |r| {
            r.refund_status = Some("REFUND_SUCCESS".into())
        });
        assert_eq!(refund_query(&ok).0, RefundStatus::Refunded);
        assert_eq!(
            refund_query(&read("10000", None, Verified)).0,
            RefundStatus::NotRefunded
        );
        assert!(matches!(
            refund_query(&read("10000", None, Invalid)).0,
            RefundStatus::Unknown { .. }
        ));
        for sub in ["ACQ.TRADE_NOT_EXIST", "TRADE_NOT_EXIST"] {
            assert_eq!(
                refund_query(&read("40004", Some(sub), Verified)).0,
                RefundStatus::NotRefunded,
                "{sub}"
            );
            assert!(
                matches!(
                    refund_query(&read("40004", Some(sub), Unsigned)).0,
                    RefundStatus::Unknown { .. }
                ),
                "{sub}: unsigned says nothing"
            );
        }
    }

    #[test]
    fn a_system_error_in_either_spelling_is_unknown_for_every_call() {
        use Signed::*;
        for sub in [
            "ACQ.SYSTEM_ERROR",
            "AQC.SYSTEM_ERROR",
            "aop.ACQ.SYSTEM_ERROR",
        ] {
            for signed in [Verified, Unsigned] {
                let r = read("40004", Some(sub), signed);
                assert!(matches!(pay(&r).answer, Answer::Unknown { .. }), "{sub}");
                assert!(matches!(query(&r).answer, Inquiry::Unknown { .. }), "{sub}");
                assert!(matches!(cancel(&r).0, Cancel::Retry { .. }), "{sub}");
                assert!(
                    matches!(refund(&r).0.answer, Answer::Unknown { .. }),
                    "{sub}"
                );
            }
        }
    }
}
