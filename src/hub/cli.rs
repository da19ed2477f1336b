//! `posd hub …`: run an instance, the terminal registry, the hub's key pair, config check.
//! Exit codes as the rest of posd: 0 done, 1 refused, 2 usage or config error.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::config::HubConfig;
use super::registry::{self, NewTerminal};
use crate::cli::{EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE};
use crate::gateway::sign::{self, PrivateKey, PublicKey};

/// `posd hub …`.
#[derive(Debug, Subcommand)]
pub enum HubCommand {
    /// Run one hub instance (any number may run on one database).
    Run,
    /// The terminal registry.
    #[command(subcommand)]
    Terminal(TerminalCommand),
    /// The hub's key pair (signs answers to terminals).
    #[command(subcommand)]
    Keys(HubKeysCommand),
    /// Validate hub.toml, the keys, the database and the timeout rule.
    #[command(subcommand)]
    Config(HubConfigCommand),
    /// Hold the estate's books against the gateway's Transaction Items files.
    Reconcile(super::reconcile::HubReconcileArgs),
    /// The hub's queue: list, replay, abandon.
    #[command(subcommand)]
    Queue(super::console::queue::HubQueueCommand),
}

/// `posd hub terminal …`.
#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Register a terminal.
    Add(AddArgs),
    /// List the registered terminals.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Refuse every request of a terminal from now on (every instance).
    Disable {
        /// The terminal's client id.
        id: String,
    },
    /// Accept a disabled terminal again.
    Enable {
        /// The terminal's client id.
        id: String,
    },
}

/// `posd hub terminal add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The terminal's `[gateway] client_id`.
    #[arg(long)]
    pub client_id: String,
    /// The terminal's public key file (its `merchant_public.pem`).
    #[arg(long)]
    pub public_key: PathBuf,
    /// The merchant id it must send (`referenceMerchantId`).
    #[arg(long)]
    pub merchant_id: String,
    /// The store id it must send (`referenceStoreId`).
    #[arg(long)]
    pub store_id: String,
    /// The terminal id it must send (`storeTerminalId`) [default: the client id].
    #[arg(long)]
    pub terminal_id: Option<String>,
    /// A name for people.
    #[arg(long)]
    pub name: Option<String>,
    /// Largest pay in minor units (e.g. 50000 for 500.00 CNY).
    #[arg(long)]
    pub max_amount: Option<i64>,
}

