//! `posd refund ID [--amount X] [--reason TEXT] [--json]`: asks the daemon for a refund and
//! waits until the gateway confirmed or refused it, or it was queued.

use std::time::{Duration, Instant};

use clap::Args;

use super::client::{ApiClient, CallError};
use super::{print_payment, with_client, EXIT_NOT_SUCCEEDED, EXIT_OK};
use crate::api::wire::{CreateRefund, PaymentJson};
use crate::config::Config;

/// How long the command follows a refund before handing it to `posd status`.
const FOLLOW: Duration = Duration::from_secs(150);

/// `posd refund`.
#[derive(Debug, Args)]
pub struct RefundArgs {
    /// The paymentRequestId of the sale to refund.
    pub id: String,
    /// Amount in major units, e.g. 5.00 [default: everything not yet refunded].
    #[arg(long)]
    pub amount: Option<String>,
    /// Why (sent to the gateway as refundReason, at most 256 characters).
    #[arg(long)]
    pub reason: Option<String>,
    /// Print the payment resource as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `posd refund`; exit 0 when the gateway confirmed the refund.
pub fn run(cfg: &Config, args: RefundArgs) -> u8 {
    with_client(cfg, |c| refund(c, args))
}

async fn refund(c: ApiClient, args: RefundArgs) -> Result<u8, CallError> {
    let body = CreateRefund {
        amount: args.amount.clone(),
        reason: args.reason.clone(),
    };
    // One key for this invocation: a retry after a lost answer never refunds twice.
    let key = super::client::new_idempotency_key();
    let mut p: PaymentJson = c
        .post_once(&format!("/v1/payments/{}/refunds", args.id), &body, &key)
        .await?;
    let Some(rid) = p.refunds.last().map(|r| r.refund_request_id.clone()) else {
        return Err(CallError::Protocol(
            "the refund is missing from the answer".into(),
        ));
    };
    if !args.json {
        eprintln!("posd: refund {rid} committed; sending it");
    }
    let started = Instant::now();
    let refund_state = |p: &PaymentJson| {
        p.refunds
            .iter()
            .find(|r| r.refund_request_id == rid)
            .map(|r| r.state.clone())
            .unwrap_or_default()
    };
    while refund_state(&p) == "PENDING" && started.elapsed() < FOLLOW {
        p = c
            .get_long(
                &format!("/v1/payments/{}?wait=5", args.id),
                Duration::from_secs(15),
            )
            .await?;
    }
    print_payment(&p, args.json);
    let state = refund_state(&p);
    if !args.json {
        match state.as_str() {
            "SUCCEEDED" => eprintln!("posd: refund {rid} confirmed by the gateway"),
            "QUEUED" => eprintln!(
                "posd: refund {rid} got no answer; it is queued and will be delivered (posd queue list)"
            ),
            "PENDING" => eprintln!(
                "posd: refund {rid} is still being sent; follow it with posd status {}",
                args.id
            ),
            other => eprintln!("posd: refund {rid} ended {other}"),
        }
    }
    Ok(if state == "SUCCEEDED" {
        EXIT_OK
    } else {
        EXIT_NOT_SUCCEEDED
    })
}
