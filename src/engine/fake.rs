//! The scripted in-memory gateway the engine and queue-worker unit tests share: answers come
//! from per-operation scripts (then defaults), every call is recorded with its virtual time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::gateway::wire::{
    CancelResponse, InquiryPaymentResponse, InquiryRefundResponse, PayResponse, RefundResponse,
};
use crate::gateway::{Gateway, Outcome, PayOrder, RefundOrder};

/// What the fake answers, and what it was asked.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) pay: VecDeque<Outcome<PayResponse>>,
    pub(crate) inquiry: VecDeque<Outcome<InquiryPaymentResponse>>,
    pub(crate) cancel: VecDeque<Outcome<CancelResponse>>,
    pub(crate) refund: VecDeque<Outcome<RefundResponse>>,
    /// What cancels answer once their script is empty (else unknown).
    pub(crate) cancel_default: Option<Outcome<CancelResponse>>,
    /// What refunds answer once their script is empty (else unknown).
    pub(crate) refund_default: Option<Outcome<RefundResponse>>,
    /// Every call: (operation, virtual time, request id).
    pub(crate) calls: Vec<(&'static str, Instant, String)>,
    /// Every call hangs this long before answering.
    pub(crate) delay: Duration,
    /// Pay calls hang this long more (a slow or silent gateway).
    pub(crate) pay_delay: Duration,
}

/// The scripted gateway; clones share one script.
#[derive(Clone, Default)]
pub(crate) struct Fake(pub(crate) Arc<Mutex<Script>>);

/// An unknown outcome (a timeout).
pub(crate) fn unknown<T>() -> Outcome<T> {
    Outcome::Unknown {
        why: "timeout".into(),
    }
}

/// A verified F with `code`.
pub(crate) fn failed<T>(code: &str) -> Outcome<T> {
    Outcome::Failed {
        code: code.into(),
        message: "m".into(),
    }
}

/// A verified inquiry answer with `paymentStatus = s` (and paymentId G1).
pub(crate) fn status(s: &str) -> Outcome<InquiryPaymentResponse> {
    Outcome::Success(InquiryPaymentResponse {
        payment_status: Some(s.into()),
        payment_id: Some("G1".into()),
        ..Default::default()
    })
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
    async fn pay(&self, order: &PayOrder) -> Outcome<PayResponse> {
        let extra = self.script().pay_delay;
        self.record("pay", &order.payment_request_id, extra).await;
        self.script().pay.pop_front().unwrap_or_else(unknown)
    }
    async fn inquiry_payment(&self, id: &str) -> Outcome<InquiryPaymentResponse> {
        self.record("inquiry", id, Duration::ZERO).await;
        self.script()
            .inquiry
            .pop_front()
            .unwrap_or_else(|| status("PROCESSING"))
    }
    async fn cancel(&self, id: &str) -> Outcome<CancelResponse> {
        self.record("cancel", id, Duration::ZERO).await;
        let mut s = self.script();
        let d = s.cancel_default.clone();
        s.cancel.pop_front().or(d).unwrap_or_else(unknown)
    }
    async fn refund(&self, order: &RefundOrder) -> Outcome<RefundResponse> {
        self.record("refund", &order.refund_request_id, Duration::ZERO)
            .await;
        let mut s = self.script();
        let d = s.refund_default.clone();
        s.refund.pop_front().or(d).unwrap_or_else(unknown)
    }
    async fn inquiry_refund(&self, _id: &str) -> Outcome<InquiryRefundResponse> {
        unknown()
    }
}
