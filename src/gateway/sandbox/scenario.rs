//! The sandbox's rules as pure functions: which scenario a payment code picks, and what each
//! operation answers and changes for a payment in a given state. No I/O, no clock (the time
//! is passed in), so every row of the docs/design.md table is unit-tested here.

use std::time::Duration;

/// What the last two digits of a payment code choose (docs/design.md "Sandbox gateway").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 00–79 (and 90–99): pay S.
    Success,
    /// 80: pay F `USER_BALANCE_NOT_ENOUGH`.
    BalanceNotEnough,
    /// 81: pay F `EXPIRED_CODE`.
    ExpiredCode,
    /// 82: pay U; inquiry PROCESSING twice, then SUCCESS.
    SlowSuccess,
    /// 83: pay U; inquiry PROCESSING always; cancel S.
    Stuck,
    /// 84: the pay answer is lost but the charge succeeds; inquiry SUCCESS.
    LostAnswer,
    /// 85: the pay never arrives (no charge); inquiry no answer; cancel S.
    LostRequest,
    /// 86: pay U; inquiry PROCESSING; cancel unanswered for the outage window, then S.
    CancelOutage,
    /// 87: pay U; inquiry PROCESSING; cancel F `CANCEL_WINDOW_EXCEED`; refunds work.
    CancelWindowExceeded,
    /// 88: pay S with a wrong response signature; inquiry SUCCESS.
    BadSignature,
    /// 89: pay F `RISK_REJECT`.
    RiskReject,
}

impl Scenario {
    /// Picks the scenario from a payment code's last two digits; `None` when the code does
    /// not end in two ASCII digits.
    pub fn from_code(code: &str) -> Option<Scenario> {
        let digits = last_two_digits(code)?;
        Some(Scenario::from_digits(digits.parse().ok()?))
    }

    /// Picks the scenario from a number 0–99. 90–99 are not in the table and behave like
    /// 00–79, so a developer's arbitrary code simply pays.
    pub fn from_digits(n: u8) -> Scenario {
        match n {
            80 => Scenario::BalanceNotEnough,
            81 => Scenario::ExpiredCode,
            82 => Scenario::SlowSuccess,
            83 => Scenario::Stuck,
            84 => Scenario::LostAnswer,
            85 => Scenario::LostRequest,
            86 => Scenario::CancelOutage,
            87 => Scenario::CancelWindowExceeded,
            88 => Scenario::BadSignature,
            89 => Scenario::RiskReject,
            _ => Scenario::Success,
        }
    }
}

/// The last two characters of a code when both are ASCII digits (what the sandbox stores
/// instead of the code).
pub fn last_two_digits(code: &str) -> Option<&str> {
    let tail = code.get(code.len().checked_sub(2)?..)?;
    tail.bytes().all(|b| b.is_ascii_digit()).then_some(tail)
}

/// The sandbox's view of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not final (includes scenario 85's "never arrived").
    Processing,
    /// Charged.
    Success,
    /// Declined.
    Fail,
    /// Closed or reversed by a cancel.
    Cancelled,
}

impl Status {
    /// The `paymentStatus` wire value, also the stored value.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "PROCESSING",
            Status::Success => "SUCCESS",
            Status::Fail => "FAIL",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "PROCESSING" => Status::Processing,
            "SUCCESS" => Status::Success,
            "FAIL" => Status::Fail,
            "CANCELLED" => Status::Cancelled,
            _ => return None,
        })
    }

    /// SUCCESS or FAIL: the states a notifyPayment reports.
    pub fn is_payment_result(self) -> bool {
        matches!(self, Status::Success | Status::Fail)
    }
}

/// The mutable facts the rules read (a stored payment without its ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentFacts {
    /// Chosen at the first pay, never changes.
    pub scenario: Scenario,
    /// Current status.
    pub status: Status,
    /// Why the payment failed, when `status` is `Fail`.
    pub fail_code: Option<String>,
    /// Inquiries answered so far (scenario 82 counts them).
    pub inquiry_count: u32,
    /// Wall-clock creation time in milliseconds since the epoch (scenario 86's window).
    pub created_ms: i64,
    /// The amount in minor units.
    pub amount_minor: i64,
    /// Sum of the successful refunds, minor units.
    pub refunded_minor: i64,
}

