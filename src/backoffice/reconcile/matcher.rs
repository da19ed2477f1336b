//! The matcher: a statement against a ledger, as a pure function. No store, no clock: the
//! terminal builds its [`Ledger`] from its SQLite journal, the hub from its own store, and both
//! get the same findings.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::statement::{StatementFile, StatementRow, TxType};
use crate::domain::machine::State;
use crate::domain::money::{Amount, Currency};

/// The result code a payment carries once the statement moved it to NEEDS_ATTENTION.
pub const STATEMENT_CHARGED: &str = "STATEMENT_CHARGED";

/// A payment as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPayment {
    /// Our `paymentRequestId`.
    pub payment_request_id: String,
    /// The gateway's `paymentId`, once known.
    pub payment_id: Option<String>,
    /// The terminal that took it.
    pub terminal_id: String,
    /// Amount and currency.
    pub amount: Amount,
    /// Current state.
    pub state: State,
    /// The last deciding result code (`STATEMENT_CHARGED` after a reconciliation flagged it).
    pub result_code: Option<String>,
    /// Whether it was ever SUCCEEDED.
    pub ever_succeeded: bool,
    /// The statement day (UTC+8) it belongs to.
    pub business_date: NaiveDate,
    /// The queue item still owing its reversal, if any.
    pub open_reversal: Option<i64>,
}

/// A refund as the ledger holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRefund {
    /// Our `refundRequestId`.
    pub refund_request_id: String,
    /// Its payment.
    pub payment_request_id: String,
    /// Amount and currency.
    pub amount: Amount,
    /// `PENDING`, `QUEUED`, `SUCCEEDED`, `FAILED`, `ABANDONED`.
    pub state: String,
    /// The statement day (UTC+8) it belongs to.
    pub business_date: NaiveDate,
}

/// What posd knows, for the statement's days and the ids the statement names.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Payments by `paymentRequestId`.
    pub payments: BTreeMap<String, LedgerPayment>,
    /// Refunds by `refundRequestId`.
    pub refunds: BTreeMap<String, LedgerRefund>,
}

impl Ledger {
    fn payment_for(&self, request_id: &str, gateway_id: &str) -> Option<&LedgerPayment> {
        self.payments.get(request_id).or_else(|| {
            (!gateway_id.is_empty())
                .then(|| {
                    self.payments
                        .values()
                        .find(|p| p.payment_id.as_deref() == Some(gateway_id))
                })
                .flatten()
        })
    }
}

/// What a ledger loader must fetch for a statement: the ids it names and the days it covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// `transactionRequestId`s (payment and refund request ids).
    pub request_ids: BTreeSet<String>,
    /// `transactionId`s and `originalTransactionId`s (the gateway's ids).
    pub gateway_ids: BTreeSet<String>,
    /// The statement days (UTC+8).
    pub dates: BTreeSet<NaiveDate>,
}

/// The days a set of files covers: from their names, else from their rows' `paymentTime`.
pub fn statement_dates(files: &[StatementFile]) -> BTreeSet<NaiveDate> {
    let utc8 = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8");
    files
        .iter()
        .flat_map(|f| match f.date {
            Some(d) => vec![d],
            None => f
                .rows
                .iter()
                .map(|r| r.payment_time.with_timezone(&utc8).date_naive())
                .collect(),
        })
        .collect()
}

/// The ids and days a loader must fetch.
pub fn wanted(files: &[StatementFile]) -> Wanted {
    let mut w = Wanted {
        dates: statement_dates(files),
        ..Wanted::default()
    };
    for r in files.iter().flat_map(|f| &f.rows) {
        w.request_ids.insert(r.transaction_request_id.clone());
        for g in [&r.transaction_id, &r.original_transaction_id] {
            if !g.is_empty() {
                w.gateway_ids.insert(g.clone());
            }
        }
    }
    w
}

/// Which rows belong to the books being reconciled (a statement covers the whole merchant).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Stores whose rows are ours (`referenceStoreId`); empty = every store.
    pub store_ids: Vec<String>,
    /// Terminals whose request ids are ours; a posd id of another terminal is skipped.
    pub terminal_ids: Vec<String>,
}

