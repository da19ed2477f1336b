//! `posd queue list|replay|abandon`: the back office's view of the reversal queue. Each
//! command goes through the running daemon's API; when the daemon cannot be reached it works
//! on the database directly (replays build the gateway client as `posd run` does). Leases keep
//! the two from ever sending one item at the same time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::client::{ApiClient, CallError};
use super::{EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::api::queue::{
    AbandonRequest, DepthJson, ItemReportJson, QueueItemJson, QueueListJson, ReplayJson,
    ReplayRequest,
};
use crate::config::Config;
use crate::engine::clock::now_ms;
use crate::engine::clock::SystemClock;
use crate::engine::worker::{QueueSettings, ReplayError, Replayer};
use crate::store::{queue as q, Store};

/// `posd queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued reversals: pending items and dead letters (kind, payment, age, attempts, next try, last error).
    List {
        /// Every item ever queued, including delivered and abandoned ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay now: every pending item, or the one given (even if not due yet).
    Replay {
        /// The queue item's id (from `posd queue list`).
        id: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give up on an item; the reason goes into the payment's journal and the payment needs attention.
    Abandon {
        /// The queue item's id.
        id: i64,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `posd queue` command.
pub fn run(cfg: &Config, cmd: QueueCommand) -> u8 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let api = ApiClient::from_config(cfg);
    rt.block_on(async move {
        let via_api = match &cmd {
            QueueCommand::List { all, .. } => api
                .get::<QueueListJson>(&format!("/v1/queue?all={all}"))
                .await
                .map(Answer::List),
            QueueCommand::Replay { id, .. } => api
                .post::<_, ReplayJson>("/v1/queue/replay", &ReplayRequest { id: *id })
                .await
                .map(Answer::Replay),
            QueueCommand::Abandon { id, reason, .. } => api
                .post::<_, ItemReportJson>(
                    &format!("/v1/queue/{id}/abandon"),
                    &AbandonRequest {
                        reason: reason.clone(),
                    },
                )
                .await
                .map(|r| Answer::Replay(ReplayJson { items: vec![r] })),
        };
        let answer = match via_api {
            Ok(a) => a,
            Err(CallError::Unreachable { why, .. }) => {
                eprintln!(
                    "posd: the daemon is not reachable ({why}); working on {} directly",
                    cfg.store_path().display()
                );
                match direct(cfg, &cmd).await {
                    Ok(a) => a,
                    Err(code) => return code,
                }
            }
            Err(e) => {
                eprintln!("posd: {e}");
                return e.exit_code();
            }
        };
        let json = match &cmd {
            QueueCommand::List { json, .. }
            | QueueCommand::Replay { json, .. }
            | QueueCommand::Abandon { json, .. } => *json,
        };
        answer.print(json)
    })
}

enum Answer {
    List(QueueListJson),
    Replay(ReplayJson),
}

impl Answer {
    fn print(&self, json: bool) -> u8 {
        match self {
            Answer::List(l) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(l).expect("queue list serializes")
                    );
                } else {
                    print_list(l);
                }
                EXIT_OK
            }
            Answer::Replay(r) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(r).expect("replay report serializes")
                    );
                } else if r.items.is_empty() {
                    println!("nothing to replay");
                } else {
                    for i in &r.items {
                        println!(
                            "{:>6}  {:<6}  {}  {:<10}  {}{}",
                            i.id,
                            i.kind,
                            i.payment_request_id,
                            i.outcome,
                            i.detail,
                            i.payment_state
                                .as_deref()
                                .map(|s| format!(" -> payment {s}"))
                                .unwrap_or_default()
                        );
                    }
                }
                let settled = r
                    .items
                    .iter()
                    .all(|i| matches!(i.outcome.as_str(), "done" | "converted" | "abandoned"));
                if settled {
                    EXIT_OK
                } else {
                    EXIT_NOT_SUCCEEDED
                }
            }
        }
    }
}

fn print_list(l: &QueueListJson) {
    let DepthJson {
        pending,
        dead,
        oldest_age_seconds,
    } = &l.depth;
    println!(
        "{pending} pending, {dead} dead{}",
        oldest_age_seconds
            .map(|a| format!(", oldest {}", age(a)))
            .unwrap_or_default()
    );
    if l.items.is_empty() {
        return;
    }
    println!(
        "{:>6}  {:<6}  {:<9}  {:<44}  {:>8}  {:>8}  {:<24}  LAST ERROR / RESOLUTION",
        "ID", "KIND", "STATUS", "PAYMENT", "AGE", "ATTEMPTS", "NEXT TRY"
    );
    for i in &l.items {
        println!(
            "{:>6}  {:<6}  {:<9}  {:<44}  {:>8}  {:>8}  {:<24}  {}{}",
            i.id,
            i.kind,
            i.status,
            i.payment_request_id,
            age(i.age_seconds),
            i.attempts,
            i.next_attempt_at.as_deref().unwrap_or("-"),
            i.resolution
                .as_deref()
                .or(i.last_error.as_deref())
                .unwrap_or(""),
            i.lease_owner
                .as_deref()
                .map(|o| format!(" (being sent by {o})"))
                .unwrap_or_default()
        );
    }
}

