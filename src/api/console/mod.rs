//! The web console on the `[api]` listener (`/console`): server-rendered pages for the store
//! manager — today, a payment, the queue, reconciliation, the journal — behind the API token
//! (a login form that sets an HttpOnly, Secure, SameSite=Strict session cookie) with a CSRF
//! token on every action. Every action calls what the CLI and the JSON API call: the engine's
//! refund, the back office's resolve and reconcile, the queue's replayer, the print journal.

pub mod auth;
pub mod gate;
pub mod uploads;
pub mod views;

use axum::extract::{Multipart, Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::TimeZone;
use serde::Deserialize;

use crate::api::journal::{self, JournalRowJson};
use crate::api::queue::{DepthJson, QueueItemJson};
use crate::api::resource;
use crate::backoffice::reconcile::matcher::Report;
use crate::backoffice::{reconcile_uploads, resolve, BackOffice};
use crate::config::Secret;
use crate::domain::machine::State;
use crate::domain::money::Amount;
use crate::engine::clock::now_ms;
use crate::engine::EngineError;
use crate::store;
use gate::{back_with, html, Gate, NoticeQuery, Session};
use uploads::Uploads;

#[derive(Clone)]
struct Console {
    bo: BackOffice,
    uploads: Uploads,
}

/// The console's routes, with their own login (they are not behind the bearer token: a
/// browser cannot send one).
pub fn router(bo: BackOffice, token: Option<&Secret>) -> Router {
    let c = Console {
        bo,
        uploads: Uploads::default(),
    };
    let gate = Gate::new(token, &gate::TERMINAL);
    let guarded = Router::new()
        .route("/console", get(today))
        .route("/console/payments/{id}", get(payment))
        .route("/console/payments/{id}/refund", post(refund))
        .route("/console/payments/{id}/resolve", post(resolve_form))
        .route("/console/payments/{id}/reprint", post(reprint))
        .route("/console/queue", get(queue))
        .route("/console/queue/replay", post(replay))
        .route("/console/queue/{id}/abandon", post(abandon))
        .route(
            "/console/reconcile",
            get(reconcile_page).post(reconcile_upload),
        )
        .route("/console/reconcile/apply", post(reconcile_apply))
        .route("/console/journal", get(journal_page))
        .route("/console/journal/download", get(journal_download))
        .route("/console/logout", post(gate::logout))
        .with_state(c);
    gate::mount(gate, guarded)
}

fn engine_problem(s: &Session, e: EngineError, back: &str) -> Response {
    let status = match &e {
        EngineError::NotFound(_) => StatusCode::NOT_FOUND,
        EngineError::Conflict(_) => StatusCode::CONFLICT,
        EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
        EngineError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::Internal(err) => {
            tracing::error!(error = %err, "console: internal error");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    html(
        status,
        views::problem(Some(&s.csrf), "Refused", &e.to_string(), back),
    )
}

async fn today(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let who = c.bo.identity().clone();
    let now = chrono::Utc::now();
    let local = crate::engine::local_time(who.timezone, now);
    let since = journal::parse_since(None, who.timezone, now).unwrap_or(0);
    let data =
        c.bo.engine()
            .store()
            .read(move |conn| {
                let (rows, _) = store::journal::with_unknown_notifications(conn, since, i64::MAX)?;
                let attention = store::journal::payments_in_state(conn, "NEEDS_ATTENTION", 200)?;
                let open = store::payments::open_payments(conn)?;
                let items = store::queue::list(conn, false)?;
                let depth = store::queue::depth(conn)?;
                Ok((rows, attention, open, items, depth))
            })
            .await;
    let (rows, attention, open, items, depth) = match data {
        Ok(d) => d,
        Err(e) => return engine_problem(&s, EngineError::Internal(e), "/console"),
    };
    let json = |r: &store::journal::JournalRow| JournalRowJson::new(r, &who);
    let today_payments: Vec<&store::journal::JournalRow> = rows
        .iter()
        .filter(|r| r.record_type == "PAYMENT" && r.created_at >= since)
        .collect();
    let mut totals: std::collections::BTreeMap<(String, String), (usize, i64, u8)> =
        Default::default();
    let chart_currency = today_payments
        .first()
        .map(|r| r.amount.currency())
        .unwrap_or_else(|| c.bo.currency());
    let mut hourly = [0i64; 24];
    let mut hourly_count = [0usize; 24];
    for r in &today_payments {
        let e = totals
            .entry((r.state.clone(), r.amount.currency().code().to_string()))
            .or_insert((0, 0, r.amount.currency().exponent()));
        e.0 += 1;
        e.1 += r.amount.minor();
        let paid = matches!(
            State::parse(&r.state),
            Some(State::Succeeded | State::PartiallyRefunded | State::Refunded)
        );
        if paid && r.amount.currency() == chart_currency {
            let t = chrono::Utc
                .timestamp_millis_opt(r.created_at)
                .single()
                .unwrap_or_default();
            let h = crate::engine::local_time(who.timezone, t)
                .format("%H")
                .to_string();
            let h: usize = h.parse().unwrap_or(0).min(23);
            hourly[h] += r.amount.minor();
            hourly_count[h] += 1;
        }
    }
    let totals = totals
        .into_iter()
        .map(|((state, cur), (count, minor, _))| views::Total {
            total: crate::domain::money::Currency::from_code(&cur)
                .ok()
                .and_then(|c| Amount::from_minor(minor, c).ok())
                .map(|a| a.to_decimal())
                .unwrap_or_else(|| minor.to_string()),
            state,
            currency: cur,
            count,
        })
        .collect();
    let now_ms = now_ms();
    let oldest = items
        .iter()
        .find(|i| i.status == store::queue::ItemStatus::Pending)
        .map(|i| QueueItemJson::new(i, now_ms));
    let open_json: Vec<JournalRowJson> = open
        .iter()
        .map(|p| JournalRowJson {
            state: p.state.as_str().into(),
            ..json(&store::journal::JournalRow {
                record_type: "PAYMENT",
                payment_request_id: p.payment_request_id.clone(),
                payment_id: p.payment_id.clone(),
                refund_request_id: None,
                refund_id: None,
                order_ref: p.order_ref.clone(),
                kind: "SALE".into(),
                amount: p.amount,
                state: p.state.as_str().into(),
                result_code: p.result_code.clone(),
                gateway_time: None,
                ever_succeeded: false,
                attention_reason: None,
                created_at: p.created_at,
                updated_at: p.updated_at,
            })
        })
        .collect();
    let mut recent: Vec<JournalRowJson> = today_payments.iter().map(|r| json(r)).collect();
    recent.reverse();
    recent.truncate(200);
    let t = views::Today {
        date: local.format("%Y-%m-%d").to_string(),
        attention: attention
            .iter()
            .map(|r| (json(r), r.attention_reason.clone().unwrap_or_default()))
            .collect(),
        totals,
        hourly,
        hourly_count,
        chart_currency: chart_currency.code().into(),
        chart_exponent: chart_currency.exponent(),
        open: open_json,
        recent,
        depth: DepthJson::new(&depth, now_ms),
        oldest,
    };
    html(
        StatusCode::OK,
        views::today(&s.csrf, q.notice.as_deref(), &t),
    )
}

async fn payment(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let engine = c.bo.engine();
    let v = match engine.view(&id).await {
        Ok(v) => v,
        Err(e) => return engine_problem(&s, e, "/console"),
    };
    match resource(engine, v).await {
        Ok(p) => html(
            StatusCode::OK,
            views::payment(&s.csrf, q.notice.as_deref(), &p),
        ),
        Err(_) => engine_problem(
            &s,
            EngineError::Internal(anyhow::anyhow!("cannot read the payment's refunds")),
            "/console",
        ),
    }
}

#[derive(Deserialize)]
struct RefundForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
}

async fn refund(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<RefundForm>,
) -> Response {
    let back = format!("/console/payments/{id}");
    let engine = c.bo.engine();
    let payment = match engine.view(&id).await {
        Ok(v) => v.payment,
        Err(e) => return engine_problem(&s, e, "/console"),
    };
    let amount = match f.amount.trim() {
        "" => None,
        a => match Amount::parse(a, payment.amount.currency()) {
            Ok(a) => Some(a),
            Err(e) => {
                return engine_problem(
                    &s,
                    EngineError::Invalid(format!(
                    "{e}; give the refund in {} like 5.00, or leave it empty to refund the rest",
                    payment.amount.currency().code()
                )),
                    &back,
                )
            }
        },
    };
    let reason = Some(f.reason).filter(|r| !r.trim().is_empty());
    match engine.refund(&id, amount, reason).await {
        Ok(_) => back_with(&back, "Refund requested; it is sent to the gateway now."),
        Err(e) => engine_problem(&s, e, &back),
    }
}

#[derive(Deserialize)]
struct ResolveForm {
    #[serde(rename = "as")]
    outcome: String,
    #[serde(default)]
    reason: String,
}

async fn resolve_form(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<ResolveForm>,
) -> Response {
    let back = format!("/console/payments/{id}");
    let to = match resolve::parse_outcome(&f.outcome) {
        Ok(t) => t,
        Err(e) => return engine_problem(&s, e, &back),
    };
    match resolve::resolve(c.bo.engine(), &id, to, &f.reason).await {
        Ok(p) => back_with(&back, &format!("Resolved as {}.", p.state)),
        Err(e) => engine_problem(&s, e, &back),
    }
}

async fn reprint(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let back = format!("/console/payments/{id}");
    let engine = c.bo.engine();
    let pid = id.clone();
    // The same print-journal call as `POST /v1/payments/{id}/receipt`.
    match engine
        .store()
        .call(move |conn| Ok(store::print_journal::reprint(conn, &pid)?))
        .await
    {
        Ok(Some(_)) => {
            engine.slips_written().notify_one();
            back_with(&back, "A copy of the slip is queued for printing.")
        }
        Ok(None) => engine_problem(
            &s,
            EngineError::Conflict(format!(
                "no slip for payment {id}: it has not reached a state that prints one"
            )),
            &back,
        ),
        Err(e) => engine_problem(&s, EngineError::Internal(e), &back),
    }
}

async fn queue(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let data =
        c.bo.engine()
            .store()
            .read(|conn| Ok((store::queue::list(conn, true)?, store::queue::depth(conn)?)))
            .await;
    match data {
        Ok((items, depth)) => {
            let now = now_ms();
            let mut items: Vec<QueueItemJson> =
                items.iter().map(|i| QueueItemJson::new(i, now)).collect();
            items.reverse();
            items.truncate(500);
            html(
                StatusCode::OK,
                views::queue(
                    &s.csrf,
                    q.notice.as_deref(),
                    &items,
                    &DepthJson::new(&depth, now),
                ),
            )
        }
        Err(e) => engine_problem(&s, EngineError::Internal(e), "/console"),
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    id: Option<String>,
}

async fn replay(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Form(f): Form<ReplayForm>,
) -> Response {
    let Some(r) = c.bo.engine().replayer() else {
        return engine_problem(
            &s,
            EngineError::Conflict(
                "the queue worker is not running in this daemon; restart posd".into(),
            ),
            "/console/queue",
        );
    };
    let id = f.id.as_deref().map(str::trim).filter(|i| !i.is_empty());
    let reports = match id {
        Some(i) => match i.parse::<i64>() {
            Ok(i) => r
                .replay_item(i)
                .await
                .map(|x| vec![x])
                .map_err(|e| e.to_string()),
            Err(_) => Err(format!("queue item {i:?} is not a number")),
        },
        None => r.replay_all().await.map_err(|e| format!("{e:#}")),
    };
    match reports {
        Ok(rs) if rs.is_empty() => back_with("/console/queue", "Nothing was due for replay."),
        Ok(rs) => {
            let text: Vec<String> = rs
                .iter()
                .map(|x| format!("item {}: {} ({})", x.id, x.outcome.as_str(), x.detail))
                .collect();
            back_with("/console/queue", &format!("Replayed: {}", text.join("; ")))
        }
        Err(m) => engine_problem(&s, EngineError::Conflict(m), "/console/queue"),
    }
}

#[derive(Deserialize)]
struct AbandonForm {
    #[serde(default)]
    reason: String,
}

async fn abandon(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<i64>,
    Form(f): Form<AbandonForm>,
) -> Response {
    let Some(r) = c.bo.engine().replayer() else {
        return engine_problem(
            &s,
            EngineError::Conflict(
                "the queue worker is not running in this daemon; restart posd".into(),
            ),
            "/console/queue",
        );
    };
    match r.abandon(id, &f.reason).await {
        Ok(x) => back_with(
            "/console/queue",
            &format!(
                "Item {} abandoned; payment {} needs attention.",
                x.id, x.payment_request_id
            ),
        ),
        Err(e) => engine_problem(&s, EngineError::Conflict(e.to_string()), "/console/queue"),
    }
}

async fn reconcile_page(axum::Extension(s): axum::Extension<Session>) -> Response {
    html(StatusCode::OK, views::reconcile(&s.csrf, None, None))
}

fn show_report(
    c: &Console,
    s: &Session,
    upload: &str,
    result: Result<Report, crate::api::ApiError>,
) -> Response {
    let _ = c;
    match result {
        Ok(r) => html(
            StatusCode::OK,
            views::reconcile(&s.csrf, Some((upload, &r)), None),
        ),
        Err(e) => html(
            StatusCode::BAD_REQUEST,
            views::reconcile(&s.csrf, None, Some(e.message())),
        ),
    }
}

async fn reconcile_upload(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    mut form: Multipart,
) -> Response {
    let files = match uploads::read_files(&mut form).await {
        Ok(files) => files,
        Err(why) => {
            return html(
                StatusCode::BAD_REQUEST,
                views::reconcile(&s.csrf, None, Some(&why)),
            )
        }
    };
    let result = reconcile_uploads(&c.bo, files.clone(), false).await;
    let upload = match &result {
        Ok(_) => c.uploads.keep(files),
        Err(_) => String::new(),
    };
    show_report(&c, &s, &upload, result)
}

#[derive(Deserialize)]
struct ApplyForm {
    upload: String,
}

async fn reconcile_apply(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Form(f): Form<ApplyForm>,
) -> Response {
    let Some(files) = c.uploads.get(&f.upload) else {
        return html(
            StatusCode::CONFLICT,
            views::reconcile(
                &s.csrf,
                None,
                Some("That upload is no longer kept: upload the files again, then apply."),
            ),
        );
    };
    let result = reconcile_uploads(&c.bo, files, true).await;
    show_report(&c, &s, &f.upload, result)
}

async fn journal_page(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
) -> Response {
    let today = crate::engine::local_time(c.bo.identity().timezone, chrono::Utc::now())
        .format("%Y-%m-%d")
        .to_string();
    html(StatusCode::OK, views::journal(&s.csrf, &today))
}

#[derive(Deserialize)]
struct DownloadQuery {
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

async fn journal_download(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<DownloadQuery>,
) -> Response {
    match journal::answer(
        c.bo.engine(),
        c.bo.identity(),
        q.since.as_deref(),
        q.until.as_deref().filter(|u| !u.is_empty()),
        q.format.as_deref(),
        true,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => html(
            StatusCode::BAD_REQUEST,
            views::problem(Some(&s.csrf), "Refused", e.message(), "/console/journal"),
        ),
    }
}
