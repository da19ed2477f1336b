//! Sale start: a sale with its code (the pay intent committed with its request id and expiry,
//! the pay signed while that commit is on its way to disk), a scan bound to the sale waiting
//! for one, and the payment request id they are given.

use std::collections::VecDeque;
use std::ops::RangeInclusive;

use chrono::{DateTime, FixedOffset};

use super::transition::{self, Planned};
use super::{clock, failpoint, Engine, EngineError, SaleRequest};
use crate::domain::code::PaymentCode;
use crate::domain::machine::{self, Event, State};
use crate::domain::request_id;
use crate::gateway::{Facts, PayOrder};
use crate::store::idempotency::Idempotency;
use crate::store::payments::{self, Change, CreateError, NewPayment, PaymentRecord, Sequence};

/// How many sequence numbers a sale's transaction takes ahead when none are left.
const SPARE_BATCH: u64 = 8;

/// Sequence numbers a committed transaction took ahead ([`payments::reserve_sequences`]) and
/// no sale has used yet. With one, a sale's id is known before its transaction begins, so its
/// pay is signed on this thread while the writer commits the intent; without one the id is
/// handed out from inside the transaction. Lost at a restart: a gap in the numbers.
#[derive(Debug, Default)]
pub(super) struct SpareSequences {
    seqs: VecDeque<u64>,
    /// A sale's transaction is taking the next batch.
    refilling: bool,
}

impl Engine {
    /// A spare sequence number, if any, and whether this sale's transaction takes the next
    /// batch (none left, and no other sale is taking one).
    fn take_spare(&self) -> (Option<u64>, bool) {
        let mut s = self.inner.spare.lock().unwrap_or_else(|p| p.into_inner());
        let seq = s.seqs.pop_front();
        let refill = s.seqs.is_empty() && !s.refilling;
        s.refilling |= refill;
        (seq, refill)
    }

    /// After a sale's transaction: `unused` goes back (the sale was refused or not
    /// committed), `taken` joins the spares (it was committed), and a refill this sale
    /// started is over.
    fn settle_spare(&self, unused: Option<u64>, taken: Option<RangeInclusive<u64>>, refill: bool) {
        let mut s = self.inner.spare.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seq) = unused {
            s.seqs.push_front(seq);
        }
        s.seqs.extend(taken.into_iter().flatten());
        if refill {
            s.refilling = false;
        }
    }
}

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
        let make = move |seq| {
            transition::new_request_id(
                request_id::payment_request_id,
                local,
                &terminal,
                amount_minor,
                seq,
            )
        };
        // With a spare sequence number the id is known now, and the pay is signed here while
        // the writer commits the intent. Without one the id exists as soon as the transaction
        // has taken its number, and is handed out from there. Either way nothing is sent
        // before that commit returns.
        let (spare, refill) = self.take_spare();
        let known = spare.map(&make);
        let seq = spare.map_or(Sequence::Next, Sequence::Reserved);
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<String>();
        let job_id = known.clone();
        let commit = self.inner.store.call(move |c| {
            let make_id = move |seq| match job_id {
                Some(id) => id,
                None => {
                    let id = make(seq);
                    let _ = id_tx.send(id.clone());
                    id
                }
            };
            let created = match &key {
                None => payments::create_with(c, &new, now, seq, make_id).map(|rec| (rec, false)),
                Some(k) => payments::create_once(c, &new, now, seq, make_id, k),
            };
            // A database error fails the job, so its savepoint rolls the whole of it back.
            let created = match created {
                Err(CreateError::Db(e)) => return Err(e.into()),
                other => other,
            };
            // A new payment's transaction takes the next spare numbers, when it is its turn.
            let taken = match &created {
                Ok((_, false)) if refill => Some(payments::reserve_sequences(c, SPARE_BATCH)?),
                _ => None,
            };
            Ok((created, taken))
        });
        let prepare = async {
            let code = req.code.clone()?;
            let id = match &known {
                Some(id) => id.clone(),
                None => id_rx.await.ok()?,
            };
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
        let (created, taken) = match committed {
            Ok(done) => done,
            Err(e) => {
                self.settle_spare(spare, None, refill);
                return Err(e.into());
            }
        };
        let used = matches!(created, Ok((_, false)));
        self.settle_spare(spare.filter(|_| !used), taken, refill);
        let (rec, replayed) = created.map_err(create_error)?;
        if replayed {
            tracing::info!(payment = %rec.payment_request_id, "sale retried with its Idempotency-Key; nothing new started");
            return Ok((rec, true));
        }
        self.changed();
        tracing::info!(payment = %rec.payment_request_id, amount = %rec.amount, state = %rec.state, "sale started");
        if rec.state == State::AwaitingCode {
            *self
                .inner
                .awaiting
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(rec.clone());
        }
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
        // As in `start_sale`: the pay is signed while the commit is on its way to disk, for
        // the sale this engine last started without a code when there is one (a hint: the
        // transaction finds the waiting sale itself), else for the waiting sale the
        // transaction hands out.
        let hint = self
            .inner
            .awaiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let hinted = hint.is_some();
        let (found_tx, found_rx) = tokio::sync::oneshot::channel::<PaymentRecord>();
        let engine = self.clone();
        let commit = self.inner.store.call(move |c| {
            let Some(waiting) = payments::awaiting_code(c)? else {
                return Ok(None);
            };
            if !hinted {
                let _ = found_tx.send(waiting.clone());
            }
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
        let order = |waiting: PaymentRecord, code: PaymentCode| PayOrder {
            payment_request_id: waiting.payment_request_id,
            amount: waiting.amount,
            code,
            order_ref: waiting.order_ref,
            description: self.inner.settings.description.clone(),
            terminal_time: now_local,
            expires_at: Some(expires_at),
        };
        let resign = code.clone();
        let prepare = async {
            let waiting = match hint {
                Some(w) => w,
                None => found_rx.await.ok()?,
            };
            Some(self.inner.gateway.prepare_pay(order(waiting, code)))
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
        // The hint named another sale than the one bound (it was aborted or expired, and
        // another started elsewhere): sign the pay again, for the sale that was bound.
        let prepared = match prepared {
            Some(p) if p.order.payment_request_id == rec.payment_request_id => p,
            _ => self.inner.gateway.prepare_pay(order(rec.clone(), resign)),
        };
        self.spawn_driver(
            rec.payment_request_id.clone(),
            machine::Effect::SendPay,
            Some(prepared),
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
