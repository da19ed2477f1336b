//! `posd hub reconcile FILE…` (and the hub console's upload): the gateway's Transaction Items
//! files against the hub's PostgreSQL record of every terminal of the merchant, with the
//! terminal's parser, matcher and report. The hub's rows become a [`Ledger`]; a critical row
//! (charged upstream, not at the hub) moves the payment to `NEEDS_ATTENTION` with the
//! statement as reason, and with `apply` its full refund is written ahead into the hub's own
//! queue (`hub_refunds` row and `hub_queue` item in one transaction, under the payment's row
//! lock, with an id derived from the payment so no run can queue a second one). The queue
//! worker of any running instance sends it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{Duration as ChronoDuration, NaiveDate, TimeZone};
use clap::Args;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::registry::{self, Terminal};
use super::service::{event, lock_payment};
use crate::api::journal::{business_date, BUSINESS_DAY_OFFSET_SECONDS};
use crate::backoffice::reconcile::matcher::{
    self, Action, Ledger, LedgerPayment, LedgerRefund, Report, Scope, Wanted, STATEMENT_CHARGED,
};
use crate::backoffice::reconcile::statement::StatementFile;
use crate::backoffice::reconcile::{parse_all, REVERSAL_REASON};
use crate::cli::reconcile::{print_report, read_files, Format};
use crate::cli::{EXIT_NOT_SUCCEEDED, EXIT_USAGE};
use crate::domain::machine::State;
use crate::domain::money::{Amount, Currency};

/// `posd hub reconcile`.
#[derive(Debug, Args)]
pub struct HubReconcileArgs {
    /// The gateway's files: transactionItems_<YYYYMMDD>_<seq>.csv.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Queue the full refund of every payment the gateway charged and the hub did not.
    #[arg(long)]
    pub apply: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Only this merchant's terminals (`referenceMerchantId`) [default: every registered one].
    #[arg(long)]
    pub merchant: Option<String>,
    /// Only this store's terminals (`referenceStoreId`).
    #[arg(long)]
    pub store: Option<String>,
}

/// Whose books are reconciled.
#[derive(Debug, Clone, Default)]
pub struct HubScope {
    /// `referenceMerchantId`; `None` = every merchant registered.
    pub merchant_id: Option<String>,
    /// `referenceStoreId`; `None` = every store of the merchant.
    pub store_id: Option<String>,
}

