//! One error shape on every listener: any 4xx/5xx reply that is not already JSON (axum's
//! own rejections — unknown route, wrong method, an undecodable path segment or query, a body
//! over the limit — and plain-text errors) is rewritten to `{"error":{"code","message"}}`,
//! keeping its status and headers (`Allow`, `WWW-Authenticate`). HTML pages pass untouched,
//! and so does a reply marked [`Verbatim`]: a body a protocol fixes.

use axum::body::to_bytes;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

/// The largest plain-text error body carried into the JSON message.
const MAX_TEXT: usize = 2048;

/// The stable `error.code` for a status with no handler-chosen code.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::TOO_MANY_REQUESTS => "busy",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

/// `{"error":{"code","message"}}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Marks a reply whose body a protocol fixes (a mainland notification's `fail`, which Alipay
/// reads as it is): the rewrite leaves it untouched, whatever its status.
#[derive(Debug, Clone, Copy)]
pub struct Verbatim;

/// Adds the rewrite to every route of `router` (and to its fallback).
pub fn json_errors(router: Router) -> Router {
    router.layer(middleware::from_fn(rewrite))
}

async fn rewrite(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<Verbatim>().is_some()
    {
        return resp;
    }
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.starts_with("application/json") || ct.starts_with("text/html") {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = to_bytes(body, MAX_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = explain(status, &method, &path, text);
    let mut out = error(status, code_for(status), &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

/// A message that says what was wrong and what to do.
fn explain(status: StatusCode, method: &Method, path: &str, text: String) -> String {
    let shown: String = path.chars().take(200).collect();
    match status {
        StatusCode::NOT_FOUND if text.is_empty() => {
            format!("no route {method} {shown}; the routes are listed in README.md, \"HTTP API\"")
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {shown}; the Allow header lists what is")
        }
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
        StatusCode::BAD_REQUEST => {
            format!("{text}; check the path's id and the query parameters (each given once)")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn call(app: Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let resp = app
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn plain_errors_become_json_and_json_errors_stay() {
        let app = json_errors(
            Router::new()
                .route("/plain", get(|| async { (StatusCode::CONFLICT, "taken") }))
                .route(
                    "/json",
                    get(|| async { error(StatusCode::CONFLICT, "mine", "kept") }),
                )
                .route(
                    "/verbatim",
                    get(|| async {
                        let mut r = (StatusCode::BAD_REQUEST, "fail").into_response();
                        r.extensions_mut().insert(Verbatim);
                        r
                    }),
                ),
        );
        let (s, v) = call(app.clone(), "GET", "/plain").await;
        assert_eq!(s, StatusCode::CONFLICT);
        assert_eq!(v["error"]["code"], "conflict");
        assert_eq!(v["error"]["message"], "taken");
        let (_, v) = call(app.clone(), "GET", "/json").await;
        assert_eq!(v["error"]["code"], "mine");
        let (s, v) = call(app.clone(), "GET", "/nowhere").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["error"]["message"].as_str().unwrap().contains("/nowhere"));
        let (s, v) = call(app.clone(), "DELETE", "/json").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(v["error"]["code"], "method_not_allowed");
        // A body a protocol fixes is left as it is.
        let resp = app
            .oneshot(Request::get("/verbatim").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(to_bytes(resp.into_body(), 64).await.unwrap(), "fail");
    }
}
