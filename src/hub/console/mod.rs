//! The estate console on the hub's `[api]` listener (`/console`): today across terminals, the
//! terminals with when they were last seen, a payment's journal, the hub's queue (replay,
//! abandon with reason), reconciliation (upload → report → apply) and the journal download.
//! Behind the hub's API token through the terminal console's gate (login form, signed
//! HttpOnly/Secure/SameSite=Strict cookie, CSRF on every POST, strict CSP). Every action
//! calls what `posd hub` calls: [`queue`] for the queue, [`crate::hub::reconcile`] for
//! reconciliation.

pub mod data;
pub mod queue;
pub mod views;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Multipart, Path, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::NaiveDate;
use serde::Deserialize;

use super::reconcile::{run_uploads, HubReconcileError, HubScope};
use super::service::Hub;
use crate::api::console::gate::{self, back_with, html, Gate, NoticeQuery, Session};
use crate::api::console::uploads::{self, Uploads};
use crate::api::console::views::reconcile_for;
use crate::backoffice::reconcile::matcher::Report;
use crate::config::Secret;
use crate::domain::money::Currency;

/// What the reconciliation page says it matches against.
const AGAINST: &str = "The hub matches every row against its record of every terminal.";

#[derive(Clone)]
struct Console {
    hub: Arc<Hub>,
    gate: Gate,
    uploads: Uploads,
}