/// Whether `id` is a request id posd built for `terminal` (`[R]YYYYMMDDhhmmss` + terminal +
/// at least 26 digits).
pub fn issued_by(id: &str, terminal: &str) -> bool {
    let id = id.strip_prefix('R').unwrap_or(id);
    id.len() > 14
        && id.as_bytes()[..14].iter().all(u8::is_ascii_digit)
        && id[14..]
            .strip_prefix(terminal)
            .is_some_and(|rest| rest.len() >= 26 && rest.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `id` has the shape of a posd request id at all (of some terminal).
pub fn posd_shaped(id: &str) -> bool {
    let id = id.strip_prefix('R').unwrap_or(id);
    let b = id.as_bytes();
    b.len() >= 14 + 1 + 26
        && b[..14].iter().all(u8::is_ascii_digit)
        && b.iter().all(u8::is_ascii_alphanumeric)
        && b[b.len() - 26..].iter().all(u8::is_ascii_digit)
        && b[14..b.len() - 26].iter().any(u8::is_ascii_alphabetic)
}

impl Scope {
    fn covers(&self, row: &StatementRow) -> bool {
        let store_ok = self.store_ids.is_empty()
            || row.reference_store_id.is_empty()
            || self.store_ids.contains(&row.reference_store_id);
        let id = &row.transaction_request_id;
        let terminal_ok = self.terminal_ids.is_empty()
            || !posd_shaped(id)
            || self.terminal_ids.iter().any(|t| issued_by(id, t));
        store_ok && terminal_ok
    }
}

/// The kind of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The statement and posd agree.
    Matched,
    /// Charged at the gateway, not charged at posd (FAILED, CANCELLED, CANCEL_QUEUED with no
    /// reversal in the file). Critical: the customer paid for nothing.
    ChargedNotAtPosd,
    /// Paid (or refunded) at posd, absent from the statement.
    MissingFromStatement,
    /// Amount or currency differs.
    AmountDiffers,
    /// A row posd does not know.
    UnknownToPosd,
    /// Both know it but disagree on what happened (a reversal posd does not hold, a refund posd
    /// holds as failed, a payment that needs attention).
    StateDiffers,
    /// posd is still working on it: run again once it is final.
    InProgress,
}

impl Kind {
    /// The name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Matched => "matched",
            Kind::ChargedNotAtPosd => "charged_not_at_posd",
            Kind::MissingFromStatement => "missing_from_statement",
            Kind::AmountDiffers => "amount_differs",
            Kind::UnknownToPosd => "unknown_to_posd",
            Kind::StateDiffers => "state_differs",
            Kind::InProgress => "in_progress",
        }
    }

    /// What the back office should do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Kind::Matched => "nothing",
            Kind::ChargedNotAtPosd => "the customer was charged for a sale posd reversed or never completed: run with --apply to refund the full amount, or refund it in the merchant portal and resolve the payment",
            Kind::MissingFromStatement => "check the payment in the merchant portal; if the gateway has no charge, the goods were given away: resolve it as FAILED",
            Kind::AmountDiffers => "compare the payment in the merchant portal; refund the difference or contact the gateway",
            Kind::UnknownToPosd => "a transaction posd did not make (another device, the merchant portal, or a lost record): look it up in the merchant portal",
            Kind::StateDiffers => "look the payment up in the merchant portal and resolve it (posd resolve ID --as …)",
            Kind::InProgress => "posd is still settling it: run the reconciliation again later",
        }
    }
}

