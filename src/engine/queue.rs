//! The queue's stored requests: what a queued cancel or refund replays, versioned so that an
//! upgraded daemon still drains items an older one wrote.

use serde::{Deserialize, Serialize};

use crate::domain::money::{Amount, Currency};
use crate::gateway::RefundOrder;

/// The payload version this binary writes.
pub const PAYLOAD_VERSION: i64 = 1;

/// A stored reversal request (version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Payload {
    /// cancel by `paymentRequestId`.
    Cancel {
        /// The payment to cancel.
        payment_request_id: String,
    },
    /// refund, identical on every replay.
    Refund {
        /// Our refund id.
        refund_request_id: String,
        /// The payment it belongs to.
        payment_request_id: String,
        /// The gateway's payment id.
        payment_id: String,
        /// Minor units.
        amount_minor: i64,
        /// ISO 4217.
        currency: String,
        /// Why.
        reason: Option<String>,
    },
}

impl Payload {
    /// The JSON written to the queue.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("payload serializes")
    }

    /// Decodes a stored payload of any known version.
    pub fn decode(version: i64, text: &str) -> Result<Payload, String> {
        match version {
            1 => serde_json::from_str(text).map_err(|e| format!("payload v1: {e}")),
            v => Err(format!(
                "payload version {v} is newer than this posd knows ({PAYLOAD_VERSION}); upgrade posd"
            )),
        }
    }

    /// The refund request of a refund payload.
    pub fn refund_order(&self) -> Option<Result<RefundOrder, String>> {
        match self {
            Payload::Cancel { .. } => None,
            Payload::Refund {
                refund_request_id,
                payment_id,
                amount_minor,
                currency,
                reason,
                ..
            } => Some(
                Currency::from_code(currency)
                    .and_then(|c| Amount::from_minor(*amount_minor, c))
                    .map(|amount| RefundOrder {
                        refund_request_id: refund_request_id.clone(),
                        payment_id: payment_id.clone(),
                        amount,
                        reason: reason.clone(),
                    })
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// Builds the payload of a refund.
    pub fn from_refund(payment_request_id: &str, order: &RefundOrder) -> Payload {
        Payload::Refund {
            refund_request_id: order.refund_request_id.clone(),
            payment_request_id: payment_request_id.to_string(),
            payment_id: order.payment_id.clone(),
            amount_minor: order.amount.minor(),
            currency: order.amount.currency().code().to_string(),
            reason: order.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_v1_text_stays_readable() {
        let p = Payload::Cancel {
            payment_request_id: "X1".into(),
        };
        assert_eq!(p.encode(), r#"{"kind":"CANCEL","payment_request_id":"X1"}"#);
        assert_eq!(Payload::decode(1, &p.encode()).unwrap(), p);
        // Text exactly as version 1 writes it must decode forever.
        let v1 = r#"{"kind":"REFUND","refund_request_id":"R1","payment_request_id":"X1","payment_id":"G1","amount_minor":1234,"currency":"CNY","reason":null}"#;
        let order = Payload::decode(1, v1)
            .unwrap()
            .refund_order()
            .unwrap()
            .unwrap();
        assert_eq!(order.amount.minor(), 1234);
        assert!(Payload::decode(2, v1).unwrap_err().contains("newer"));
    }
}
