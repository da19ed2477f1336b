//! The CLI's HTTP client for the daemon's API: one place that turns transport failures and
//! `{"error":…}` answers into messages and exit codes.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{EXIT_NOT_SUCCEEDED, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::api::wire::ErrorBody;
use crate::config::Config;

/// Default per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How often [`ApiClient::post_once`] sends a creating request whose answer did not arrive.
const POST_ATTEMPTS: u32 = 3;

/// A fresh `Idempotency-Key`: 128 random bits, hex.
pub fn new_idempotency_key() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot reach the daemon at {url}: {why}; is `posd run` running (api.listen)?")]
    Unreachable { url: String, why: String },
    #[error("{message} ({code})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

impl CallError {
    /// The exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Unreachable { .. } => EXIT_UNREACHABLE,
            CallError::Refused { status, .. } if *status == 400 => EXIT_USAGE,
            CallError::Refused { .. } => EXIT_NOT_SUCCEEDED,
            CallError::Protocol(_) => EXIT_UNREACHABLE,
        }
    }
}

/// A client of the local API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// From `[api]`: `listen` (0.0.0.0 becomes 127.0.0.1) and `token`.
    pub fn from_config(cfg: &Config) -> ApiClient {
        let mut addr = cfg.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        ApiClient::new(
            format!("http://{addr}"),
            cfg.api.token.as_ref().map(|t| t.expose().to_string()),
        )
    }

    /// A client for `base` (e.g. `http://127.0.0.1:8417`).
    pub fn new(base: String, token: Option<String>) -> ApiClient {
        ApiClient {
            base,
            token,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("reqwest client builds"),
        }
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.send(self.http.get(self.url(path)).timeout(TIMEOUT), path)
            .await
    }

    /// GET with a longer timeout (long-poll).
    pub async fn get_long<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        self.send(self.http.get(self.url(path)).timeout(timeout), path)
            .await
    }

    /// POST a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CallError> {
        self.send(
            self.http.post(self.url(path)).json(body).timeout(TIMEOUT),
            path,
        )
        .await
    }

    /// POST a creating request with an `Idempotency-Key` (one per CLI invocation): when the
    /// daemon cannot be reached or the answer is lost, the identical request is sent again
    /// with the same key, so a retry never creates a second payment or refund.
    pub async fn post_once<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: &str,
    ) -> Result<T, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let rb = self
                .http
                .post(self.url(path))
                .header(crate::api::IDEMPOTENCY_KEY, key)
                .json(body)
                .timeout(TIMEOUT);
            match self.send(rb, path).await {
                Err(CallError::Unreachable { .. }) if attempt < POST_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    /// GET raw text (CSV, metrics).
    pub async fn get_text(&self, path: &str) -> Result<String, CallError> {
        let rb = self.auth(self.http.get(self.url(path)).timeout(TIMEOUT));
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(refused(status.as_u16(), &text));
        }
        Ok(text)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn unreachable(&self, e: reqwest::Error) -> CallError {
        CallError::Unreachable {
            url: self.base.clone(),
            why: if e.is_timeout() {
                "timed out".into()
            } else if e.is_connect() {
                "connection refused".into()
            } else {
                e.to_string()
            },
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<T, CallError> {
        let resp = self
            .auth(rb)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(refused(status.as_u16(), &String::from_utf8_lossy(&bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Protocol(format!("{path}: {e}")))
    }
}

fn refused(status: u16, text: &str) -> CallError {
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(b) => CallError::Refused {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => CallError::Refused {
            status,
            code: format!("http_{status}"),
            message: text.chars().take(200).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one request's head and returns its `idempotency-key` header.
    async fn key_of(s: &mut tokio::net::TcpStream) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        head.lines()
            .find_map(|l| l.strip_prefix("idempotency-key: ").map(str::to_string))
    }

    #[tokio::test]
    async fn a_lost_answer_is_retried_with_the_same_key() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // First attempt: the request arrives, the answer is lost.
            let (mut s, _) = listener.accept().await.unwrap();
            let first = key_of(&mut s).await;
            drop(s);
            // Second attempt: answered.
            let (mut s, _) = listener.accept().await.unwrap();
            let second = key_of(&mut s).await;
            s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
            (first, second)
        });
        let c = ApiClient::new(format!("http://{addr}"), None);
        let key = new_idempotency_key();
        assert_eq!(key.len(), 32);
        let v: serde_json::Value = c
            .post_once("/v1/payments", &serde_json::json!({"amount": "1"}), &key)
            .await
            .unwrap();
        assert_eq!(v, serde_json::json!({}));
        let (first, second) = server.await.unwrap();
        assert_eq!(first.as_deref(), Some(key.as_str()));
        assert_eq!(second.as_deref(), Some(key.as_str()));
        assert_ne!(new_idempotency_key(), key);
    }
}
