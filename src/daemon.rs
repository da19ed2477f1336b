//! `posd run`: opens the store, builds the gateway (the embedded sandbox or the real one),
//! resumes every open payment, serves the API and the notification endpoint, reads the
//! scanner, tells systemd when it is ready (and pings its watchdog from the health check),
//! and shuts down cleanly: no new sales, in-flight calls finish or reach their deadline,
//! every payment is left where recovery resumes it. A second signal exits at once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::{Config, ConfigError, GatewayKind};
use crate::devices::print_worker::{PrintWorker, PrintWorkerHandle};
use crate::devices::scanner::ScanEvent;
use crate::engine::{clock, Engine, EngineSettings};
use crate::gateway::alipay_cn::{CnClient, CnSettings};
use crate::gateway::client::{AmsClient, ClientSettings};
use crate::gateway::sandbox::{self, Sandbox, SandboxHandle, SandboxSettings};
use crate::gateway::sign::{self, PrivateKey, PublicKey};
use crate::gateway::Gateway;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::store::{integrity, StoreError};

/// How long shutdown waits for in-flight gateway calls before leaving them to recovery.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long the runtime waits for leftover blocking work (a stdin read) when the daemon exits.
pub const RUNTIME_EXIT_GRACE: Duration = Duration::from_millis(500);

/// The directory that holds the database and, in sandbox mode, the generated keys.
pub fn state_dir(cfg: &Config) -> PathBuf {
    cfg.store_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What `posd run` was told on its command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// `--init-store`: start a new, empty store even where the state directory shows an
    /// earlier one (the old files are moved aside, not deleted).
    pub init_store: bool,
}

/// Everything `posd run` refuses before it starts, beyond the config's own validation:
/// `posd config check` runs exactly this too. Key files (present, private, parseable), the
/// sandbox's generated keys when they exist, and a store path that is not a directory.
pub fn preflight(cfg: &Config, config_path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid {
        path: config_path.to_path_buf(),
        key,
        message,
    };
    let store = cfg.store_path();
    if store.is_dir() {
        return Err(invalid(
            "store.path",
            format!(
                "{} is a directory; give the database file, e.g. {}",
                store.display(),
                store.join("posd.sqlite3").display()
            ),
        ));
    }
    if let Some(parent) = store.parent().filter(|p| p.exists() && !p.is_dir()) {
        return Err(invalid(
            "store.path",
            format!("{} is not a directory", parent.display()),
        ));
    }
    let g = &cfg.gateway;
    let merchant = match &g.merchant_private_key {
        Some(p) => Some(
            PrivateKey::load(&cfg.resolve(p))
                .map_err(|e| invalid("gateway.merchant_private_key", e.to_string()))?,
        ),
        None => {
            let generated = state_dir(cfg).join("keys").join(sign::PRIVATE_KEY_FILE);
            if generated.exists() {
                Some(PrivateKey::load(&generated).map_err(|e| {
                    invalid(
                        "gateway.merchant_private_key",
                        format!("the sandbox key: {e}"),
                    )
                })?)
            } else {
                None
            }
        }
    };
    for (key, file) in [
        ("gateway.gateway_public_key", &g.gateway_public_key),
        ("gateway.alipay_public_key", &g.alipay_public_key),
    ] {
        let Some(p) = file else { continue };
        let public = PublicKey::load(&cfg.resolve(p)).map_err(|e| invalid(key, e.to_string()))?;
        if merchant
            .as_ref()
            .is_some_and(|m| verifies_own_signature(m, &public))
        {
            return Err(invalid(
                key,
                "is the public half of our own merchant_private_key, not the gateway's key: paste the key the gateway shows after you upload yours (mainland: the Alipay public key 支付宝公钥, not the app public key 应用公钥)".into(),
            ));
        }
    }
    if g.kind == GatewayKind::Sandbox {
        let key = state_dir(cfg)
            .join("sandbox-keys")
            .join(sandbox::GATEWAY_PRIVATE_KEY_FILE);
        if key.exists() {
            PrivateKey::load(&key)
                .map_err(|e| invalid("sandbox", format!("the sandbox gateway key: {e}")))?;
        }
    }
    Ok(())
}