/// The console's routes (their own login: a browser cannot send the bearer token).
pub fn router(hub: Arc<Hub>, token: Option<&Secret>) -> Router {
    let gate = Gate::new(token, &views::HUB);
    let c = Console {
        hub,
        gate: gate.clone(),
        uploads: Uploads::default(),
    };
    let guarded = Router::new()
        .route("/console", get(today))
        .route("/console/terminals", get(terminals))
        .route("/console/payments/{id}", get(payment))
        .route("/console/queue", get(queue_page))
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

fn failed(c: &Console, s: &Session, status: StatusCode, message: &str, back: &str) -> Response {
    c.gate
        .problem(status, Some(&s.csrf), "Refused", message, back)
}

fn internal(c: &Console, s: &Session, e: anyhow::Error, back: &str) -> Response {
    tracing::error!(error = %format!("{e:#}"), "hub console: internal error");
    failed(
        c,
        s,
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("The hub could not read or write its database ({e:#}); try again."),
        back,
    )
}

fn add(totals: &mut BTreeMap<(String, String), (usize, i64)>, key: &str, cur: &str, minor: i64) {
    let e = totals
        .entry((key.to_string(), cur.to_string()))
        .or_default();
    e.0 += 1;
    e.1 += minor;
}

fn to_totals(m: BTreeMap<(String, String), (usize, i64)>) -> Vec<views::Total> {
    m.into_iter()
        .map(|((key, currency), (count, minor))| views::Total {
            total: data::decimal(minor, &currency),
            key,
            currency,
            count,
        })
        .collect()
}

const PAID: [&str; 3] = ["SUCCEEDED", "PARTIALLY_REFUNDED", "REFUNDED"];

async fn today(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let day = data::today();
    let since = data::day_start_ms(day);
    let pool = &c.hub.pool;
    let read = async {
        let until = data::day_start_ms(day + chrono::Duration::days(1));
        let recent = data::payments_between(pool, since, until, 5000).await?;
        let attention = data::payments_in(pool, &["NEEDS_ATTENTION"], 200).await?;
        let open = data::payments_in(pool, &["RECEIVED", "CANCELLING", "REFUNDING"], 200).await?;
        let client = pool.get().await?;
        let stats = super::queue::stats(&**client).await?;
        anyhow::Ok((recent, attention, open, stats))
    };
    let (recent, attention, open, (depth, oldest, dead)) = match read.await {
        Ok(x) => x,
        Err(e) => return internal(&c, &s, e, "/console"),
    };
    let mut by_state = BTreeMap::new();
    let mut by_store = BTreeMap::new();
    let chart_currency = recent
        .iter()
        .find_map(|p| p.currency.clone())
        .unwrap_or_else(|| "CNY".into());
    let mut hourly = [0i64; 24];
    let mut hourly_count = [0usize; 24];
    for p in &recent {
        let (Some(minor), Some(cur)) = (p.amount_minor, p.currency.as_deref()) else {
            continue;
        };
        add(&mut by_state, &p.state, cur, minor);
        if PAID.contains(&p.state.as_str()) {
            add(&mut by_store, &p.store_id, cur, minor);
            if cur == chart_currency {
                let h: usize = data::show_time(p.received_ms)
                    .get(11..13)
                    .and_then(|h| h.parse().ok())
                    .unwrap_or(0usize)
                    .min(23);
                hourly[h] += minor;
                hourly_count[h] += 1;
            }
        }
    }
    let t = views::Today {
        date: day.to_string(),
        attention,
        by_state: to_totals(by_state),
        by_store: to_totals(by_store),
        hourly,
        hourly_count,
        chart_exponent: Currency::from_code(&chart_currency)
            .map(|c| c.exponent())
            .unwrap_or(2),
        chart_currency,
        open,
        recent: recent.into_iter().take(200).collect(),
        queue: (depth, oldest.as_secs(), dead),
    };
    html(
        StatusCode::OK,
        views::today(&s.csrf, q.notice.as_deref(), &t),
    )
}

async fn terminals(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
) -> Response {
    match data::terminals(&c.hub.pool).await {
        Ok(rows) => html(StatusCode::OK, views::terminals(&s.csrf, &rows)),
        Err(e) => internal(&c, &s, e, "/console"),
    }
}

async fn payment(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let pool = &c.hub.pool;
    let read = async {
        let Some(p) = data::payment(pool, &id).await? else {
            return anyhow::Ok(None);
        };
        let events = data::events(pool, &id).await?;
        let refunds = data::refunds(pool, &id).await?;
        let items = data::queue(pool, Some(&id), 100).await?;
        anyhow::Ok(Some((p, events, refunds, items)))
    };
    match read.await {
        Ok(Some((p, events, refunds, items))) => html(
            StatusCode::OK,
            views::payment(&s.csrf, &p, &events, &refunds, &items),
        ),
        Ok(None) => failed(
            &c,
            &s,
            StatusCode::NOT_FOUND,
            &format!("The hub has no payment {id}."),
            "/console",
        ),
        Err(e) => internal(&c, &s, e, "/console"),
    }
}

async fn queue_page(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let read = async {
        let items = data::queue(&c.hub.pool, None, 500).await?;
        let client = c.hub.pool.get().await?;
        let (depth, oldest, dead) = super::queue::stats(&**client).await?;
        anyhow::Ok((items, (depth, oldest.as_secs(), dead)))
    };
    match read.await {
        Ok((items, stats)) => html(
            StatusCode::OK,
            views::queue(&s.csrf, q.notice.as_deref(), &items, stats),
        ),
        Err(e) => internal(&c, &s, e, "/console"),
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
    let id = f.id.as_deref().map(str::trim).filter(|i| !i.is_empty());
    let result = match id {
        Some(i) => match i.parse::<i64>() {
            Ok(i) => queue::replay_item(&c.hub, i).await.map(|x| vec![x]),
            Err(_) => Err(anyhow::anyhow!("queue item {i:?} is not a number")),
        },
        None => queue::replay_all(&c.hub).await,
    };
    match result {
        Ok(rs) if rs.is_empty() => back_with("/console/queue", "Nothing was pending."),
        Ok(rs) => {
            let text: Vec<String> = rs
                .iter()
                .map(|x| format!("item {}: {}", x.id, x.outcome))
                .collect();
            back_with("/console/queue", &format!("Replayed: {}", text.join("; ")))
        }
        Err(e) => failed(
            &c,
            &s,
            StatusCode::CONFLICT,
            &format!("{e:#}"),
            "/console/queue",
        ),
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
    match queue::abandon(&c.hub, id, &f.reason).await {
        Ok(pid) => back_with(
            "/console/queue",
            &format!("Item {id} abandoned; payment {pid} needs attention."),
        ),
        Err(e) => failed(
            &c,
            &s,
            StatusCode::CONFLICT,
            &format!("{e:#}"),
            "/console/queue",
        ),
    }
}

async fn reconcile_page(axum::Extension(s): axum::Extension<Session>) -> Response {
    html(
        StatusCode::OK,
        reconcile_for(&views::HUB, AGAINST, &s.csrf, None, None),
    )
}

fn show_report(
    c: &Console,
    s: &Session,
    upload: &str,
    result: Result<Report, HubReconcileError>,
) -> Response {
    match result {
        Ok(r) => html(
            StatusCode::OK,
            reconcile_for(&views::HUB, AGAINST, &s.csrf, Some((upload, &r)), None),
        ),
        Err(HubReconcileError::Usage(m)) => html(
            StatusCode::BAD_REQUEST,
            reconcile_for(&views::HUB, AGAINST, &s.csrf, None, Some(&m)),
        ),
        Err(HubReconcileError::Internal(e)) => internal(c, s, e, "/console/reconcile"),
    }
}

async fn reconcile_upload(
    AxState(c): AxState<Console>,
    axum::Extension(s): axum::Extension<Session>,
    mut form: Multipart,
) -> Response {
    let files = match uploads::read_files(&mut form).await {
        Ok(files) => files,
        Err(why) => return show_report(&c, &s, "", Err(HubReconcileError::Usage(why))),
    };
    let result = run_uploads(
        &c.hub.pool,
        &c.hub.instance,
        &files,
        &HubScope::default(),
        false,
    )
    .await;
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
        return show_report(
            &c,
            &s,
            "",
            Err(HubReconcileError::Usage(
                "That upload is no longer kept: upload the files again, then apply.".into(),
            )),
        );
    };
    let result = run_uploads(
        &c.hub.pool,
        &c.hub.instance,
        &files,
        &HubScope::default(),
        true,
    )
    .await;
    show_report(&c, &s, &f.upload, result)
}

async fn journal_page(axum::Extension(s): axum::Extension<Session>) -> Response {
    html(
        StatusCode::OK,
        views::journal(&s.csrf, &data::today().to_string()),
    )
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
    let back = "/console/journal";
    let date = |v: Option<&str>, what: &str| -> Result<NaiveDate, String> {
        match v.map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(data::today()),
            Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map_err(|_| format!("{what} {v:?} is not a date: give it as YYYY-MM-DD")),
        }
    };
    let (since, until) = match (
        date(q.since.as_deref(), "from"),
        date(q.until.as_deref(), "to"),
    ) {
        (Ok(a), Ok(b)) if a <= b => (a, b),
        (Ok(a), Ok(b)) => {
            return failed(
                &c,
                &s,
                StatusCode::BAD_REQUEST,
                &format!("from {a} is after to {b}: swap them"),
                back,
            )
        }
        (Err(m), _) | (_, Err(m)) => return failed(&c, &s, StatusCode::BAD_REQUEST, &m, back),
    };
    if (until - since).num_days() > 366 {
        return failed(
            &c,
            &s,
            StatusCode::BAD_REQUEST,
            "at most a year at once: download it in parts",
            back,
        );
    }
    let json = match q.format.as_deref().unwrap_or("csv") {
        "csv" => false,
        "json" => true,
        other => {
            return failed(
                &c,
                &s,
                StatusCode::BAD_REQUEST,
                &format!("format {other:?}: choose csv or json"),
                back,
            )
        }
    };
    let rows = match data::journal(&c.hub.pool, since, until).await {
        Ok(r) => r,
        Err(e) => return internal(&c, &s, e, back),
    };
    let (body, ct, ext) = if json {
        (
            serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into()),
            "application/json",
            "json",
        )
    } else {
        (data::journal_csv(&rows), "text/csv; charset=utf-8", "csv")
    };
    let name = format!("hub_journal_{since}_{until}.{ext}");
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}
