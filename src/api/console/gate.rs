//! The console's gate, shared by the terminal's console and the hub's: the login form and
//! logout, the session check on every page (GET without a session → the login form; POST
//! without the session cookie or its CSRF token → 403, nothing done), and the HTML answer
//! with its strict Content-Security-Policy. The site (which console, which nav links, where
//! its token is configured) is the only thing that differs.

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;

use super::auth::{self, Auth};
use super::views;
use crate::backoffice::MAX_STATEMENT_BYTES;
use crate::config::Secret;
use crate::engine::clock::now_ms;

/// Which console: its name, navigation and where its token is configured.
#[derive(Debug)]
pub struct Site {
    /// Shown in the header and the title.
    pub name: &'static str,
    /// (href, label) of the navigation, shown when logged in.
    pub nav: &'static [(&'static str, &'static str)],
    /// Where the token lives, e.g. "[api] token in config.toml".
    pub token_hint: &'static str,
}

/// The terminal's console.
pub static TERMINAL: Site = Site {
    name: "posd",
    nav: &[
        ("/console", "Today"),
        ("/console/queue", "Queue"),
        ("/console/reconcile", "Reconciliation"),
        ("/console/journal", "Journal"),
    ],
    token_hint: "[api] token in config.toml",
};

/// The largest form a console accepts (a statement upload with its framing).
pub const MAX_FORM_BYTES: usize = MAX_STATEMENT_BYTES + 64 * 1024;

/// The login state of one console.
#[derive(Clone)]
pub struct Gate {
    /// Sessions and CSRF tokens.
    pub auth: Arc<Auth>,
    /// Which console.
    pub site: &'static Site,
}

impl Gate {
    /// A gate for `token` (`None`: the console is off and says how to turn it on).
    pub fn new(token: Option<&Secret>, site: &'static Site) -> Gate {
        Gate {
            auth: Arc::new(Auth::new(token)),
            site,
        }
    }

    /// A page that only says what went wrong.
    pub fn problem(
        &self,
        status: StatusCode,
        csrf: Option<&str>,
        title: &str,
        message: &str,
        back: &str,
    ) -> Response {
        html(
            status,
            views::problem_for(self.site, csrf, title, message, back),
        )
    }

    fn off(&self) -> Response {
        self.problem(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "Console off",
            &format!(
                "The console needs an API token: set {} and restart.",
                self.site.token_hint
            ),
            "/console/login",
        )
    }
}

/// An HTML answer: never cached, a CSP that allows no script at all, no sniffing.
pub fn html(status: StatusCode, m: Markup) -> Response {
    let mut r = (status, Html(m.into_string())).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

/// The logged-in session, put in the request by [`require_session`].
#[derive(Clone)]
pub struct Session {
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

/// GETs need a session cookie (else: to the login form); POSTs need the cookie and the
/// session's CSRF token (else: 403, nothing done).
pub async fn require_session(AxState(g): AxState<Gate>, req: Request, next: Next) -> Response {
    if !g.auth.enabled() {
        return g.off();
    }
    let session = auth::session_cookie(req.headers()).filter(|s| g.auth.session_ok(s, now_ms()));
    let Some(session) = session else {
        if req.method() == axum::http::Method::GET {
            return Redirect::to("/console/login").into_response();
        }
        return g.problem(
            StatusCode::FORBIDDEN,
            None,
            "Not logged in",
            "This action needs a login: log in again and repeat it. Nothing was done.",
            "/console/login",
        );
    };
    let csrf = g.auth.csrf(&session);
    let mut req = req;
    if req.method() == axum::http::Method::POST {
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return g.problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(&csrf),
                    "Too large",
                    "The upload is too large; send fewer files at once.",
                    "/console",
                )
            }
        };
        let given = csrf_of(&parts.headers, &bytes);
        if !g.auth.csrf_ok(&session, given.as_deref().unwrap_or("")) {
            return g.problem(
                StatusCode::FORBIDDEN,
                Some(&csrf),
                "Refused",
                "The form's security token is missing or stale: reload the page and try again. Nothing was done.",
                "/console",
            );
        }
        req = Request::from_parts(parts, axum::body::Body::from(bytes));
    }
    req.extensions_mut().insert(Session { csrf });
    next.run(req).await
}

/// The `csrf` field of a urlencoded or multipart form.
fn csrf_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-www-form-urlencoded") {
        return url::form_urlencoded::parse(body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned());
    }
    if let Some(boundary) = ct.strip_prefix("multipart/form-data").and_then(|rest| {
        rest.split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
    }) {
        let boundary = boundary.trim_matches('"');
        let text = String::from_utf8_lossy(body);
        for part in text.split(&format!("--{boundary}")) {
            let Some((head, value)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            if head.contains("name=\"csrf\"") {
                return Some(value.trim_end_matches("\r\n").trim().to_string());
            }
        }
    }
    None
}

/// Deadline of a console request.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Console requests handled at once.
const MAX_CONCURRENT: usize = 16;

/// A console's routes (their state applied) behind the session check, beside the login
/// routes, with the console's body limit, deadline and concurrency bound: one frame for the
/// terminal's console and the hub's.
pub fn mount(gate: Gate, guarded: Router) -> Router {
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(
        gate.clone(),
        require_session,
    ));
    crate::api::guard::bounded(
        guarded
            .merge(login_routes(gate))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES)),
        TIMEOUT,
        MAX_CONCURRENT,
    )
}

/// `/console/login` (GET the form, POST the token): the one route not behind the session
/// check. `/console/logout` ([`logout`]) goes behind it like every other POST.
pub fn login_routes(gate: Gate) -> Router {
    Router::new()
        .route("/console/login", get(login_page).post(login))
        .with_state(gate)
}

async fn login_page(AxState(g): AxState<Gate>) -> Response {
    if !g.auth.enabled() {
        return g.off();
    }
    html(StatusCode::OK, views::login_for(g.site, None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(AxState(g): AxState<Gate>, Form(f): Form<LoginForm>) -> Response {
    if !g.auth.token_ok(&f.token) {
        tracing::warn!(console = g.site.name, "console login refused: wrong token");
        return html(
            StatusCode::UNAUTHORIZED,
            views::login_for(
                g.site,
                Some(&format!(
                    "That is not the API token. Check {}.",
                    g.site.token_hint
                )),
            ),
        );
    }
    let session = g.auth.new_session(now_ms());
    let mut r = Redirect::to("/console").into_response();
    if let Ok(v) = header::HeaderValue::from_str(&auth::set_cookie(&session)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /console/logout`: clears the cookie.
pub async fn logout() -> Response {
    let mut r = Redirect::to("/console/login").into_response();
    if let Ok(v) = header::HeaderValue::from_str(&auth::clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A redirect to `path` carrying a notice for the page to show.
pub fn back_with(path: &str, notice: &str) -> Response {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("notice", notice)
        .finish();
    Redirect::to(&format!("{path}?{q}")).into_response()
}

/// `?notice=` of a page.
#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    /// What the last action did.
    pub notice: Option<String>,
}