/// Whether `public` verifies a signature made with our own private key: the merchant pasted
/// the app's public key where the gateway's belongs (the most common mainland mistake).
fn verifies_own_signature(merchant: &PrivateKey, public: &PublicKey) -> bool {
    let probe = b"posd preflight: is this the gateway's key?";
    public.verify(probe, &merchant.sign(probe))
}

/// Whether a failed start is the operator's to fix (config, keys, the store's files): `posd
/// run` then exits 2, and systemd does not restart it (`RestartPreventExitStatus=2`).
pub fn is_operator_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ConfigError>().is_some()
            || c.downcast_ref::<crate::gateway::sign::SignError>()
                .is_some()
            || matches!(
                c.downcast_ref::<StoreError>(),
                Some(
                    StoreError::EmptyButUsed { .. }
                        | StoreError::Corrupt { .. }
                        | StoreError::TooNew { .. }
                        | StoreError::ReadOnly { .. }
                )
            )
    })
}

/// The slip directory of the file printer (evidence of prior use for the empty-store guard).
fn slip_dir(cfg: &Config) -> Option<PathBuf> {
    (cfg.printer.kind == crate::devices::config::PrinterKind::File)
        .then(|| cfg.resolve(&cfg.printer.path))
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
    crate::store::create_dir_with_mode(&dir, crate::store::KEY_DIR_MODE)?;
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
    let keys = state_dir(cfg).join("sandbox-keys");
    crate::store::create_dir_with_mode(&keys, crate::store::KEY_DIR_MODE)?;
    let (gateway_key, gateway_public) = sandbox::load_or_create_keys(&keys)?;
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
    /// The notification endpoint's bound address, when `[notify] enabled`.
    pub notify_addr: Option<SocketAddr>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The health check (also drives the systemd watchdog).
    pub health: Health,
    /// The print worker.
    pub printer: PrintWorkerHandle,
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(cfg, StartOptions::default(), shutdown).await
}

