//! The back office: reconciliation against the gateway's statement ([`reconcile`]), resolving
//! what needs a human ([`resolve`]), and their JSON routes (`POST /v1/reconcile`, `POST
//! /v1/payments/{id}/resolve`, `GET /v1/journal`). The web console (`api::console`) and the
//! CLI call the same functions; every change goes through the engine's transition path.

pub mod reconcile;
pub mod resolve;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State as AxState};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::journal::JournalIdentity;
use crate::api::wire::PaymentJson;
use crate::api::{resource, ApiError};
use crate::config::Config;
use crate::domain::money::Currency;
use crate::engine::Engine;
use reconcile::matcher::Report;

/// The largest statement upload read (all files of one run together).
pub const MAX_STATEMENT_BYTES: usize = 32 * 1024 * 1024;

/// The routes that take statement files (the JSON API's and the console's upload).
pub const UPLOAD_PATHS: [&str; 2] = ["/v1/reconcile", "/console/reconcile"];

/// The body limit of a request to `path`: statement uploads may be large, everything else
/// keeps `default`.
pub fn body_limit(path: &str, default: usize) -> usize {
    if UPLOAD_PATHS.contains(&path) {
        // JSON escaping and multipart framing add to the files' own size.
        default.max(MAX_STATEMENT_BYTES * 2)
    } else {
        default
    }
}

/// What the back-office routes and the console share.
#[derive(Clone)]
pub struct BackOffice {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    identity: JournalIdentity,
    currency: Currency,
}

impl BackOffice {
    /// A back office over `engine` for the terminal `identity` selling in `currency`.
    pub fn new(engine: Engine, identity: JournalIdentity, currency: Currency) -> BackOffice {
        BackOffice {
            inner: Arc::new(Inner {
                engine,
                identity,
                currency,
            }),
        }
    }

    /// From the config: the terminal's identity, zone and currency.
    pub fn from_config(cfg: &Config, engine: Engine) -> BackOffice {
        BackOffice::new(engine, identity(cfg), cfg.currency())
    }

    /// The terminal's currency.
    pub fn currency(&self) -> Currency {
        self.inner.currency
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Who writes the journal.
    pub fn identity(&self) -> &JournalIdentity {
        &self.inner.identity
    }

    /// The JSON routes; they go behind the API's token like every other route.
    pub fn api_routes(&self) -> Router {
        Router::new()
            .route("/v1/reconcile", post(post_reconcile))
            .layer(DefaultBodyLimit::max(MAX_STATEMENT_BYTES * 2))
            .route("/v1/payments/{id}/resolve", post(post_resolve))
            .merge(crate::api::journal::routes())
            .with_state(self.clone())
    }
}

/// The terminal's identity in the journal.
pub fn identity(cfg: &Config) -> JournalIdentity {
    JournalIdentity {
        terminal_id: cfg.terminal.id.clone(),
        store_id: cfg.terminal.store_id.clone(),
        timezone: cfg.timezone(),
    }
}

/// One statement file in a `POST /v1/reconcile` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementUpload {
    /// The file's name (its day is read from `transactionItems_<YYYYMMDD>_<seq>.csv`).
    pub name: String,
    /// Its text.
    pub content: String,
}

/// `POST /v1/reconcile` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileRequest {
    /// The statement files of one run.
    pub files: Vec<StatementUpload>,
    /// Queue the full refund of every critical row.
    #[serde(default)]
    pub apply: bool,
}

/// Parses and reconciles uploaded files: a malformed file is a 400 naming the file and line,
/// and nothing is changed.
pub async fn reconcile_uploads(
    bo: &BackOffice,
    files: Vec<(String, Vec<u8>)>,
    apply: bool,
) -> Result<Report, ApiError> {
    if files.is_empty() {
        return Err(ApiError::bad(
            "no_statement",
            "give at least one transactionItems_<YYYYMMDD>_<seq>.csv file",
        ));
    }
    let parsed = reconcile::parse_all(&files)
        .map_err(|e| ApiError::bad("malformed_statement", format!("{e}; nothing was changed")))?;
    Ok(reconcile::run(bo.engine(), bo.identity(), parsed, apply).await?)
}

async fn post_reconcile(
    AxState(bo): AxState<BackOffice>,
    body: Result<Json<ReconcileRequest>, JsonRejection>,
) -> Result<Json<Report>, ApiError> {
    let Json(req) = body?;
    let files = req
        .files
        .into_iter()
        .map(|f| (f.name, f.content.into_bytes()))
        .collect();
    Ok(Json(reconcile_uploads(&bo, files, req.apply).await?))
}

/// `POST /v1/payments/{id}/resolve` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `SUCCEEDED`, `FAILED`, `CANCELLED` or `REFUNDED`.
    #[serde(rename = "as")]
    pub outcome: String,
    /// What the operator checked (required).
    pub reason: String,
}

async fn post_resolve(
    AxState(bo): AxState<BackOffice>,
    Path(id): Path<String>,
    body: Result<Json<ResolveRequest>, JsonRejection>,
) -> Result<Json<PaymentJson>, ApiError> {
    let Json(req) = body?;
    let to = resolve::parse_outcome(&req.outcome)?;
    resolve::resolve(bo.engine(), &id, to, &req.reason).await?;
    let v = bo.engine().view(&id).await?;
    Ok(Json(resource(bo.engine(), v).await?))
}
