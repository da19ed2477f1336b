//! Sale start: a sale with its code (the pay intent committed with its request id and expiry,
//! the pay signed while that commit is on its way to disk), a scan bound to the sale waiting
//! for one, and the payment request id they are given.

use chrono::{DateTime, FixedOffset};

use super::transition::{self, Planned};
use super::{clock, failpoint, Engine, EngineError, SaleRequest};
use crate::domain::code::PaymentCode;
use crate::domain::machine::{self, Event, State};
use crate::domain::request_id;
use crate::gateway::{Facts, PayOrder};
use crate::store::idempotency::Idempotency;
use crate::store::payments::{self, Change, CreateError, NewPayment, PaymentRecord};

impl Engine {
    /// The `paymentExpiryTime` of a pay requested now: `payment_expiry` later, rounded up to
    /// the second it is sent with, as epoch ms and as terminal-local time.
    fn pay_expiry(&self, now_ms: i64) -> (i64, DateTime<FixedOffset>) {
        let expiry = i64::try_from(self.inner.settings.payment_expiry.as_millis()).unwrap_or(0);
        let at = now_ms.saturating_add(expiry);
        let at = at.saturating_add(999).div_euclid(1000).saturating_mul(1000);
        (at, clock::local_at(self.inner.settings.timezone, at))
    }

    /// Starts a sale. With a code the pay intent is committed (rule 1) and the pay is sent by
    /// the payment's task; without one the sale waits for the next scan.
    pub async fn start_sale(&self, req: SaleRequest) -> Result<PaymentRecord, EngineError> {
        self.start_sale_once(req, None).await.map(|(rec, _)| rec)
    }