/// [`run`] with the command line's options.
pub async fn run_with(
    cfg: Config,
    opts: StartOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        t.cancel();
    });
    let running = start_with(&cfg, opts, token.clone()).await?;
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready: API listening, payments resumed"),
    ]);
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        tracing::info!(
            ?timeout,
            "systemd watchdog enabled; pinging from the health check"
        );
        tokio::spawn(crate::health::watchdog(
            running.health.clone(),
            timeout / 2,
            token.clone(),
        ));
    }
    token.cancelled().await;
    notify_systemd(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: letting in-flight gateway calls finish"),
    ]);
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
    // Clean shutdown: fold the WAL into the database file, which then holds every commit.
    match running.engine.store().checkpoint() {
        Ok(()) => tracing::info!("database checkpointed"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot checkpoint the database"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd (when `NOTIFY_SOCKET` is set; otherwise does nothing).
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Starts every part of the daemon and returns once the API listens.
pub async fn start(cfg: &Config, token: CancellationToken) -> anyhow::Result<Running> {
    start_with(cfg, StartOptions::default(), token).await
}

/// [`start`] with the command line's options.
pub async fn start_with(
    cfg: &Config,
    opts: StartOptions,
    token: CancellationToken,
) -> anyhow::Result<Running> {
    let store_path = cfg.store_path();
    tracing::info!(path = %store_path.display(), "opening the store");
    let state = state_dir(cfg);
    crate::store::create_dir_with_mode(&state, crate::store::DIR_MODE)
        .with_context(|| format!("cannot create the state directory {}", state.display()))?;
    let slips = slip_dir(cfg);
    let store = {
        let (path, state, init) = (store_path.clone(), state.clone(), opts.init_store);
        tokio::task::spawn_blocking(move || {
            integrity::open_for_daemon(&path, &state, slips.as_deref(), init, clock::now_ms())
        })
        .await??
    };
    let metrics = Metrics::new();

    // Bound before the client exists: the embedded sandbox is told where to notify.
    let notify_listener = if cfg.notify.enabled {
        let l = tokio::net::TcpListener::bind(cfg.notify.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (notify.listen); is another posd running?",
                    cfg.notify.listen
                )
            })?;
        Some(l)
    } else {
        None
    };
    let notify_addr = notify_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    // The embedded sandbox notifies this daemon's own endpoint over loopback.
    let local_notify_url =
        notify_addr.map(|a| format!("http://127.0.0.1:{}{}", a.port(), cfg.notify.path));
    let (gateway, gateway_public, client_id, sandbox): (Arc<dyn Gateway>, _, _, _) =
        if cfg.mainland() {
            let (client, sandbox) = connect_mainland(cfg, local_notify_url).await?;
            let client = client.with_observer(metrics.call_observer());
            let key = client.settings().alipay_key.clone();
            let app_id = client.settings().app_id.clone();
            (Arc::new(client), key, app_id, sandbox)
        } else {
            let (mut settings, gateway_public, sandbox) = client_settings(cfg).await?;
            if sandbox.is_some() && settings.notify_url.is_none() {
                settings.notify_url = local_notify_url;
            }
            let client_id = settings.client_id.clone();
            let client = AmsClient::new_with_roots(settings, gateway_ca(cfg)?.as_deref())?
                .with_observer(metrics.call_observer());
            (Arc::new(client), gateway_public, client_id, sandbox)
        };
    let engine = Engine::new(store, gateway, EngineSettings::from_config(cfg));
    let health = Health::new(engine.clone());
    // The store passed `quick_check` on open; check again now and then, off the request path.
    tokio::spawn(
        health
            .clone()
            .integrity_checks(crate::health::INTEGRITY_EVERY, token.clone()),
    );

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
    let ops = api::ops::OpsState {
        health: health.clone(),
        metrics: metrics.clone(),
        engine: engine.clone(),
    };
    let backoffice = crate::backoffice::BackOffice::from_config(cfg, engine.clone());
    let app = api::guard::secure(
        api::router(state)
            .merge(api::ops::router(ops))
            .merge(backoffice.api_routes()),
        cfg.api.token.as_ref(),
        api::MAX_BODY,
    )
    .merge(api::console::router(backoffice, cfg.api.token.as_ref()));
    // Unknown routes of the merged listener answer with the JSON error body too.
    let app = api::errors::json_errors(app);
    let served = tokio::spawn(api::serve::serve(
        listener,
        app,
        api::serve::ListenLimits::api(cfg),
        token.clone(),
    ));
    health.add_task("api", served.abort_handle());
    if let Some(queue) = engine.queue_worker_task() {
        health.add_task("queue worker", queue);
    }
    tracing::info!(addr = %api_addr, "API listening");

    if let (Some(listener), Some(addr)) = (notify_listener, notify_addr) {
        let notify_state = api::notify::NotifyState {
            engine: engine.clone(),
            gateway_key: Arc::new(gateway_public),
            client_id,
            path: cfg.notify.path.clone(),
            metrics: metrics.clone(),
        };
        let app = if cfg.mainland() {
            api::notify_cn::router(notify_state)
        } else {
            api::notify::router(notify_state)
        };
        let served = tokio::spawn(api::serve::serve(
            listener,
            app,
            api::serve::ListenLimits::notify(cfg),
            token.clone(),
        ));
        health.add_task("notify", served.abort_handle());
        tracing::info!(addr = %addr, path = %cfg.notify.path, "notification endpoint listening");
    }

    let mut printer_cfg = cfg.printer.clone();
    printer_cfg.path = cfg.resolve(&printer_cfg.path);
    let printer = PrintWorker::spawn(
        &printer_cfg,
        engine.store().clone(),
        engine.clock(),
        token.clone(),
    )
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
    spawn_printer_metrics(&printer, metrics.clone(), token.clone());
    if cfg.scanner.kind == crate::devices::config::ScannerKind::None {
        metrics.set_scanner_status("DISABLED");
    } else {
        spawn_scanner(engine.clone(), cfg, metrics.clone(), token.clone());
    }
    eprintln!("posd: ready; API on http://{api_addr}");
    Ok(Running {
        engine,
        api_addr,
        sandbox,
        notify_addr,
        metrics,
        health,
        printer,
    })
}

