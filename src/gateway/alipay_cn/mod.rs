//! The Alipay mainland face-to-face dialect (当面付, `alipay.trade.*`, `scene=bar_code`):
//! the form wire, RSA2 signing over sorted `k=v`, answers verified over their raw bytes,
//! the mapping of `code` / `sub_code` / `trade_status` into the machine's answers, the
//! client and the asynchronous notifications. docs/protocol.md describes the dialect.

pub mod answer;
pub mod client;
pub mod notify;
pub mod sign;
pub mod wire;

pub use client::{CnClient, CnSettings};

use async_trait::async_trait;

use crate::domain::machine::Refusal;
use crate::gateway::{
    Answer, Gateway, Inquiry, PayOrder, PreparedPay, RefundOrder, Reply, SignedRequest,
};
use answer::{Cancel, RefundStatus};
use wire::Method;

#[async_trait]
impl Gateway for CnClient {
    async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        CnClient::pay(self, order).await
    }

    fn prepare_pay(&self, order: PayOrder) -> PreparedPay {
        // An order the wire cannot carry is left unprepared: sending it then refuses it.
        let wire = self.prepare_pay(&order).ok().map(|form| SignedRequest {
            body: form.body.into_bytes(),
            request_time: String::new(),
            signature: String::new(),
        });
        PreparedPay { order, wire }
    }

    async fn send_pay(&self, prepared: PreparedPay) -> Reply<Answer> {
        match prepared.wire {
            Some(w) => {
                let form = client::SignedForm {
                    method: Method::Pay,
                    body: String::from_utf8(w.body).expect("prepared from a String"),
                };
                CnClient::send_pay(self, &prepared.order.payment_request_id, form).await
            }
            None => CnClient::pay(self, &prepared.order).await,
        }
    }

    async fn inquiry_payment(&self, payment_request_id: &str) -> Reply<Inquiry> {
        self.query(payment_request_id).await
    }

    async fn cancel(&self, payment_request_id: &str) -> Reply<Answer> {
        let (verdict, mut facts) = CnClient::cancel(self, payment_request_id).await;
        if verdict == Cancel::Reversed {
            // The trade had been charged: the cancel refunded it in full. The engine records
            // a confirmed reversal refund and ends the payment REFUNDED.
            facts.cancel_refunded = true;
            facts.result_message = Some(
                "the cancel refunded a charge in full (alipay.trade.cancel action=refund)".into(),
            );
        }
        Reply {
            answer: verdict.answer(),
            facts,
        }
    }

    async fn refund(&self, order: &RefundOrder) -> Reply<Answer> {
        CnClient::refund(self, order).await.0
    }

    async fn inquiry_refund(&self, refund: &RefundOrder) -> Reply<Answer> {
        // The query names the trade and our out_request_no, both from the stored refund.
        let (status, facts) = self
            .refund_query(&refund.payment_id, &refund.refund_request_id)
            .await;
        let answer = match status {
            RefundStatus::Refunded => Answer::Success,
            RefundStatus::NotRefunded => Answer::Failed {
                refusal: Refusal::Other,
                code: "REFUND_NOT_DONE".into(),
                message: "the gateway has no successful refund under this out_request_no".into(),
            },
            RefundStatus::Unknown { why } => Answer::Unknown { why },
        };
        Reply { answer, facts }
    }
}
