//! The gateway's "Transaction Items" file of user-presented mode
//! (`transactionItems_<YYYYMMDD>_<seq>.csv`): its exact header, its rows, and the `<END>` line
//! that proves the file is whole. A file that is not exactly that is refused with the line
//! number, before anything is matched or changed.

use chrono::{DateTime, FixedOffset, NaiveDate};

use crate::domain::money::Currency;

/// The header of a Transaction Items file, column for column.
pub const HEADER: [&str; 15] = [
    "customerId",
    "referenceMerchantId",
    "referenceStoreId",
    "transactionId",
    "originalTransactionId",
    "transactionRequestId",
    "referenceTransactionId",
    "orderDescription",
    "paymentMethodType",
    "pspName",
    "transactionType",
    "paymentTime",
    "productCode",
    "transactionAmountValue",
    "transactionCurrency",
];

/// The last line of a whole file.
pub const END: &str = "<END>";

/// `transactionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxType {
    /// A charge.
    Payment,
    /// A cancel of a charge (carries the original `paymentRequestId`).
    Cancel,
    /// A void of a charge.
    Void,
    /// A reversal of a charge.
    PaymentReversal,
    /// A refund (carries our `refundRequestId`).
    Refund,
    /// A refund the gateway reversed: the customer is charged again.
    RefundReversal,
}

impl TxType {
    /// Parses the column.
    pub fn parse(s: &str) -> Option<TxType> {
        Some(match s {
            "PAYMENT" => TxType::Payment,
            "CANCEL" => TxType::Cancel,
            "VOID" => TxType::Void,
            "PAYMENT_REVERSAL" => TxType::PaymentReversal,
            "REFUND" => TxType::Refund,
            "REFUND_REVERSAL" => TxType::RefundReversal,
            _ => return None,
        })
    }

    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            TxType::Payment => "PAYMENT",
            TxType::Cancel => "CANCEL",
            TxType::Void => "VOID",
            TxType::PaymentReversal => "PAYMENT_REVERSAL",
            TxType::Refund => "REFUND",
            TxType::RefundReversal => "REFUND_REVERSAL",
        }
    }

    /// Whether the row undoes a charge (the customer is not charged for the payment).
    pub fn reverses_payment(self) -> bool {
        matches!(
            self,
            TxType::Cancel | TxType::Void | TxType::PaymentReversal
        )
    }
}

/// An amount as the file wrote it: digits with or without a decimal point. Which unit it is
/// in is decided per currency over the whole statement (see `matcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAmount {
    /// The text, trimmed, without a sign.
    pub text: String,
    /// Whether it had a decimal point.
    pub has_point: bool,
}

/// One row of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementRow {
    /// Line number in the file (1 = the header).
    pub line: usize,
    /// `customerId`.
    pub customer_id: String,
    /// `referenceMerchantId`.
    pub reference_merchant_id: String,
    /// `referenceStoreId`.
    pub reference_store_id: String,
    /// `transactionId`: the gateway's paymentId (PAYMENT, CANCEL) or refundId (REFUND).
    pub transaction_id: String,
    /// `originalTransactionId`: the original paymentId (CANCEL, REFUND).
    pub original_transaction_id: String,
    /// `transactionRequestId`: our paymentRequestId or refundRequestId.
    pub transaction_request_id: String,
    /// `transactionType`.
    pub transaction_type: TxType,
    /// `paymentTime`.
    pub payment_time: DateTime<FixedOffset>,
    /// `pspName`.
    pub psp_name: String,
    /// `transactionAmountValue`.
    pub amount: RawAmount,
    /// `transactionCurrency`.
    pub currency: Currency,
}

/// One parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFile {
    /// The file's name as given.
    pub name: String,
    /// The transaction day from the name (`transactionItems_<YYYYMMDD>_<seq>.csv`).
    pub date: Option<NaiveDate>,
    /// The rows, in file order.
    pub rows: Vec<StatementRow>,
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: line {line}: {message}")]
pub struct StatementError {
    /// The file.
    pub file: String,
    /// The line (1 = the header).
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// The transaction day in a file name like `transactionItems_20261121_000.csv`.
pub fn date_from_name(name: &str) -> Option<NaiveDate> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let rest = base.strip_prefix("transactionItems_")?;
    let (day, _) = rest.split_once('_')?;
    NaiveDate::parse_from_str(day, "%Y%m%d").ok()
}

