//! Refunds (docs/design.md, flow step 7): the back office or the cashier asks, the refund is
//! checked and committed under the payment's lock, then sent by the payment's task with the
//! identical request for the retry window, then queued.

use super::driver::with_deadline;
use super::transition::{known_payment_id, plan, refund_order, Planned};
use super::{make_refund_id, Engine, EngineError};
use crate::domain::machine::{Answer, Effect, Event, RefundKind, State};
use crate::domain::money::Amount;
use crate::gateway::{Facts, Reply};
use crate::store::idempotency::{self, Idempotency, Seen};
use crate::store::payments::{self, Change, NewRefund, PaymentRecord};
use crate::store::refunds;

/// The longest refund reason the gateway accepts (`refundReason`).
pub const MAX_REFUND_REASON: usize = 256;

impl Engine {
    /// Refunds `amount` (the whole refundable rest when `None`) of a SUCCEEDED or
    /// PARTIALLY_REFUNDED payment. In ONE transaction (the database's write lock is the
    /// payment's lock): the state is checked, the sum of confirmed, pending and this refund is
    /// checked against the captured amount, a sequence number is taken, the refund row with
    /// its `refundRequestId` is written and the payment moves to REFUNDING. Only then is the
    /// refund sent (rule 1). Refusals change nothing.
    pub async fn refund(
        &self,
        id: &str,
        amount: Option<Amount>,
        reason: Option<String>,
    ) -> Result<PaymentRecord, EngineError> {
        self.refund_once(id, amount, reason, None)
            .await
            .map(|(rec, _)| rec)
    }

