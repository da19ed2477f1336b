//! Reconciliation against the gateway's statement (`posd reconcile FILE…`, `POST
//! /v1/reconcile`, the console's upload): parse every file first (a malformed one refuses the
//! whole run and changes nothing), build the ledger from the terminal's journal, match, then
//! act on the critical rows through the engine's transition path: the payment moves to
//! NEEDS_ATTENTION with the statement as reason, and with `apply` its full refund is queued
//! write-ahead (refund row and queue item in the transition's transaction). Running it again
//! on the same files changes nothing.
//!
//! The matcher is pure ([`matcher::reconcile`] over a [`matcher::Ledger`]), so the hub runs
//! the same matching over its own store.

pub mod matcher;
pub mod report;
pub mod statement;

use std::collections::BTreeSet;

use chrono::{Duration as ChronoDuration, NaiveDate, TimeZone};

use crate::api::journal::{business_date, JournalIdentity, BUSINESS_DAY_OFFSET_SECONDS};
use crate::domain::machine::{Event, State};
use crate::domain::money::Amount;
use crate::engine::clock::now_ms;
use crate::engine::queue::{Payload, PAYLOAD_VERSION};
use crate::engine::{make_refund_id, Engine, EngineError};
use crate::gateway::RefundOrder;
use crate::store::journal::{self, JournalRow, LedgerRow};
use crate::store::payments::{self, NewQueueItem, NewRefund, SettleRefund};
use matcher::{Action, Ledger, LedgerPayment, LedgerRefund, Report, Scope, Wanted};
use statement::{StatementError, StatementFile};

/// The reason the reversal refund carries to the gateway.
pub const REVERSAL_REASON: &str = "reversal: the gateway statement shows a charge posd reversed";

/// Parses every file; the first malformed one refuses them all.
pub fn parse_all(files: &[(String, Vec<u8>)]) -> Result<Vec<StatementFile>, StatementError> {
    files
        .iter()
        .map(|(name, bytes)| statement::parse(name, bytes))
        .collect()
}