/// Why a reconciliation did not run.
#[derive(Debug, thiserror::Error)]
pub enum HubReconcileError {
    /// The caller's input (no terminal in scope, a malformed file): nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// The database.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The id of the full refund a statement reversal queues for a payment: the same on every
/// run and every instance, so a payment never gets two.
pub fn statement_refund_id(payment_request_id: &str) -> String {
    let h = Sha256::digest(format!("statement|{payment_request_id}").as_bytes());
    let hex: String = h.iter().take(12).map(|b| format!("{b:02x}")).collect();
    format!("HUBST{hex}")
}

fn utc8_midnight_ms(d: NaiveDate) -> i64 {
    let utc8 = chrono::FixedOffset::east_opt(BUSINESS_DAY_OFFSET_SECONDS).expect("UTC+8");
    utc8.from_local_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight"))
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

/// The terminals whose payments are in scope.
pub async fn terminals_in(pool: &Pool, scope: &HubScope) -> anyhow::Result<Vec<Terminal>> {
    Ok(registry::list(pool)
        .await?
        .into_iter()
        .filter(|t| {
            scope
                .merchant_id
                .as_ref()
                .is_none_or(|m| *m == t.merchant_id)
        })
        .filter(|t| scope.store_id.as_ref().is_none_or(|s| *s == t.store_id))
        .collect())
}

/// A string field of a recorded JSON answer.
fn answer_field(answer: Option<&[u8]>, field: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(answer?).ok()?;
    v.get(field)?.as_str().map(str::to_string)
}

/// The hub's state as the matcher's: a `CANCELLING` payment whose cancel is in the queue is
/// the terminal's `CANCEL_QUEUED` (treated as not charged, reversal owed).
pub fn ledger_state(hub_state: &str, pending_cancel: bool) -> Option<State> {
    Some(match hub_state {
        "RECEIVED" => State::Inquiring,
        "SUCCEEDED" => State::Succeeded,
        "FAILED" => State::Failed,
        "CANCELLING" if pending_cancel => State::CancelQueued,
        "CANCELLING" => State::Cancelling,
        "CANCELLED" => State::Cancelled,
        "REFUNDING" => State::Refunding,
        "REFUNDED" => State::Refunded,
        "PARTIALLY_REFUNDED" => State::PartiallyRefunded,
        "NEEDS_ATTENTION" => State::NeedsAttention,
        _ => return None,
    })
}

/// A hub refund's state as the matcher's.
pub fn ledger_refund_state(hub_state: &str, pending: bool) -> &'static str {
    match hub_state {
        "REFUNDED" => "SUCCEEDED",
        "FAILED" => "FAILED",
        _ if pending => "QUEUED",
        _ => "PENDING",
    }
}

/// Builds the ledger of the statement's days and ids from the hub's record of `clients`.
pub async fn ledger(pool: &Pool, wanted: &Wanted, clients: &[String]) -> anyhow::Result<Ledger> {
    let (from, until) = match (wanted.dates.first(), wanted.dates.last()) {
        (Some(first), Some(last)) => (
            utc8_midnight_ms(*first - ChronoDuration::days(1)),
            utc8_midnight_ms(*last + ChronoDuration::days(2)),
        ),
        _ => (0, 0),
    };
    let request_ids: Vec<String> = wanted.request_ids.iter().cloned().collect();
    let gateway_ids: Vec<String> = wanted.gateway_ids.iter().cloned().collect();
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT p.payment_request_id, t.terminal_id, p.state, p.amount_minor, p.currency, \
             p.payment_id, p.result_code, p.pay_answer, \
             (extract(epoch from p.received_at) * 1000)::bigint, \
             (p.pay_status = 'S' OR p.upstream_status = 'SUCCESS' OR EXISTS (SELECT 1 FROM hub_events e \
               WHERE e.payment_request_id = p.payment_request_id AND e.to_state = 'SUCCEEDED')), \
             (SELECT min(q.id) FROM hub_queue q WHERE q.payment_request_id = p.payment_request_id \
               AND q.status = 'PENDING'), \
             EXISTS (SELECT 1 FROM hub_queue q WHERE q.payment_request_id = p.payment_request_id \
               AND q.status = 'PENDING' AND q.kind = 'cancel') \
             FROM hub_payments p JOIN hub_terminals t ON t.client_id = p.client_id \
             WHERE p.client_id = ANY($1) AND p.amount_minor IS NOT NULL AND ( \
               (p.received_at >= to_timestamp($2::float8) AND p.received_at < to_timestamp($3::float8)) \
               OR p.payment_request_id = ANY($4) OR p.payment_id = ANY($5) \
               OR p.payment_request_id IN (SELECT r.payment_request_id FROM hub_refunds r \
                 WHERE r.refund_request_id = ANY($4)))",
            &[
                &clients,
                &(from as f64 / 1000.0),
                &(until as f64 / 1000.0),
                &request_ids,
                &gateway_ids,
            ],
        )
        .await?;
    let mut ledger = Ledger::default();
    for r in &rows {
        let id: String = r.get(0);
        let (Some(minor), Some(currency)) =
            (r.get::<_, Option<i64>>(3), r.get::<_, Option<String>>(4))
        else {
            continue;
        };
        let Ok(amount) = Currency::from_code(&currency).and_then(|c| Amount::from_minor(minor, c))
        else {
            continue;
        };
        let pay_answer: Option<Vec<u8>> = r.get(7);
        let paid_at = answer_field(pay_answer.as_deref(), "paymentTime");
        let date = business_date(paid_at.as_deref(), r.get(8));
        let payment_id: Option<String> = r.get(5);
        let state: String = r.get(2);
        let Some(state) = ledger_state(&state, r.get(11)) else {
            continue;
        };
        let p = LedgerPayment {
            payment_request_id: id.clone(),
            payment_id,
            terminal_id: r.get(1),
            amount,
            state,
            result_code: r.get(6),
            ever_succeeded: r.get::<_, Option<bool>>(9).unwrap_or(false),
            business_date: date,
            open_reversal: r.get(10),
        };
        ledger.payments.insert(id, p);
    }
    let ids: Vec<String> = ledger.payments.keys().cloned().collect();
    let refunds = c
        .query(
            "SELECT r.refund_request_id, r.payment_request_id, r.amount_minor, r.currency, r.state, \
             r.answer, (extract(epoch from r.created_at) * 1000)::bigint, \
             EXISTS (SELECT 1 FROM hub_queue q WHERE q.refund_request_id = r.refund_request_id \
               AND q.status = 'PENDING') \
             FROM hub_refunds r WHERE r.payment_request_id = ANY($1)",
            &[&ids],
        )
        .await?;
    for r in &refunds {
        let Ok(amount) = Currency::from_code(&r.get::<_, String>(3))
            .and_then(|c| Amount::from_minor(r.get(2), c))
        else {
            continue;
        };
        let answer: Option<Vec<u8>> = r.get(5);
        let at = answer_field(answer.as_deref(), "refundTime");
        let state: String = r.get(4);
        let x = LedgerRefund {
            refund_request_id: r.get(0),
            payment_request_id: r.get(1),
            amount,
            state: ledger_refund_state(&state, r.get(7)).into(),
            business_date: business_date(at.as_deref(), r.get(6)),
        };
        ledger.refunds.insert(x.refund_request_id.clone(), x);
    }
    // What is neither named nor of the statement's days is not this run's business.
    let refund_of: BTreeSet<String> = ledger
        .refunds
        .values()
        .filter(|x| wanted.request_ids.contains(&x.refund_request_id))
        .map(|x| x.payment_request_id.clone())
        .collect();
    ledger.payments.retain(|id, p| {
        wanted.dates.contains(&p.business_date)
            || wanted.request_ids.contains(id)
            || refund_of.contains(id)
            || p.payment_id
                .as_ref()
                .is_some_and(|g| wanted.gateway_ids.contains(g))
    });
    let kept: BTreeSet<String> = ledger.payments.keys().cloned().collect();
    ledger.refunds.retain(|rid, x| {
        kept.contains(&x.payment_request_id)
            && (wanted.dates.contains(&x.business_date) || wanted.request_ids.contains(rid))
    });
    Ok(ledger)
}

