//! The receipt layout: a pure function from a slip's data and a paper width to lines.
//! No bytes, no printer, no clock.
//!
//! What a slip shows is fixed by the receipt rules in docs/design.md and the Alipay+ best
//! practice ("打印收据"): merchant and store name, terminal id, transaction type, order amount
//! and currency, `paymentRequestId` as text and as a barcode, `paymentId` when known, an
//! Alipay+ mark, local date and time to the second. It never shows the wallet or issuer name, the
//! customer's payment amount, or a payment code: [`SlipData`] has no field for any of them,
//! so the layout cannot print them by mistake.

pub use crate::domain::slip::{SlipData, SlipKind};

/// Horizontal alignment of a text line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Flush left.
    Left,
    /// Centred.
    Center,
}

/// One line of a laid-out slip. Text lines are already padded to the paper width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Text in Font A; `big` prints it at double width and height (half as many columns).
    Text {
        /// The text, at most the width (or half of it when `big`) in display columns.
        text: String,
        /// Alignment.
        align: Align,
        /// Emphasised.
        bold: bool,
        /// Double width and height.
        big: bool,
    },
    /// The slip's identifier as a barcode, centred, with no human-readable line (the text is
    /// printed on its own line by the layout): CODE128 where it fits the head, else a QR
    /// code (`escpos::plan_barcode`).
    Barcode(String),
    /// An empty line.
    Blank,
}

impl Line {
    fn text(text: impl Into<String>) -> Line {
        Line::Text {
            text: text.into(),
            align: Align::Left,
            bold: false,
            big: false,
        }
    }

    fn center(text: impl Into<String>, bold: bool, big: bool) -> Line {
        Line::Text {
            text: text.into(),
            align: Align::Center,
            bold,
            big,
        }
    }
}

/// Lays a slip out for a paper `width` in characters (Font A columns).
pub fn layout(slip: &SlipData, width: usize) -> Vec<Line> {
    let width = width.max(16);
    let rule = "-".repeat(width);
    let mut out = Vec::new();
    for part in wrap(&slip.merchant_name, width / 2) {
        out.push(Line::center(part, true, true));
    }
    for part in wrap(&slip.store_name, width) {
        out.push(Line::center(part, false, false));
    }
    out.push(Line::text(rule.clone()));
    out.push(Line::center("Alipay+", true, true));
    out.push(Line::center(slip.kind.as_str(), true, true));
    if slip.copy {
        out.push(Line::center("*** COPY ***", true, false));
    }
    out.push(Line::text(rule.clone()));
    pair(&mut out, "Terminal", &slip.terminal_id, width);
    pair(
        &mut out,
        "Date/Time",
        &slip.local_time.format("%Y-%m-%d %H:%M:%S").to_string(),
        width,
    );
    let amount = format!(
        "{} {}",
        slip.amount.currency().code(),
        slip.amount.to_decimal()
    );
    let amount_label = match slip.kind {
        SlipKind::Refund => "Refund amount",
        _ => "Amount",
    };
    out.push(Line::Blank);
    if display_width(amount_label) + 1 + display_width(&amount) * 2 <= width {
        // The amount is what the cashier checks: double height and width when it fits.
        let pad = width / 2 - display_width(&amount).min(width / 2);
        out.push(Line::text(amount_label));
        out.push(Line::Text {
            text: format!("{}{}", " ".repeat(pad), amount),
            align: Align::Left,
            bold: true,
            big: true,
        });
    } else {
        pair(&mut out, amount_label, &amount, width);
    }
    out.push(Line::Blank);
    if let Some(id) = &slip.payment_id {
        pair(&mut out, "Payment ID", id, width);
    }
    if let Some(id) = &slip.refund_request_id {
        pair(&mut out, "Refund request", id, width);
    }
    pair(&mut out, "Request ID", &slip.payment_request_id, width);
    out.push(Line::Barcode(slip.payment_request_id.clone()));
    out.push(Line::text(rule));
    if slip.copy {
        out.push(Line::center("*** COPY ***", true, false));
    }
    out
}

