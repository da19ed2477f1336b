//! The scripted in-memory gateway the engine and queue-worker unit tests share: answers come
//! from per-operation scripts (then defaults), every call is recorded with its virtual time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::gateway::{Answer, Facts, Gateway, Inquiry, PayOrder, RefundOrder, Refusal, Reply};

/// What the fake answers, and what it was asked.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) pay: VecDeque<Reply<Answer>>,
    pub(crate) inquiry: VecDeque<Reply<Inquiry>>,
    pub(crate) cancel: VecDeque<Reply<Answer>>,
    pub(crate) refund: VecDeque<Reply<Answer>>,
    /// What cancels answer once their script is empty (else unknown).
    pub(crate) cancel_default: Option<Reply<Answer>>,
    /// What refunds answer once their script is empty (else unknown).
    pub(crate) refund_default: Option<Reply<Answer>>,
    /// Every call: (operation, virtual time, request id).
    pub(crate) calls: Vec<(&'static str, Instant, String)>,
    /// Every call hangs this long before answering.
    pub(crate) delay: Duration,
    /// Pay calls hang this long more (a slow or silent gateway).
    pub(crate) pay_delay: Duration,
    /// When set, the gateway behind a proxy that holds each pay in transit (see [`Held`]):
    /// pay, inquiry and cancel answer from it instead of the scripts.
    pub(crate) held: Option<Held>,
}

/// A gateway behind a proxy that holds each pay `hold` in transit (the hostile tester's): the
/// pay reaches it then, and is processed (charged) only if its `paymentExpiryTime` has not
/// passed. Until it arrives the gateway has no record; once charged, a cancel reverses it.
pub(crate) struct Held {
    /// How long a pay is held in transit.
    pub(crate) hold: Duration,
    /// The wall clock the engine uses too.
    pub(crate) clock: Arc<dyn crate::engine::clock::Clock>,
    /// The pay in transit: when it arrives (epoch ms) and its expiry (epoch ms).
    pub(crate) in_transit: Option<(i64, Option<i64>)>,
    /// The pay reached the gateway in time and was charged.
    pub(crate) charged: bool,
    /// The charge was reversed by a cancel.
    pub(crate) cancelled: bool,
    /// The pay reached the gateway after its expiry and was not processed.
    pub(crate) refused_late: bool,
}

impl Held {
    /// A proxy holding each pay `hold`, on `clock`.
    pub(crate) fn new(hold: Duration, clock: Arc<dyn crate::engine::clock::Clock>) -> Held {
        Held {
            hold,
            clock,
            in_transit: None,
            charged: false,
            cancelled: false,
            refused_late: false,
        }
    }

    /// Lets the pay arrive if its time has come.
    pub(crate) fn settle(&mut self) {
        let now = self.clock.now_ms();
        if let Some((arrives, expires)) = self.in_transit {
            if now >= arrives {
                self.in_transit = None;
                if expires.is_some_and(|e| arrives > e) {
                    self.refused_late = true;
                } else {
                    self.charged = true;
                }
            }
        }
    }

    /// The customer is charged at the gateway right now.
    pub(crate) fn is_charged(&mut self) -> bool {
        self.settle();
        self.charged && !self.cancelled
    }
}

/// The scripted gateway; clones share one script.
#[derive(Clone, Default)]
pub(crate) struct Fake(pub(crate) Arc<Mutex<Script>>);

/// An unknown answer (a timeout).
pub(crate) fn unknown() -> Reply<Answer> {
    Reply::<Answer>::unknown("timeout")
}

/// A success without facts.
pub(crate) fn ok() -> Reply<Answer> {
    Reply {
        answer: Answer::Success,
        facts: Facts {
            result_code: Some("SUCCESS".into()),
            ..Facts::default()
        },
    }
}

/// A success naming the gateway's payment id.
pub(crate) fn ok_with_payment_id(id: &str) -> Reply<Answer> {
    Reply {
        answer: Answer::Success,
        facts: Facts {
            payment_id: Some(id.into()),
            result_code: Some("SUCCESS".into()),
            ..Facts::default()
        },
    }
}

/// A refund success naming the gateway's refund id.
pub(crate) fn refunded(refund_id: &str) -> Reply<Answer> {
    Reply {
        answer: Answer::Success,
        facts: Facts {
            refund_id: Some(refund_id.into()),
            result_code: Some("SUCCESS".into()),
            ..Facts::default()
        },
    }
}

/// A refusal meaning `refusal`, with the gateway's `code`.
pub(crate) fn refused(refusal: Refusal, code: &str) -> Reply<Answer> {
    Reply {
        answer: Answer::Failed {
            refusal,
            code: code.into(),
            message: "m".into(),
        },
        facts: Facts {
            result_code: Some(code.into()),
            result_message: Some("m".into()),
            ..Facts::default()
        },
    }
}