/// Reconciles parsed files against the hub's record within `scope` and acts on the critical
/// rows (see the module docs). Running it again on the same files changes nothing.
pub async fn run(
    pool: &Pool,
    instance: &str,
    files: Vec<StatementFile>,
    scope: &HubScope,
    apply: bool,
) -> Result<Report, HubReconcileError> {
    let terminals = terminals_in(pool, scope).await?;
    if terminals.is_empty() {
        return Err(HubReconcileError::Usage(format!(
            "no registered terminal{}{}: see `posd hub terminal list`; nothing was changed",
            scope
                .merchant_id
                .as_ref()
                .map(|m| format!(" of merchant {m}"))
                .unwrap_or_default(),
            scope
                .store_id
                .as_ref()
                .map(|s| format!(" in store {s}"))
                .unwrap_or_default()
        )));
    }
    let merchants: BTreeSet<String> = terminals.iter().map(|t| t.merchant_id.clone()).collect();
    let stores: BTreeSet<String> = terminals.iter().map(|t| t.store_id.clone()).collect();
    let clients: Vec<String> = terminals.iter().map(|t| t.client_id.clone()).collect();
    // Rows of another merchant are not these books (the statement names the merchant).
    let mut other_merchant = 0usize;
    let files: Vec<StatementFile> = files
        .into_iter()
        .map(|mut f| {
            let before = f.rows.len();
            f.rows.retain(|r| {
                r.reference_merchant_id.is_empty() || merchants.contains(&r.reference_merchant_id)
            });
            other_merchant += before - f.rows.len();
            f
        })
        .collect();
    let wanted = matcher::wanted(&files);
    let ledger = ledger(pool, &wanted, &clients).await?;
    let scope = Scope {
        store_ids: stores.into_iter().collect(),
        // Every terminal of the estate: a posd request id the hub has no record of is
        // unknown to it, not another terminal's business.
        terminal_ids: Vec::new(),
    };
    let mut report = matcher::reconcile(&files, &ledger, &scope);
    report.out_of_scope += other_merchant;
    report.applied = apply;
    let mut touched: BTreeSet<String> = BTreeSet::new();
    for f in report.findings.iter_mut().filter(|f| f.critical) {
        let Some(id) = f.payment_request_id.clone() else {
            continue;
        };
        if !touched.insert(id.clone()) {
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
                    let (moved, state) = flag(pool, instance, &id, &statement).await?;
                    if moved {
                        done.push("moved to NEEDS_ATTENTION".into());
                    }
                    f.posd_state = Some(state);
                }
                Action::QueueReversal { payment_id } if apply => {
                    match queue_reversal(pool, instance, &id, &payment_id).await? {
                        Ok((rid, state)) => {
                            done.push(format!("full refund {rid} queued"));
                            f.posd_state = Some(state);
                        }
                        Err(why) => done.push(format!("no refund queued: {why}")),
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

/// Parses uploaded files and reconciles them (the console's upload and the CLI).
pub async fn run_uploads(
    pool: &Pool,
    instance: &str,
    files: &[(String, Vec<u8>)],
    scope: &HubScope,
    apply: bool,
) -> Result<Report, HubReconcileError> {
    if files.is_empty() {
        return Err(HubReconcileError::Usage(
            "give at least one transactionItems_<YYYYMMDD>_<seq>.csv file".into(),
        ));
    }
    let parsed = parse_all(files)
        .map_err(|e| HubReconcileError::Usage(format!("{e}; nothing was changed")))?;
    run(pool, instance, parsed, scope, apply).await
}

/// Moves a payment the statement shows charged to `NEEDS_ATTENTION`, under its row lock and
/// only from `FAILED` or `CANCELLED`; returns (moved, state now).
async fn flag(
    pool: &Pool,
    instance: &str,
    id: &str,
    statement: &str,
) -> anyhow::Result<(bool, String)> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = lock_payment(&tx, id).await? else {
        anyhow::bail!("payment {id} vanished from the hub's record");
    };
    // Only a final "not charged": a payment still cancelling is the queue's to settle (its
    // answer would overwrite the move), and the matcher reports it as owed, not flagged.
    if !matches!(row.state.as_str(), "FAILED" | "CANCELLED") {
        tx.commit().await?;
        return Ok((false, row.state));
    }
    let reason = format!(
        "the gateway statement ({statement}) shows a charge the hub holds as {}: refund it \
         (posd hub reconcile --apply) or resolve it in the merchant portal",
        row.state
    );
    tx.execute(
        "UPDATE hub_payments SET state = 'NEEDS_ATTENTION', attention_reason = $2, \
         result_code = $3, updated_at = now() WHERE payment_request_id = $1",
        &[&id, &reason, &STATEMENT_CHARGED],
    )
    .await?;
    event(
        &tx,
        instance,
        id,
        "statement_charged",
        Some(&row.state),
        Some("NEEDS_ATTENTION"),
        Some(STATEMENT_CHARGED),
        Some(&reason),
    )
    .await?;
    tx.commit().await?;
    Ok((true, "NEEDS_ATTENTION".into()))
}

/// Writes the full refund of a flagged payment ahead into the hub's queue: refund row, queue
/// item and the move to `REFUNDING` in one transaction under the row lock. `Ok(Err(why))`
/// when nothing is queued (already queued, not flagged, nothing left).
async fn queue_reversal(
    pool: &Pool,
    instance: &str,
    id: &str,
    statement_payment_id: &str,
) -> anyhow::Result<Result<(String, String), String>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = lock_payment(&tx, id).await? else {
        anyhow::bail!("payment {id} vanished from the hub's record");
    };
    let rid = statement_refund_id(id);
    let already: Option<String> = tx
        .query_opt(
            "SELECT state FROM hub_refunds WHERE refund_request_id = $1",
            &[&rid],
        )
        .await?
        .map(|r| r.get(0));
    if let Some(state) = already {
        tx.commit().await?;
        return Ok(Err(format!(
            "its refund {rid} was queued on an earlier run ({state})"
        )));
    }
    let code: Option<String> = tx
        .query_one(
            "SELECT result_code FROM hub_payments WHERE payment_request_id = $1",
            &[&id],
        )
        .await?
        .get(0);
    if row.state != "NEEDS_ATTENTION" || code.as_deref() != Some(STATEMENT_CHARGED) {
        tx.commit().await?;
        return Ok(Err(format!(
            "the payment is {} now, not flagged by a statement",
            row.state
        )));
    }
    let (Some(amount), Some(currency)) = (row.amount_minor, row.currency.clone()) else {
        tx.commit().await?;
        return Ok(Err("the hub has no amount for it".into()));
    };
    let due = amount - row.refunded_minor;
    if due <= 0 {
        tx.commit().await?;
        return Ok(Err("nothing is left to refund".into()));
    }
    let payment_id = row
        .payment_id
        .clone()
        .unwrap_or_else(|| statement_payment_id.to_string());
    if payment_id.is_empty() {
        tx.commit().await?;
        return Ok(Err("the statement gives no paymentId for it".into()));
    }
    let body = serde_json::to_vec(&json!({
        "refundRequestId": rid,
        "paymentId": payment_id,
        "refundAmount": {"currency": currency, "value": due.to_string()},
        "refundReason": REVERSAL_REASON,
    }))?;
    tx.execute(
        "INSERT INTO hub_refunds (refund_request_id, payment_request_id, client_id, body_hash, \
         forward_body, amount_minor, currency, state, origin) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,'REFUNDING','hub')",
        &[
            &rid,
            &id,
            &row.client_id,
            &Sha256::digest(&body).to_vec(),
            &body,
            &due,
            &currency,
        ],
    )
    .await?;
    let item = super::queue::enqueue(&tx, "refund", id, Some(&rid), &body, "hub").await?;
    tx.execute(
        "UPDATE hub_payments SET state = 'REFUNDING', payment_id = coalesce(payment_id, $2), \
         updated_at = now() WHERE payment_request_id = $1",
        &[&id, &payment_id],
    )
    .await?;
    event(
        &tx,
        instance,
        id,
        "statement_reversal_queued",
        Some(&row.state),
        Some("REFUNDING"),
        Some(STATEMENT_CHARGED),
        Some(&format!("full refund {rid} (queue item {item})")),
    )
    .await?;
    tx.commit().await?;
    Ok(Ok((rid, "REFUNDING".into())))
}

/// `posd hub reconcile`: exit 0 all matched, 1 discrepancies (or the database failed), 2 usage
/// error or malformed file (nothing changed).
pub async fn cli(cfg: &super::config::HubConfig, args: &HubReconcileArgs) -> u8 {
    let files = match read_files(&args.files) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let pool = match super::db::connect(&cfg.database.url, 2).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("posd hub: {e:#}");
            return EXIT_NOT_SUCCEEDED;
        }
    };
    if let Err(e) = super::db::migrate(&pool).await {
        eprintln!("posd hub: {e:#}");
        return EXIT_NOT_SUCCEEDED;
    }
    let scope = HubScope {
        merchant_id: args.merchant.clone(),
        store_id: args.store.clone(),
    };
    let instance = format!("{}/reconcile", cfg.instance_id());
    match run_uploads(&pool, &instance, &files, &scope, args.apply).await {
        Ok(r) => {
            if args.apply
                && r.critical()
                    .any(|f| f.done.as_deref().is_some_and(|d| d.contains("queued")))
            {
                eprintln!("posd hub: the refunds are in the hub's queue; a running `posd hub run` sends them");
            }
            print_report(&r, args.format)
        }
        Err(HubReconcileError::Usage(m)) => {
            eprintln!("posd hub: {m}");
            EXIT_USAGE
        }
        Err(HubReconcileError::Internal(e)) => {
            eprintln!("posd hub: {e:#}");
            EXIT_NOT_SUCCEEDED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_states_read_as_the_matchers() {
        assert_eq!(ledger_state("CANCELLING", true), Some(State::CancelQueued));
        assert_eq!(ledger_state("CANCELLING", false), Some(State::Cancelling));
        assert_eq!(ledger_state("RECEIVED", false), Some(State::Inquiring));
        assert_eq!(ledger_state("CANCELLED", false), Some(State::Cancelled));
        assert_eq!(ledger_state("bogus", false), None);
        assert_eq!(ledger_refund_state("REFUNDED", false), "SUCCEEDED");
        assert_eq!(ledger_refund_state("REFUNDING", true), "QUEUED");
        assert_eq!(ledger_refund_state("REFUNDING", false), "PENDING");
    }

    #[test]
    fn the_statement_refund_id_is_one_per_payment() {
        let a = statement_refund_id("20261121101530T0001000000123400000042");
        assert_eq!(
            a,
            statement_refund_id("20261121101530T0001000000123400000042")
        );
        assert_ne!(
            a,
            statement_refund_id("20261121101530T0001000000123400000043")
        );
        assert_ne!(
            a,
            super::super::queue::window_refund_id("20261121101530T0001000000123400000042")
        );
        assert!(a.len() <= 64 && a.starts_with("HUBST"));
    }
}