/// How the sandbox answers a pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayAnswer {
    /// `S SUCCESS`; `bad_signature` for scenario 88.
    Success {
        /// Sign the answer wrongly on purpose.
        bad_signature: bool,
    },
    /// `F <code>`.
    Failed(&'static str),
    /// `U PAYMENT_IN_PROCESS`.
    InProcess,
    /// Hold the request open and never answer.
    NoAnswer,
}

/// The state a brand-new payment starts in, with the answer to its first pay.
pub fn first_pay(scenario: Scenario) -> (Status, Option<&'static str>, PayAnswer) {
    match scenario {
        Scenario::Success => (
            Status::Success,
            None,
            PayAnswer::Success {
                bad_signature: false,
            },
        ),
        Scenario::BadSignature => (
            Status::Success,
            None,
            PayAnswer::Success {
                bad_signature: true,
            },
        ),
        Scenario::LostAnswer => (Status::Success, None, PayAnswer::NoAnswer),
        Scenario::BalanceNotEnough => fail("USER_BALANCE_NOT_ENOUGH"),
        Scenario::ExpiredCode => fail("EXPIRED_CODE"),
        Scenario::RiskReject => fail("RISK_REJECT"),
        Scenario::LostRequest => (Status::Processing, None, PayAnswer::NoAnswer),
        Scenario::SlowSuccess
        | Scenario::Stuck
        | Scenario::CancelOutage
        | Scenario::CancelWindowExceeded => (Status::Processing, None, PayAnswer::InProcess),
    }
}

fn fail(code: &'static str) -> (Status, Option<&'static str>, PayAnswer) {
    (Status::Fail, Some(code), PayAnswer::Failed(code))
}

/// The answer to a repeated pay (same id, same key fields): the payment's current state,
/// never a second charge.
pub fn repeat_pay(p: &PaymentFacts) -> PayAnswer {
    match p.status {
        Status::Success => PayAnswer::Success {
            bad_signature: p.scenario == Scenario::BadSignature,
        },
        Status::Fail => PayAnswer::Failed(fail_code_static(p.fail_code.as_deref())),
        Status::Cancelled => PayAnswer::Failed("ORDER_IS_CLOSED"),
        Status::Processing if p.scenario == Scenario::LostRequest => PayAnswer::NoAnswer,
        Status::Processing => PayAnswer::InProcess,
    }
}

/// Maps a stored failure code back to its static name (the codes the sandbox itself
/// produces); anything else reads as `PROCESS_FAIL`.
fn fail_code_static(code: Option<&str>) -> &'static str {
    match code {
        Some("USER_BALANCE_NOT_ENOUGH") => "USER_BALANCE_NOT_ENOUGH",
        Some("EXPIRED_CODE") => "EXPIRED_CODE",
        Some("RISK_REJECT") => "RISK_REJECT",
        _ => "PROCESS_FAIL",
    }
}

/// How the sandbox answers an inquiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InquiryAnswer {
    /// `result S` with this `paymentStatus`.
    Status(Status),
    /// Hold the request open.
    NoAnswer,
}

/// Answers an inquiry and returns the payment's facts after it (the inquiry count moves, and
/// scenario 82 succeeds on its third inquiry).
pub fn inquiry(p: &PaymentFacts) -> (InquiryAnswer, PaymentFacts) {
    let mut next = p.clone();
    if p.scenario == Scenario::LostRequest && p.status == Status::Processing {
        return (InquiryAnswer::NoAnswer, next);
    }
    next.inquiry_count = p.inquiry_count.saturating_add(1);
    if p.scenario == Scenario::SlowSuccess
        && p.status == Status::Processing
        && next.inquiry_count > 2
    {
        next.status = Status::Success;
    }
    (InquiryAnswer::Status(next.status), next)
}

/// How the sandbox answers a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAnswer {
    /// `S`; the payment is (now) cancelled.
    Success,
    /// `F <code>`.
    Failed(&'static str),
    /// Hold the request open (scenario 86 during its outage).
    NoAnswer,
}

