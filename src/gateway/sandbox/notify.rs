//! Delivers the sandbox's notifyPayment (docs/protocol.md, "notifyPayment"): a signed POST to the
//! pay request's `paymentNotifyUrl`, retried a few times with short backoff until the merchant
//! answers the exact ACK. Only loopback URLs are ever called: the sandbox must not reach out
//! anywhere else.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ops::{NotifyJob, Now};
use super::Counters;
use crate::gateway::sign::{Message, PrivateKey};
use crate::gateway::wire::NOTIFY_ACK;

/// Sends per notification before giving up.
pub const ATTEMPTS: u32 = 4;
/// Delay before the first resend; doubles after each.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Deadline of one send.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL when it may be called: http(s) to a loopback address or `localhost`.
pub fn loopback_url(url: &str) -> Option<url::Url> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let ok = match u.host()? {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(ip).is_loopback(),
    };
    ok.then_some(u)
}

/// Whether a merchant's answer is the ACK (same JSON as [`NOTIFY_ACK`]).
pub fn is_ack(status: u16, body: &[u8]) -> bool {
    let ack: serde_json::Value = serde_json::from_str(NOTIFY_ACK).expect("NOTIFY_ACK is JSON");
    status == 200 && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v == ack)
}

/// Delivers one notification; ends early when the sandbox shuts down.
pub async fn deliver(
    job: NotifyJob,
    key: Arc<PrivateKey>,
    http: reqwest::Client,
    counters: Arc<Counters>,
    token: CancellationToken,
) {
    let Some(url) = loopback_url(&job.url) else {
        tracing::warn!("sandbox: paymentNotifyUrl is not a loopback URL; no notification sent");
        return;
    };
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let now = Now::current();
        let signature = key.sign_header(
            "1",
            &Message {
                method: "POST",
                uri: &path,
                client_id: &job.client_id,
                time: &now.iso,
                body: &job.body,
            },
        );
        counters.notifications.fetch_add(1, Ordering::Relaxed);
        let sent = http
            .post(url.clone())
            .timeout(SEND_TIMEOUT)
            .header("content-type", "application/json; charset=UTF-8")
            .header("client-id", &job.client_id)
            .header("request-time", &now.iso)
            .header("signature", signature)
            .body(job.body.clone())
            .send();
        let acked = tokio::select! {
            _ = token.cancelled() => return,
            r = sent => match r {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    resp.bytes().await.is_ok_and(|b| is_ack(status, &b))
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "sandbox: notification not delivered");
                    false
                }
            },
        };
        if acked {
            counters.notifications_acked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if attempt < ATTEMPTS {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff *= 2;
        }
    }
    tracing::warn!(
        attempts = ATTEMPTS,
        "sandbox: notification never acknowledged; giving up"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_called() {
        assert!(loopback_url("http://127.0.0.1:8418/alipay/notify").is_some());
        assert!(loopback_url("http://127.9.9.9/n").is_some());
        assert!(loopback_url("http://[::1]:80/n").is_some());
        assert!(loopback_url("http://localhost:1/n").is_some());
        assert!(loopback_url("http://10.0.0.1/n").is_none());
        assert!(loopback_url("https://example.com/n").is_none());
        assert!(loopback_url("file:///etc/passwd").is_none());
        assert!(loopback_url("not a url").is_none());
    }

    #[test]
    fn only_the_exact_ack_counts() {
        assert!(is_ack(200, NOTIFY_ACK.as_bytes()));
        assert!(is_ack(
            200,
            br#"{ "result": {"resultStatus":"S","resultCode":"SUCCESS","resultMessage":"success"} }"#
        ));
        assert!(!is_ack(500, NOTIFY_ACK.as_bytes()));
        assert!(!is_ack(200, crate::gateway::wire::NOTIFY_RETRY.as_bytes()));
        assert!(!is_ack(200, b"OK"));
    }
}
