//! The operator's actions on the hub's queue, for `posd hub queue …` and the console alike:
//! replay (send a pending item now, through the hub's own delivery under the payment's row
//! lock and the item's lease) and abandon with a reason (the item stops, the payment goes to
//! NEEDS_ATTENTION with the reason, in one transaction).

use clap::Subcommand;

use crate::cli::{EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE};
use crate::hub::queue::{deliver, Caller, Delivery};
use crate::hub::service::{event, lock_payment, mark_attention, Hub};
use crate::hub::upstream::Answer;

/// `posd hub queue …`.
#[derive(Debug, Subcommand)]
pub enum HubQueueCommand {
    /// List the queue (pending and dead letters first).
    List,
    /// Send pending items now (all, or one).
    Replay {
        /// One item's id.
        id: Option<i64>,
    },
    /// Stop an item for good; its payment goes to NEEDS_ATTENTION with the reason.
    Abandon {
        /// The item's id.
        id: i64,
        /// Why (required: it goes into the payment's journal).
        #[arg(long)]
        reason: String,
    },
}

/// What a replay of one item did.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The item.
    pub id: i64,
    /// In words.
    pub outcome: String,
}

/// Sends one pending item now; refused (Err) when it is not pending.
pub async fn replay_item(hub: &Hub, id: i64) -> anyhow::Result<Replayed> {
    let c = hub.pool.get().await?;
    let status: Option<String> = c
        .query_opt("SELECT status FROM hub_queue WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0));
    drop(c);
    match status.as_deref() {
        None => anyhow::bail!("there is no queue item {id}"),
        Some("PENDING") => {}
        Some(s) => anyhow::bail!("queue item {id} is {s}, not pending: nothing to replay"),
    }
    let outcome = match deliver(hub, id, Caller::Terminal).await? {
        Delivery::Sent(Answer::Success(_)) => "done: the gateway confirmed it".to_string(),
        Delivery::Sent(Answer::Failed { code, .. }) => format!("refused by the gateway: {code}"),
        Delivery::Sent(Answer::Unknown { why, .. }) => {
            format!("no answer ({why}); it stays queued")
        }
        Delivery::Recorded(_) => "already answered".to_string(),
        Delivery::Busy => "another instance is sending it right now".to_string(),
    };
    Ok(Replayed { id, outcome })
}

/// Sends every pending item now.
pub async fn replay_all(hub: &Hub) -> anyhow::Result<Vec<Replayed>> {
    let c = hub.pool.get().await?;
    let ids: Vec<i64> = c
        .query(
            "SELECT id FROM hub_queue WHERE status = 'PENDING' ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(c);
    let mut out = Vec::new();
    for id in ids {
        out.push(replay_item(hub, id).await?);
    }
    Ok(out)
}

/// Abandons a pending or dead item: it is never sent again, its refund (if any) is failed,
/// and the payment needs attention with `reason`. Returns the payment's id.
pub async fn abandon(hub: &Hub, id: i64, reason: &str) -> anyhow::Result<String> {
    let reason = reason.trim();
    anyhow::ensure!(
        !reason.is_empty(),
        "say why the item is abandoned (--reason): it goes into the payment's journal"
    );
    let mut client = hub.pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            "SELECT payment_request_id FROM hub_queue WHERE id = $1",
            &[&id],
        )
        .await?
    else {
        anyhow::bail!("there is no queue item {id}");
    };
    let pid: String = row.get(0);
    let Some(payment) = lock_payment(&tx, &pid).await? else {
        anyhow::bail!("queue item {id} names payment {pid}, which the hub has no record of");
    };
    let item = tx
        .query_one(
            "SELECT status, kind, refund_request_id, coalesce(lease_until > now(), false) \
             FROM hub_queue WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    let (status, kind, rid, leased): (String, String, Option<String>, bool) =
        (item.get(0), item.get(1), item.get(2), item.get(3));
    anyhow::ensure!(
        status == "PENDING" || status == "DEAD",
        "queue item {id} is {status}: only a pending or dead item can be abandoned"
    );
    anyhow::ensure!(
        !leased || status == "DEAD",
        "queue item {id} is being sent right now; try again in a moment"
    );
    let text = format!("abandoned by an operator: {reason}");
    tx.execute(
        "UPDATE hub_queue SET status = 'ABANDONED', last_error = $2, lease_owner = NULL, \
         lease_until = NULL, updated_at = now() WHERE id = $1",
        &[&id, &text],
    )
    .await?;
    if let Some(rid) = &rid {
        tx.execute(
            "UPDATE hub_refunds SET state = 'FAILED', result_code = 'ABANDONED', updated_at = now() \
             WHERE refund_request_id = $1 AND state = 'REFUNDING'",
            &[rid],
        )
        .await?;
    }
    event(
        &tx,
        &hub.instance,
        &pid,
        "queue_abandoned",
        None,
        None,
        None,
        Some(&format!("{kind} item {id}: {reason}")),
    )
    .await?;
    mark_attention(
        &tx,
        &hub.instance,
        &payment,
        &format!("{kind} item {id} {text}: settle it in the merchant portal"),
    )
    .await?;
    tx.commit().await?;
    Ok(pid)
}

/// `posd hub queue …`.
pub async fn cli(cfg: &crate::hub::config::HubConfig, cmd: &HubQueueCommand) -> u8 {
    let hub = match crate::hub::server::build(cfg).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("posd hub: {e:#}");
            return EXIT_USAGE;
        }
    };
    let result = match cmd {
        HubQueueCommand::List => match super::data::queue(&hub.pool, None, 1000).await {
            Ok(items) => {
                println!(
                    "{:>6}  {:<7} {:<9} {:<8} {:>8}  payment / last error",
                    "id", "kind", "status", "origin", "attempts"
                );
                for i in items {
                    println!(
                        "{:>6}  {:<7} {:<9} {:<8} {:>8}  {} {}",
                        i.id,
                        i.kind,
                        i.status,
                        i.origin,
                        i.attempts,
                        i.payment_request_id,
                        i.last_error.unwrap_or_default()
                    );
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
        HubQueueCommand::Replay { id } => {
            let r = match id {
                Some(i) => replay_item(&hub, *i).await.map(|x| vec![x]),
                None => replay_all(&hub).await,
            };
            r.map(|rs| {
                if rs.is_empty() {
                    println!("nothing is pending");
                }
                for x in rs {
                    println!("item {}: {}", x.id, x.outcome);
                }
            })
        }
        HubQueueCommand::Abandon { id, reason } => abandon(&hub, *id, reason)
            .await
            .map(|pid| println!("item {id} abandoned; payment {pid} needs attention")),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("posd hub: {e:#}");
            EXIT_NOT_SUCCEEDED
        }
    }
}
