//! Recovery (rule 6): at start-up every payment that is not final gets `Event::Restarted`
//! through the machine and its task is started again, except a refund the queue already owns.

use super::{Engine, EngineError};
use crate::domain::machine::{self, Event, State};
use crate::store::payments::{self, PaymentRecord};
use crate::store::refunds::RefundState;

impl Engine {
    /// Drives every payment that is not final on to a final state (rule 6). Called once at
    /// start-up, before the API accepts sales.
    pub async fn recover(&self) -> Result<usize, EngineError> {
        let open = self
            .inner
            .store
            .call(|c| Ok(payments::open_payments(c)?))
            .await?;
        let n = open.len();
        for rec in open {
            if self.refund_is_queued(&rec).await? {
                // The queue owns this refund now; a driver would send it a second time.
                tracing::info!(payment = %rec.payment_request_id, "refund is in the queue; the queue worker delivers it");
                continue;
            }
            tracing::info!(payment = %rec.payment_request_id, state = %rec.state, "recovering payment");
            let after = self
                .apply_event(&rec.payment_request_id, Event::Restarted)
                .await?;
            let effect = machine::resume_effect(after.state);
            if effect != machine::Effect::None {
                self.spawn_driver(after.payment_request_id.clone(), effect, None);
            }
        }
        Ok(n)
    }

    /// The effect payment `id`'s stored state calls for now: none while the queue owns its
    /// refund (a task woken as it finished resumes from this).
    pub(super) async fn effect_now(&self, id: &str) -> Result<machine::Effect, EngineError> {
        let id = id.to_string();
        let rec = self
            .inner
            .store
            .call(move |c| Ok(payments::get(c, &id)?))
            .await?;
        let Some(rec) = rec else {
            return Ok(machine::Effect::None);
        };
        if self.refund_is_queued(&rec).await? {
            return Ok(machine::Effect::None);
        }
        Ok(machine::resume_effect(rec.state))
    }

    /// Whether a REFUNDING payment's refund already sits in the queue (then the queue, not a
    /// payment task, delivers it).
    async fn refund_is_queued(&self, rec: &PaymentRecord) -> Result<bool, EngineError> {
        let Some(rid) = rec.active_refund_id.clone() else {
            return Ok(false);
        };
        if rec.state != State::Refunding {
            return Ok(false);
        }
        let r = self
            .inner
            .store
            .call(move |c| Ok(payments::get_refund(c, &rid)?))
            .await?;
        Ok(r.is_some_and(|r| r.state == RefundState::Queued))
    }
}
