//! Request ids (rule 7): the `paymentRequestId` as 36 digits that carry the local time to the
//! second, the terminal, the sequence, the amount and a random part, and the `refundRequestId`.
//!
//! # The payment request id is the slip's barcode
//! The `paymentRequestId` is printed on the slip as text and as a CODE128 barcode, and a
//! scanned slip finds its payment by it, so the gateway, the slip and the back office use one
//! identifier. CODE128 is 11·(N+2)+13 modules wide; code set C carries two digits per symbol;
//! receipt printers take at least 2 dots per module and print nothing when a symbol is wider
//! than the head. An all-digit, even-length id of at most 36 digits fits a 512-dot head
//! (72 mm, 180 dpi) at 2 dots per module with 10-module quiet zones (506 dots), so the id is
//! exactly [`PAYMENT_ID_DIGITS`] digits:
//!
//! | digits | part |
//! | --- | --- |
//! | 1 | random, 1–9 (never a leading zero) |
//! | 12 | local time `YYMMDDhhmmss` |
//! | 6 | the terminal's digits ([`terminal_digits`]), zero-padded |
//! | 6 | the terminal sequence, modulo 10⁶ |
//! | 10 | the amount in minor units, modulo 10¹⁰ |
//! | 1 | random, 0–9 |
//!
//! Unique: the sequence is taken in the transaction that records the intent and never
//! resets, and `payments.payment_request_id` is the primary key; two ids of one terminal
//! repeat the sequence digits only 10⁶ sales apart, when their times differ. Never
//! consecutive: the sequence is not in the last digits, so ids of consecutive sales differ by
//! at least 10¹¹, and the random digits vary. The odd offset of the time (one digit before it)
//! means no two time digits form the set-C values 16 then 04/05/20 (the bytes of the printer's
//! real-time commands DLE EOT, DLE ENQ, DLE DC4): the second digit of every pair inside the
//! time is a tens digit — of the year (2 until 2060), month, day, hour, minute or second —
//! and none of them is 6. The two-digit year reads back as 2000–2068.
//!
//! # Terminal digits
//! The terminal id is letters and digits (it is `storeTerminalId` in every pay). The request
//! id carries its digits only, in order and zero-padded to six: `T0001` → `000001`,
//! `POS12` → `000012`. So the terminal ids of one merchant must differ in their digits (the
//! config refuses an id without digits or with more than six); `T0001` and `K0001` would
//! share the terminal part, and their ids would then be kept apart by time, sequence and
//! random digits only.
//!
//! # Older ids
//! Databases written before this layout hold 45-character ids: `YYYYMMDDhhmmss`, the terminal
//! id, a 12-digit amount, an 8-digit sequence and 6 random digits. They stay valid everywhere:
//! the gateway, the API and the store take any id up to [`MAX_ID_LEN`]; their slips print a
//! QR code where CODE128 does not fit; [`looks_like_payment_request_id`] recognises both forms
//! on a scan. `refundRequestId` keeps that older layout with an `R` in front: it is never
//! barcoded.

use chrono::NaiveDateTime;

/// The longest id the gateway accepts for `paymentRequestId` / `refundRequestId`.
pub const MAX_ID_LEN: usize = 64;

/// The length of every `paymentRequestId` posd builds.
pub const PAYMENT_ID_DIGITS: usize = 36;

/// Digits of the terminal part.
pub const TERMINAL_DIGITS: usize = 6;

const SEQUENCE_MOD: u64 = 1_000_000;
const AMOUNT_MOD: i64 = 10_000_000_000;

/// The parts of a request id. The sequence comes from SQLite and is incremented in the
/// transaction that records the intent; the random part keeps ids non-sequential and unique
/// even if the database were restored from an old backup.
#[derive(Debug, Clone)]
pub struct IdParts<'a> {
    /// Local time of the terminal, to the second.
    pub local_time: NaiveDateTime,
    /// The terminal id (validated in config with [`valid_terminal_id`]).
    pub terminal_id: &'a str,
    /// The amount in minor units.
    pub amount_minor: i64,
    /// The terminal's sequence number; never reset.
    pub sequence: u64,
    /// A random number; two digits of it are used.
    pub random: u32,
}

/// What a `paymentRequestId` of the 36-digit layout says, read back ([`parse_payment_request_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedPaymentId {
    /// Local time, to the second.
    pub local_time: NaiveDateTime,
    /// The terminal's six digits.
    pub terminal: String,
    /// The terminal sequence modulo 10⁶.
    pub sequence: u64,
    /// The amount in minor units modulo 10¹⁰.
    pub amount_minor: i64,
}

