//! `posd hub run`: the listeners (terminal-facing AMS paths over TLS, the upstream's
//! notifications, `/healthz`, `/metrics` and the console), the background worker, start-up
//! (database, migrations under the advisory lock, keys) and shutdown.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::config::HubConfig;
use super::metrics::HubMetrics;
use super::service::{Hub, HubRules, Reply, RequestHeaders};
use super::upstream::Upstream;
use super::worker::{self, WorkerRules};
use super::{db, notify};
use crate::gateway::client::Operation;
use crate::gateway::sign::PrivateKey;

/// Largest terminal request body (AMS requests are a few kilobytes).
const MAX_BODY: usize = 64 * 1024;

fn operation(segment: &str) -> Option<Operation> {
    Some(match segment {
        "pay" => Operation::Pay,
        "inquiryPayment" => Operation::InquiryPayment,
        "cancel" => Operation::Cancel,
        "refund" => Operation::Refund,
        "inquiryRefund" => Operation::InquiryRefund,
        _ => return None,
    })
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The terminal-facing router: both AMS path forms, POST only.
pub fn terminal_router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/ams/api/v1/payments/{op}", post(handle))
        .route("/ams/sandbox/api/v1/payments/{op}", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(hub)
}

async fn handle(
    State(hub): State<Arc<Hub>>,
    UrlPath(segment): UrlPath<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(op) = operation(&segment) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = uri.path().to_string();
    let h = RequestHeaders {
        client_id: header(&headers, "client-id"),
        request_time: header(&headers, "request-time"),
        signature: header(&headers, "signature"),
    };
    let reply = hub.handle(op, &path, &h, &body).await;
    answer(&hub, &path, reply)
}

fn answer(hub: &Hub, path: &str, reply: Reply) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Some(client_id) = &reply.signed_for {
        let (signature, time) = hub.sign_answer(path, client_id, &reply.body);
        for (name, value) in [
            ("client-id", client_id.as_str()),
            ("response-time", &time),
            ("signature", &signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }
    (StatusCode::OK, headers, reply.body).into_response()
}

struct OpsState {
    hub: Arc<Hub>,
    token: Option<String>,
    worker_alive: Arc<AtomicI64>,
    worker_stale_ms: i64,
}

/// `/healthz` and `/metrics`.
fn ops_router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<Arc<OpsState>>) -> Response {
    let db = match s.hub.pool.get().await {
        Ok(c) => super::queue::stats(&**c).await,
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    let age = super::service::now_ms() - s.worker_alive.load(Ordering::Relaxed);
    let (code, body) = match db {
        Ok((depth, oldest, dead)) if age <= s.worker_stale_ms => (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "instance": s.hub.instance, "queue_depth": depth,
                "queue_oldest_age_seconds": oldest.as_secs(), "queue_dead": dead}),
        ),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "reason": "the hub worker has not run recently"}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "unhealthy", "reason": format!("database: {e:#}")}),
        ),
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<OpsState>>, headers: HeaderMap) -> Response {
    if let Some(token) = &s.token {
        let given = header(&headers, "authorization").unwrap_or_default();
        let want = format!("Bearer {token}");
        use subtle::ConstantTimeEq as _;
        if !bool::from(given.as_bytes().ct_eq(want.as_bytes())) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    if let Ok(c) = s.hub.pool.get().await {
        if let Ok(rows) = c
            .query(
                "SELECT state, count(*) FROM hub_payments GROUP BY state",
                &[],
            )
            .await
        {
            let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            s.hub.metrics.set_payments(&counts);
        }
        if let Ok((depth, oldest, dead)) = super::queue::stats(&**c).await {
            s.hub.metrics.set_queue(depth, oldest, dead);
        }
    }
    (
        [("content-type", crate::metrics::CONTENT_TYPE)],
        s.hub.metrics.encode(),
    )
        .into_response()
}

fn notify_router(hub: Arc<Hub>, path: String) -> Router {
    Router::new()
        .route(&path, post(notification))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(hub)
}

async fn notification(
    State(hub): State<Arc<Hub>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if hub.upstream.converts() {
        let (verdict, answer) = notify::handle_mainland(&hub, &body).await;
        // Alipay resends whatever is not `success`; the status tells the two `fail`s apart
        // (to a balancer's or proxy's log), as the terminal's endpoint does: refused
        // (forged, another app, a field missing) or not recorded (the hub's database).
        let status = match verdict {
            notify::NotifyVerdict::Rejected => StatusCode::BAD_REQUEST,
            notify::NotifyVerdict::Error => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        return (
            status,
            [("content-type", "text/plain; charset=utf-8")],
            answer,
        )
            .into_response();
    }
    let path = uri
        .path_and_query()
        .map_or(uri.path().to_string(), |p| p.to_string());
    let (_, answer) = notify::handle(
        &hub,
        &path,
        header(&headers, "client-id").as_deref(),
        header(&headers, "request-time").as_deref(),
        header(&headers, "signature").as_deref(),
        &body,
    )
    .await;
    (
        [("content-type", "application/json; charset=UTF-8")],
        answer,
    )
        .into_response()
}

/// Loads the TLS certificate chain and key (PEM) into a rustls server config.
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("hub.tls_cert {}: cannot read", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "hub.tls_cert {}: not a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!("hub.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("hub.tls_key {}: not a PEM private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("hub.tls_cert and hub.tls_key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `router` on `listener` over TLS until `stop` fires.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::rustls::ServerConfig,
    router: Router,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "connection ended"); } }
                _ = stop.cancelled() => { conn.as_mut().graceful_shutdown(); let _ = conn.await; }
            }
        });
    }
}

