//! Money: integer minor units with an ISO 4217 currency and its exponent (rule 8: no floats).

use std::fmt;

/// An ISO 4217 currency the terminal can charge in, with its minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// The currencies posd knows, with their ISO 4217 exponents.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("IDR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MOP", 2),
    ("MYR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TWD", 2),
    ("USD", 2),
    ("VND", 0),
];

/// The largest amount posd accepts, in minor units: fifteen digits. Larger amounts are
/// typing mistakes on a checkout terminal, and this bound keeps every sum far from `i64::MAX`.
pub const MAX_MINOR: i64 = 999_999_999_999_999;

impl Currency {
    /// Looks a currency up by its ISO 4217 alphabetic code (case-insensitive).
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        let upper = code.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|&(code, exponent)| Currency { code, exponent })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.trim().to_string()))
    }

    /// The ISO 4217 alphabetic code, e.g. `"CNY"`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point in the major unit (CNY 2, JPY 0, KWD 3).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Every currency posd knows.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES
            .iter()
            .map(|&(code, exponent)| Currency { code, exponent })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// Why an amount or a currency was refused. The messages are meant for the cashier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?}: use an ISO 4217 code such as CNY, HKD, USD or JPY")]
    UnknownCurrency(String),
    #[error("amount is empty: type an amount such as 12.34")]
    Empty,
    #[error("amount {0:?} is negative: amounts must be greater than zero")]
    Negative(String),
    #[error("amount {0:?} is zero: amounts must be greater than zero")]
    Zero(String),
    #[error("amount {input:?} has {found} decimals but {currency} allows {allowed}")]
    TooManyDecimals {
        input: String,
        currency: Currency,
        found: usize,
        allowed: u8,
    },
    #[error("amount {0:?} is not a number: use digits and at most one '.', e.g. 12.34")]
    NotANumber(String),
    #[error("amount {0:?} is too large: at most 15 digits in minor units")]
    TooLarge(String),
    #[error("amounts in {0} and {1} cannot be combined")]
    CurrencyMismatch(Currency, Currency),
}

/// An amount of money: minor units of one currency. Always positive when parsed from input.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Amount {
    minor: i64,
    currency: Currency,
}

