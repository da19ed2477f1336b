//! Resolving a payment in NEEDS_ATTENTION (`posd resolve ID --as … --reason …`, `POST
//! /v1/payments/{id}/resolve`, the console's form): an operator who checked the gateway's
//! portal says how it ended. posd first inquires the gateway once and refuses an outcome the
//! gateway contradicts, saying what the gateway says; an accepted one goes through the
//! engine's transition path with the reason in the journal, and changes the books as the
//! gateway's own answer would have (a sale slip for SUCCEEDED, a confirmed full refund for
//! REFUNDED).

use crate::domain::machine::Inquiry;
use crate::domain::machine::{Event, State};
use crate::domain::money::Amount;
use crate::engine::{make_refund_id, Engine, EngineError};
use crate::gateway::{Facts, Reply};
use crate::store::payments::{self, NewRefund, PaymentRecord, SettleRefund};

/// The longest reason accepted.
pub const MAX_REASON: usize = 256;

/// The outcomes an operator may give.
pub const OUTCOMES: [State; 4] = [
    State::Succeeded,
    State::Failed,
    State::Cancelled,
    State::Refunded,
];

/// What the gateway said when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewaySays {
    /// `paymentStatus = SUCCESS`, with the amount it charged when it said.
    Paid {
        /// The charged amount.
        amount: Option<Amount>,
    },
    /// `paymentStatus = FAIL`.
    Failed {
        /// `paymentResultCode`.
        code: String,
    },
    /// `paymentStatus = CANCELLED`.
    Cancelled,
    /// `PROCESSING`, `PENDING` or another open status.
    Open {
        /// The status.
        status: String,
    },
    /// The gateway has no such payment.
    NotFound,
}

impl GatewaySays {
    /// In words, for refusals and the journal.
    pub fn describe(&self) -> String {
        match self {
            GatewaySays::Paid { amount: Some(a) } => format!(
                "the gateway says it is paid ({} {})",
                a.to_decimal(),
                a.currency().code()
            ),
            GatewaySays::Paid { amount: None } => "the gateway says it is paid".into(),
            GatewaySays::Failed { code } => format!("the gateway says the payment failed ({code})"),
            GatewaySays::Cancelled => "the gateway says the payment was cancelled".into(),
            GatewaySays::Open { status } => {
                format!("the gateway says the payment is still {status}")
            }
            GatewaySays::NotFound => "the gateway has no record of this payment".into(),
        }
    }

    /// The outcomes this answer allows.
    pub fn allows(&self) -> &'static [State] {
        match self {
            // A refund leaves the payment's own status at SUCCESS.
            GatewaySays::Paid { .. } => &[State::Succeeded, State::Refunded],
            GatewaySays::Failed { .. } => &[State::Failed],
            GatewaySays::Cancelled => &[State::Cancelled],
            GatewaySays::Open { .. } => &[],
            GatewaySays::NotFound => &[State::Failed, State::Cancelled],
        }
    }
}

/// Parses `--as`.
pub fn parse_outcome(s: &str) -> Result<State, EngineError> {
    State::parse(&s.trim().to_ascii_uppercase())
        .filter(|st| OUTCOMES.contains(st))
        .ok_or_else(|| {
            EngineError::Invalid(format!(
                "resolve as {s:?}: give SUCCEEDED, FAILED, CANCELLED or REFUNDED"
            ))
        })
}

/// Checks the reason: required, printable, at most [`MAX_REASON`] characters.
pub fn check_reason(reason: &str) -> Result<String, EngineError> {
    let r = reason.trim();
    if r.is_empty() || r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(EngineError::Invalid(format!(
            "give a reason: 1–{MAX_REASON} printable characters saying what you checked (e.g. \"portal shows it refunded on 21 Nov\")"
        )));
    }
    Ok(r.to_string())
}

