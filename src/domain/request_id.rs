//! Request ids (rule 7): time to the second + terminal + amount + durable sequence + random.

use chrono::NaiveDateTime;

/// The longest id the gateway accepts for `paymentRequestId` / `refundRequestId`.
pub const MAX_ID_LEN: usize = 64;

/// The parts of a request id. The sequence comes from SQLite and is incremented in the
/// transaction that records the intent; the random part keeps ids non-sequential and unique
/// even if the database were restored from an old backup.
#[derive(Debug, Clone)]
pub struct IdParts<'a> {
    /// Local time of the terminal, to the second.
    pub local_time: NaiveDateTime,
    /// The terminal id (validated in config: ASCII letters and digits, at most 16).
    pub terminal_id: &'a str,
    /// The amount in minor units.
    pub amount_minor: i64,
    /// The terminal's sequence number; never reset.
    pub sequence: u64,
    /// Random digits (six are used).
    pub random: u32,
}

/// Builds a `paymentRequestId`: `YYYYMMDDhhmmss` + terminal + amount (12+ digits) +
/// sequence (8+ digits) + 6 random digits. With a 16-character terminal id and the largest
/// amount it stays within 64 characters.
pub fn payment_request_id(p: &IdParts<'_>) -> String {
    build("", p)
}

/// Builds a `refundRequestId`: `R` + the same parts as a payment request id.
pub fn refund_request_id(p: &IdParts<'_>) -> String {
    build("R", p)
}

fn build(prefix: &str, p: &IdParts<'_>) -> String {
    let id = format!(
        "{prefix}{}{}{:012}{:08}{:06}",
        p.local_time.format("%Y%m%d%H%M%S"),
        p.terminal_id,
        p.amount_minor,
        p.sequence,
        p.random % 1_000_000
    );
    debug_assert!(id.len() <= MAX_ID_LEN, "request id too long: {id}");
    id
}

/// Checks that a terminal id can be part of a request id.
pub fn valid_terminal_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 16 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t() -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 21)
            .unwrap()
            .and_hms_opt(10, 15, 30)
            .unwrap()
    }

    #[test]
    fn matches_the_recommended_shape() {
        let id = payment_request_id(&IdParts {
            local_time: t(),
            terminal_id: "T0001",
            amount_minor: 1234,
            sequence: 42,
            random: 817263,
        });
        assert_eq!(id, "20261121101530T000100000000123400000042817263");
        let r = refund_request_id(&IdParts {
            local_time: t(),
            terminal_id: "T0001",
            amount_minor: 500,
            sequence: 43,
            random: 1,
        });
        assert!(r.starts_with("R20261121101530T0001"));
    }

    proptest! {
        #[test]
        fn always_fits_and_differs_by_sequence(
            term in "[A-Za-z0-9]{1,16}",
            amount in 1i64..=crate::domain::money::MAX_MINOR,
            seq in 0u64..10_000_000_000,
            random in any::<u32>(),
        ) {
            let parts = IdParts { local_time: t(), terminal_id: &term, amount_minor: amount, sequence: seq, random };
            let a = refund_request_id(&parts);
            prop_assert!(a.len() <= MAX_ID_LEN, "{}", a);
            let b = payment_request_id(&IdParts { sequence: seq + 1, ..parts.clone() });
            prop_assert_ne!(payment_request_id(&parts), b);
        }
    }
}