/// The client settings `posd run` uses — with the embedded sandbox started when
/// `gateway.kind = "sandbox"` — and the gateway's public key (it also verifies notifications).
async fn client_settings(
    cfg: &Config,
) -> anyhow::Result<(ClientSettings, PublicKey, Option<SandboxHandle>)> {
    let merchant = Arc::new(merchant_key(cfg)?);
    let (gateway_public, base_override, sandbox) = match cfg.gateway.kind {
        GatewayKind::Sandbox => {
            let (handle, public) =
                start_embedded_sandbox(cfg, merchant.public_key().clone()).await?;
            tracing::info!(url = %handle.base_url(), "embedded sandbox gateway listening");
            (public, Some(handle.base_url()), Some(handle))
        }
        GatewayKind::AlipayPlus | GatewayKind::AlipayCn => {
            let p = cfg
                .gateway
                .gateway_public_key
                .as_ref()
                .context("gateway.gateway_public_key is required")?;
            (PublicKey::load(&cfg.resolve(p))?, None, None)
        }
    };
    let settings =
        ClientSettings::from_config(cfg, merchant, gateway_public.clone(), base_override)?;
    Ok((settings, gateway_public, sandbox))
}

/// The gateway client exactly as `posd run` builds it (with the embedded sandbox started when
/// `gateway.kind = "sandbox"`), for back-office commands that work with the daemon stopped.
pub async fn connect_gateway(
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn Gateway>, Option<SandboxHandle>)> {
    if cfg.mainland() {
        let (client, sandbox) = connect_mainland(cfg, None).await?;
        return Ok((Arc::new(client), sandbox));
    }
    let (settings, _, sandbox) = client_settings(cfg).await?;
    Ok((
        Arc::new(AmsClient::new_with_roots(
            settings,
            gateway_ca(cfg)?.as_deref(),
        )?),
        sandbox,
    ))
}

/// The `app_id` the embedded mainland sandbox is spoken to with when none is configured.
pub const EMBEDDED_SANDBOX_APP_ID: &str = "9021000000000001";

/// The mainland client `posd run` uses (`kind = "alipay_cn"`, or the embedded sandbox with
/// `dialect = "alipay_cn"`, started here). `sandbox_notify_url` is where the embedded sandbox's
/// trades notify when `[gateway] notify_url` is not set.
pub async fn connect_mainland(
    cfg: &Config,
    sandbox_notify_url: Option<String>,
) -> anyhow::Result<(CnClient, Option<SandboxHandle>)> {
    let g = &cfg.gateway;
    let merchant = Arc::new(merchant_key(cfg)?);
    let (base_url, alipay_key, sandbox) = if g.kind == GatewayKind::Sandbox {
        let (handle, public) = start_embedded_sandbox(cfg, merchant.public_key().clone()).await?;
        tracing::info!(url = %handle.base_url(), "embedded sandbox gateway listening (mainland dialect)");
        let url = format!("{}{}", handle.base_url(), sandbox::mainland::PATH);
        (url, public, Some(handle))
    } else {
        let p = g
            .alipay_public_key
            .as_ref()
            .context("gateway.alipay_public_key is required")?;
        let url = g
            .base_url
            .clone()
            .unwrap_or_else(|| crate::config::MAINLAND_GATEWAY_URL.to_string());
        (url, PublicKey::load(&cfg.resolve(p))?, None)
    };
    let sandboxed = sandbox.is_some();
    let t = &cfg.terminal;
    let settings = CnSettings {
        base_url,
        app_id: match g.app_id.clone() {
            Some(id) => id,
            None if sandboxed => EMBEDDED_SANDBOX_APP_ID.to_string(),
            None => anyhow::bail!("gateway.app_id is required"),
        },
        merchant_key: merchant,
        alipay_key,
        notify_url: g
            .notify_url
            .clone()
            .or(sandbox_notify_url.filter(|_| sandboxed)),
        app_auth_token: g.app_auth_token.as_ref().map(|s| s.expose().to_string()),
        store_id: Some(t.store_id.clone()),
        terminal_id: Some(t.id.clone()),
        trade_timeout: crate::gateway::alipay_cn::client::DEFAULT_TRADE_TIMEOUT.to_string(),
        insecure_http: g.insecure_http || sandboxed,
        connect_timeout: g.connect_timeout.0,
        pay_timeout: cfg.flow.pay_timeout.0,
        inquiry_timeout: cfg.flow.inquiry_timeout.0,
        cancel_timeout: cfg.flow.cancel_timeout.0,
    };
    Ok((
        CnClient::new_with_roots(settings, gateway_ca(cfg)?.as_deref())?,
        sandbox,
    ))
}

