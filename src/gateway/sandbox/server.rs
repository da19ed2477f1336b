//! The sandbox's HTTP face: routes the AMS paths (production and `/ams/sandbox/` forms),
//! verifies each request's signature with the merchant key, runs the operation, signs the
//! answer with the gateway key, and holds "no answer" requests open.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ops::{self, Done, Now, Op, Reply, Signing};
use super::store::Store;
use super::{notify, Counters};
use crate::gateway::sign::{Message, PrivateKey, PublicKey};

/// Everything a request handler needs.
pub struct App {
    /// The sandbox database.
    pub store: Arc<Store>,
    /// Signs answers and notifications.
    pub gateway_key: Arc<PrivateKey>,
    /// Verifies requests.
    pub merchant_key: PublicKey,
    /// Scenario 86's outage.
    pub cancel_outage: Duration,
    /// How long "no answer" holds a request.
    pub no_answer_stall: Duration,
    /// Request counters.
    pub counters: Arc<Counters>,
    /// Fires on shutdown.
    pub token: CancellationToken,
    /// Tracks notification tasks.
    pub tracker: TaskTracker,
    /// Sends notifications.
    pub http: reqwest::Client,
}

/// The router: both path forms, POST only; everything else is 404 (405 for other methods).
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/ams/api/v1/payments/{op}", post(handle))
        .route("/ams/sandbox/api/v1/payments/{op}", post(handle))
        .route(super::mainland::PATH, post(super::mainland::handle))
        .route(
            super::overrides::PATH,
            axum::routing::get(super::overrides::get)
                .put(super::overrides::put)
                .delete(super::overrides::delete),
        )
        .with_state(app)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Checks the request signature; returns the client id on success.
fn verify(app: &App, path: &str, headers: &HeaderMap, body: &[u8]) -> Result<String, &'static str> {
    let client_id = header(headers, "client-id").ok_or("no Client-Id header")?;
    let time = header(headers, "request-time").ok_or("no Request-Time header")?;
    let signature = header(headers, "signature").ok_or("no Signature header")?;
    let msg = Message {
        method: "POST",
        uri: path,
        client_id,
        time,
        body,
    };
    app.merchant_key
        .verify_header(&msg, signature)
        .map_err(|_| "signature does not verify")?;
    Ok(client_id.to_string())
}

async fn handle(
    State(app): State<Arc<App>>,
    Path(segment): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(op) = Op::from_segment(&segment) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    app.counters.count(op);
    let path = uri.path().to_string();
    let client_id = match verify(&app, &path, &headers, &body) {
        Ok(c) => c,
        Err(why) => {
            app.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?op, why, "sandbox: request refused");
            // The real gateway answers signature errors unsigned.
            let body = ops::failure_body("INVALID_SIGNATURE", Some(why));
            return json_response(body, HeaderMap::new());
        }
    };

    let worker = app.clone();
    let client = client_id.clone();
    let ran = tokio::task::spawn_blocking(move || {
        ops::run(
            op,
            &worker.store,
            &body,
            &client,
            &Now::current(),
            worker.cancel_outage,
        )
    })
    .await;
    let done = match ran {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            tracing::error!(error = %e, ?op, "sandbox: database error");
            unknown()
        }
        Err(e) => {
            tracing::error!(error = %e, ?op, "sandbox: operation panicked");
            unknown()
        }
    };
    if let Some(job) = done.notify {
        app.tracker.spawn(notify::deliver(
            job,
            app.gateway_key.clone(),
            app.http.clone(),
            app.counters.clone(),
            app.token.clone(),
        ));
    }
    match done.reply {
        Reply::Answer { body, signing } => {
            let headers = sign_answer(&app.gateway_key, &path, &client_id, &body, signing);
            json_response(body, headers)
        }
        Reply::NoAnswer => {
            tokio::select! {
                _ = tokio::time::sleep(app.no_answer_stall) => {}
                _ = app.token.cancelled() => {}
            }
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}

fn unknown() -> Done {
    let body = serde_json::to_vec(&serde_json::json!({"result": {
        "resultCode": "UNKNOWN_EXCEPTION",
        "resultStatus": "U",
        "resultMessage": super::scenario::message_for("UNKNOWN_EXCEPTION"),
    }}))
    .expect("a JSON value always serializes");
    Done {
        reply: Reply::Answer {
            body,
            signing: Signing::Good,
        },
        notify: None,
    }
}

/// The `client-id`, `response-time` and `signature` headers of an answer.
fn sign_answer(
    key: &PrivateKey,
    path: &str,
    client_id: &str,
    body: &[u8],
    signing: Signing,
) -> HeaderMap {
    let now = Now::current();
    // Scenario 88: a well-formed signature over other bytes, so only verification catches it.
    let wrong;
    let signed: &[u8] = match signing {
        Signing::Good => body,
        Signing::Wrong => {
            wrong = [body, b" "].concat();
            &wrong
        }
    };
    let signature = key.sign_header(
        "1",
        &Message {
            method: "POST",
            uri: path,
            client_id,
            time: &now.iso,
            body: signed,
        },
    );
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("client-id", client_id),
        ("response-time", now.iso.as_str()),
        ("signature", &signature),
    ] {
        // The client id came in as a valid header value; the time and signature are ASCII.
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    h
}

fn json_response(body: Vec<u8>, mut headers: HeaderMap) -> Response {
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    (StatusCode::OK, headers, body).into_response()
}