impl Amount {
    /// Parses a decimal amount typed by a person ("12.34", "12", "0.5") exactly, without floats.
    pub fn parse(input: &str, currency: Currency) -> Result<Amount, MoneyError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(MoneyError::Empty);
        }
        if s.starts_with('-') {
            return Err(MoneyError::Negative(s.to_string()));
        }
        let (int_part, frac_part) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        let digits_only = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        let int_ok = digits_only(int_part) && !(int_part.is_empty() && frac_part.is_none());
        let frac_ok = frac_part.is_none_or(|f| !f.is_empty() && digits_only(f));
        if !int_ok || !frac_ok || (int_part.is_empty() && frac_part.is_none()) {
            return Err(MoneyError::NotANumber(s.to_string()));
        }
        let frac = frac_part.unwrap_or("");
        if frac.len() > currency.exponent as usize {
            // "12.30" in CNY is fine; "12.345" is not, even if the last digit is zero,
            // because the cashier typed more precision than the currency has.
            return Err(MoneyError::TooManyDecimals {
                input: s.to_string(),
                currency,
                found: frac.len(),
                allowed: currency.exponent,
            });
        }
        let int_trimmed = int_part.trim_start_matches('0');
        if int_trimmed.len() + currency.exponent as usize > 15 {
            return Err(MoneyError::TooLarge(s.to_string()));
        }
        let mut minor: i64 = 0;
        for b in int_trimmed.bytes() {
            minor = minor * 10 + i64::from(b - b'0');
        }
        for i in 0..currency.exponent as usize {
            let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
            minor = minor * 10 + d;
        }
        if minor == 0 {
            return Err(MoneyError::Zero(s.to_string()));
        }
        Amount::from_minor(minor, currency).map_err(|_| MoneyError::TooLarge(s.to_string()))
    }

    /// Builds an amount from minor units (as stored or as on the wire). Zero is allowed here
    /// (a refunded total can be zero); negative and absurd values are not.
    pub fn from_minor(minor: i64, currency: Currency) -> Result<Amount, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative(minor.to_string()));
        }
        if minor > MAX_MINOR {
            return Err(MoneyError::TooLarge(minor.to_string()));
        }
        Ok(Amount { minor, currency })
    }

    /// Parses the gateway's wire form: an integer string of minor units.
    pub fn from_wire(value: &str, currency_code: &str) -> Result<Amount, MoneyError> {
        let currency = Currency::from_code(currency_code)?;
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 15 {
            return Err(MoneyError::NotANumber(value.to_string()));
        }
        let minor: i64 = value
            .parse()
            .map_err(|_| MoneyError::NotANumber(value.to_string()))?;
        Amount::from_minor(minor, currency)
    }

    /// The amount in minor units.
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The AMS wire form: minor units as an integer string ("1234" for CNY 12.34).
    pub fn to_wire(&self) -> String {
        self.minor.to_string()
    }

    /// The major-unit decimal form without the currency ("12.34", "1000" for JPY).
    pub fn to_decimal(&self) -> String {
        let exp = self.currency.exponent as u32;
        if exp == 0 {
            return self.minor.to_string();
        }
        let scale = 10i64.pow(exp);
        format!(
            "{}.{:0width$}",
            self.minor / scale,
            self.minor % scale,
            width = exp as usize
        )
    }

    /// Adds two amounts of the same currency.
    pub fn checked_add(&self, other: Amount) -> Result<Amount, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Amount::from_minor(self.minor + other.minor, self.currency)
    }

    /// Subtracts `other`, saturating at zero.
    pub fn saturating_sub(&self, other: Amount) -> Result<Amount, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch(self.currency, other.currency));
        }
        Amount::from_minor((self.minor - other.minor).max(0), self.currency)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal(), self.currency.code)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({} {})", self.to_decimal(), self.currency.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cny() -> Currency {
        Currency::from_code("CNY").unwrap()
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(Amount::parse("12.34", cny()).unwrap().minor(), 1234);
        assert_eq!(Amount::parse("12.3", cny()).unwrap().minor(), 1230);
        assert_eq!(Amount::parse("12", cny()).unwrap().minor(), 1200);
        assert_eq!(Amount::parse(".5", cny()).unwrap().minor(), 50);
        assert_eq!(Amount::parse(" 0.01 ", cny()).unwrap().minor(), 1);
        let jpy = Currency::from_code("jpy").unwrap();
        assert_eq!(Amount::parse("1000", jpy).unwrap().to_wire(), "1000");
        let kwd = Currency::from_code("KWD").unwrap();
        assert_eq!(Amount::parse("1.234", kwd).unwrap().minor(), 1234);
        assert_eq!(Amount::parse("1.234", kwd).unwrap().to_decimal(), "1.234");
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        let c = cny();
        assert_eq!(Amount::parse("", c), Err(MoneyError::Empty));
        assert!(matches!(
            Amount::parse("-1.00", c),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(Amount::parse("0.00", c), Err(MoneyError::Zero(_))));
        assert!(matches!(
            Amount::parse("1.234", c),
            Err(MoneyError::TooManyDecimals { found: 3, .. })
        ));
        for bad in [
            "1,00", "1.2.3", "abc", "1e3", "+1", "1.", ".", "１２", "12 34",
        ] {
            assert!(
                matches!(Amount::parse(bad, c), Err(MoneyError::NotANumber(_))),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            Amount::parse("1.5", Currency::from_code("JPY").unwrap()),
            Err(MoneyError::TooManyDecimals { allowed: 0, .. })
        ));
        assert!(matches!(
            Amount::parse("99999999999999999", c),
            Err(MoneyError::TooLarge(_))
        ));
        let msg = Amount::parse("1.234", c).unwrap_err().to_string();
        assert!(
            msg.contains("3 decimals") && msg.contains("CNY allows 2"),
            "{msg}"
        );
        assert!(Currency::from_code("XXX").is_err());
    }

    #[test]
    fn formats_for_display_and_wire() {
        let a = Amount::parse("12.05", cny()).unwrap();
        assert_eq!(a.to_decimal(), "12.05");
        assert_eq!(a.to_wire(), "1205");
        assert_eq!(a.to_string(), "12.05 CNY");
        assert_eq!(Amount::from_wire("1205", "CNY").unwrap(), a);
        assert!(Amount::from_wire("-5", "CNY").is_err());
        assert!(Amount::from_wire("1.5", "CNY").is_err());
    }

    #[test]
    fn knows_the_required_currencies() {
        for code in [
            "CNY", "HKD", "TWD", "USD", "EUR", "GBP", "JPY", "KRW", "SGD", "THB", "MYR", "PHP",
            "IDR", "VND", "AUD", "BHD", "KWD",
        ] {
            assert!(Currency::from_code(code).is_ok(), "{code}");
        }
        assert_eq!(Currency::from_code("KRW").unwrap().exponent(), 0);
        assert_eq!(Currency::from_code("BHD").unwrap().exponent(), 3);
    }

    proptest! {
        #[test]
        fn decimal_round_trips(minor in 1i64..=MAX_MINOR, idx in 0usize..CURRENCIES.len()) {
            let c = Currency::all().nth(idx).unwrap();
            let a = Amount::from_minor(minor, c).unwrap();
            prop_assert_eq!(Amount::parse(&a.to_decimal(), c).unwrap(), a);
            prop_assert_eq!(Amount::from_wire(&a.to_wire(), c.code()).unwrap(), a);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = Amount::parse(&s, cny());
        }

        #[test]
        fn parsed_amounts_are_positive_and_bounded(s in "[0-9]{0,18}(\\.[0-9]{0,4})?") {
            if let Ok(a) = Amount::parse(&s, cny()) {
                prop_assert!(a.minor() > 0 && a.minor() <= MAX_MINOR);
            }
        }
    }
}