/// Builds a `paymentRequestId`: 36 digits, laid out as the module header says.
///
/// # Panics
/// Never for a terminal id that passed [`valid_terminal_id`]; a terminal id without digits
/// gets the terminal part `000000` (and a debug assertion).
pub fn payment_request_id(p: &IdParts<'_>) -> String {
    let terminal = terminal_digits(p.terminal_id).unwrap_or_else(|| {
        debug_assert!(false, "terminal id {:?} not validated", p.terminal_id);
        "0".repeat(TERMINAL_DIGITS)
    });
    let first = 1 + p.random % 9;
    let last = (p.random / 9) % 10;
    let id = format!(
        "{first}{}{terminal}{:06}{:010}{last}",
        p.local_time.format("%y%m%d%H%M%S"),
        p.sequence % SEQUENCE_MOD,
        p.amount_minor.rem_euclid(AMOUNT_MOD),
    );
    debug_assert_eq!(id.len(), PAYMENT_ID_DIGITS, "{id}");
    id
}

/// Builds a `refundRequestId`: `R` + `YYYYMMDDhhmmss` + terminal id + amount (12+ digits) +
/// sequence (8+ digits) + 6 random digits. With a 16-character terminal id and the largest
/// amount it stays within 64 characters.
pub fn refund_request_id(p: &IdParts<'_>) -> String {
    let id = format!(
        "R{}{}{:012}{:08}{:06}",
        p.local_time.format("%Y%m%d%H%M%S"),
        p.terminal_id,
        p.amount_minor,
        p.sequence,
        p.random % 1_000_000
    );
    debug_assert!(id.len() <= MAX_ID_LEN, "request id too long: {id}");
    id
}

/// The terminal part of a payment request id: the digits of `terminal_id` in order, padded
/// with zeros in front to six, or `None` if it has no digit or more than six.
pub fn terminal_digits(terminal_id: &str) -> Option<String> {
    let digits: String = terminal_id.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() > TERMINAL_DIGITS {
        return None;
    }
    Some(format!("{digits:0>TERMINAL_DIGITS$}"))
}

/// Checks that a terminal id can be part of a request id: 1–16 ASCII letters or digits, with
/// one to six digits among them ([`terminal_digits`]).
pub fn valid_terminal_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 16
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && terminal_digits(id).is_some()
}

/// What [`valid_terminal_id`] requires, for the config's error message.
pub const TERMINAL_ID_RULE: &str = "must be 1–16 ASCII letters or digits with 1 to 6 digits among \
     them (the paymentRequestId carries the terminal's digits, e.g. \"T0001\"), and the \
     terminals of one merchant must differ in their digits";

/// Reads a 36-digit `paymentRequestId` back into its parts; `None` for anything else
/// (including ids of the older layout).
pub fn parse_payment_request_id(id: &str) -> Option<ParsedPaymentId> {
    if id.len() != PAYMENT_ID_DIGITS || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if id.as_bytes()[0] == b'0' {
        return None;
    }
    let local_time = NaiveDateTime::parse_from_str(&id[1..13], "%y%m%d%H%M%S").ok()?;
    Some(ParsedPaymentId {
        local_time,
        terminal: id[13..19].to_string(),
        sequence: id[19..25].parse().ok()?,
        amount_minor: id[25..35].parse().ok()?,
    })
}

