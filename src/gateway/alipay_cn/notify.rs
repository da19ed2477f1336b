//! Mainland asynchronous notifications (`trade_status_sync`, a form POST): verified over the
//! sorted fields without `sign` and `sign_type`, checked against our `app_id`, and reduced to
//! what the engine records. Trade statuses only move forward (WAIT_BUYER_PAY → TRADE_SUCCESS
//! → TRADE_FINISHED; TRADE_CLOSED after a timeout close or a full refund).

use super::sign::{sign_content, verify_rsa2};
use super::wire::Params;
use crate::gateway::sign::PublicKey;

/// The exact body the gateway needs to stop resending, after our commit.
pub const ACK: &str = "success";
/// Anything else makes it resend (4m, 10m, 10m, 1h, 2h, 6h, 15h).
pub const RETRY: &str = "fail";

/// A `trade_status` in its forward order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TradeStatus {
    /// Created, the buyer has not paid.
    WaitBuyerPay,
    /// Paid; refunds still possible.
    Success,
    /// Paid and the refund window is over.
    Finished,
    /// Closed unpaid (timeout, cancel) or fully refunded.
    Closed,
}

impl TradeStatus {
    /// Parses the wire value.
    pub fn parse(s: &str) -> Option<TradeStatus> {
        Some(match s {
            "WAIT_BUYER_PAY" => TradeStatus::WaitBuyerPay,
            "TRADE_SUCCESS" => TradeStatus::Success,
            "TRADE_FINISHED" => TradeStatus::Finished,
            "TRADE_CLOSED" => TradeStatus::Closed,
            _ => return None,
        })
    }

    /// Whether a trade may go from `self` to `next` (seeds' order; a status never returns).
    /// TRADE_FINISHED is final; TRADE_CLOSED follows WAIT_BUYER_PAY or TRADE_SUCCESS.
    pub fn may_become(self, next: TradeStatus) -> bool {
        use TradeStatus::*;
        matches!(
            (self, next),
            (WaitBuyerPay, Success | Finished | Closed) | (Success, Finished | Closed)
        )
    }
}

/// Why a notification is refused (answered with something other than `success`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    #[error("body is not a form with unique keys")]
    Form,
    #[error("no sign")]
    Unsigned,
    #[error("sign_type {0:?} is not RSA2")]
    SignType(String),
    #[error("signature does not verify")]
    Signature,
    #[error("app_id {0:?} is not ours")]
    AppId(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("trade_status {0:?} is unknown")]
    Status(String),
}

/// A verified notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The parsed fields.
    pub params: Params,
    /// `out_trade_no`: our paymentRequestId.
    pub out_trade_no: String,
    /// `trade_no`: the gateway's id.
    pub trade_no: Option<String>,
    /// `trade_status`.
    pub status: TradeStatus,
    /// `total_amount` as sent, yuan.
    pub total_amount: Option<String>,
    /// A refund is reported (`refund_fee` or `gmt_refund`).
    pub refunded: bool,
}

impl PartialEq for Params {
    fn eq(&self, other: &Params) -> bool {
        self.iter().eq(other.iter())
    }
}
impl Eq for Params {}

/// The sign content of a notification: sorted, without `sign` and `sign_type`.
pub fn content(params: &Params, skip_empty: bool) -> String {
    sign_content(params.iter(), &["sign", "sign_type"], skip_empty)
}

/// Parses and verifies a notification body with the Alipay public key and checks `app_id`.
pub fn verify(key: &PublicKey, app_id: &str, body: &[u8]) -> Result<Notification, NotifyError> {
    let params = Params::parse_form(body).ok_or(NotifyError::Form)?;
    let sign = params.get("sign").ok_or(NotifyError::Unsigned)?;
    match params.get("sign_type") {
        None | Some("RSA2") => {}
        Some(other) => return Err(NotifyError::SignType(other.to_string())),
    }
    // The Java SDK leaves empty values out of the content and the Python one keeps them:
    // accept a signature over either (both bind every non-empty field).
    let ok = verify_rsa2(key, content(&params, true).as_bytes(), sign)
        || verify_rsa2(key, content(&params, false).as_bytes(), sign);
    if !ok {
        return Err(NotifyError::Signature);
    }
    let got = params.get("app_id").ok_or(NotifyError::Missing("app_id"))?;
    if got != app_id {
        return Err(NotifyError::AppId(got.to_string()));
    }
    let out_trade_no = params
        .get("out_trade_no")
        .ok_or(NotifyError::Missing("out_trade_no"))?
        .to_string();
    let raw_status = params
        .get("trade_status")
        .ok_or(NotifyError::Missing("trade_status"))?;
    let status =
        TradeStatus::parse(raw_status).ok_or_else(|| NotifyError::Status(raw_status.into()))?;
    Ok(Notification {
        out_trade_no,
        trade_no: params.get("trade_no").map(str::to_string),
        status,
        total_amount: params.get("total_amount").map(str::to_string),
        refunded: params.get("refund_fee").is_some() || params.get("gmt_refund").is_some(),
        params,
    })
}

/// Yuan with exactly two decimals to minor units (`"12.34"` → `"1234"`); anything else (`"12.3"`,
/// `"012.34"`, `"12"`) comes back marked so that it can never equal an amount.
pub fn minor_units(yuan: &str) -> String {
    let invalid = || format!("not-yuan:{yuan}");
    let Some((int, frac)) = yuan.split_once('.') else {
        return invalid();
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let canonical_int = int == "0" || (digits(int) && !int.starts_with('0'));
    if !canonical_int || frac.len() != 2 || !digits(frac) {
        return invalid();
    }
    match format!("{int}{frac}").parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => invalid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        use TradeStatus::*;
        assert!(WaitBuyerPay.may_become(Success));
        assert!(Success.may_become(Finished));
        assert!(Success.may_become(Closed));
        assert!(!Finished.may_become(Success));
        assert!(!Finished.may_become(Closed));
        assert!(!Closed.may_become(Success));
        assert!(!Success.may_become(Success));
        assert_eq!(TradeStatus::parse("TRADE_PENDING"), None);
    }

    #[test]
    fn yuan_to_minor_is_exact() {
        assert_eq!(minor_units("12.34"), "1234");
        assert_eq!(minor_units("0.01"), "1");
        for bad in ["12.3", "012.34", "12.340", "12", "-1.00", "1e3.00", ""] {
            assert!(minor_units(bad).starts_with("not-yuan:"), "{bad}");
        }
    }
}
