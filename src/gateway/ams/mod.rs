//! The Alipay+ AMS dialect: `wire` (the JSON messages), `client` (signing and HTTP: the
//! verified envelope of each call), `answer` (what each AMS answer means to the machine), and
//! here the [`Gateway`] that joins them.

pub mod answer;
pub mod client;
pub mod notify;
pub mod wire;

use async_trait::async_trait;

use crate::gateway::{Answer, Gateway, Inquiry, PayOrder, PreparedPay, RefundOrder, Reply};
use client::AmsClient;

#[async_trait]
impl Gateway for AmsClient {
    async fn pay(&self, order: &PayOrder) -> Reply<Answer> {
        answer::pay(AmsClient::pay(self, order).await)
    }

    fn prepare_pay(&self, order: PayOrder) -> PreparedPay {
        AmsClient::prepare_pay(self, order)
    }

    async fn send_pay(&self, prepared: PreparedPay) -> Reply<Answer> {
        answer::pay(AmsClient::send_pay(self, prepared).await)
    }

    async fn inquiry_payment(&self, payment_request_id: &str) -> Reply<Inquiry> {
        answer::inquiry(AmsClient::inquiry_payment(self, payment_request_id).await)
    }

    async fn cancel(&self, payment_request_id: &str) -> Reply<Answer> {
        answer::cancel(AmsClient::cancel(self, payment_request_id).await)
    }

    async fn refund(&self, order: &RefundOrder) -> Reply<Answer> {
        answer::refund(AmsClient::refund(self, order).await)
    }

    async fn inquiry_refund(&self, refund: &RefundOrder) -> Reply<Answer> {
        answer::inquiry_refund(AmsClient::inquiry_refund(self, &refund.refund_request_id).await)
    }
}