/// Adds `label value` with the value flush right, or the label and the value on lines of
/// their own when they do not fit on one.
fn pair(out: &mut Vec<Line>, label: &str, value: &str, width: usize) {
    let used = display_width(label) + display_width(value);
    if used < width {
        let pad = width - used;
        out.push(Line::text(format!("{label}{}{value}", " ".repeat(pad))));
        return;
    }
    out.push(Line::text(label));
    for part in wrap(value, width) {
        let pad = width - display_width(&part);
        out.push(Line::text(format!("{}{part}", " ".repeat(pad))));
    }
}

/// Splits `s` into pieces of at most `width` display columns, never inside a character.
pub fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut w = 0;
    for c in s.chars().filter(|c| !c.is_control()) {
        let cw = char_width(c);
        if w + cw > width && !cur.is_empty() {
            parts.push(std::mem::take(&mut cur));
            w = 0;
        }
        cur.push(c);
        w += cw;
    }
    if !cur.is_empty() || parts.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Columns a string takes on a receipt printer: CJK and full-width characters take two.
pub fn display_width(s: &str) -> usize {
    s.chars().map(char_width).sum()
}

/// Columns one character takes: two for East Asian wide and full-width characters.
pub fn char_width(c: char) -> usize {
    let c = c as u32;
    let wide = matches!(c,
        0x1100..=0x115F | 0x2E80..=0x303E | 0x3041..=0x33FF | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF | 0xA000..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x20000..=0x3FFFD);
    if wide {
        2
    } else {
        1
    }
}

/// The slip as plain text, one line per line, barcodes as `[barcode data]`: the `.txt`
/// preview next to a file-printed slip, and what tests read.
pub fn to_text(lines: &[Line], width: usize) -> String {
    let mut s = String::new();
    for line in lines {
        match line {
            Line::Text { text, align, .. } => {
                if *align == Align::Center {
                    let pad = width.saturating_sub(display_width(text)) / 2;
                    s.push_str(&" ".repeat(pad));
                }
                s.push_str(text);
            }
            Line::Barcode(data) => {
                s.push_str("[barcode ");
                s.push_str(data);
                s.push(']');
            }
            Line::Blank => {}
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::domain::slip::tests::sample;

    fn text_of(lines: &[Line]) -> String {
        to_text(lines, 48)
    }

    #[test]
    fn sale_shows_what_the_best_practice_requires() {
        let s = sample(SlipKind::Sale);
        let lines = layout(&s, 48);
        let t = text_of(&lines);
        for needle in [
            "Tea House Ltd",
            "Store 1",
            "Alipay+",
            "SALE",
            "T0001",
            "2026-11-21 14:03:05",
            "CNY 12.34",
            "126112114030500000100004200000012347",
            "2026112119074102000000000012345",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from\n{t}");
        }
        assert!(lines.contains(&Line::Barcode(s.payment_request_id.clone())));
        assert!(!t.contains("COPY"));
    }

    #[test]
    fn every_text_line_fits_the_paper() {
        let mut s = sample(SlipKind::Refund);
        s.merchant_name = "上海市黄浦区南京东路第一百货商店有限公司茶叶专柜".into();
        s.store_name = "南京东路旗舰店（二楼）".into();
        s.refund_request_id = Some(format!("R{}", s.payment_request_id));
        s.copy = true;
        for width in [32, 42, 48] {
            for line in layout(&s, width) {
                if let Line::Text { text, big, .. } = &line {
                    let max = if *big { width / 2 } else { width };
                    assert!(display_width(text) <= max, "{text:?} wider than {max}");
                }
            }
        }
        let t = to_text(&layout(&s, 32), 32);
        assert!(t.contains("REFUND") && t.contains("*** COPY ***") && t.contains("Refund amount"));
        assert!(t.contains("南京东路旗舰店"), "{t}");
    }

    #[test]
    fn payment_id_is_left_out_when_unknown() {
        let mut s = sample(SlipKind::Cancel);
        s.payment_id = None;
        let t = text_of(&layout(&s, 48));
        assert!(!t.contains("Payment ID"));
        assert!(t.contains("CANCEL"));
    }

    #[test]
    fn widths_count_chinese_as_two_columns() {
        assert_eq!(display_width("abc"), 3);
        assert_eq!(display_width("茶叶"), 4);
        assert_eq!(display_width("（二）"), 6);
        assert_eq!(wrap("茶叶茶叶茶", 4), vec!["茶叶", "茶叶", "茶"]);
        assert_eq!(wrap("", 4), vec![""]);
    }
}
