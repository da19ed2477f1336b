//! Hardening for the HTTP listeners: the optional bearer token (`[api] token`), request
//! deadlines, bounded concurrency and body limits.
//!
//! Decisions:
//! - The token guards every route except `GET /healthz`, which systemd, load balancers and
//!   operators probe without credentials and which reveals nothing but liveness and counts.
//!   `/metrics` needs the token (Prometheus sends it with `authorization.credentials`).
//! - Handlers run in their own task: a deadline or a client that hangs up answers or drops
//!   the connection, but never cuts a handler between a commit and what must follow it (a
//!   sale's intent is committed, then its task is spawned).
//! - Over the concurrency bound a request is answered 503 at once rather than queued, so a
//!   stuck client cannot build a backlog; long-polls (`?wait=`) get their own longer deadline.
//!   `GET /healthz` is outside the bound. Bodies are read before a request takes a slot, and
//!   slow or idle connections are cut, by the accept loop in [`super::serve`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::config::Secret;

/// Deadline of an ordinary API request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long-poll gets beyond its `wait` (capped at `api::MAX_WAIT`).
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// API requests handled at once (long-polls included).
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// The route that needs no token.
pub const UNAUTHENTICATED_PATH: &str = "/healthz";

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[derive(Clone)]
struct Limits {
    timeout: Duration,
    long_poll: Option<Duration>,
    permits: Arc<Semaphore>,
}

/// Adds a deadline and a concurrency bound to every route of `router`.
pub fn bounded(router: Router, timeout: Duration, max_concurrent: usize) -> Router {
    with_limits(
        router,
        Limits {
            timeout,
            long_poll: None,
            permits: Arc::new(Semaphore::new(max_concurrent)),
        },
    )
}

fn with_limits(router: Router, limits: Limits) -> Router {
    router.layer(middleware::from_fn_with_state(limits, limit))
}

async fn limit(State(l): State<Limits>, req: Request, next: Next) -> Response {
    // Health answers even when every handler slot is taken: that is when it matters.
    let permit = if req.uri().path() == UNAUTHENTICATED_PATH {
        None
    } else if let Ok(p) = l.permits.clone().try_acquire_owned() {
        Some(p)
    } else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many requests at once; try again shortly",
        );
    };
    let long_poll = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("wait=")));
    let deadline = match (long_poll, l.long_poll) {
        (true, Some(d)) => d,
        _ => l.timeout,
    };
    let task = tokio::spawn(async move {
        let resp = next.run(req).await;
        drop(permit);
        resp
    });
    match tokio::time::timeout(deadline, task).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "API handler panicked");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!("no answer within {deadline:?}; check the payment's status before retrying"),
        ),
    }
}

/// The local API's hardening: token (when configured), body limit, deadlines, concurrency.
pub fn secure(router: Router, token: Option<&Secret>, max_body: usize) -> Router {
    let limited = with_limits(
        router,
        Limits {
            timeout: REQUEST_TIMEOUT,
            long_poll: Some(super::MAX_WAIT + LONG_POLL_MARGIN),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        },
    )
    .layer(DefaultBodyLimit::max(max_body));
    let guarded = match token {
        None => limited,
        Some(t) => {
            let expected: Arc<[u8; 32]> = Arc::new(Sha256::digest(t.expose().as_bytes()).into());
            limited.layer(middleware::from_fn_with_state(expected, require_token))
        }
    };
    super::errors::json_errors(guarded)
}

/// Whether `given` equals the token, in time independent of where they differ (both are
/// hashed first, so the length does not leak either).
pub fn token_matches(expected_sha256: &[u8; 32], given: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    bool::from(expected_sha256.ct_eq(&given))
}

async fn require_token(
    State(expected): State<Arc<[u8; 32]>>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == UNAUTHENTICATED_PATH {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match given {
        Some(t) if token_matches(&expected, t) => next.run(req).await,
        _ => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token: send Authorization: Bearer <[api] token>",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare() {
        let e: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(token_matches(&e, "s3cret"));
        assert!(!token_matches(&e, "s3cre"));
        assert!(!token_matches(&e, "s3cret "));
        assert!(!token_matches(&e, ""));
    }
}