/// Parses one file. Refuses: a missing or different header, a row with the wrong number of
/// columns, an unknown type, a bad time, amount or currency, anything after `<END>`, and a
/// file without `<END>` (truncated).
pub fn parse(name: &str, bytes: &[u8]) -> Result<StatementFile, StatementError> {
    let err = |line: usize, message: String| StatementError {
        file: name.to_string(),
        line,
        message,
    };
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        err(
            line,
            "not UTF-8 text; fetch the CSV form of the file again".into(),
        )
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut header_seen = false;
    let mut end_line: Option<usize> = None;
    // Where each line starts, so a record's byte offset gives its line (the csv crate's own
    // line count is off by one in CRLF files).
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect();
    let line_at = |byte: u64| {
        let b = text.as_bytes();
        let mut at = usize::try_from(byte).unwrap_or(usize::MAX).min(b.len());
        // In CRLF files a record's position can sit on the line end before it.
        while at < b.len() && (b[at] == b'\r' || b[at] == b'\n') {
            at += 1;
        }
        starts.partition_point(|s| *s <= at)
    };
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| line_at(p.byte())).unwrap_or(0);
            err(line, format!("not valid CSV ({e})"))
        })?;
        let line = rec.position().map(|p| line_at(p.byte())).unwrap_or(0);
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if let Some(end) = end_line {
            return Err(err(
                line,
                format!(
                    "text after the {END} line (line {end}); the file is damaged, fetch it again"
                ),
            ));
        }
        if !header_seen {
            let got: Vec<&str> = rec.iter().map(str::trim).collect();
            if got != HEADER {
                return Err(err(
                    line,
                    format!(
                        "not a Transaction Items header; expected {}",
                        HEADER.join(",")
                    ),
                ));
            }
            header_seen = true;
            continue;
        }
        if rec.len() == 1 && rec[0].trim() == END {
            end_line = Some(line);
            continue;
        }
        if rec.len() != HEADER.len() {
            return Err(err(
                line,
                format!("{} columns, the header has {}", rec.len(), HEADER.len()),
            ));
        }
        let col = |i: usize| rec[i].trim().to_string();
        let ttype = TxType::parse(&col(10)).ok_or_else(|| {
            err(
                line,
                format!(
                    "transactionType {:?} is not PAYMENT, CANCEL, VOID, PAYMENT_REVERSAL, REFUND or REFUND_REVERSAL",
                    col(10)
                ),
            )
        })?;
        let payment_time = DateTime::parse_from_rfc3339(&col(11)).map_err(|_| {
            err(
                line,
                format!(
                    "paymentTime {:?} is not an ISO 8601 time with an offset",
                    col(11)
                ),
            )
        })?;
        let currency = Currency::from_code(&col(14))
            .map_err(|e| err(line, format!("transactionCurrency: {e}")))?;
        let amount = raw_amount(&col(13), currency).map_err(|m| err(line, m))?;
        if col(5).is_empty() {
            return Err(err(line, "transactionRequestId is empty".into()));
        }
        rows.push(StatementRow {
            line,
            customer_id: col(0),
            reference_merchant_id: col(1),
            reference_store_id: col(2),
            transaction_id: col(3),
            original_transaction_id: col(4),
            transaction_request_id: col(5),
            transaction_type: ttype,
            payment_time,
            psp_name: col(9),
            amount,
            currency,
        });
    }
    if !header_seen {
        return Err(err(1, "the file is empty; fetch it again".into()));
    }
    if end_line.is_none() {
        let last = text.lines().count().max(1);
        return Err(err(
            last,
            format!("no {END} line: the file is truncated; fetch it again"),
        ));
    }
    Ok(StatementFile {
        name: name.to_string(),
        date: date_from_name(name),
        rows,
    })
}

fn raw_amount(s: &str, currency: Currency) -> Result<RawAmount, String> {
    let bad = || {
        format!(
            "transactionAmountValue {s:?} is not an amount (digits, optionally with a decimal point)"
        )
    };
    let text = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if f.len() > usize::from(currency.exponent()) && f.bytes().any(|b| b != b'0') {
            return Err(format!(
                "transactionAmountValue {s:?} has more decimals than {} allows ({})",
                currency.code(),
                currency.exponent()
            ));
        }
    }
    if int.len() > 18 {
        return Err(bad());
    }
    Ok(RawAmount {
        text: text.to_string(),
        has_point: frac.is_some(),
    })
}

impl RawAmount {
    /// The amount in minor units, reading the text as minor units (`1234` = 12.34 CNY).
    pub fn as_minor_units(&self) -> Option<i64> {
        if self.has_point {
            return None;
        }
        self.text.parse().ok()
    }