fn utc8_midnight_ms(d: NaiveDate) -> i64 {
    let utc8 = chrono::FixedOffset::east_opt(BUSINESS_DAY_OFFSET_SECONDS).expect("UTC+8");
    utc8.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

fn ledger_payment(
    r: &JournalRow,
    open_reversal: Option<i64>,
    terminal: &str,
) -> Option<LedgerPayment> {
    Some(LedgerPayment {
        payment_request_id: r.payment_request_id.clone(),
        payment_id: r.payment_id.clone(),
        terminal_id: terminal.to_string(),
        amount: r.amount,
        state: State::parse(&r.state)?,
        result_code: r.result_code.clone(),
        ever_succeeded: r.ever_succeeded,
        business_date: business_date(r.gateway_time.as_deref(), r.created_at),
        open_reversal,
    })
}

fn ledger_refund(r: &JournalRow) -> Option<LedgerRefund> {
    Some(LedgerRefund {
        refund_request_id: r.refund_request_id.clone()?,
        payment_request_id: r.payment_request_id.clone(),
        amount: r.amount,
        state: r.state.clone(),
        business_date: business_date(r.gateway_time.as_deref(), r.created_at),
    })
}

/// Builds a ledger from journal rows for a statement: every row of the statement's days and
/// every row it names by id. The hub builds its own from its store the same way.
pub fn ledger_from_rows(rows: Vec<LedgerRow>, wanted: &Wanted, terminal: &str) -> Ledger {
    let mut ledger = Ledger::default();
    for LedgerRow { row, open_reversal } in rows {
        let named = wanted.request_ids.contains(&row.payment_request_id)
            || row
                .refund_request_id
                .as_ref()
                .is_some_and(|r| wanted.request_ids.contains(r))
            || row
                .payment_id
                .as_ref()
                .is_some_and(|g| wanted.gateway_ids.contains(g));
        let on_day = wanted
            .dates
            .contains(&business_date(row.gateway_time.as_deref(), row.created_at));
        if !named && !on_day {
            continue;
        }
        match row.record_type {
            "REFUND" => {
                if let Some(x) = ledger_refund(&row) {
                    ledger.refunds.insert(x.refund_request_id.clone(), x);
                }
            }
            _ => {
                if let Some(p) = ledger_payment(&row, open_reversal, terminal) {
                    ledger.payments.insert(p.payment_request_id.clone(), p);
                }
            }
        }
    }
    ledger
}

/// The epoch-ms window that holds every row of the statement's days, with a day's margin on
/// each side (rows are then kept by business date).
fn window(wanted: &Wanted) -> (i64, i64) {
    match (wanted.dates.first(), wanted.dates.last()) {
        (Some(first), Some(last)) => (
            utc8_midnight_ms(*first - ChronoDuration::days(1)),
            utc8_midnight_ms(*last + ChronoDuration::days(2)),
        ),
        _ => (0, 0),
    }
}

/// Reconciles parsed files against the terminal's books and acts on the critical rows (see
/// the module docs). Returns the report with what was done.
pub async fn run(
    engine: &Engine,
    who: &JournalIdentity,
    files: Vec<StatementFile>,
    apply: bool,
) -> Result<Report, EngineError> {
    let wanted = matcher::wanted(&files);
    let (from, until) = window(&wanted);
    let request_ids: Vec<String> = wanted.request_ids.iter().cloned().collect();
    let gateway_ids: Vec<String> = wanted.gateway_ids.iter().cloned().collect();
    let rows = engine
        .store()
        .read(move |c| {
            Ok(journal::for_statement(
                c,
                from,
                until,
                &request_ids,
                &gateway_ids,
            )?)
        })
        .await?;
    let ledger = ledger_from_rows(rows, &wanted, &who.terminal_id);
    let scope = Scope {
        store_ids: vec![who.store_id.clone()],
        terminal_ids: vec![who.terminal_id.clone()],
    };
    let mut report = matcher::reconcile(&files, &ledger, &scope);
    report.applied = apply;
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for f in report.findings.iter_mut().filter(|f| f.critical) {
        let Some(id) = f.payment_request_id.clone() else {
            continue;
        };
        if !touched.insert(id.clone()) {
            // A payment with two charge rows is acted on once.
            continue;
        }
        let mut done: Vec<String> = Vec::new();
        for action in f.action.clone() {
            match action {
                Action::FlagAttention => {
                    let statement = format!(
                        "{} line {}",
                        f.file.as_deref().unwrap_or("statement"),
                        f.line.unwrap_or_default()
                    );
                    let rec = engine
                        .apply_event(&id, Event::StatementShowsCharge { statement })
                        .await?;
                    if rec.state == State::NeedsAttention {
                        done.push("moved to NEEDS_ATTENTION".into());
                    }
                    f.posd_state = Some(rec.state.as_str().into());
                }
                Action::QueueReversal { payment_id } if apply => {
                    match queue_reversal(engine, &id, payment_id).await {
                        Ok(rec) => {
                            done.push(format!(
                                "full refund {} queued",
                                rec.active_refund_id.as_deref().unwrap_or("?")
                            ));
                            f.posd_state = Some(rec.state.as_str().into());
                        }
                        Err(EngineError::Conflict(why)) => {
                            done.push(format!("no refund queued: {why}"))
                        }
                        Err(e) => return Err(e),
                    }
                }
                Action::QueueReversal { .. } => {
                    done.push("run with --apply to queue the full refund".into());
                }
            }
        }
        if !done.is_empty() {
            f.done = Some(done.join("; "));
        }
    }
    Ok(report)
}

/// Queues the full refund of a payment the statement showed charged: NEEDS_ATTENTION →
/// CANCEL_QUEUED with the refund row and its queue item in the same transaction (rule 1);
/// the queue worker sends it.
async fn queue_reversal(
    engine: &Engine,
    id: &str,
    payment_id: String,
) -> Result<crate::store::payments::PaymentRecord, EngineError> {
    let local = engine.local_now().naive_local();
    let terminal = engine.settings().terminal_id.clone();
    let rec = engine
        .apply_event_with(id, Event::StatementReversalQueued, move |c, rec, change| {
            let owed = rec.amount.minor() - rec.refunded.minor();
            anyhow::ensure!(
                owed > 0,
                "nothing is left to refund on {}",
                rec.payment_request_id
            );
            let pid = rec.payment_id.clone().unwrap_or_else(|| payment_id.clone());
            anyhow::ensure!(
                !pid.is_empty(),
                "the statement gives no paymentId for {}",
                rec.payment_request_id
            );
            let seq = payments::next_sequence(c)?;
            let amount = Amount::from_minor(owed, rec.amount.currency())?;
            let order = RefundOrder {
                refund_request_id: make_refund_id(local, &terminal, owed, seq),
                payment_id: pid.clone(),
                amount,
                reason: Some(REVERSAL_REASON.into()),
            };
            change.payment_id = Some(pid);
            change.new_refund = Some(NewRefund {
                refund_request_id: order.refund_request_id.clone(),
                kind: crate::domain::machine::RefundKind::Reversal,
                amount,
                reason: order.reason.clone(),
                return_to: None,
            });
            change.settle_refund = Some(SettleRefund {
                refund_request_id: order.refund_request_id.clone(),
                state: crate::store::refunds::RefundState::Queued,
                refund_id: None,
                result_code: None,
                result_message: None,
                add_to_refunded: false,
            });
            change.enqueue = Some(NewQueueItem {
                kind: crate::store::queue::ItemKind::Refund,
                refund_request_id: Some(order.refund_request_id.clone()),
                payload_version: PAYLOAD_VERSION,
                payload: Payload::from_refund(&rec.payment_request_id, &order).encode(),
                next_attempt_at: now_ms(),
            });
            Ok(())
        })
        .await?;
    engine.wake_queue();
    Ok(rec)
}
