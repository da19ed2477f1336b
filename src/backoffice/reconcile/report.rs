//! The reconciliation report as a table for a terminal, as CSV (`--format csv`) and as JSON
//! (`--format json`, the API's answer).

use super::matcher::{Kind, Report};

/// The report's CSV header.
pub const CSV_HEADER: [&str; 13] = [
    "kind",
    "critical",
    "file",
    "line",
    "transaction_type",
    "payment_request_id",
    "refund_request_id",
    "statement_amount",
    "posd_amount",
    "currency",
    "posd_state",
    "detail",
    "done",
];

fn field(s: &str) -> String {
    // Free text from the file could be run as a formula by a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// One line per finding, CRLF line ends.
pub fn to_csv(r: &Report) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for f in &r.findings {
        let o = |v: &Option<String>| field(v.as_deref().unwrap_or(""));
        let cols = [
            f.kind.as_str().to_string(),
            f.critical.to_string(),
            o(&f.file),
            f.line.map(|l| l.to_string()).unwrap_or_default(),
            field(&f.transaction_type),
            o(&f.payment_request_id),
            o(&f.refund_request_id),
            o(&f.statement_amount),
            o(&f.posd_amount),
            field(&f.currency),
            o(&f.posd_state),
            field(&f.detail),
            o(&f.done),
        ];
        out.push_str(&cols.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The report for a terminal: summary, amount units, then every finding that is not matched
/// (critical first), each with what to do.
pub fn to_table(r: &Report) -> String {
    let mut out = String::new();
    for f in &r.files {
        out.push_str(&format!(
            "file {}: {} rows{}\n",
            f.name,
            f.rows,
            f.date
                .as_deref()
                .map(|d| format!(", day {d} (UTC+8)"))
                .unwrap_or_default()
        ));
    }
    for u in &r.units {
        out.push_str(&format!(
            "amounts in {}: {} ({})\n",
            u.currency, u.unit, u.evidence
        ));
    }
    if r.out_of_scope > 0 {
        out.push_str(&format!(
            "{} rows of other stores or terminals skipped\n",
            r.out_of_scope
        ));
    }
    let counts: Vec<String> = r
        .counts()
        .iter()
        .map(|(k, n)| format!("{n} {}", k.as_str()))
        .collect();
    out.push_str(&format!(
        "{}\n",
        if counts.is_empty() {
            "nothing to reconcile".to_string()
        } else {
            counts.join(", ")
        }
    ));
    let mut open: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.kind != Kind::Matched)
        .collect();
    if open.is_empty() {
        out.push_str("all matched\n");
        return out;
    }
    open.sort_by_key(|f| !f.critical);
    out.push_str(&format!(
        "\n{:<9} {:<22} {:<8} {:<16} {:<46} {:>12} {:>12} {:<18} DETAIL\n",
        "", "KIND", "LINE", "TYPE", "PAYMENT / REFUND", "STATEMENT", "POSD", "POSD STATE"
    ));
    for f in open {
        let id = f
            .refund_request_id
            .as_deref()
            .or(f.payment_request_id.as_deref())
            .unwrap_or("-");
        out.push_str(&format!(
            "{:<9} {:<22} {:<8} {:<16} {:<46} {:>12} {:>12} {:<18} {}{}\n",
            if f.critical { "CRITICAL" } else { "" },
            f.kind.as_str(),
            f.line.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            f.transaction_type,
            id,
            f.statement_amount.as_deref().unwrap_or("-"),
            f.posd_amount.as_deref().unwrap_or("-"),
            f.posd_state.as_deref().unwrap_or("-"),
            f.detail,
            f.done
                .as_deref()
                .map(|d| format!(" [{d}]"))
                .unwrap_or_default()
        ));
    }
    out.push_str("\nwhat to do:\n");
    let mut kinds: Vec<Kind> = r
        .findings
        .iter()
        .map(|f| f.kind)
        .filter(|k| *k != Kind::Matched)
        .collect();
    kinds.dedup();
    kinds.sort_by_key(|k| k.as_str());
    kinds.dedup();
    for k in kinds {
        out.push_str(&format!("  {}: {}\n", k.as_str(), k.advice()));
    }
    out
}