/// What reconciling does (or did) about a critical finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Move the payment to NEEDS_ATTENTION with the statement as the reason.
    FlagAttention,
    /// Queue the full refund (`--apply`); `payment_id` is the gateway's id of the charge.
    QueueReversal {
        /// The gateway's `paymentId`.
        payment_id: String,
    },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The kind.
    pub kind: Kind,
    /// Whether it is critical (charged at the gateway, not at posd).
    pub critical: bool,
    /// The statement file, when a row is behind it.
    pub file: Option<String>,
    /// The row's line.
    pub line: Option<usize>,
    /// `transactionType`, or posd's record type for a missing row.
    pub transaction_type: String,
    /// The payment.
    pub payment_request_id: Option<String>,
    /// The refund.
    pub refund_request_id: Option<String>,
    /// The statement's amount (decimal).
    pub statement_amount: Option<String>,
    /// posd's amount (decimal).
    pub posd_amount: Option<String>,
    /// The currency.
    pub currency: String,
    /// posd's state of the payment or refund.
    pub posd_state: Option<String>,
    /// What was found.
    pub detail: String,
    /// What reconciling does about it (critical rows).
    #[serde(skip)]
    pub action: Vec<Action>,
    /// What this run did about it.
    pub done: Option<String>,
}

/// How the amount column was read for one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitFinding {
    /// The currency.
    pub currency: String,
    /// Its exponent.
    pub exponent: u8,
    /// `minor_units`, `decimal`, or `same` (exponent 0: both read the same).
    pub unit: String,
    /// Why.
    pub evidence: String,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The files read.
    pub files: Vec<FileSummary>,
    /// The statement days (UTC+8).
    pub dates: Vec<String>,
    /// How amounts were read.
    pub units: Vec<UnitFinding>,
    /// One finding per statement row in scope, then one per posd row missing.
    pub findings: Vec<Finding>,
    /// Rows of other stores or terminals, skipped.
    pub out_of_scope: usize,
    /// Whether `--apply` was given.
    pub applied: bool,
}

/// One file read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    /// Its name.
    pub name: String,
    /// Its day, from the name.
    pub date: Option<String>,
    /// Data rows.
    pub rows: usize,
}

impl Report {
    /// Whether anything is not matched.
    pub fn has_discrepancies(&self) -> bool {
        self.findings.iter().any(|f| f.kind != Kind::Matched)
    }

    /// Findings per kind.
    pub fn counts(&self) -> Vec<(Kind, usize)> {
        let mut m: BTreeMap<&'static str, (Kind, usize)> = BTreeMap::new();
        for f in &self.findings {
            m.entry(f.kind.as_str()).or_insert((f.kind, 0)).1 += 1;
        }
        m.into_values().collect()
    }

    /// The critical findings.
    pub fn critical(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.critical)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Minor,
    Decimal,
}

fn show(minor: i64, c: Currency) -> String {
    Amount::from_minor(minor, c)
        .map(|a| a.to_decimal())
        .unwrap_or_else(|_| format!("{minor} (minor units)"))
}

/// Decides, per currency, whether the amount column holds minor units or decimals: a decimal
/// point anywhere decides "decimal"; with none, the reading under which more rows agree with
/// posd's amounts wins (ties: minor units, as the gateway's sample shows integers).
fn decide_units(
    rows: &[(&StatementFile, &StatementRow)],
    ledger: &Ledger,
) -> (HashMap<&'static str, Unit>, Vec<UnitFinding>) {
    let mut per: BTreeMap<&'static str, (Currency, Vec<&StatementRow>)> = BTreeMap::new();
    for (_, r) in rows {
        per.entry(r.currency.code())
            .or_insert((r.currency, Vec::new()))
            .1
            .push(r);
    }
    let mut units = HashMap::new();
    let mut findings = Vec::new();
    for (code, (cur, rs)) in per {
        let exp = cur.exponent();
        let posd_minor = |r: &StatementRow| -> Option<i64> {
            match r.transaction_type {
                TxType::Refund | TxType::RefundReversal => ledger
                    .refunds
                    .get(&r.transaction_request_id)
                    .map(|x| x.amount.minor()),
                _ => ledger
                    .payment_for(&r.transaction_request_id, &r.original_or_own_id())
                    .map(|p| p.amount.minor()),
            }
        };
        let (unit, evidence) = if exp == 0 {
            (
                Unit::Minor,
                format!("{code} has no minor unit: both readings are the same"),
            )
        } else if let Some(r) = rs.iter().find(|r| r.amount.has_point) {
            (
                Unit::Decimal,
                format!("decimal amounts (a decimal point on line {})", r.line),
            )
        } else {
            let known: Vec<(i64, &StatementRow)> = rs
                .iter()
                .filter_map(|r| posd_minor(r).map(|m| (m, *r)))
                .collect();
            let as_minor = known
                .iter()
                .filter(|(m, r)| r.amount.as_minor_units() == Some(*m))
                .count();
            let as_decimal = known
                .iter()
                .filter(|(m, r)| r.amount.as_decimal(cur) == Some(*m))
                .count();
            if as_decimal > as_minor {
                (
                    Unit::Decimal,
                    format!(
                        "whole decimal amounts: {as_decimal} of {} rows posd knows agree read as {code}, {as_minor} as minor units",
                        known.len()
                    ),
                )
            } else {
                (
                    Unit::Minor,
                    format!(
                        "minor-unit integers: {as_minor} of {} rows posd knows agree read as minor units, {as_decimal} as decimals",
                        known.len()
                    ),
                )
            }
        };
        units.insert(code, unit);
        findings.push(UnitFinding {
            currency: code.to_string(),
            exponent: exp,
            unit: match (exp, unit) {
                (0, _) => "same".into(),
                (_, Unit::Minor) => "minor_units".into(),
                (_, Unit::Decimal) => "decimal".into(),
            },
            evidence,
        });
    }
    (units, findings)
}

