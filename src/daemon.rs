//! `posd run`: opens the store, builds the gateway (the embedded sandbox or the real one),
//! resumes every open payment, serves the API, reads the scanner, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{Config, GatewayKind};
use crate::devices::print_worker::{PrintWorker, PrintWorkerHandle};
use crate::devices::scanner::ScanEvent;
use crate::engine::{Engine, EngineSettings};
use crate::gateway::client::{AmsClient, ClientSettings};
use crate::gateway::sandbox::{self, Sandbox, SandboxHandle, SandboxSettings};
use crate::gateway::sign::{self, PrivateKey, PublicKey};
use crate::store::Store;

/// How long shutdown waits for in-flight gateway calls before leaving them to recovery.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The directory that holds the database and, in sandbox mode, the generated keys.
pub fn state_dir(cfg: &Config) -> PathBuf {
    cfg.store_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The merchant key: the configured file, or in sandbox mode one generated once into
/// `<state>/keys/` (never overwritten).
pub fn merchant_key(cfg: &Config) -> anyhow::Result<PrivateKey> {
    if let Some(p) = &cfg.gateway.merchant_private_key {
        return Ok(PrivateKey::load(&cfg.resolve(p))?);
    }
    anyhow::ensure!(
        cfg.gateway.kind == GatewayKind::Sandbox,
        "gateway.merchant_private_key is required for the real gateway"
    );
    let dir = state_dir(cfg).join("keys");
    let path = dir.join(sign::PRIVATE_KEY_FILE);
    if !path.exists() {
        let generated = sign::generate_keys(&dir)?;
        tracing::info!(path = %generated.private_path.display(), "generated a merchant key pair for the sandbox");
    }
    Ok(PrivateKey::load(&path)?)
}

/// Starts the embedded sandbox gateway on an ephemeral loopback port.
pub async fn start_embedded_sandbox(
    cfg: &Config,
    merchant_public: PublicKey,
) -> anyhow::Result<(SandboxHandle, PublicKey)> {
    let (gateway_key, gateway_public) =
        sandbox::load_or_create_keys(&state_dir(cfg).join("sandbox-keys"))?;
    let mut settings = SandboxSettings::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        cfg.sandbox_path(),
        gateway_key,
        merchant_public,
    );
    settings.cancel_outage = cfg.sandbox.cancel_outage.0;
    let handle = Sandbox::start(settings).await?;
    Ok((handle, gateway_public))
}