async fn serve_plain(listener: tokio::net::TcpListener, router: Router, stop: CancellationToken) {
    let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!(error = %e, "listener stopped");
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Builds an instance from a validated config: database (migrated), keys, upstream.
pub async fn build(config: &HubConfig) -> anyhow::Result<Arc<Hub>> {
    let pool = db::connect(&config.database.url, config.database.pool_size).await?;
    db::migrate(&pool).await?;
    let hub_key = PrivateKey::load(&config.hub.hub_private_key).context("hub.hub_private_key")?;
    let metrics = Arc::new(HubMetrics::new());
    let upstream = Upstream::from_config(config, metrics.clone())?;
    let rules = HubRules::from_config(config);
    Ok(Arc::new(Hub {
        pool,
        upstream,
        hub_key,
        key_version: config.hub.key_version.clone(),
        rules,
        instance: config.instance_id(),
        metrics,
    }))
}

/// `posd hub run`: until SIGTERM / SIGINT.
pub async fn run(config: HubConfig) -> anyhow::Result<()> {
    let hub = build(&config).await?;
    let stop = CancellationToken::new();
    let alive = Arc::new(AtomicI64::new(super::service::now_ms()));
    let rules = WorkerRules::from_config(&config);
    let worker_stale_ms = rules.stale_after().as_millis() as i64;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(worker::run(hub.clone(), rules, stop.clone(), alive.clone()));

    let terminal = terminal_router(hub.clone());
    let listener = bind(config.hub.listen, "hub.listen").await?;
    match (&config.hub.tls_cert, &config.hub.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = tls_config(cert, key)?;
            tasks.spawn(serve_tls(listener, tls, terminal, stop.clone()));
        }
        _ => {
            // validate() allows this only on a loopback listen address.
            tasks.spawn(serve_plain(listener, terminal, stop.clone()));
        }
    }
    let ops = ops_router(Arc::new(OpsState {
        hub: hub.clone(),
        token: config.api.token.as_ref().map(|t| t.expose().to_string()),
        worker_alive: alive,
        worker_stale_ms,
    }))
    .merge(super::console::router(
        hub.clone(),
        config.api.token.as_ref(),
    ));
    tasks.spawn(serve_plain(
        bind(config.api.listen, "api.listen").await?,
        ops,
        stop.clone(),
    ));
    if config.notify.enabled {
        let n = notify_router(hub.clone(), config.notify.path.clone());
        tasks.spawn(serve_plain(
            bind(config.notify.listen, "notify.listen").await?,
            n,
            stop.clone(),
        ));
    }
    tracing::info!(
        instance = hub.instance.as_str(),
        listen = %config.hub.listen,
        tls = config.hub.tls_cert.is_some(),
        api = %config.api.listen,
        "hub ready"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        tracing::info!(
            ?timeout,
            "systemd watchdog enabled; pinging while the database answers"
        );
        tasks.spawn(super::watchdog::run(
            hub.pool.clone(),
            timeout / 2,
            stop.clone(),
        ));
    }
    wait_for_signal().await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("hub stopping");
    stop.cancel();
    let drain = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