impl StatementRow {
    /// The gateway id that names the payment: the original for CANCEL/REFUND rows, else its own.
    fn original_or_own_id(&self) -> String {
        if self.original_transaction_id.is_empty() {
            self.transaction_id.clone()
        } else {
            self.original_transaction_id.clone()
        }
    }

    fn minor(&self, unit: Unit) -> Option<i64> {
        match unit {
            Unit::Minor => self.amount.as_minor_units(),
            Unit::Decimal => self.amount.as_decimal(self.currency),
        }
    }
}

/// Matches the statement files against the ledger.
pub fn reconcile(files: &[StatementFile], ledger: &Ledger, scope: &Scope) -> Report {
    let all: Vec<(&StatementFile, &StatementRow)> = files
        .iter()
        .flat_map(|f| f.rows.iter().map(move |r| (f, r)))
        .collect();
    let (rows, skipped): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, r)| scope.covers(r));
    let (units, unit_findings) = decide_units(&rows, ledger);
    let dates = statement_dates(files);

    // Which payments the file reverses, and which it shows charged or refunded.
    let mut reversed: BTreeSet<String> = BTreeSet::new();
    let mut charged: BTreeSet<String> = BTreeSet::new();
    let mut refunded: BTreeSet<String> = BTreeSet::new();
    for (_, r) in &rows {
        let p = ledger.payment_for(&r.transaction_request_id, &r.original_or_own_id());
        match r.transaction_type {
            t if t.reverses_payment() => {
                if let Some(p) = p {
                    reversed.insert(p.payment_request_id.clone());
                }
            }
            TxType::Payment => {
                if let Some(p) = p {
                    charged.insert(p.payment_request_id.clone());
                }
            }
            TxType::Refund => {
                refunded.insert(r.transaction_request_id.clone());
            }
            _ => {}
        }
    }

    let mut findings = Vec::new();
    for (f, r) in &rows {
        let unit = units.get(r.currency.code()).copied().unwrap_or(Unit::Minor);
        let st_minor = r.minor(unit);
        let mut fd = Finding {
            kind: Kind::Matched,
            critical: false,
            file: Some(f.name.clone()),
            line: Some(r.line),
            transaction_type: r.transaction_type.as_str().into(),
            payment_request_id: None,
            refund_request_id: None,
            statement_amount: st_minor.map(|m| show(m, r.currency)),
            posd_amount: None,
            currency: r.currency.code().into(),
            posd_state: None,
            detail: String::new(),
            action: Vec::new(),
            done: None,
        };
        let amount_ok = |a: &Amount| a.currency() == r.currency && st_minor == Some(a.minor());
        let amount_detail = |a: &Amount| {
            format!(
                "the statement says {} {}, posd {} {}",
                fd_amount(st_minor, r),
                r.currency.code(),
                a.to_decimal(),
                a.currency().code()
            )
        };
        match r.transaction_type {
            TxType::Refund | TxType::RefundReversal => {
                fd.refund_request_id = Some(r.transaction_request_id.clone());
                let Some(x) = ledger.refunds.get(&r.transaction_request_id) else {
                    fd.kind = Kind::UnknownToPosd;
                    fd.payment_request_id = ledger
                        .payment_for("", &r.original_transaction_id)
                        .map(|p| p.payment_request_id.clone());
                    fd.detail = format!(
                        "a {} posd did not make (refundRequestId {})",
                        r.transaction_type.as_str().to_lowercase(),
                        r.transaction_request_id
                    );
                    findings.push(fd);
                    continue;
                };
                fd.payment_request_id = Some(x.payment_request_id.clone());
                fd.posd_amount = Some(x.amount.to_decimal());
                fd.posd_state = Some(x.state.clone());
                if r.transaction_type == TxType::RefundReversal {
                    fd.kind = Kind::StateDiffers;
                    fd.detail =
                        "the gateway reversed this refund: the customer was charged again".into();
                } else if !amount_ok(&x.amount) {
                    fd.kind = Kind::AmountDiffers;
                    fd.detail = amount_detail(&x.amount);
                } else {
                    match x.state.as_str() {
                        "SUCCEEDED" => fd.detail = "refund matched".into(),
                        "PENDING" | "QUEUED" => {
                            fd.kind = Kind::InProgress;
                            fd.detail = "the gateway refunded it; posd has not recorded the answer yet (replay the queue)".into();
                        }
                        s => {
                            fd.kind = Kind::StateDiffers;
                            fd.detail =
                                format!("the gateway refunded it, posd holds the refund as {s}");
                        }
                    }
                }
            }
            t => {
                let Some(p) =
                    ledger.payment_for(&r.transaction_request_id, &r.original_or_own_id())
                else {
                    fd.kind = Kind::UnknownToPosd;
                    fd.payment_request_id = Some(r.transaction_request_id.clone());
                    fd.detail = if posd_shaped(&r.transaction_request_id) {
                        format!(
                            "a {} with a posd request id this terminal has no record of",
                            t.as_str().to_lowercase()
                        )
                    } else {
                        format!("a {} posd did not make", t.as_str().to_lowercase())
                    };
                    findings.push(fd);
                    continue;
                };
                fd.payment_request_id = Some(p.payment_request_id.clone());
                fd.posd_amount = Some(p.amount.to_decimal());
                fd.posd_state = Some(p.state.as_str().into());
                let is_reversed = reversed.contains(&p.payment_request_id);
                let statement = format!("{} line {}", f.name, r.line);
                if t == TxType::Payment {
                    use State as S;
                    match p.state {
                        S::Succeeded | S::PartiallyRefunded | S::Refunded if is_reversed => {
                            fd.kind = Kind::StateDiffers;
                            fd.detail =
                                format!("the gateway reversed it; posd holds it as {}", p.state);
                        }
                        S::Succeeded | S::PartiallyRefunded | S::Refunded => {
                            fd.detail = "payment matched".into();
                        }
                        S::Failed | S::Cancelled | S::CancelQueued if is_reversed => {
                            fd.detail =
                                "charged and reversed at the gateway; posd holds it as not charged"
                                    .into();
                        }
                        S::CancelQueued if p.open_reversal.is_some() => {
                            fd.kind = Kind::ChargedNotAtPosd;
                            fd.critical = true;
                            fd.detail = format!(
                                "charged at the gateway ({statement}); the reversal is already owed in queue item {} — replay the queue",
                                p.open_reversal.unwrap_or_default()
                            );
                        }
                        S::Failed | S::Cancelled | S::CancelQueued => {
                            fd.kind = Kind::ChargedNotAtPosd;
                            fd.critical = true;
                            fd.detail = format!(
                                "charged at the gateway ({statement}), posd holds it as {} with no reversal in the file",
                                p.state
                            );
                            fd.action.push(Action::FlagAttention);
                            fd.action.push(Action::QueueReversal {
                                payment_id: p
                                    .payment_id
                                    .clone()
                                    .unwrap_or_else(|| r.transaction_id.clone()),
                            });
                        }
                        S::NeedsAttention
                            if !is_reversed
                                && p.result_code.as_deref() == Some(STATEMENT_CHARGED) =>
                        {
                            fd.kind = Kind::ChargedNotAtPosd;
                            fd.critical = true;
                            fd.detail = format!(
                                "charged at the gateway ({statement}); posd flagged it for attention on an earlier reconciliation"
                            );
                            fd.action.push(Action::QueueReversal {
                                payment_id: p
                                    .payment_id
                                    .clone()
                                    .unwrap_or_else(|| r.transaction_id.clone()),
                            });
                        }
                        S::NeedsAttention => {
                            fd.kind = Kind::StateDiffers;
                            fd.detail = if is_reversed {
                                "the gateway charged and reversed it; the payment needs attention: resolve it as CANCELLED".into()
                            } else {
                                "the gateway charged it; the payment needs attention: resolve it"
                                    .into()
                            };
                        }
                        _ => {
                            fd.kind = Kind::InProgress;
                            fd.detail = format!("posd is still working on it ({})", p.state);
                        }
                    }
                } else {
                    use State as S;
                    match p.state {
                        S::Cancelled | S::CancelQueued | S::Failed => {
                            fd.detail = "reversal matched".into();
                        }
                        S::NeedsAttention => {
                            fd.kind = Kind::StateDiffers;
                            fd.detail = "the gateway reversed it; the payment needs attention: resolve it as CANCELLED".into();
                        }
                        s if s.is_final() => {
                            fd.kind = Kind::StateDiffers;
                            fd.detail = format!("the gateway reversed it; posd holds it as {s}");
                        }
                        s => {
                            fd.kind = Kind::InProgress;
                            fd.detail = format!("posd is still working on it ({s})");
                        }
                    }
                }
                if !fd.critical && fd.kind == Kind::Matched && !amount_ok(&p.amount) {
                    fd.kind = Kind::AmountDiffers;
                    fd.detail = amount_detail(&p.amount);
                } else if fd.critical && !amount_ok(&p.amount) {
                    fd.detail
                        .push_str(&format!("; also {}", amount_detail(&p.amount)));
                }
            }
        }
        findings.push(fd);
    }

    // posd rows of the statement's days that the statement does not show.
    for p in ledger.payments.values() {
        if !dates.contains(&p.business_date) || !scope_has_terminal(scope, &p.terminal_id) {
            continue;
        }
        let should_show = p.ever_succeeded
            || matches!(
                p.state,
                State::Succeeded | State::PartiallyRefunded | State::Refunded
            );
        if should_show && !charged.contains(&p.payment_request_id) {
            findings.push(Finding {
                kind: Kind::MissingFromStatement,
                critical: false,
                file: None,
                line: None,
                transaction_type: "PAYMENT".into(),
                payment_request_id: Some(p.payment_request_id.clone()),
                refund_request_id: None,
                statement_amount: None,
                posd_amount: Some(p.amount.to_decimal()),
                currency: p.amount.currency().code().into(),
                posd_state: Some(p.state.as_str().into()),
                detail: format!(
                    "posd holds it as paid ({}) on {}, the statement has no PAYMENT row for it",
                    p.state, p.business_date
                ),
                action: Vec::new(),
                done: None,
            });
        }
    }
    for x in ledger.refunds.values() {
        let terminal_ok = ledger
            .payments
            .get(&x.payment_request_id)
            .is_none_or(|p| scope_has_terminal(scope, &p.terminal_id));
        if dates.contains(&x.business_date)
            && terminal_ok
            && x.state == "SUCCEEDED"
            && !refunded.contains(&x.refund_request_id)
        {
            findings.push(Finding {
                kind: Kind::MissingFromStatement,
                critical: false,
                file: None,
                line: None,
                transaction_type: "REFUND".into(),
                payment_request_id: Some(x.payment_request_id.clone()),
                refund_request_id: Some(x.refund_request_id.clone()),
                statement_amount: None,
                posd_amount: Some(x.amount.to_decimal()),
                currency: x.amount.currency().code().into(),
                posd_state: Some(x.state.clone()),
                detail: format!(
                    "posd holds this refund as done on {}, the statement has no REFUND row for it",
                    x.business_date
                ),
                action: Vec::new(),
                done: None,
            });
        }
    }

    Report {
        files: files
            .iter()
            .map(|f| FileSummary {
                name: f.name.clone(),
                date: f.date.map(|d| d.to_string()),
                rows: f.rows.len(),
            })
            .collect(),
        dates: dates.iter().map(NaiveDate::to_string).collect(),
        units: unit_findings,
        findings,
        out_of_scope: skipped.len(),
        applied: false,
    }
}