/// `posd hub keys …`.
#[derive(Debug, Subcommand)]
pub enum HubKeysCommand {
    /// Generate the hub's RSA-2048 key pair into DIR (hub_private.pem 0600, hub_public.pem).
    Generate {
        /// Target directory.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `posd hub config …`.
#[derive(Debug, Subcommand)]
pub enum HubConfigCommand {
    /// Validate everything and say what is wrong.
    Check,
}

/// File names `posd hub keys generate` writes.
pub const HUB_PRIVATE_KEY_FILE: &str = "hub_private.pem";
/// See [`HUB_PRIVATE_KEY_FILE`].
pub const HUB_PUBLIC_KEY_FILE: &str = "hub_public.pem";

/// The hub config file: `--config`, else `./hub.toml`, else `/etc/posd/hub.toml`.
pub fn find_hub_config(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let local = PathBuf::from("hub.toml");
    if local.exists() {
        return local;
    }
    PathBuf::from("/etc/posd/hub.toml")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn load(config: Option<&Path>) -> Result<HubConfig, u8> {
    let path = find_hub_config(config);
    HubConfig::load(&path).map_err(|e| {
        eprintln!("posd hub: {e}");
        EXIT_USAGE
    })
}

/// Runs a `posd hub` subcommand; returns the exit code.
pub fn run(config: Option<&Path>, cmd: &HubCommand) -> u8 {
    if let HubCommand::Keys(HubKeysCommand::Generate { out }) = cmd {
        return keys_generate(out);
    }
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = runtime();
    let result = match cmd {
        HubCommand::Run => {
            if let Err(e) = crate::logging::init(&cfg.log) {
                eprintln!("posd hub: cannot set up logging: {e}");
                return EXIT_USAGE;
            }
            rt.block_on(super::server::run(cfg)).map(|()| EXIT_OK)
        }
        HubCommand::Config(HubConfigCommand::Check) => rt.block_on(config_check(&cfg)),
        HubCommand::Terminal(t) => rt.block_on(terminal(&cfg, t)),
        HubCommand::Reconcile(a) => return rt.block_on(super::reconcile::cli(&cfg, a)),
        HubCommand::Queue(q) => return rt.block_on(super::console::queue::cli(&cfg, q)),
        HubCommand::Keys(_) => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("posd hub: {e:#}");
            EXIT_NOT_SUCCEEDED
        }
    }
}

async fn pool(cfg: &HubConfig) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = super::db::connect(&cfg.database.url, 2).await?;
    super::db::migrate(&pool).await?;
    Ok(pool)
}

async fn terminal(cfg: &HubConfig, cmd: &TerminalCommand) -> anyhow::Result<u8> {
    let pool = pool(cfg).await?;
    match cmd {
        TerminalCommand::Add(a) => {
            let public_key = PublicKey::load(&a.public_key)?;
            let t = registry::add(
                &pool,
                &NewTerminal {
                    client_id: a.client_id.clone(),
                    name: a.name.clone(),
                    public_key,
                    merchant_id: a.merchant_id.clone(),
                    store_id: a.store_id.clone(),
                    terminal_id: a.terminal_id.clone(),
                    max_amount_minor: a.max_amount,
                },
            )
            .await?;
            println!(
                "registered terminal {} (merchant {}, store {}, terminal id {})",
                t.client_id, t.merchant_id, t.store_id, t.terminal_id
            );
        }
        TerminalCommand::List { json } => {
            let all = registry::list(&pool).await?;
            if *json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<16} {:<12} {:<16} {:>12}  name",
                    "client id", "enabled", "merchant", "store", "terminal id", "max amount"
                );
                for t in all {
                    println!(
                        "{:<24} {:<8} {:<16} {:<12} {:<16} {:>12}  {}",
                        t.client_id,
                        if t.enabled { "yes" } else { "NO" },
                        t.merchant_id,
                        t.store_id,
                        t.terminal_id,
                        t.max_amount_minor
                            .map_or("-".to_string(), |m| m.to_string()),
                        t.name.unwrap_or_default()
                    );
                }
            }
        }
        TerminalCommand::Disable { id } => {
            registry::set_enabled(&pool, id, false).await?;
            println!("terminal {id} disabled: every instance refuses its requests from now on");
        }
        TerminalCommand::Enable { id } => {
            registry::set_enabled(&pool, id, true).await?;
            println!("terminal {id} enabled");
        }
    }
    Ok(EXIT_OK)
}

async fn config_check(cfg: &HubConfig) -> anyhow::Result<u8> {
    // The timeout rule and the rest of validate() already held when the file loaded.
    PrivateKey::load(&cfg.hub.hub_private_key)
        .map_err(|e| anyhow::anyhow!("hub.hub_private_key: {e}"))?;
    if let (Some(c), Some(k)) = (&cfg.hub.tls_cert, &cfg.hub.tls_key) {
        super::server::tls_config(c, k)?;
    }
    super::upstream::Upstream::from_config(
        cfg,
        std::sync::Arc::new(super::metrics::HubMetrics::new()),
    )?;
    let pool = super::db::connect(&cfg.database.url, 1).await?;
    let c = pool.get().await?;
    let version: Option<i32> = c
        .query_opt("SELECT max(version) FROM hub_schema_migrations", &[])
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get(0));
    println!(
        "hub config ok: active_cancel_after {} > terminal_decision_time {}; database {} (schema {})",
        humantime::format_duration(cfg.hub.active_cancel_after.0),
        humantime::format_duration(cfg.hub.terminal_decision_time.0),
        super::db::redact(&cfg.database.url),
        version.map_or("not migrated yet: the first `posd hub run` does it".to_string(), |v| v.to_string())
    );
    Ok(EXIT_OK)
}

fn keys_generate(out: &Path) -> u8 {
    let run = || -> anyhow::Result<String> {
        std::fs::create_dir_all(out)?;
        let private = out.join(HUB_PRIVATE_KEY_FILE);
        let public = out.join(HUB_PUBLIC_KEY_FILE);
        for p in [&private, &public] {
            if p.exists() {
                anyhow::bail!(
                    "{} already exists; posd never overwrites a key (move it away first)",
                    p.display()
                );
            }
        }
        let (key, pem) = PrivateKey::generate()?;
        sign::write_new(&private, pem.as_bytes(), 0o600)?;
        sign::write_new(&public, key.public_key().to_pem().as_bytes(), 0o644)?;
        Ok(format!(
            "wrote {} (0600) and {}; give {} to every terminal as its [gateway] gateway_public_key",
            private.display(),
            public.display(),
            public.display()
        ))
    };
    match run() {
        Ok(msg) => {
            println!("{msg}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("posd hub: {e:#}");
            EXIT_USAGE
        }
    }
}
