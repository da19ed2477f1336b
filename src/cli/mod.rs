//! The `posd` command line: the daemon (`run`) and thin clients of its HTTP API, with the
//! documented exit codes (0 success, 1 another final state or a refusal, 2 usage or config
//! error, 3 daemon unreachable).

pub mod client;
pub mod journal;
pub mod queue;
pub mod reconcile;
pub mod refund;
pub mod resolve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::wire::{CreatePayment, PaymentJson};
use crate::config::{find_config, Config, GatewayKind};
use client::{ApiClient, CallError};

/// Exit code: the payment succeeded / the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: another final state, or the daemon refused the request.
pub const EXIT_NOT_SUCCEEDED: u8 = 1;
/// Exit code: usage or config error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// posd: the payment daemon of a checkout terminal (Alipay+ user-presented code).
#[derive(Debug, Parser)]
#[command(name = "posd", version, about)]
pub struct Cli {
    /// Config file [default: ./config.toml, then $CONFIGURATION_DIRECTORY/config.toml, then /etc/posd/config.toml]
    #[arg(long, global = true, env = "POSD_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: API, scanner, printer, queue worker, recovery.
    Run(RunArgs),
    /// Copy the database to FILE with SQLite's online backup (safe while the daemon runs).
    Backup {
        /// The new file (never overwritten); restore by copying it back with posd stopped.
        file: PathBuf,
    },
    /// Ask the running daemon to take a payment and wait for its final state.
    Pay(PayArgs),
    /// Show one payment with its events.
    Status {
        /// The paymentRequestId.
        id: String,
        /// Print the payment resource as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort a sale that is not final (a cancel).
    Abort {
        /// The paymentRequestId.
        id: String,
        /// Print the payment resource as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refund a paid sale, in full or in part.
    Refund(refund::RefundArgs),
    /// The back office's reversal queue: list, replay, abandon.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// The journal for reconciliation: one row per payment and per refund.
    Journal(journal::JournalArgs),
    /// Hold the books against the gateway's Transaction Items files.
    Reconcile(reconcile::ReconcileArgs),
    /// Settle a payment in NEEDS_ATTENTION after checking the gateway's portal.
    Resolve(resolve::ResolveArgs),
    /// Print the payment's slip again (marked as a copy).
    Reprint {
        /// The paymentRequestId.
        id: String,
    },
    /// Merchant keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run the sandbox gateway alone, for POS developers.
    Sandbox(SandboxArgs),
    /// The hub: the front gateway of an estate of terminals (its own hub.toml).
    #[command(subcommand)]
    Hub(crate::hub::cli::HubCommand),
}

/// `posd pay`.
#[derive(Debug, Args)]
pub struct PayArgs {
    /// Amount in major units, e.g. 12.34.
    #[arg(long)]
    pub amount: String,
    /// ISO 4217 currency [default: terminal.currency].
    #[arg(long)]
    pub currency: Option<String>,
    /// The POS's order reference.
    #[arg(long)]
    pub order: Option<String>,
    /// The payment code; without it the next scan is used.
    #[arg(long)]
    pub code: Option<String>,
    /// Print the payment resource as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `posd run`.
#[derive(Debug, Clone, Copy, Args, Default)]
pub struct RunArgs {
    /// Start a new, empty store even though the state directory shows an earlier one (its
    /// files are moved aside). Without it posd refuses to replace a lost database silently.
    #[arg(long)]
    pub init_store: bool,
}

/// `posd keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a merchant RSA-2048 key pair and print the public key to upload.
    Generate {
        /// Directory for merchant_private.pem (0600) and merchant_public.pem.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `posd config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and the key files; say what is wrong.
    Check,
}

/// `posd sandbox`.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:8419")]
    pub listen: std::net::SocketAddr,
    /// The merchant public key that signs requests [default: the daemon's sandbox key in <state>/keys/].
    #[arg(long)]
    pub merchant_public_key: Option<PathBuf>,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(cli))
}

fn load_config(cli: &Cli) -> Result<Config, u8> {
    let path = find_config(cli.config.as_deref());
    Config::load(&path).map_err(|e| {
        eprintln!("posd: {e}");
        EXIT_USAGE
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// The daemon's runtime: one worker thread beside the main thread (which runs the daemon's
/// own future). A terminal serves one cashier: its CPU is an RSA sign or verify per call
/// (about a millisecond) and JSON; the database runs on the blocking pool and the devices on
/// their own threads. Each further worker would only add an idle thread and its allocator
/// arena to the resident set. The benches run the engine on it too.
pub fn daemon_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn run(cli: Cli) -> u8 {
    match &cli.command {
        Command::Keys(KeysCommand::Generate { out }) => return keys_generate(out),
        Command::Config(ConfigCommand::Check) => return config_check(&cli),
        Command::Hub(cmd) => return crate::hub::cli::run(cli.config.as_deref(), cmd),
        Command::Run(args) => return run_daemon(&cli, *args),
        _ => {}
    }
    let cfg = match load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Backup { file } => backup(&cfg, &file),
        Command::Sandbox(args) => run_sandbox(cfg, args),
        Command::Pay(args) => with_client(&cfg, |c| pay(c, args)),
        Command::Status { id, json } => with_client(&cfg, |c| async move {
            let p: PaymentJson = c.get(&format!("/v1/payments/{id}")).await?;
            print_payment(&p, json);
            Ok(EXIT_OK)
        }),
        Command::Abort { id, json } => with_client(&cfg, |c| async move {
            let p: PaymentJson = c
                .post(&format!("/v1/payments/{id}/abort"), &serde_json::json!({}))
                .await?;
            print_payment(&p, json);
            Ok(EXIT_OK)
        }),
        Command::Refund(args) => refund::run(&cfg, args),
        Command::Queue(cmd) => queue::run(&cfg, cmd),
        Command::Journal(args) => journal::run(&cfg, args),
        Command::Reconcile(args) => reconcile::run(&cfg, args),
        Command::Resolve(args) => resolve::run(&cfg, args),
        Command::Reprint { id } => with_client(&cfg, |c| async move {
            let v: serde_json::Value = c
                .post(
                    &format!("/v1/payments/{id}/receipt"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("slip {} queued for printing (copy)", v["slip_id"]);
            Ok(EXIT_OK)
        }),
        Command::Keys(_) | Command::Config(_) | Command::Run(_) | Command::Hub(_) => {
            unreachable!("handled above")
        }
    }
}

fn with_client<F, Fut>(cfg: &Config, f: F) -> u8
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<u8, CallError>>,
{
    let client = ApiClient::from_config(cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    match rt.block_on(f(client)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("posd: {e}");
            e.exit_code()
        }
    }
}

async fn pay(c: ApiClient, args: PayArgs) -> Result<u8, CallError> {
    let body = CreatePayment {
        amount: args.amount,
        currency: args.currency,
        order_ref: args.order,
        code: args.code,
    };
    // One key for this invocation: a retry after a lost answer returns the same payment.
    let key = client::new_idempotency_key();
    let mut p: PaymentJson = c.post_once("/v1/payments", &body, &key).await?;
    if !args.json {
        eprintln!(
            "posd: payment {} started ({})",
            p.payment_request_id, p.state
        );
        if p.state == "AWAITING_CODE" {
            eprintln!("posd: scan the customer's payment code");
        }
    }
    let mut warned = false;
    while !p.is_final {
        if let (Some(why), false) = (&p.cannot_record, warned) {
            eprintln!("posd: CANNOT RECORD — {why}");
            warned = true;
        }
        p = c
            .get_long(
                &format!("/v1/payments/{}?wait=30", p.payment_request_id),
                Duration::from_secs(40),
            )
            .await?;
    }
    print_payment(&p, args.json);
    Ok(if p.state == "SUCCEEDED" {
        EXIT_OK
    } else {
        EXIT_NOT_SUCCEEDED
    })
}

/// What the cashier should do in each final state.
pub fn cashier_advice(state: &str) -> &'static str {
    match state {
        "SUCCEEDED" => "paid: hand over the goods and the slip",
        "FAILED" => "not paid: ask for another code or another payment method",
        "CANCELLED" => "not paid (reversed): the customer was not charged",
        "CANCEL_QUEUED" => "treat as NOT paid: the reversal is queued and will be delivered",
        "REFUNDED" => "refunded in full",
        "PARTIALLY_REFUNDED" => "partly refunded",
        "NEEDS_ATTENTION" => "a supervisor must check this payment (posd status ID)",
        "AWAITING_CODE" => "scan the customer's payment code",
        _ => "in progress: wait",
    }
}

pub(crate) fn print_payment(p: &PaymentJson, json: bool) {
    if json {
        println!("{}", serde_json::to_string(p).expect("payment serializes"));
        return;
    }
    println!(
        "{}  {} {}  {}",
        p.payment_request_id, p.amount, p.currency, p.state
    );
    println!("  {}", cashier_advice(&p.state));
    if let Some(o) = &p.order_ref {
        println!("  order:      {o}");
    }
    if let Some(c) = &p.code_masked {
        println!("  code:       {c}");
    }
    if let Some(id) = &p.payment_id {
        println!("  paymentId:  {id}");
    }
    if let Some(rc) = &p.result_code {
        println!(
            "  result:     {rc} {}",
            p.result_message.as_deref().unwrap_or("")
        );
    }
    if let Some(r) = &p.attention_reason {
        println!("  attention:  {r}");
    }
    if p.refunded_amount != "0" && !p.refunded_amount.chars().all(|c| c == '0' || c == '.') {
        println!("  refunded:   {} {}", p.refunded_amount, p.currency);
    }
    for e in &p.events {
        println!(
            "  {}  {:>14} -> {:<18} {}{}",
            e.at,
            e.from.as_deref().unwrap_or("-"),
            e.to,
            e.cause,
            e.result_code
                .as_deref()
                .map(|c| format!(" [{c}]"))
                .unwrap_or_default()
        );
    }
}

fn keys_generate(out: &std::path::Path) -> u8 {
    match crate::gateway::sign::generate_keys(out) {
        Ok(k) => {
            eprintln!(
                "posd: wrote {} (mode 0600) and {}",
                k.private_path.display(),
                k.public_path.display()
            );
            eprintln!("posd: upload this public key in the gateway's dashboard:");
            println!("{}", k.public_base64);
            EXIT_OK
        }
        Err(e) => {
            eprintln!("posd: {e}");
            EXIT_USAGE
        }
    }
}

/// Loads the config and runs [`crate::daemon::preflight`]: what `posd run` and `posd config
/// check` both refuse, with exit code 2.
fn checked_config(cli: &Cli) -> Result<Config, u8> {
    let path = find_config(cli.config.as_deref());
    let cfg = Config::load(&path).map_err(|e| {
        eprintln!("posd: {e}");
        EXIT_USAGE
    })?;
    crate::daemon::preflight(&cfg, &path).map_err(|e| {
        eprintln!("posd: {e}");
        EXIT_USAGE
    })?;
    Ok(cfg)
}

fn config_check(cli: &Cli) -> u8 {
    let path = find_config(cli.config.as_deref());
    let cfg = match checked_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let g = &cfg.gateway;
    let gw = match g.kind {
        GatewayKind::Sandbox if cfg.mainland() => "embedded sandbox (mainland dialect)".to_string(),
        GatewayKind::Sandbox => "embedded sandbox".to_string(),
        GatewayKind::AlipayPlus => format!("Alipay+ at {}", g.base_url.as_deref().unwrap_or("?")),
        GatewayKind::AlipayCn => format!(
            "Alipay mainland at {}",
            g.base_url
                .as_deref()
                .unwrap_or(crate::config::MAINLAND_GATEWAY_URL)
        ),
    };
    println!(
        "config {} is valid: terminal {}, gateway {gw}, store {}, API {}",
        path.display(),
        cfg.terminal.id,
        cfg.store_path().display(),
        cfg.api.listen
    );
    EXIT_OK
}

fn run_daemon(cli: &Cli, args: RunArgs) -> u8 {
    // The same refusals as `posd config check`, before anything starts.
    let cfg = match checked_config(cli) {
        Ok(checked) => checked,
        Err(code) => return code,
    };
    if let Err(e) = crate::logging::init(&cfg.log) {
        eprintln!("posd: {e}");
        return EXIT_USAGE;
    }
    let rt = daemon_runtime();
    let opts = crate::daemon::StartOptions {
        init_store: args.init_store,
    };
    let result = rt.block_on(crate::daemon::run_with(
        cfg,
        opts,
        crate::daemon::shutdown_signal(),
    ));
    // A blocking stdin read (the stdin scanner) must not hold the exit.
    rt.shutdown_timeout(crate::daemon::RUNTIME_EXIT_GRACE);
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "posd stopped");
            eprintln!("posd: {e:#}");
            if crate::daemon::is_operator_error(&e) {
                EXIT_USAGE
            } else {
                EXIT_NOT_SUCCEEDED
            }
        }
    }
}

fn backup(cfg: &Config, file: &std::path::Path) -> u8 {
    let db = cfg.store_path();
    match crate::store::integrity::backup(&db, file) {
        Ok(r) => {
            println!(
                "backed up {} to {} ({} pages, schema {}, {} payments); checked with quick_check",
                db.display(),
                file.display(),
                r.pages,
                r.schema_version,
                r.payments
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("posd: {e}");
            EXIT_NOT_SUCCEEDED
        }
    }
}

fn run_sandbox(cfg: Config, args: SandboxArgs) -> u8 {
    if let Err(e) = crate::logging::init(&cfg.log) {
        eprintln!("posd: {e}");
        return EXIT_USAGE;
    }
    let rt = runtime();
    let result: anyhow::Result<()> = rt.block_on(async {
        use crate::gateway::sandbox::{self, Sandbox, SandboxSettings};
        let merchant_public = match &args.merchant_public_key {
            Some(p) => crate::gateway::sign::PublicKey::load(p)?,
            None => crate::daemon::merchant_key(&cfg)?.public_key().clone(),
        };
        let keys_dir = crate::daemon::state_dir(&cfg).join("sandbox-keys");
        let (key, _) = sandbox::load_or_create_keys(&keys_dir)?;
        let mut settings =
            SandboxSettings::new(args.listen, cfg.sandbox_path(), key, merchant_public);
        settings.cancel_outage = cfg.sandbox.cancel_outage.0;
        let handle = Sandbox::start(settings).await?;
        eprintln!(
            "posd: sandbox gateway on {}; its public key is {}",
            handle.base_url(),
            keys_dir.join(sandbox::GATEWAY_PUBLIC_KEY_FILE).display()
        );
        crate::daemon::shutdown_signal().await;
        handle.shutdown().await;
        Ok(())
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("posd: {e:#}");
            1
        }
    }
}