    /// [`Engine::refund`] under an `Idempotency-Key`, recorded in the refund's transaction:
    /// the same key and request return the payment as it is (`true`: no second refund), the
    /// same key with another request is refused.
    pub async fn refund_once(
        &self,
        id: &str,
        amount: Option<Amount>,
        reason: Option<String>,
        key: Option<Idempotency>,
    ) -> Result<(PaymentRecord, bool), EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let reason = match reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
        {
            Some(r) if r.chars().count() > MAX_REFUND_REASON || r.chars().any(char::is_control) => {
                return Err(EngineError::Invalid(format!(
                    "the refund reason must be at most {MAX_REFUND_REASON} printable characters"
                )))
            }
            r => r,
        };
        let rec = self.view(id).await?.payment;
        if let Some(a) = amount {
            if a.currency() != rec.amount.currency() {
                return Err(EngineError::Invalid(format!(
                    "the refund is in {} but the payment is in {}; give the amount in {}",
                    a.currency().code(),
                    rec.amount.currency().code(),
                    rec.amount.currency().code()
                )));
            }
            if a.minor() <= 0 {
                return Err(EngineError::Invalid(
                    "the refund amount must be more than zero".into(),
                ));
            }
        }
        // A refund needs the gateway's paymentId; learn it first if no answer carried it.
        if rec.payment_id.is_none()
            && matches!(rec.state, State::Succeeded | State::PartiallyRefunded)
        {
            self.learn_payment_id(&rec.payment_request_id).await;
        }
        let id_owned = id.to_string();
        let engine = self.clone();
        let rec = self
            .inner
            .store
            .call(move |c| {
                let env = engine.env();
                let tx = c.savepoint()?;
                let Some(rec) = payments::get(&tx, &id_owned)? else {
                    return Ok(Err(EngineError::NotFound(id_owned)));
                };
                if let Some(k) = &key {
                    match idempotency::check(&tx, k)? {
                        Seen::New => {}
                        Seen::Same(_) => return Ok(Ok((rec, true))),
                        Seen::Different(existing) => {
                            return Ok(Err(EngineError::Conflict(format!(
                                "Idempotency-Key {:?} was used for another request (it created refund {existing}); send a new key for a new refund, or the identical request",
                                k.key
                            ))))
                        }
                    }
                }
                let planned = plan(&env, &rec, &Event::RefundRequested, &Facts::default(), None, &mut || {
                    Ok(payments::next_sequence(&tx)?)
                })?;
                let p = match planned {
                    Planned::Move(p) if p.effect == Effect::Refund => p,
                    Planned::Refuse { why } => return Ok(Err(EngineError::Conflict(why))),
                    other => {
                        return Ok(Err(EngineError::Conflict(format!(
                            "payment is {}; it cannot be refunded now ({other:?})",
                            rec.state
                        ))))
                    }
                };
                let Some(payment_id) = rec.payment_id.clone() else {
                    return Ok(Err(EngineError::Conflict(
                        "the gateway has not given this payment's paymentId, so it cannot be refunded from the terminal yet; try again later or refund it in the merchant portal".into(),
                    )));
                };
                let pending = refunds::open_sum(&tx, &id_owned)?;
                let captured = rec.amount.minor();
                let left = captured - rec.refunded.minor() - pending;
                let want = amount.map(|a| a.minor()).unwrap_or(left);
                let cur = rec.amount.currency();
                let show = |m: i64| {
                    Amount::from_minor(m.max(0), cur)
                        .map(|a| a.to_decimal())
                        .unwrap_or_else(|_| m.to_string())
                };
                if left <= 0 {
                    return Ok(Err(EngineError::Conflict(format!(
                        "nothing left to refund: captured {} {}, refunded {}, pending {}",
                        show(captured), cur.code(), show(rec.refunded.minor()), show(pending)
                    ))));
                }
                if want > left {
                    return Ok(Err(EngineError::Conflict(format!(
                        "refund of {} {} would exceed the captured amount: captured {}, refunded {}, pending {}; at most {} can be refunded",
                        show(want), cur.code(), show(captured), show(rec.refunded.minor()), show(pending), show(left)
                    ))));
                }
                let seq = payments::next_sequence(&tx)?;
                let refund_id = make_refund_id(env.local, env.who.terminal_id, want, seq);
                if let Some(k) = &key {
                    idempotency::record(&tx, k, &refund_id, env.now_ms)?;
                }
                let change = Change {
                    cause: format!("{}: {} {} as {refund_id}", p.change.cause, show(want), cur.code()),
                    payment_id: Some(payment_id),
                    new_refund: Some(NewRefund {
                        refund_request_id: refund_id,
                        kind: RefundKind::Requested,
                        amount: Amount::from_minor(want, cur)?,
                        reason,
                        return_to: Some(rec.state),
                    }),
                    ..p.change
                };
                let Some(moved) = payments::apply_in(&tx, &id_owned, rec.state, &change, env.now_ms)? else {
                    return Err(anyhow::anyhow!("payment {id_owned} changed inside its own transaction"));
                };
                tx.commit()?;
                Ok(Ok((moved, false)))
            })
            .await??;
        let (rec, replayed) = rec;
        if replayed {
            tracing::info!(payment = %rec.payment_request_id, "refund retried with its Idempotency-Key; nothing new sent");
            return Ok((rec, true));
        }
        self.changed_payment(&rec.payment_request_id, rec.state);
        tracing::info!(payment = %rec.payment_request_id, refund = ?rec.active_refund_id, "refund committed; sending");
        self.spawn_driver(rec.payment_request_id.clone(), Effect::Refund, None);
        Ok((rec, false))
    }

    /// One inquiry to learn a paymentId that no answer carried yet, recorded when learned.
    async fn learn_payment_id(&self, id: &str) {
        let t = self.inner.settings.inquiry_timeout;
        let gw = self.inner.gateway.as_ref();
        let learned = known_payment_id(&self.inner.store, gw, id, t, 1, || true).await;
        if let Ok(Some(pid)) = learned {
            let id = id.to_string();
            let noted = self
                .inner
                .store
                .call(move |c| Ok(payments::note_payment_id(c, &id, &pid)?))
                .await;
            if let Err(e) = noted {
                tracing::warn!(error = %e, "cannot record the paymentId");
            }
        }
    }

    /// Asks the gateway for a stored refund's status. The request is built from the refund's
    /// row and its payment (our `refundRequestId` and the gateway's payment id, which the
    /// dialects' queries need), never from a client's memory, so a refund sent before a
    /// restart is asked about by a fresh process the same way.
    pub async fn inquire_refund(
        &self,
        refund_request_id: &str,
    ) -> Result<Reply<Answer>, EngineError> {
        let rid = refund_request_id.to_string();
        let order = self
            .store()
            .read(move |c| {
                let Some(r) = payments::get_refund(c, &rid)? else {
                    return Ok(None);
                };
                let rec = payments::get(c, &r.payment_request_id)?.ok_or_else(|| {
                    anyhow::anyhow!("refund {rid} has no payment {}", r.payment_request_id)
                })?;
                Ok(Some(refund_order(&rec, &r)))
            })
            .await?;
        let order = match order {
            None => return Err(EngineError::NotFound(refund_request_id.to_string())),
            Some(Err(e)) => return Err(EngineError::Invalid(format!("{e}"))),
            Some(Ok(o)) => o,
        };
        let deadline = self.settings().cancel_timeout;
        Ok(with_deadline(deadline, self.gateway().inquiry_refund(&order)).await)
    }
}