fn age(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0).unsigned_abs())).to_string()
}

/// Opens the daemon's database for a direct command, refusing to create one.
pub fn open_existing(path: &Path) -> Result<Store, u8> {
    if !path.exists() {
        eprintln!(
            "posd: no database at {}; check [store] path in the config",
            path.display()
        );
        return Err(EXIT_USAGE);
    }
    Store::open(path).map_err(|e| {
        eprintln!("posd: {e}");
        EXIT_UNREACHABLE
    })
}

async fn direct(cfg: &Config, cmd: &QueueCommand) -> Result<Answer, u8> {
    let store = open_existing(&cfg.store_path())?;
    match cmd {
        QueueCommand::List { all, .. } => {
            let all = *all;
            let (items, depth) = store
                .call(move |c| Ok((q::list(c, all)?, q::depth(c)?)))
                .await
                .map_err(|e| fail(&e))?;
            let now = now_ms();
            Ok(Answer::List(QueueListJson {
                items: items.iter().map(|i| QueueItemJson::new(i, now)).collect(),
                depth: DepthJson::new(&depth, now),
            }))
        }
        QueueCommand::Abandon { id, reason, .. } => {
            // Abandoning sends nothing: no gateway needed.
            let r = replayer(cfg, store, Arc::new(NoGateway));
            let report = r.abandon(*id, reason).await.map_err(|e| refused(&e))?;
            Ok(Answer::Replay(ReplayJson {
                items: vec![ItemReportJson::from(&report)],
            }))
        }
        QueueCommand::Replay { id, .. } => {
            let (client, sandbox) = crate::daemon::connect_gateway(cfg)
                .await
                .map_err(|e| fail(&e))?;
            let r = replayer(cfg, store, client);
            let result = match id {
                Some(id) => r
                    .replay_item(*id)
                    .await
                    .map(|x| vec![x])
                    .map_err(|e| refused(&e)),
                None => r.replay_all().await.map_err(|e| fail(&e)),
            };
            if let Some(s) = sandbox {
                s.shutdown().await;
            }
            Ok(Answer::Replay(ReplayJson {
                items: result?.iter().map(ItemReportJson::from).collect(),
            }))
        }
    }
}

fn replayer(cfg: &Config, store: Store, gateway: Arc<dyn crate::gateway::Gateway>) -> Replayer {
    Replayer::new(
        store,
        gateway,
        Arc::new(SystemClock),
        QueueSettings::from_config(cfg),
        "cli",
    )
}

fn fail(e: &anyhow::Error) -> u8 {
    eprintln!("posd: {e:#}");
    EXIT_NOT_SUCCEEDED
}

fn refused(e: &ReplayError) -> u8 {
    eprintln!("posd: {e}");
    match e {
        ReplayError::Invalid(_) => EXIT_USAGE,
        _ => EXIT_NOT_SUCCEEDED,
    }
}

/// The gateway of a command that must not send anything (abandon): every call is refused
/// without leaving the machine.
pub(crate) struct NoGateway;

use crate::gateway::{Answer as GatewayAnswer, Inquiry, Reply};

#[async_trait::async_trait]
impl crate::gateway::Gateway for NoGateway {
    async fn pay(&self, _: &crate::gateway::PayOrder) -> Reply<GatewayAnswer> {
        not_sent()
    }
    async fn inquiry_payment(&self, _: &str) -> Reply<Inquiry> {
        Reply::<Inquiry>::unknown(NOT_SENT)
    }
    async fn cancel(&self, _: &str) -> Reply<GatewayAnswer> {
        not_sent()
    }
    async fn refund(&self, _: &crate::gateway::RefundOrder) -> Reply<GatewayAnswer> {
        not_sent()
    }
    async fn inquiry_refund(&self, _: &crate::gateway::RefundOrder) -> Reply<GatewayAnswer> {
        not_sent()
    }
}

const NOT_SENT: &str = "not sent: this command never talks to the gateway";

fn not_sent() -> Reply<GatewayAnswer> {
    Reply::<GatewayAnswer>::unknown(NOT_SENT)
}
