//! Applying a verified notifyPayment (docs/design.md, flow step 5): the machine decides, and the
//! notification row and its state change commit in one transaction, so a notification and an
//! inquiry answer can never both apply (rule 5).

use super::transition::{plan, Planned};
use super::{Engine, EngineError};
use crate::domain::machine::{Event, State};
use crate::gateway::Facts;
use crate::store::notifications::{self, Decide, NewNotification, Recorded};
use crate::store::payments::{Change, PaymentRecord};

/// What a verified notification reports, reduced to what the machine branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// `PAYMENT_PENDING`, or a result that is neither S nor F: record it, change nothing.
    Pending,
    /// `PAYMENT_RESULT` with S (`paid`) or F.
    Result {
        /// S = paid, F = failed.
        paid: bool,
    },
}

/// Whether the notified amount is exactly the requested one: the same currency code and the
/// same minor-units string as the request carried ("01234" or "1234.0" are not "1234").
pub fn amount_matches(rec: &PaymentRecord, value: Option<&str>, currency: Option<&str>) -> bool {
    let (Some(value), Some(currency)) = (value, currency) else {
        return false;
    };
    currency == rec.amount.currency().code() && value == rec.amount.minor().to_string()
}

impl Engine {
    /// Records a verified notification and applies it with compare-and-set when the payment
    /// accepts a result (PAYING/INQUIRING). Duplicates, late notifications and those for a
    /// payment that is final or being cancelled change nothing; unknown payments are kept.
    /// Returns once the outcome is durable.
    pub async fn record_notification(
        &self,
        n: NewNotification,
        what: Notified,
    ) -> Result<Recorded, EngineError> {
        let engine = self.clone();
        let now = self.now_ms();
        let rec = self
            .inner
            .store
            .call(move |c| {
                let mut decide = |p: &PaymentRecord| decide(&engine, p, &n, what);
                let how = match what {
                    Notified::Pending => Decide::Nothing,
                    Notified::Result { .. } => Decide::With(&mut decide),
                };
                Ok(notifications::record(c, &n, how, now)?)
            })
            .await?;
        if rec.outcome == notifications::Outcome::Applied {
            self.changed();
            // A sale settled here prints its slip like any other (written in the same commit).
            self.inner.slips.notify_one();
            if let Some(p) = &rec.payment {
                tracing::info!(payment = %p.payment_request_id, from = ?rec.state_before.map(State::as_str), to = %p.state, "notification applied");
                // The payment's task may be waiting to inquire again: let it see the new state.
                self.inner.tasks.wake(&p.payment_request_id);
            }
        }
        Ok(rec)
    }

    /// Whether shutdown has begun (new sales and scans are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

fn decide(
    engine: &Engine,
    p: &PaymentRecord,
    n: &NewNotification,
    what: Notified,
) -> Option<Change> {
    let Notified::Result { paid } = what else {
        return None;
    };
    let matches = amount_matches(p, n.amount_value.as_deref(), n.currency.as_deref());
    let event = Event::Notified {
        paid,
        amount_matches: matches,
    };
    let facts = Facts {
        payment_id: n.payment_id.clone(),
        result_code: n.result_code.clone(),
        ..Facts::default()
    };
    // A notification never creates a refund: no sequence number is ever taken.
    let planned = plan(&engine.env(), p, &event, &facts, None, &mut || {
        anyhow::bail!("a notification takes no sequence number")
    });
    match planned {
        Ok(Planned::Move(plan)) => Some(Change {
            attention_reason: (!matches).then(|| {
                format!(
                    "a notification reported {} {} but the request was {} {}; check the charge with the gateway",
                    n.amount_value.as_deref().unwrap_or("no amount"),
                    n.currency.as_deref().unwrap_or(""),
                    p.amount.minor(),
                    p.amount.currency().code()
                )
            }),
            ..plan.change
        }),
        Ok(Planned::Ignore { why, .. }) => {
            tracing::info!(payment = %p.payment_request_id, state = %p.state, why, "notification changes nothing");
            None
        }
        Ok(Planned::Refuse { why }) => {
            tracing::info!(payment = %p.payment_request_id, state = %p.state, why = %why, "notification refused by the machine");
            None
        }
        Err(e) => {
            tracing::error!(payment = %p.payment_request_id, error = %e, "notification cannot be planned");
            None
        }
    }
}