/// Mirrors the print worker's status into the `posd_printer_status` gauge.
fn spawn_printer_metrics(
    printer: &PrintWorkerHandle,
    metrics: Arc<Metrics>,
    token: CancellationToken,
) {
    let mut status = printer.subscribe();
    tokio::spawn(async move {
        loop {
            let now = *status.borrow_and_update();
            metrics.set_printer_status(now.as_str());
            tokio::select! {
                changed = status.changed() => if changed.is_err() { break },
                _ = token.cancelled() => break,
            }
        }
    });
}

/// Feeds validated, de-duplicated scans to the engine: each binds to the sale waiting for a
/// code; a rejected scan or a scan with no sale waiting is reported with its reason; a
/// scanned slip (its `paymentRequestId`) looks its payment up and never pays.
fn spawn_scanner(engine: Engine, cfg: &Config, metrics: Arc<Metrics>, token: CancellationToken) {
    let mut scans = crate::devices::scanner::spawn(&cfg.scanner, &cfg.code_rules(), token);
    metrics.set_scanner_status("LISTENING");
    tokio::spawn(async move {
        while let Some(event) = scans.recv().await {
            match event {
                ScanEvent::Rejected { reason, masked } => {
                    tracing::warn!(scan = %masked, reason = %reason, "scan rejected");
                    eprintln!("posd: scan rejected: {reason}");
                }
                ScanEvent::Slip(id) => look_up_slip(&engine, &id).await,
                ScanEvent::Code(code)
                    if crate::domain::request_id::looks_like_payment_request_id(code.expose())
                        && engine.view(code.expose()).await.is_ok() =>
                {
                    // A slip's barcode the code rules also accept: never pay with it.
                    look_up_slip(&engine, code.expose()).await
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
        // The scanner is done for good (shutdown, or stdin closed under systemd).
        metrics.set_scanner_status("STOPPED");
    });
}

/// A slip was scanned: says what became of its payment (the waiting sale, if any, keeps
/// waiting for a payment code).
async fn look_up_slip(engine: &Engine, id: &str) {
    match engine.view(id).await {
        Ok(v) => {
            let summary = crate::devices::scanner::slip_summary(&v.payment);
            tracing::info!(slip = %id, state = %v.payment.state, "slip scanned: payment looked up");
            eprintln!("posd: {summary}");
        }
        Err(e) => {
            tracing::warn!(slip = %id, reason = %e, "slip scanned: no such payment");
            eprintln!("posd: slip {id}: no payment with this id on this terminal");
        }
    }
}

/// Resolves on SIGTERM or SIGINT. From then on a second SIGTERM or SIGINT exits the process
/// at once with status 0: safe, because every step was committed before it was acted on
/// (rule 1) and the next start resumes every open payment (rule 6).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now; open payments resume on the next start");
        eprintln!("posd: second signal, exiting now; open payments resume on the next start");
        std::process::exit(0);
    });
}

/// The PEM bundle of `[gateway] ca_file`, if set: extra roots the client trusts (a hub's
/// private CA). A file that cannot be read stops the start with the key named.
fn gateway_ca(cfg: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(path) = &cfg.gateway.ca_file else {
        return Ok(None);
    };
    let path = cfg.resolve(path);
    std::fs::read(&path)
        .map(Some)
        .with_context(|| format!("gateway.ca_file {}: cannot read", path.display()))
}