/// Answers a cancel at wall-clock `now_ms` and returns the facts after it.
pub fn cancel(p: &PaymentFacts, now_ms: i64, outage: Duration) -> (CancelAnswer, PaymentFacts) {
    let mut next = p.clone();
    if p.status == Status::Cancelled {
        return (CancelAnswer::Success, next);
    }
    match p.scenario {
        Scenario::CancelWindowExceeded => {
            return (CancelAnswer::Failed("CANCEL_WINDOW_EXCEED"), next);
        }
        Scenario::CancelOutage => {
            let outage_ms = i64::try_from(outage.as_millis()).unwrap_or(i64::MAX);
            if now_ms.saturating_sub(p.created_ms) < outage_ms {
                return (CancelAnswer::NoAnswer, next);
            }
        }
        _ => {}
    }
    if p.refunded_minor > 0 {
        // Only a full cancel exists; once money went back by refund, the rest goes by refund.
        return (CancelAnswer::Failed("ORDER_STATUS_INVALID"), next);
    }
    next.status = Status::Cancelled;
    (CancelAnswer::Success, next)
}

/// Whether money was taken: SUCCESS, or scenario 87 whose charge went through although its
/// inquiries keep saying PROCESSING (that is why the terminal must refund it).
pub fn charged(p: &PaymentFacts) -> bool {
    p.status == Status::Success
        || (p.scenario == Scenario::CancelWindowExceeded && p.status == Status::Processing)
}

/// Checks a new refund of `amount_minor` against the payment; `Err` carries the F code.
pub fn refund(p: &PaymentFacts, amount_minor: i64) -> Result<PaymentFacts, &'static str> {
    if !charged(p) {
        return Err("ORDER_STATUS_INVALID");
    }
    if amount_minor <= 0 {
        return Err("PARAM_ILLEGAL");
    }
    let left = p.amount_minor - p.refunded_minor;
    if amount_minor > left {
        return Err("REFUND_AMOUNT_EXCEED");
    }
    let mut next = p.clone();
    next.refunded_minor += amount_minor;
    Ok(next)
}

