//! `posd resolve ID --as SUCCEEDED|FAILED|CANCELLED|REFUNDED --reason TEXT`: settles a payment
//! in NEEDS_ATTENTION after a human checked the gateway's portal. posd asks the gateway once
//! and refuses an outcome it contradicts. Through the daemon's API, or on the database
//! directly (with the gateway client `posd run` builds) when the daemon cannot be reached.

use clap::Args;

use super::client::{ApiClient, CallError};
use super::queue::open_existing;
use super::{print_payment, EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE};
use crate::api::wire::PaymentJson;
use crate::backoffice::{resolve, ResolveRequest};
use crate::config::Config;
use crate::engine::{Engine, EngineError, EngineSettings};

/// `posd resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The paymentRequestId.
    pub id: String,
    /// How the payment ended, as the gateway's portal shows it: SUCCEEDED, FAILED, CANCELLED or REFUNDED.
    #[arg(long = "as", value_name = "OUTCOME")]
    pub outcome: String,
    /// What you checked (required; goes into the payment's journal).
    #[arg(long)]
    pub reason: String,
    /// Print the payment resource as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `posd resolve`.
pub fn run(cfg: &Config, args: ResolveArgs) -> u8 {
    let to = match resolve::parse_outcome(&args.outcome) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("posd: {e}");
            return EXIT_USAGE;
        }
    };
    if let Err(e) = resolve::check_reason(&args.reason) {
        eprintln!("posd: {e}");
        return EXIT_USAGE;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let api = ApiClient::from_config(cfg);
    rt.block_on(async move {
        let body = ResolveRequest {
            outcome: to.as_str().into(),
            reason: args.reason.clone(),
        };
        let p: PaymentJson = match api
            .post(&format!("/v1/payments/{}/resolve", args.id), &body)
            .await
        {
            Ok(p) => p,
            Err(CallError::Unreachable { why, .. }) => {
                eprintln!(
                    "posd: the daemon is not reachable ({why}); working on {} directly",
                    cfg.store_path().display()
                );
                match direct(cfg, &args.id, to, &args.reason).await {
                    Ok(p) => p,
                    Err(code) => return code,
                }
            }
            Err(e) => {
                eprintln!("posd: {e}");
                return e.exit_code();
            }
        };
        print_payment(&p, args.json);
        EXIT_OK
    })
}

async fn direct(
    cfg: &Config,
    id: &str,
    to: crate::domain::machine::State,
    reason: &str,
) -> Result<PaymentJson, u8> {
    let store = open_existing(&cfg.store_path())?;
    let (client, sandbox) = crate::daemon::connect_gateway(cfg).await.map_err(|e| {
        eprintln!("posd: {e:#}");
        EXIT_NOT_SUCCEEDED
    })?;
    let engine = Engine::new(store, client, EngineSettings::from_config(cfg));
    let out = resolve::resolve(&engine, id, to, reason).await;
    let view = match out {
        Ok(_) => engine.view(id).await,
        Err(e) => Err(e),
    };
    if let Some(s) = sandbox {
        s.shutdown().await;
    }
    let v = view.map_err(|e| {
        eprintln!("posd: {e}");
        match e {
            EngineError::Invalid(_) => EXIT_USAGE,
            _ => EXIT_NOT_SUCCEEDED,
        }
    })?;
    crate::api::resource(&engine, v).await.map_err(|e| {
        eprintln!("posd: {e:?}");
        EXIT_NOT_SUCCEEDED
    })
}
