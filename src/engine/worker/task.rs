//! The daemon's queue worker task: drains due items, sleeps until the next one is due (or
//! the long fallback poll when nothing is pending), wakes on the signal, reports faults,
//! stops on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{QueueSignal, Replayer, MAX_POLL, MIN_PAUSE};
use crate::store::queue as q;

/// The daemon's worker task: drains due items, sleeps until the next is due, wakes on the
/// signal; stops on shutdown.
pub(crate) async fn run(replayer: Replayer, signal: Arc<QueueSignal>, shutdown: CancellationToken) {
    let span = tracing::info_span!("queue_worker", owner = %replayer.owner());
    run_in_span(replayer, signal, shutdown)
        .instrument(span)
        .await
}

async fn run_in_span(replayer: Replayer, signal: Arc<QueueSignal>, shutdown: CancellationToken) {
    let s = replayer.settings().clone();
    let clock = replayer.inner.clock.clone();
    let mut last_pull: Option<tokio::time::Instant> = None;
    tracing::info!("queue worker started");
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if signal.back.swap(false, Ordering::SeqCst)
            && last_pull.is_none_or(|t| t.elapsed() >= s.backoff_initial)
        {
            last_pull = Some(crate::engine::clock::instant());
            let now = clock.now_ms();
            match replayer
                .inner
                .store
                .call(move |c| Ok(q::make_due(c, now)?))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    items = n,
                    "the gateway answers again; replaying the queue now"
                ),
                Err(e) => tracing::error!(error = %e, "cannot reschedule the queue"),
            }
        }
        let mut pause = s.poll();
        match replayer.drain().await {
            Ok(reports) => {
                if reports.is_empty() {
                    (replayer.inner.on_fault)(None);
                }
                // A timer set to the next due item; with nothing pending, the long fallback.
                pause = match replayer.next_wakeup().await {
                    Ok(Some(at)) => {
                        let until =
                            Duration::from_millis((at - clock.now_ms()).max(0).unsigned_abs());
                        until.clamp(MIN_PAUSE, MAX_POLL)
                    }
                    Ok(None) => MAX_POLL,
                    Err(_) => s.poll(),
                };
            }
            Err(e) => {
                let text = format!("{e:#}");
                (replayer.inner.on_fault)(Some(&text));
                tracing::error!(error = %text, "queue replay failed; retrying after the poll interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = signal.wake.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("queue worker stopped");
}
