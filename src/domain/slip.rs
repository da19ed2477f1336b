//! What a slip says: the transaction and the names, amounts and ids printed on it — data the
//! store keeps in the print journal and the receipt layout (`devices::receipt`) prints.
//!
//! It has no field for the wallet or issuer name, the customer's payment amount or a payment
//! code, so no slip can show them.

use chrono::NaiveDateTime;

use crate::domain::money::Amount;

/// Which transaction a slip is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlipKind {
    /// A completed payment.
    Sale,
    /// A payment reversed by cancel.
    Cancel,
    /// A (full or partial) refund.
    Refund,
}

impl SlipKind {
    /// The word printed on the slip and stored in the print journal.
    pub fn as_str(self) -> &'static str {
        match self {
            SlipKind::Sale => "SALE",
            SlipKind::Cancel => "CANCEL",
            SlipKind::Refund => "REFUND",
        }
    }

    /// Parses the stored form (`SALE`, `CANCEL`, `REFUND`).
    pub fn parse(s: &str) -> Option<SlipKind> {
        match s {
            "SALE" => Some(SlipKind::Sale),
            "CANCEL" => Some(SlipKind::Cancel),
            "REFUND" => Some(SlipKind::Refund),
            _ => None,
        }
    }
}

/// Everything a slip may show, and nothing it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlipData {
    /// SALE, CANCEL or REFUND.
    pub kind: SlipKind,
    /// `[terminal] merchant_name`.
    pub merchant_name: String,
    /// `[terminal] store_name`.
    pub store_name: String,
    /// `[terminal] id`.
    pub terminal_id: String,
    /// The order amount (for a refund: the refunded amount) and its currency.
    pub amount: Amount,
    /// The merchant's `paymentRequestId`.
    pub payment_request_id: String,
    /// The gateway's `paymentId`, when known.
    pub payment_id: Option<String>,
    /// The `refundRequestId` of a refund slip.
    pub refund_request_id: Option<String>,
    /// Local date and time of the transaction, to the second.
    pub local_time: NaiveDateTime,
    /// A reprint: the slip says COPY.
    pub copy: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::money::Currency;

    /// A slip as the tests across the crate print it.
    pub(crate) fn sample(kind: SlipKind) -> SlipData {
        SlipData {
            kind,
            merchant_name: "Tea House Ltd".into(),
            store_name: "Store 1".into(),
            terminal_id: "T0001".into(),
            amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
            payment_request_id: "126112114030500000100004200000012347".into(),
            payment_id: Some("2026112119074102000000000012345".into()),
            refund_request_id: None,
            local_time: NaiveDateTime::parse_from_str("2026-11-21 14:03:05", "%Y-%m-%d %H:%M:%S")
                .unwrap(),
            copy: false,
        }
    }

    #[test]
    fn kinds_round_trip_through_their_stored_form() {
        for k in [SlipKind::Sale, SlipKind::Cancel, SlipKind::Refund] {
            assert_eq!(SlipKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(SlipKind::parse("sale"), None);
        assert_eq!(sample(SlipKind::Sale).kind, SlipKind::Sale);
    }
}