    /// [`Engine::start_sale`] under an `Idempotency-Key`, stored in the intent's transaction:
    /// the same key and request return the payment they created (`true`: nothing new was
    /// started), the same key with another request is refused.
    pub async fn start_sale_once(
        &self,
        req: SaleRequest,
        key: Option<Idempotency>,
    ) -> Result<(PaymentRecord, bool), EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        // One reading of the clock: the intent's time, its local time and its expiry.
        let now = self.now_ms();
        let now_local = clock::local_at(self.inner.settings.timezone, now);
        let terminal_time = now_local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let (expires_ms, expires_at) = self.pay_expiry(now);
        let new = NewPayment {
            pay_expires_at: req.code.is_some().then_some(expires_ms),
            order_ref: req.order_ref.clone(),
            amount: req.amount,
            state: if req.code.is_some() {
                State::Paying
            } else {
                State::AwaitingCode
            },
            code_masked: req.code.as_ref().map(PaymentCode::masked),
            terminal_time,
        };
        let terminal = self.inner.settings.terminal_id.clone();
        let local = now_local.naive_local();
        let amount_minor = req.amount.minor();
        // The id exists as soon as the transaction has taken its sequence number: it is
        // handed out then, so the pay request is serialized and signed while the intent's
        // commit is still on its way to disk. Nothing is sent before that commit returns.
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<String>();
        let commit = self.inner.store.call(move |c| {
            let make_id = |seq| {
                let id = transition::new_request_id(
                    request_id::payment_request_id,
                    local,
                    &terminal,
                    amount_minor,
                    seq,
                );
                let _ = id_tx.send(id.clone());
                id
            };
            let created = match &key {
                None => payments::create(c, &new, now, make_id).map(|rec| (rec, false)),
                Some(k) => payments::create_once(c, &new, now, make_id, k),
            };
            match created {
                // A database error fails the job, so its savepoint rolls the whole of it back.
                Err(CreateError::Db(e)) => Err(e.into()),
                other => Ok(other),
            }
        });
        let prepare = async {
            let code = req.code.clone()?;
            let id = id_rx.await.ok()?;
            Some(self.inner.gateway.prepare_pay(PayOrder {
                payment_request_id: id,
                amount: req.amount,
                code,
                order_ref: req.order_ref.clone(),
                description: self.inner.settings.description.clone(),
                terminal_time: now_local,
                expires_at: Some(expires_at),
            }))
        };
        let (committed, prepared) = tokio::join!(commit, prepare);
        let (rec, replayed) = committed?.map_err(create_error)?;
        if replayed {
            tracing::info!(payment = %rec.payment_request_id, "sale retried with its Idempotency-Key; nothing new started");
            return Ok((rec, true));
        }
        self.changed();
        tracing::info!(payment = %rec.payment_request_id, amount = %rec.amount, state = %rec.state, "sale started");
        if let Some(prepared) = prepared {
            failpoint::hit("intent_committed");
            debug_assert_eq!(prepared.order.payment_request_id, rec.payment_request_id);
            self.spawn_driver(
                rec.payment_request_id.clone(),
                machine::Effect::SendPay,
                Some(prepared),
            );
        }
        Ok((rec, false))
    }

    /// Binds a scanned code to the sale waiting for one and sends the pay.
    pub async fn bind_code(&self, code: PaymentCode) -> Result<PaymentRecord, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let masked = code.masked();
        let now = self.now_ms();
        let now_local = clock::local_at(self.inner.settings.timezone, now);
        let terminal_time = now_local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false);
        let (expires_ms, expires_at) = self.pay_expiry(now);
        // As in `start_sale`: the waiting sale is handed out from inside the transaction, so
        // the pay request is signed while the commit is on its way to disk.
        let (found_tx, found_rx) = tokio::sync::oneshot::channel::<PaymentRecord>();
        let engine = self.clone();
        let commit = self.inner.store.call(move |c| {
            let Some(waiting) = payments::awaiting_code(c)? else {
                return Ok(None);
            };
            let _ = found_tx.send(waiting.clone());
            let env = engine.env();
            let Planned::Move(p) = transition::plan(
                &env,
                &waiting,
                &Event::CodeBound,
                &Facts::default(),
                None,
                &mut || Ok(payments::next_sequence(c)?),
            )?
            else {
                return Ok(None);
            };
            // The intent of the pay: the masked code, the time and the expiry it is sent with.
            let change = Change {
                cause: format!("code {masked} scanned; pay intent committed"),
                code_masked: Some(masked),
                terminal_time: Some(terminal_time),
                pay_expires_at: Some(expires_ms),
                ..p.change
            };
            Ok(payments::apply(
                c,
                &waiting.payment_request_id,
                waiting.state,
                &change,
                env.now_ms,
            )?)
        });
        let prepare = async {
            let waiting = found_rx.await.ok()?;
            Some(self.inner.gateway.prepare_pay(PayOrder {
                payment_request_id: waiting.payment_request_id,
                amount: waiting.amount,
                code,
                order_ref: waiting.order_ref,
                description: self.inner.settings.description.clone(),
                terminal_time: now_local,
                expires_at: Some(expires_at),
            }))
        };
        let (committed, prepared) = tokio::join!(commit, prepare);
        let rec = committed?.ok_or_else(|| {
            EngineError::Conflict(
                "no sale is waiting for a code: start one (posd pay --amount X) before scanning"
                    .into(),
            )
        })?;
        self.changed();
        failpoint::hit("intent_committed");
        // The compare-and-set moved exactly the sale that was handed out.
        let prepared = prepared.filter(|p| p.order.payment_request_id == rec.payment_request_id);
        self.spawn_driver(
            rec.payment_request_id.clone(),
            machine::Effect::SendPay,
            prepared,
        );
        Ok(rec)
    }
}

fn create_error(e: CreateError) -> EngineError {
    match e {
        CreateError::OrderBusy { .. }
        | CreateError::AlreadyAwaiting { .. }
        | CreateError::KeyReused { .. } => EngineError::Conflict(e.to_string()),
        CreateError::Db(e) => EngineError::Internal(e.into()),
    }
}