    /// The amount in minor units, reading the text as a decimal in major units (`12.34` or
    /// `12` = 12.00 CNY).
    pub fn as_decimal(&self, currency: Currency) -> Option<i64> {
        let exp = u32::from(currency.exponent());
        let (int, frac) = match self.text.split_once('.') {
            Some((i, f)) => (i, f),
            None => (self.text.as_str(), ""),
        };
        let mut frac = frac.trim_end_matches('0').to_string();
        if frac.len() > exp as usize {
            return None;
        }
        while frac.len() < exp as usize {
            frac.push('0');
        }
        let int: i64 = int.parse().ok()?;
        let frac: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().ok()?
        };
        int.checked_mul(10i64.checked_pow(exp)?)?.checked_add(frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rows: &[&str], end: bool) -> String {
        let mut s = HEADER.join(",");
        s.push('\n');
        for r in rows {
            s.push_str(r);
            s.push('\n');
        }
        if end {
            s.push_str("<END>\n");
        }
        s
    }

    const ROW: &str = "C1,M1,S01,G1,,P1,,Coffee,CONNECT_WALLET,ALIPAY_CN,PAYMENT,2026-11-21T10:15:31+08:00,IN_STORE_PAYMENT,12.34,CNY";

    #[test]
    fn a_whole_file_parses() {
        let f = parse(
            "transactionItems_20261121_000.csv",
            file(&[ROW], true).as_bytes(),
        )
        .unwrap();
        assert_eq!(f.date, NaiveDate::from_ymd_opt(2026, 11, 21));
        assert_eq!(f.rows.len(), 1);
        let r = &f.rows[0];
        assert_eq!((r.line, r.transaction_type), (2, TxType::Payment));
        assert_eq!(r.amount.as_decimal(r.currency), Some(1234));
        assert_eq!(r.amount.as_minor_units(), None);
        // A byte-order mark and CRLF line ends are fine.
        let crlf = format!("\u{feff}{}", file(&[ROW, ROW], true).replace('\n', "\r\n"));
        let f = parse("x.csv", crlf.as_bytes()).unwrap();
        assert_eq!(f.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        let e = parse("t.csv", file(&[ROW, ROW], false).as_bytes()).unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        assert_eq!(e.line, 3);
        let e = parse("t.csv", b"a,b,c\n<END>\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("header"), "{e}");
        let bad = ROW.replace("12.34", "12,34");
        let e = parse("t.csv", file(&[ROW, &bad], true).as_bytes()).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let bad = ROW.replace("12.34", "12.3x");
        let e = parse("t.csv", file(&[&bad], true).as_bytes()).unwrap_err();
        assert!(e.message.contains("not an amount"), "{e}");
        let bad = ROW.replace("12.34", "12.345");
        let e = parse("t.csv", file(&[&bad], true).as_bytes()).unwrap_err();
        assert!(e.message.contains("more decimals"), "{e}");
        let bad = ROW.replace(",PAYMENT,", ",CHARGE,");
        assert!(parse("t.csv", file(&[&bad], true).as_bytes()).is_err());
        let bad = ROW.replace("2026-11-21T10:15:31+08:00", "yesterday");
        assert!(parse("t.csv", file(&[&bad], true).as_bytes()).is_err());
        let mut after = file(&[ROW], true);
        after.push_str(ROW);
        let e = parse("t.csv", after.as_bytes()).unwrap_err();
        assert!(e.message.contains("after the <END>"), "{e}");
        assert!(parse("t.csv", b"").is_err());
    }

    #[test]
    fn amounts_read_both_ways() {
        let cny = Currency::from_code("CNY").unwrap();
        let krw = Currency::from_code("KRW").unwrap();
        let a = raw_amount("1234", cny).unwrap();
        assert_eq!(
            (a.as_minor_units(), a.as_decimal(cny)),
            (Some(1234), Some(123_400))
        );
        let a = raw_amount("18000", krw).unwrap();
        assert_eq!(
            (a.as_minor_units(), a.as_decimal(krw)),
            (Some(18000), Some(18000))
        );
        let a = raw_amount("12.50", cny).unwrap();
        assert_eq!(a.as_decimal(cny), Some(1250));
        assert_eq!(
            date_from_name("dir/transactionItems_20261121_007.csv"),
            NaiveDate::from_ymd_opt(2026, 11, 21)
        );
        assert_eq!(date_from_name("statement.csv"), None);
    }
}