/// Any other refusal with `code`.
pub(crate) fn failed(code: &str) -> Reply<Answer> {
    refused(Refusal::Other, code)
}

/// "Too late to cancel".
pub(crate) fn window_passed() -> Reply<Answer> {
    refused(Refusal::CancelWindowPassed, "CANCEL_WINDOW_EXCEED")
}

/// A certain inquiry answer (with paymentId G1).
pub(crate) fn inquired(answer: Inquiry) -> Reply<Inquiry> {
    Reply {
        answer,
        facts: Facts {
            payment_id: Some("G1".into()),
            ..Facts::default()
        },
    }
}

/// The inquiry says the payment is still processing.
pub(crate) fn processing() -> Reply<Inquiry> {
    inquired(Inquiry::Pending {
        status: "PROCESSING".into(),
    })
}

/// The inquiry says paid.
pub(crate) fn paid() -> Reply<Inquiry> {
    let mut r = inquired(Inquiry::Paid);
    r.facts.result_code = Some("SUCCESS".into());
    r
}

/// The inquiry finds no such payment.
pub(crate) fn not_found() -> Reply<Inquiry> {
    Reply {
        answer: Inquiry::NotFound,
        facts: Facts {
            result_code: Some("ORDER_NOT_EXIST".into()),
            ..Facts::default()
        },
    }
}

/// The cancel finds no such payment (the pay has not arrived, or never will).
pub(crate) fn no_such_payment() -> Reply<Answer> {
    refused(Refusal::NoSuchPayment, "ORDER_NOT_EXIST")
}

/// The inquiry goes unanswered.
pub(crate) fn inquiry_unknown() -> Reply<Inquiry> {
    Reply::<Inquiry>::unknown("timeout")
}

impl Fake {
    /// The script, locked.
    pub(crate) fn script(&self) -> MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }

    /// The calls of one operation: (virtual time, request id).
    pub(crate) fn calls(&self, op: &str) -> Vec<(Instant, String)> {
        self.script()
            .calls
            .iter()
            .filter(|c| c.0 == op)
            .map(|c| (c.1, c.2.clone()))
            .collect()
    }

    async fn record(&self, op: &'static str, id: &str, extra: Duration) {
        let delay = {
            let mut s = self.script();
            s.calls.push((op, Instant::now(), id.to_string()));
            s.delay + extra
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl Gateway for Fake {
    async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        if let Some(h) = self.script().held.as_mut() {
            let arrives = h.clock.now_ms() + h.hold.as_millis() as i64;
            h.in_transit = Some((arrives, order.expires_at.map(|t| t.timestamp_millis())));
        }
        if self.script().held.is_some() {
            // Held in transit: no answer within any deadline the engine allows.
            self.record("pay", &order.payment_request_id, Duration::from_secs(3600))
                .await;
            return unknown();
        }
        let extra = self.script().pay_delay;
        self.record("pay", &order.payment_request_id, extra).await;
        self.script().pay.pop_front().unwrap_or_else(unknown)
    }
    async fn inquiry_payment(&self, id: &str) -> Reply<Inquiry> {
        self.record("inquiry", id, Duration::ZERO).await;
        if let Some(h) = self.script().held.as_mut() {
            h.settle();
            return match (h.charged, h.cancelled) {
                (true, false) => paid(),
                (true, true) => {
                    let mut r = inquired(Inquiry::Closed);
                    r.facts.result_code = Some("CANCELLED".into());
                    r
                }
                _ => not_found(),
            };
        }
        self.script().inquiry.pop_front().unwrap_or_else(processing)
    }
    async fn cancel(&self, id: &str) -> Reply<Answer> {
        self.record("cancel", id, Duration::ZERO).await;
        if let Some(h) = self.script().held.as_mut() {
            h.settle();
            if h.charged {
                h.cancelled = true;
                return ok_with_payment_id("G1");
            }
            return no_such_payment();
        }
        let mut s = self.script();
        let d = s.cancel_default.clone();
        s.cancel.pop_front().or(d).unwrap_or_else(unknown)
    }
    async fn refund(&self, order: &RefundOrder) -> Reply<Answer> {
        self.record("refund", &order.refund_request_id, Duration::ZERO)
            .await;
        let mut s = self.script();
        let d = s.refund_default.clone();
        s.refund.pop_front().or(d).unwrap_or_else(unknown)
    }
    async fn inquiry_refund(&self, _refund: &RefundOrder) -> Reply<Answer> {
        unknown()
    }
}
