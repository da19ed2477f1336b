//! AMS `notifyPayment` as the terminal's endpoint receives it: the signature check, the
//! message read into plain fields, and the reply bodies (acknowledge, retry, refuse). The
//! endpoint in `api/notify.rs` keeps the HTTP and the database; every AMS string is here.

use super::client::verify_notification;
use super::wire::{NotifyPayment, NOTIFY_ACK, NOTIFY_RETRY};
use crate::gateway::sign::PublicKey;

/// The body that acknowledges a notification (the gateway stops resending).
pub const ACK: &str = NOTIFY_ACK;

/// The body that makes the gateway resend the notification.
pub const RETRY: &str = NOTIFY_RETRY;

/// What a notification says about its payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Says {
    /// `PAYMENT_PENDING`, or a status that ends nothing.
    Pending,
    /// A verified success.
    Paid,
    /// A verified failure.
    NotPaid,
}

/// A verified notification's fields, as the endpoint records them.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The `paymentRequestId` it claims to be about.
    pub payment_request_id: Option<String>,
    /// The gateway's `paymentId`.
    pub payment_id: Option<String>,
    /// `notifyType`.
    pub notify_type: Option<String>,
    /// `result.resultStatus`, when not empty.
    pub result_status: Option<String>,
    /// `result.resultCode`, when not empty.
    pub result_code: Option<String>,
    /// `paymentAmount.value` (minor units, as sent).
    pub amount_value: Option<String>,
    /// `paymentAmount.currency`.
    pub currency: Option<String>,
    /// What it means for the payment.
    pub says: Says,
}

/// Why a notification is refused, each with the reply the real gateway would expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A malformed request (headers, content type, size, JSON).
    ParamIllegal,
    /// The signature does not verify.
    InvalidSignature,
    /// Another client's notification.
    InvalidClient,
}

/// The reply body of a refusal, with a message for the gateway's logs.
pub fn refusal_body(r: Refusal, message: &str) -> String {
    let code = match r {
        Refusal::ParamIllegal => "PARAM_ILLEGAL",
        Refusal::InvalidSignature => "INVALID_SIGNATURE",
        Refusal::InvalidClient => "INVALID_CLIENT",
    };
    serde_json::json!({
        "result": {"resultCode": code, "resultStatus": "F", "resultMessage": message}
    })
    .to_string()
}

/// Verifies the notification's signature over exactly the bytes received (`path` as the
/// gateway signed it).
pub fn verify(
    gateway_key: &PublicKey,
    path: &str,
    client_id: &str,
    request_time: &str,
    body: &[u8],
    signature: &str,
) -> Result<(), String> {
    verify_notification(gateway_key, path, client_id, request_time, body, signature)
        .map_err(|e| e.to_string())
}

/// Reads a (verified) body; `None` when it is not a `notifyPayment` JSON object.
pub fn parse(text: &str) -> Option<Notification> {
    let msg: NotifyPayment = serde_json::from_str(text).ok()?;
    let says = match (
        msg.notify_type.as_deref(),
        msg.result.result_status.as_str(),
    ) {
        (Some("PAYMENT_PENDING"), _) => Says::Pending,
        (_, "S") => Says::Paid,
        (_, "F") => Says::NotPaid,
        _ => Says::Pending,
    };
    Some(Notification {
        payment_request_id: msg.payment_request_id,
        payment_id: msg.payment_id,
        notify_type: msg.notify_type,
        result_status: Some(msg.result.result_status.clone()).filter(|s| !s.is_empty()),
        result_code: Some(msg.result.result_code.clone()).filter(|s| !s.is_empty()),
        amount_value: msg.payment_amount.as_ref().map(|a| a.value.clone()),
        currency: msg.payment_amount.as_ref().map(|a| a.currency.clone()),
        says,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_what_the_payment_hears() {
        let body = |t: &str, s: &str| {
            format!(
                r#"{{"notifyType":"{t}","paymentRequestId":"P1","result":{{"resultCode":"X","resultStatus":"{s}","resultMessage":"m"}}}}"#
            )
        };
        assert_eq!(
            parse(&body("PAYMENT_RESULT", "S")).unwrap().says,
            Says::Paid
        );
        assert_eq!(
            parse(&body("PAYMENT_RESULT", "F")).unwrap().says,
            Says::NotPaid
        );
        assert_eq!(
            parse(&body("PAYMENT_RESULT", "U")).unwrap().says,
            Says::Pending
        );
        assert_eq!(
            parse(&body("PAYMENT_PENDING", "S")).unwrap().says,
            Says::Pending
        );
        assert!(parse("not json").is_none());
        assert!(refusal_body(Refusal::InvalidSignature, "m").contains("INVALID_SIGNATURE"));
    }
}