/// Everything `posd run` starts, for tests that run the daemon in-process.
pub struct Running {
    /// The engine.
    pub engine: Engine,
    /// The API's bound address.
    pub api_addr: SocketAddr,
    /// The embedded sandbox, when `gateway.kind = "sandbox"`.
    pub sandbox: Option<SandboxHandle>,
    /// The print worker.
    pub printer: PrintWorkerHandle,
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        t.cancel();
    });
    let running = start(&cfg, token.clone()).await?;
    token.cancelled().await;
    tracing::info!("shutting down: no new sales; letting in-flight gateway calls finish");
    let clean = running.engine.shutdown(SHUTDOWN_GRACE).await;
    if !clean {
        tracing::warn!(
            "some gateway calls were still running; recovery resumes them on the next start"
        );
    }
    if let Some(s) = running.sandbox {
        s.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts every part of the daemon and returns once the API listens.
pub async fn start(cfg: &Config, token: CancellationToken) -> anyhow::Result<Running> {
    let store_path = cfg.store_path();
    tracing::info!(path = %store_path.display(), "opening the store");
    let store = Store::open(&store_path)?;

    let merchant = Arc::new(merchant_key(cfg)?);
    let (gateway_public, base_override, sandbox) = match cfg.gateway.kind {
        GatewayKind::Sandbox => {
            let (handle, public) =
                start_embedded_sandbox(cfg, merchant.public_key().clone()).await?;
            tracing::info!(url = %handle.base_url(), "embedded sandbox gateway listening");
            (public, Some(handle.base_url()), Some(handle))
        }
        GatewayKind::AlipayPlus => {
            let p = cfg
                .gateway
                .gateway_public_key
                .as_ref()
                .context("gateway.gateway_public_key is required")?;
            (PublicKey::load(&cfg.resolve(p))?, None, None)
        }
    };
    let client = AmsClient::new(ClientSettings::from_config(
        cfg,
        merchant,
        gateway_public,
        base_override,
    )?)?;
    let engine = Engine::new(store, Arc::new(client), EngineSettings::from_config(cfg));

    let resumed = engine.recover().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resuming payments left open by the last run");
    }
    tracing::info!("starting the reversal queue worker");
    engine.start_queue_worker(crate::engine::worker::QueueSettings::from_config(cfg));

    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (api.listen); is another posd running?",
                cfg.api.listen
            )
        })?;
    let api_addr = listener.local_addr()?;
    let state = ApiState {
        engine: engine.clone(),
        code_rules: Arc::new(cfg.code_rules()),
        currency: cfg.currency(),
    };
    let app = api::router(state);
    let t = token.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { t.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "API server stopped");
        }
    });
    tracing::info!(addr = %api_addr, "API listening");

    let mut printer_cfg = cfg.printer.clone();
    printer_cfg.path = cfg.resolve(&printer_cfg.path);
    let printer = PrintWorker::spawn(&printer_cfg, engine.store().clone(), token.clone())
        .context("cannot start the printer worker ([printer])")?;
    let slips = engine.slips_written();
    let wake = printer.waker();
    let t = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = slips.notified() => wake.notify_one(),
                _ = t.cancelled() => break,
            }
        }
    });
    spawn_scanner(engine.clone(), cfg, token.clone());
    eprintln!("posd: ready; API on http://{api_addr}");
    Ok(Running {
        engine,
        api_addr,
        sandbox,
        printer,
    })
}

/// The gateway client exactly as `posd run` builds it (with the embedded sandbox started when
/// `gateway.kind = "sandbox"`), for back-office commands that work with the daemon stopped.
pub async fn connect_gateway(cfg: &Config) -> anyhow::Result<(AmsClient, Option<SandboxHandle>)> {
    let merchant = Arc::new(merchant_key(cfg)?);
    let (gateway_public, base_override, sandbox) = match cfg.gateway.kind {
        GatewayKind::Sandbox => {
            let (handle, public) =
                start_embedded_sandbox(cfg, merchant.public_key().clone()).await?;
            (public, Some(handle.base_url()), Some(handle))
        }
        GatewayKind::AlipayPlus => {
            let p = cfg
                .gateway
                .gateway_public_key
                .as_ref()
                .context("gateway.gateway_public_key is required")?;
            (PublicKey::load(&cfg.resolve(p))?, None, None)
        }
    };
    let client = AmsClient::new(ClientSettings::from_config(
        cfg,
        merchant,
        gateway_public,
        base_override,
    )?)?;
    Ok((client, sandbox))
}

/// Feeds validated, de-duplicated scans to the engine: each binds to the sale waiting for a
/// code; a rejected scan or a scan with no sale waiting is reported with its reason.
fn spawn_scanner(engine: Engine, cfg: &Config, token: CancellationToken) {
    let mut scans = crate::devices::scanner::spawn(&cfg.scanner, &cfg.code_rules(), token);
    tokio::spawn(async move {
        while let Some(event) = scans.recv().await {
            match event {
                ScanEvent::Rejected { reason, masked } => {
                    tracing::warn!(scan = %masked, reason = %reason, "scan rejected");
                    eprintln!("posd: scan rejected: {reason}");
                }
                ScanEvent::Code(code) => {
                    let masked = code.masked();
                    match engine.bind_code(code).await {
                        Ok(p) => {
                            tracing::info!(scan = %masked, payment = %p.payment_request_id, "scan bound to the waiting sale");
                        }
                        Err(e) => {
                            tracing::warn!(scan = %masked, reason = %e, "scan rejected");
                            eprintln!("posd: scan rejected: {e}");
                        }
                    }
                }
            }
        }
    });
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
