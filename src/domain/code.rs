//! Payment codes: the customer's wallet code, validated, and never shown or stored in clear.

use std::fmt;

/// The payment-code standard in force: digit count range and allowed two-digit prefixes.
/// Comes from `[codes]` so that longer codes can be accepted without a new build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRules {
    /// Fewest digits accepted.
    pub min_len: usize,
    /// Most digits accepted.
    pub max_len: usize,
    /// Accepted leading digits (any length; the standard uses two).
    pub prefixes: Vec<String>,
}

impl Default for CodeRules {
    fn default() -> Self {
        CodeRules {
            min_len: 17,
            max_len: 32,
            prefixes: ["25", "26", "27", "28", "29", "30"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Why a scan or a typed code is not a payment code. Messages are for the cashier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("empty scan: scan the customer's payment code again")]
    Empty,
    #[error("not a payment code: it contains {0}; payment codes are digits only")]
    NotDigits(&'static str),
    #[error("too short: {found} digits, need {min}–{max}")]
    TooShort {
        found: usize,
        min: usize,
        max: usize,
    },
    #[error("too long: {found} digits, need {min}–{max}")]
    TooLong {
        found: usize,
        min: usize,
        max: usize,
    },
    #[error("not a payment code: starts with {found}, payment codes start with {allowed}")]
    BadPrefix { found: String, allowed: String },
}

/// A validated payment code. `Display` and `Debug` print only the masked form; the clear
/// digits are reachable only through [`PaymentCode::expose`], used when building the pay
/// request and nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub struct PaymentCode(String);

impl PaymentCode {
    /// Validates a raw scan or typed code: trims whitespace and the scanner's CR/LF/TAB
    /// terminators, then checks digits, length and prefix.
    pub fn parse(raw: &str, rules: &CodeRules) -> Result<PaymentCode, CodeError> {
        let s = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if s.is_empty() {
            return Err(CodeError::Empty);
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii_digit()) {
            let what = if c.is_whitespace() {
                "spaces"
            } else if c.is_alphabetic() {
                "letters"
            } else {
                "symbols"
            };
            return Err(CodeError::NotDigits(what));
        }
        let n = s.len();
        if n < rules.min_len {
            return Err(CodeError::TooShort {
                found: n,
                min: rules.min_len,
                max: rules.max_len,
            });
        }
        if n > rules.max_len {
            return Err(CodeError::TooLong {
                found: n,
                min: rules.min_len,
                max: rules.max_len,
            });
        }
        if !rules.prefixes.is_empty() && !rules.prefixes.iter().any(|p| s.starts_with(p)) {
            return Err(CodeError::BadPrefix {
                found: s[..2.min(n)].to_string(),
                allowed: rules.prefixes.join(", "),
            });
        }
        Ok(PaymentCode(s.to_string()))
    }

    /// The clear digits. Only the gateway request builder may call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form that may be logged, stored and printed: first 4 and last 4 digits.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }

    /// The last two digits (the sandbox chooses its scenario by them).
    pub fn scenario_digits(&self) -> &str {
        &self.0[self.0.len() - 2..]
    }
}

/// Masks a code-like string: keeps the first and last 4 characters, stars the rest.
/// Strings of 8 characters or fewer are fully starred.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let mut out = String::with_capacity(chars.len());
    out.extend(&chars[..4]);
    out.extend(std::iter::repeat_n('*', chars.len() - 8));
    out.extend(&chars[chars.len() - 4..]);
    out
}

impl fmt::Display for PaymentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for PaymentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaymentCode({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CODE: &str = "281234567890123456";

    #[test]
    fn accepts_and_trims_scanner_terminators() {
        let r = CodeRules::default();
        for raw in [
            CODE,
            "281234567890123456\r\n",
            "\t281234567890123456\r",
            " 281234567890123456\n",
        ] {
            assert_eq!(PaymentCode::parse(raw, &r).unwrap().expose(), CODE);
        }
    }

    #[test]
    fn rejects_with_reasons_the_cashier_can_read() {
        let r = CodeRules::default();
        assert_eq!(
            PaymentCode::parse("281234567890", &r)
                .unwrap_err()
                .to_string(),
            "too short: 12 digits, need 17–32"
        );
        assert!(matches!(
            PaymentCode::parse(&"2".repeat(33), &r),
            Err(CodeError::TooLong { found: 33, .. })
        ));
        assert!(matches!(
            PaymentCode::parse("181234567890123456", &r),
            Err(CodeError::BadPrefix { .. })
        ));
        assert!(matches!(
            PaymentCode::parse("28123456789012345A", &r),
            Err(CodeError::NotDigits("letters"))
        ));
        assert!(matches!(
            PaymentCode::parse("2812345678 90123456", &r),
            Err(CodeError::NotDigits("spaces"))
        ));
        assert_eq!(PaymentCode::parse(" \r\n", &r), Err(CodeError::Empty));
    }

    #[test]
    fn rules_are_configurable() {
        let r = CodeRules {
            min_len: 10,
            max_len: 40,
            prefixes: vec!["31".into()],
        };
        assert!(PaymentCode::parse("3112345678", &r).is_ok());
        assert!(PaymentCode::parse(CODE, &r).is_err());
    }

    #[test]
    fn never_shows_the_clear_code() {
        let c = PaymentCode::parse(CODE, &CodeRules::default()).unwrap();
        assert_eq!(c.to_string(), "2812**********3456");
        assert_eq!(format!("{c:?}"), "PaymentCode(2812**********3456)");
        assert!(!format!("{c} {c:?}").contains(CODE));
        assert_eq!(c.scenario_digits(), "56");
    }

    proptest! {
        #[test]
        fn valid_codes_parse_and_mask(len in 17usize..=32, p in 25u8..=30, rest in "[0-9]{32}") {
            let s = format!("{p}{}", &rest[..len - 2]);
            let c = PaymentCode::parse(&s, &CodeRules::default()).unwrap();
            prop_assert_eq!(c.expose(), s.as_str());
            let m = c.masked();
            prop_assert_eq!(m.len(), len);
            prop_assert_eq!(&m[..4], &s[..4]);
            prop_assert_eq!(&m[len - 4..], &s[len - 4..]);
            prop_assert!(m[4..len - 4].chars().all(|ch| ch == '*'));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_digits(s in "\\PC{0,40}") {
            if let Ok(c) = PaymentCode::parse(&s, &CodeRules::default()) {
                prop_assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
                prop_assert!((17..=32).contains(&c.expose().len()));
            }
        }
    }
}
