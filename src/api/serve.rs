//! The accept loop of both listeners (the local API and the notification endpoint), built so
//! that slow or idle clients cannot lock out the ones that matter:
//!
//! - HTTP/1.1 with a header read deadline (`header_timeout`): a connection that sends no
//!   request, or not all of its headers, within it is closed — idle keep-alive ones too.
//! - The whole body is read, within `body_timeout` and the size limit, *before* the request
//!   reaches the routes and their concurrency bound: a client trickling a body holds its own
//!   connection, never one of the handler slots. Too slow: 408, too large: 413 (JSON, then the
//!   connection closes).
//! - At most `max_per_peer` connections per peer IP address; the next is answered 503 (JSON)
//!   at once and closed.
//! - `GET /healthz` is outside the handlers' concurrency bound (see [`super::guard`]).
//! - Every 4xx/5xx reply of whatever `app` holds carries the JSON error body ([`super::errors`]).
//! - On shutdown no connection is accepted, and open ones finish their request and close.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::errors::error;

/// The slow-client limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenLimits {
    /// Deadline for a request's headers (and for an idle connection's next request).
    pub header_timeout: Duration,
    /// Deadline for a request's whole body.
    pub body_timeout: Duration,
    /// The largest body read.
    pub max_body: usize,
    /// Connections one peer IP may hold open at once.
    pub max_per_peer: usize,
    /// Whether the back office's statement uploads may exceed `max_body` (the API listener).
    pub statement_uploads: bool,
}

impl ListenLimits {
    /// The API listener's limits from `[api]`.
    pub fn api(cfg: &crate::config::Config) -> ListenLimits {
        ListenLimits {
            header_timeout: cfg.api.header_timeout.0,
            body_timeout: cfg.api.body_timeout.0,
            max_body: super::MAX_BODY,
            max_per_peer: cfg.api.max_connections_per_peer,
            statement_uploads: true,
        }
    }

    /// The notification listener's limits from `[notify]`.
    pub fn notify(cfg: &crate::config::Config) -> ListenLimits {
        ListenLimits {
            header_timeout: cfg.notify.header_timeout.0,
            body_timeout: cfg.notify.body_timeout.0,
            max_body: super::notify::MAX_NOTIFY_BODY,
            max_per_peer: cfg.notify.max_connections_per_peer,
            statement_uploads: false,
        }
    }
}

/// Open connections per peer IP.
#[derive(Clone, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection's place in [`Peers`], given back on drop.
struct Slot {
    peers: Peers,
    ip: IpAddr,
}

impl Peers {
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What every listener adds around its `app`: the JSON error body on every error reply of
/// whatever was merged into it (and its fallback), and the bounds on reading a body.
pub fn layered(app: Router, limits: ListenLimits) -> Router {
    super::errors::json_errors(app).layer(middleware::from_fn_with_state(limits, read_body))
}

/// Serves `app` on `listener` with `limits` until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenLimits,
    token: CancellationToken,
) -> std::io::Result<()> {
    let app = layered(app, limits);
    let peers = Peers::default();
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = token.cancelled() => break,
        };
        let Some(slot) = peers.take(peer.ip(), limits.max_per_peer) else {
            tracing::warn!(peer = %peer.ip(), limit = limits.max_per_peer, "too many connections from one peer; refused");
            tracker.spawn(refuse(stream, limits.max_per_peer));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = token.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.cancelled() => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers a connection over the per-peer limit with a JSON 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    let body = serde_json::json!({"error": {
        "code": "too_many_connections",
        "message": format!("more than {max} connections from this address; close idle ones and retry"),
    }})
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    // Let the request arrive first (briefly), so the client reads the answer as one.
    let mut head = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut head)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads the whole body within the deadline and the size limit, then passes the request on
/// with the body in memory.
async fn read_body(State(limits): State<ListenLimits>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limits = if limits.statement_uploads {
        ListenLimits {
            max_body: crate::backoffice::body_limit(parts.uri.path(), limits.max_body),
            ..limits
        }
    } else {
        limits
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return closing(too_large(limits.max_body));
    }
    let read = Limited::new(body, limits.max_body).collect();
    let bytes: Bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return closing(too_large(limits.max_body))
        }
        Ok(Err(e)) => {
            return closing(error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("the request body could not be read: {e}"),
            ))
        }
        Err(_) => {
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!(
                    "the body did not arrive within {:?}; send it at once",
                    limits.body_timeout
                ),
            ))
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large(max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        &format!("the body is larger than {max} bytes"),
    )
}

/// Marks a reply as the connection's last (the rest of its body is not read).
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}