/// Whether scanned text is a `paymentRequestId` posd may have printed: the 36-digit layout,
/// or the older one (`YYYYMMDDhhmmss`, the terminal id, then 26 digits). Says nothing about
/// whether such a payment exists.
pub fn looks_like_payment_request_id(s: &str) -> bool {
    if parse_payment_request_id(s).is_some() {
        return true;
    }
    let b = s.as_bytes();
    let Some(tail_at) = b.len().checked_sub(26) else {
        return false;
    };
    b.len() <= MAX_ID_LEN
        && tail_at > 14
        && b.iter().all(u8::is_ascii_alphanumeric)
        && b[tail_at..].iter().all(u8::is_ascii_digit)
        && NaiveDateTime::parse_from_str(&s[..14], "%Y%m%d%H%M%S").is_ok()
        && (tail_at - 14) <= 16
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

    fn parts(terminal_id: &str, amount_minor: i64, sequence: u64, random: u32) -> IdParts<'_> {
        IdParts {
            local_time: t(),
            terminal_id,
            amount_minor,
            sequence,
            random,
        }
    }

    #[test]
    fn matches_the_documented_layout() {
        // random 817263: first digit 1 + 817263 % 9 = 1, last (817263 / 9) % 10 = 7.
        let id = payment_request_id(&parts("T0001", 1234, 42, 817263));
        assert_eq!(id, "126112110153000000100004200000012347");
        let p = parse_payment_request_id(&id).unwrap();
        assert_eq!(
            p,
            ParsedPaymentId {
                local_time: t(),
                terminal: "000001".into(),
                sequence: 42,
                amount_minor: 1234,
            }
        );
        let r = refund_request_id(&parts("T0001", 500, 43, 1));
        assert_eq!(r, "R20261121101530T000100000000050000000043000001");
    }

    #[test]
    fn terminal_ids_keep_their_digits_and_refuse_what_cannot_be_carried() {
        assert_eq!(terminal_digits("T0001").as_deref(), Some("000001"));
        assert_eq!(terminal_digits("POS12").as_deref(), Some("000012"));
        assert_eq!(terminal_digits("123456").as_deref(), Some("123456"));
        assert_eq!(terminal_digits("A1B2").as_deref(), Some("000012"));
        assert_eq!(terminal_digits("FRONT"), None);
        assert_eq!(terminal_digits("1234567"), None);
        assert!(valid_terminal_id("T1"));
        assert!(!valid_terminal_id("FRONT"), "no digit");
        assert!(!valid_terminal_id("12345678"), "more than six digits");
        assert!(!valid_terminal_id("T-1"));
        assert!(!valid_terminal_id(""));
        assert!(!valid_terminal_id("T0000000000000001"), "17 characters");
    }

    #[test]
    fn amounts_and_sequences_beyond_their_width_wrap_and_the_id_keeps_its_length() {
        let id = payment_request_id(&parts("T1", crate::domain::money::MAX_MINOR, 12_345_678, 0));
        assert_eq!(id.len(), PAYMENT_ID_DIGITS);
        let p = parse_payment_request_id(&id).unwrap();
        assert_eq!((p.sequence, p.amount_minor), (345_678, 9_999_999_999));
    }

    #[test]
    fn both_layouts_are_recognised_on_a_scan_and_nothing_else() {
        let new = payment_request_id(&parts("T0001", 1234, 42, 5));
        assert!(looks_like_payment_request_id(&new));
        assert!(looks_like_payment_request_id(
            "20261121140305T000100000000123400000042123456"
        ));
        assert!(looks_like_payment_request_id(
            "202611211403051234560000000012340000004212345601"
        ));
        for not in [
            "",
            "281234567890123456",
            &new[1..],
            &format!("0{}", &new[1..]),
            "20261321140305T000100000000123400000042123456",
            "20261121140305T0001000000001234000000421234X6",
            "20261121140305T-01000000001234000000421234506",
        ] {
            assert!(!looks_like_payment_request_id(not), "{not:?}");
        }
    }

    /// The set-C values of the printer's real-time commands: DLE (16) then EOT (04), ENQ (05)
    /// or DC4 (20), on a pair boundary.
    fn real_time_pair(id: &str) -> bool {
        let pairs: Vec<&str> = (0..id.len() / 2).map(|i| &id[2 * i..2 * i + 2]).collect();
        pairs
            .windows(2)
            .any(|w| w[0] == "16" && matches!(w[1], "04" | "05" | "20"))
    }

    #[test]
    fn no_time_of_day_puts_a_real_time_command_into_the_barcode() {
        // Every second of 16 June (month 06, day 16, hours 04/05/16/20 included), with the
        // other parts chosen so they cannot form the pattern themselves.
        let day = chrono::NaiveDate::from_ymd_opt(2026, 6, 16).unwrap();
        for s in 0..86_400u32 {
            let local_time = day.and_hms_opt(s / 3600, s / 60 % 60, s % 60).unwrap();
            let id = payment_request_id(&IdParts {
                local_time,
                terminal_id: "T0001",
                amount_minor: 1234,
                sequence: 42,
                random: 0,
            });
            assert!(!real_time_pair(&id), "{id} at {local_time}");
        }
    }

    proptest! {
        #[test]
        fn always_36_digits_readable_back_and_never_consecutive(
            term in "[A-Za-z]{0,5}[0-9]{1,6}[A-Za-z]{0,5}",
            amount in 1i64..=crate::domain::money::MAX_MINOR,
            seq in 0u64..10_000_000_000,
            random in any::<u32>(),
            random2 in any::<u32>(),
            secs in 0i64..(60 * 365 * 86_400),
        ) {
            let local_time = chrono::DateTime::from_timestamp(946_684_800 + secs, 0)
                .unwrap()
                .naive_utc();
            let parts = IdParts { local_time, terminal_id: &term, amount_minor: amount, sequence: seq, random };
            let a = payment_request_id(&parts);
            prop_assert_eq!(a.len(), PAYMENT_ID_DIGITS);
            prop_assert!(a.bytes().all(|b| b.is_ascii_digit()) && !a.starts_with('0'), "{}", a);
            let p = parse_payment_request_id(&a).unwrap();
            prop_assert_eq!(p.local_time, local_time);
            prop_assert_eq!(Some(p.terminal), terminal_digits(&term));
            prop_assert_eq!(p.sequence, seq % SEQUENCE_MOD);
            prop_assert_eq!(p.amount_minor, amount % AMOUNT_MOD);
            // The next sale, whatever its random digits: a different id, never the next number.
            let b = payment_request_id(&IdParts { sequence: seq + 1, random: random2, ..parts.clone() });
            prop_assert_ne!(&a, &b);
            let (x, y): (u128, u128) = (a.parse().unwrap(), b.parse().unwrap());
            prop_assert!(x.abs_diff(y) > 1, "{} {}", a, b);
            let r = refund_request_id(&parts);
            prop_assert!(r.len() <= MAX_ID_LEN, "{}", r);
        }
    }
}