/// The human text the sandbox sends with a result code.
pub fn message_for(code: &str) -> &'static str {
    match code {
        "SUCCESS" => "success",
        "PAYMENT_IN_PROCESS" => "payment in process",
        "USER_BALANCE_NOT_ENOUGH" => "user balance is not enough",
        "EXPIRED_CODE" => "the payment code has expired",
        "RISK_REJECT" => "rejected by risk control",
        "ORDER_NOT_EXIST" => "order not exist",
        "ORDER_IS_CLOSED" => "order is closed",
        "ORDER_STATUS_INVALID" => "order status is invalid for this operation",
        "CANCEL_WINDOW_EXCEED" => "the cancel window has passed, refund instead",
        "REFUND_AMOUNT_EXCEED" => "the refund amount exceeds what is left of the payment",
        "REPEAT_REQ_INCONSISTENT" => "repeated request with different key fields",
        "PARAM_ILLEGAL" => "illegal parameters",
        "INVALID_SIGNATURE" => "the request signature is invalid",
        "UNKNOWN_EXCEPTION" => "API failed due to unknown reason.",
        _ => "process failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTAGE: Duration = Duration::from_millis(300);

    fn facts(scenario: Scenario) -> PaymentFacts {
        let (status, code, _) = first_pay(scenario);
        PaymentFacts {
            scenario,
            status,
            fail_code: code.map(str::to_string),
            inquiry_count: 0,
            created_ms: 1_000,
            amount_minor: 1234,
            refunded_minor: 0,
        }
    }

    fn sc(n: u8) -> Scenario {
        Scenario::from_digits(n)
    }

    #[test]
    fn digits_pick_scenarios() {
        assert_eq!(
            Scenario::from_code("281234567890123400"),
            Some(Scenario::Success)
        );
        assert_eq!(
            Scenario::from_code("281234567890123479"),
            Some(Scenario::Success)
        );
        assert_eq!(
            Scenario::from_code("281234567890123482"),
            Some(Scenario::SlowSuccess)
        );
        assert_eq!(
            Scenario::from_code("281234567890123489"),
            Some(Scenario::RiskReject)
        );
        assert_eq!(
            Scenario::from_code("281234567890123499"),
            Some(Scenario::Success)
        );
        assert_eq!(Scenario::from_code("2812345678901234x9"), None);
        assert_eq!(Scenario::from_code("8"), None);
        assert_eq!(Scenario::from_code(""), None);
        assert_eq!(last_two_digits("2899"), Some("99"));
    }

    #[test]
    fn first_pay_matches_the_table() {
        for n in 0..80 {
            assert_eq!(
                first_pay(sc(n)).2,
                PayAnswer::Success {
                    bad_signature: false
                },
                "{n}"
            );
        }
        assert_eq!(
            first_pay(sc(80)).2,
            PayAnswer::Failed("USER_BALANCE_NOT_ENOUGH")
        );
        assert_eq!(first_pay(sc(81)).2, PayAnswer::Failed("EXPIRED_CODE"));
        for n in [82, 83, 86, 87] {
            assert_eq!(
                first_pay(sc(n)),
                (Status::Processing, None, PayAnswer::InProcess),
                "{n}"
            );
        }
        assert_eq!(
            first_pay(sc(84)),
            (Status::Success, None, PayAnswer::NoAnswer)
        );
        assert_eq!(
            first_pay(sc(85)),
            (Status::Processing, None, PayAnswer::NoAnswer)
        );
        assert_eq!(
            first_pay(sc(88)).2,
            PayAnswer::Success {
                bad_signature: true
            }
        );
        assert_eq!(
            first_pay(sc(89)),
            (
                Status::Fail,
                Some("RISK_REJECT"),
                PayAnswer::Failed("RISK_REJECT")
            )
        );
    }

    #[test]
    fn scenario_82_succeeds_on_the_third_inquiry() {
        let p = facts(sc(82));
        let (a1, p) = inquiry(&p);
        let (a2, p) = inquiry(&p);
        let (a3, p) = inquiry(&p);
        let (a4, p) = inquiry(&p);
        assert_eq!(a1, InquiryAnswer::Status(Status::Processing));
        assert_eq!(a2, InquiryAnswer::Status(Status::Processing));
        assert_eq!(a3, InquiryAnswer::Status(Status::Success));
        assert_eq!(a4, InquiryAnswer::Status(Status::Success));
        assert_eq!(p.inquiry_count, 4);
    }

    #[test]
    fn stuck_scenarios_stay_processing() {
        for n in [83, 86, 87] {
            let mut p = facts(sc(n));
            for _ in 0..20 {
                let (a, next) = inquiry(&p);
                assert_eq!(a, InquiryAnswer::Status(Status::Processing), "{n}");
                p = next;
            }
        }
    }

    #[test]
    fn lost_request_inquiries_stall_until_cancelled() {
        let p = facts(sc(85));
        let (a, same) = inquiry(&p);
        assert_eq!(a, InquiryAnswer::NoAnswer);
        assert_eq!(same, p);
        assert_eq!(repeat_pay(&p), PayAnswer::NoAnswer);
        let (c, p) = cancel(&p, 2_000, OUTAGE);
        assert_eq!(c, CancelAnswer::Success);
        assert_eq!(inquiry(&p).0, InquiryAnswer::Status(Status::Cancelled));
    }

    #[test]
    fn lost_answer_and_bad_signature_are_found_by_inquiry() {
        assert_eq!(
            inquiry(&facts(sc(84))).0,
            InquiryAnswer::Status(Status::Success)
        );
        assert_eq!(
            inquiry(&facts(sc(88))).0,
            InquiryAnswer::Status(Status::Success)
        );
        // A repeated pay of 88 is signed wrongly again; of 84 it answers (the gateway is back).
        assert_eq!(
            repeat_pay(&facts(sc(88))),
            PayAnswer::Success {
                bad_signature: true
            }
        );
        assert_eq!(
            repeat_pay(&facts(sc(84))),
            PayAnswer::Success {
                bad_signature: false
            }
        );
    }

    #[test]
    fn outage_holds_cancels_until_the_window_ends() {
        let p = facts(sc(86));
        assert_eq!(cancel(&p, 1_000, OUTAGE).0, CancelAnswer::NoAnswer);
        let (a, same) = cancel(&p, 1_299, OUTAGE);
        assert_eq!(a, CancelAnswer::NoAnswer);
        assert_eq!(same.status, Status::Processing);
        let (a, p) = cancel(&p, 1_300, OUTAGE);
        assert_eq!(a, CancelAnswer::Success);
        assert_eq!(p.status, Status::Cancelled);
    }

    #[test]
    fn cancel_window_exceeded_refunds_instead() {
        let p = facts(sc(87));
        let (a, p) = cancel(&p, 99_999, OUTAGE);
        assert_eq!(a, CancelAnswer::Failed("CANCEL_WINDOW_EXCEED"));
        assert_eq!(p.status, Status::Processing);
        let p = refund(&p, 1234).expect("full refund of 87 works");
        assert_eq!(p.refunded_minor, 1234);
        assert_eq!(refund(&p, 1), Err("REFUND_AMOUNT_EXCEED"));
    }

    #[test]
    fn cancel_is_idempotent_and_closes_the_order() {
        let p = facts(sc(12));
        let (a, p) = cancel(&p, 2_000, OUTAGE);
        assert_eq!(a, CancelAnswer::Success);
        assert_eq!(p.status, Status::Cancelled);
        assert_eq!(cancel(&p, 3_000, OUTAGE).0, CancelAnswer::Success);
        assert_eq!(repeat_pay(&p), PayAnswer::Failed("ORDER_IS_CLOSED"));
        assert_eq!(inquiry(&p).0, InquiryAnswer::Status(Status::Cancelled));
        assert_eq!(refund(&p, 1), Err("ORDER_STATUS_INVALID"));
    }

    #[test]
    fn cancel_after_a_partial_refund_is_refused() {
        let p = refund(&facts(sc(5)), 100).unwrap();
        assert_eq!(
            cancel(&p, 2_000, OUTAGE).0,
            CancelAnswer::Failed("ORDER_STATUS_INVALID")
        );
    }

    #[test]
    fn refunds_add_up_to_the_amount_and_no_further() {
        let p = facts(sc(5));
        assert_eq!(refund(&p, 1235), Err("REFUND_AMOUNT_EXCEED"));
        assert_eq!(refund(&p, 0), Err("PARAM_ILLEGAL"));
        let p = refund(&p, 1000).unwrap();
        assert_eq!(refund(&p, 235), Err("REFUND_AMOUNT_EXCEED"));
        let p = refund(&p, 234).unwrap();
        assert_eq!(p.refunded_minor, 1234);
    }

    #[test]
    fn failed_and_processing_payments_cannot_be_refunded() {
        assert_eq!(refund(&facts(sc(80)), 1), Err("ORDER_STATUS_INVALID"));
        assert_eq!(refund(&facts(sc(83)), 1), Err("ORDER_STATUS_INVALID"));
    }

    #[test]
    fn repeated_pay_gives_the_same_final_answer() {
        assert_eq!(
            repeat_pay(&facts(sc(3))),
            PayAnswer::Success {
                bad_signature: false
            }
        );
        assert_eq!(
            repeat_pay(&facts(sc(80))),
            PayAnswer::Failed("USER_BALANCE_NOT_ENOUGH")
        );
        assert_eq!(
            repeat_pay(&facts(sc(81))),
            PayAnswer::Failed("EXPIRED_CODE")
        );
        assert_eq!(repeat_pay(&facts(sc(89))), PayAnswer::Failed("RISK_REJECT"));
        assert_eq!(repeat_pay(&facts(sc(82))), PayAnswer::InProcess);
    }

    #[test]
    fn status_round_trips() {
        for s in [
            Status::Processing,
            Status::Success,
            Status::Fail,
            Status::Cancelled,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("PENDING"), None);
    }
}