async fn ask_gateway(
    engine: &Engine,
    rec: &PaymentRecord,
) -> Result<(GatewaySays, Facts), EngineError> {
    let t = engine.settings().inquiry_timeout;
    let asked = tokio::time::timeout(
        t + std::time::Duration::from_secs(1),
        engine.gateway().inquiry_payment(&rec.payment_request_id),
    )
    .await
    .unwrap_or_else(|_| Reply::<Inquiry>::unknown(format!("no answer within {t:?}")));
    let says = match asked.answer {
        Inquiry::Paid => GatewaySays::Paid {
            amount: asked.facts.amount,
        },
        Inquiry::Declined { code, .. } => GatewaySays::Failed { code },
        Inquiry::Closed => GatewaySays::Cancelled,
        Inquiry::Pending { status } => GatewaySays::Open { status },
        Inquiry::NotFound => GatewaySays::NotFound,
        Inquiry::Failed { code } => {
            return Err(EngineError::Conflict(format!(
                "the gateway refused the check ({code}); nothing was changed; try again later"
            )))
        }
        Inquiry::Unknown { why } => {
            return Err(EngineError::Conflict(format!(
                "the gateway could not be asked ({why}); nothing was changed; try again when it answers"
            )))
        }
    };
    Ok((says, asked.facts))
}

/// Resolves `id` as `to` for `reason` (see the module docs).
pub async fn resolve(
    engine: &Engine,
    id: &str,
    to: State,
    reason: &str,
) -> Result<PaymentRecord, EngineError> {
    if !OUTCOMES.contains(&to) {
        return Err(EngineError::Invalid(format!(
            "resolve as {to}: give SUCCEEDED, FAILED, CANCELLED or REFUNDED"
        )));
    }
    let reason = check_reason(reason)?;
    let rec = engine.view(id).await?.payment;
    if rec.state != State::NeedsAttention {
        return Err(EngineError::Conflict(format!(
            "payment {id} is {}; only a payment in NEEDS_ATTENTION can be resolved",
            rec.state
        )));
    }
    let (says, facts) = ask_gateway(engine, &rec).await?;
    let payment_id = facts.payment_id;
    let gateway_time = facts.time;
    if !says.allows().contains(&to) {
        let hint = match says.allows() {
            [] => "wait until the gateway's answer is final".to_string(),
            a => format!(
                "resolve it as {}",
                a.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        };
        return Err(EngineError::Conflict(format!(
            "{}; it cannot be resolved as {to}: {hint}",
            says.describe()
        )));
    }
    if let (
        State::Succeeded | State::Refunded,
        GatewaySays::Paid {
            amount: Some(charged),
        },
    ) = (to, &says)
    {
        if *charged != rec.amount {
            return Err(EngineError::Conflict(format!(
                "{}, but posd asked for {} {}; it cannot be resolved as {to}: refund it in the merchant portal and resolve it as REFUNDED once the gateway shows it",
                says.describe(),
                rec.amount.to_decimal(),
                rec.amount.currency().code()
            )));
        }
    }
    let local = engine.local_now().naive_local();
    let terminal = engine.settings().terminal_id.clone();
    let event = Event::Resolved {
        to,
        reason: format!("{reason} ({})", says.describe()),
    };
    engine
        .apply_event_with(id, event, move |c, rec, change| {
            change.payment_id = payment_id.clone();
            if to == State::Succeeded {
                change.gateway_time = gateway_time.clone();
            }
            if to == State::Refunded {
                // The books as a confirmed full refund: the refund row, settled at once.
                let owed = rec.amount.minor() - rec.refunded.minor();
                if owed > 0 {
                    let seq = payments::next_sequence(c)?;
                    let rid = make_refund_id(local, &terminal, owed, seq);
                    change.new_refund = Some(NewRefund {
                        refund_request_id: rid.clone(),
                        kind: crate::domain::machine::RefundKind::Reversal,
                        amount: Amount::from_minor(owed, rec.amount.currency())?,
                        reason: Some(format!("refunded outside posd: {}", reason)),
                        return_to: None,
                    });
                    change.settle_refund = Some(SettleRefund {
                        refund_request_id: rid,
                        state: crate::store::refunds::RefundState::Succeeded,
                        refund_id: None,
                        result_code: Some("RESOLVED".into()),
                        result_message: None,
                        add_to_refunded: true,
                    });
                }
            }
            Ok(())
        })
        .await
}