fn scope_has_terminal(scope: &Scope, terminal: &str) -> bool {
    scope.terminal_ids.is_empty() || scope.terminal_ids.iter().any(|t| t == terminal)
}

fn fd_amount(minor: Option<i64>, r: &StatementRow) -> String {
    match minor {
        Some(m) => show(m, r.currency),
        None => r.amount.text.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoffice::reconcile::statement::{self, HEADER};

    const T: &str = "T0001";

    fn id(seq: u32) -> String {
        format!("20261121101530{T}000000001234{seq:08}123456")
    }

    fn cny(minor: i64) -> Amount {
        Amount::from_minor(minor, Currency::from_code("CNY").unwrap()).unwrap()
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 21).unwrap()
    }

    fn pay(seq: u32, state: State) -> LedgerPayment {
        LedgerPayment {
            payment_request_id: id(seq),
            payment_id: Some(format!("G{seq}")),
            terminal_id: T.into(),
            amount: cny(1234),
            state,
            result_code: None,
            ever_succeeded: matches!(state, State::Succeeded),
            business_date: day(),
            open_reversal: None,
        }
    }

    fn file(lines: &[String]) -> StatementFile {
        let mut s = HEADER.join(",");
        s.push('\n');
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("<END>\n");
        statement::parse("transactionItems_20261121_000.csv", s.as_bytes()).unwrap()
    }

    fn row(store: &str, request_id: &str, ty: &str, amount: &str) -> String {
        format!("C,M,{store},G,,{request_id},,d,W,P,{ty},2026-11-21T10:15:31+08:00,IN_STORE_PAYMENT,{amount},CNY")
    }

    fn ledger(ps: Vec<LedgerPayment>) -> Ledger {
        Ledger {
            payments: ps
                .into_iter()
                .map(|p| (p.payment_request_id.clone(), p))
                .collect(),
            refunds: BTreeMap::new(),
        }
    }

    fn scope() -> Scope {
        Scope {
            store_ids: vec!["S01".into()],
            terminal_ids: vec![T.into()],
        }
    }

    #[test]
    fn ids_are_recognised_by_terminal() {
        assert!(issued_by(&id(7), T));
        assert!(issued_by(&format!("R{}", id(7)), T));
        assert!(!issued_by(&id(7), "T0002"));
        assert!(posd_shaped(&id(7)));
        assert!(!posd_shaped("ECR-7-000123"));
    }

    #[test]
    fn whole_decimal_amounts_are_told_from_minor_units_by_the_books() {
        // "12" can be 12.00 or 0.12: the books decide, and the report says so.
        let mut a = pay(1, State::Succeeded);
        a.amount = cny(1200);
        let f = file(&[row("S01", &id(1), "PAYMENT", "12")]);
        let r = reconcile(&[f], &ledger(vec![a]), &scope());
        assert_eq!(r.units[0].unit, "decimal", "{:?}", r.units);
        assert_eq!(r.findings[0].kind, Kind::Matched);
        // "1234" agrees as minor units.
        let f = file(&[row("S01", &id(1), "PAYMENT", "1234")]);
        let r = reconcile(&[f], &ledger(vec![pay(1, State::Succeeded)]), &scope());
        assert_eq!(r.units[0].unit, "minor_units");
        assert!(!r.has_discrepancies());
    }

    #[test]
    fn a_charge_posd_holds_as_not_charged_is_critical_and_says_what_to_do() {
        let f = file(&[row("S01", &id(1), "PAYMENT", "12.34")]);
        for s in [State::Failed, State::Cancelled, State::CancelQueued] {
            let r = reconcile(std::slice::from_ref(&f), &ledger(vec![pay(1, s)]), &scope());
            let c = &r.findings[0];
            assert_eq!((c.kind, c.critical), (Kind::ChargedNotAtPosd, true), "{s}");
            assert_eq!(c.action.len(), 2, "{s}: flag, then refund on --apply");
        }
        // The reversal already owed in the queue: critical, but nothing more to queue.
        let mut q = pay(1, State::CancelQueued);
        q.open_reversal = Some(9);
        let r = reconcile(std::slice::from_ref(&f), &ledger(vec![q]), &scope());
        assert!(r.findings[0].critical && r.findings[0].action.is_empty());
        assert!(r.findings[0].detail.contains("queue item 9"));
        // Flagged by an earlier run: only the refund is left to do.
        let mut flagged = pay(1, State::NeedsAttention);
        flagged.result_code = Some(STATEMENT_CHARGED.into());
        let r = reconcile(std::slice::from_ref(&f), &ledger(vec![flagged]), &scope());
        assert!(matches!(
            r.findings[0].action[..],
            [Action::QueueReversal { .. }]
        ));
        // Charged and reversed in the same file: matched.
        let both = file(&[
            row("S01", &id(1), "PAYMENT", "12.34"),
            row("S01", &id(1), "CANCEL", "12.34"),
        ]);
        let r = reconcile(&[both], &ledger(vec![pay(1, State::Cancelled)]), &scope());
        assert!(!r.has_discrepancies(), "{:?}", r.findings);
    }

    #[test]
    fn other_stores_and_terminals_are_skipped_and_foreign_rows_reported() {
        let f = file(&[
            row("S02", "ANY-1", "PAYMENT", "1.00"),
            row("S01", &id(5).replace(T, "T0002"), "PAYMENT", "1.00"),
            row("S01", "ECR-1", "PAYMENT", "1.00"),
            row("S01", &id(1), "PAYMENT", "12.34"),
        ]);
        let r = reconcile(&[f], &ledger(vec![pay(1, State::Succeeded)]), &scope());
        assert_eq!(r.out_of_scope, 2);
        let kinds: Vec<Kind> = r.findings.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [Kind::UnknownToPosd, Kind::Matched]);
    }

    #[test]
    fn a_gateway_reversal_of_a_posd_sale_and_a_reversed_refund_are_state_differences() {
        let f = file(&[
            row("S01", &id(1), "PAYMENT", "12.34"),
            row("S01", &id(1), "PAYMENT_REVERSAL", "12.34"),
        ]);
        let r = reconcile(&[f], &ledger(vec![pay(1, State::Succeeded)]), &scope());
        assert!(
            r.findings.iter().all(|f| f.kind == Kind::StateDiffers),
            "{:?}",
            r.findings
        );
        let mut l = ledger(vec![pay(1, State::PartiallyRefunded)]);
        l.refunds.insert(
            "R1".into(),
            LedgerRefund {
                refund_request_id: "R1".into(),
                payment_request_id: id(1),
                amount: cny(500),
                state: "SUCCEEDED".into(),
                business_date: day(),
            },
        );
        let f = file(&[
            row("S01", &id(1), "PAYMENT", "12.34"),
            row("S01", "R1", "REFUND_REVERSAL", "5.00"),
        ]);
        let r = reconcile(&[f], &l, &scope());
        let kinds: Vec<Kind> = r.findings.iter().map(|f| f.kind).collect();
        // The reversal row, and the refund itself missing from the file.
        assert_eq!(
            kinds,
            [
                Kind::Matched,
                Kind::StateDiffers,
                Kind::MissingFromStatement
            ]
        );
    }
}
