//! The print worker: a tokio task that prints the print journal's pending slips through the
//! printer thread, retries failures with backoff, and publishes the printer's status.
//!
//! # Never in the payment path
//! The engine only inserts a row ([`crate::store::print_journal::enqueue`]) in its own
//! transaction and may call [`PrintWorkerHandle::wake`]. Rendering and device I/O happen
//! here, the I/O on the printer thread, so a dead printer delays nothing but the slip.
//!
//! # Store, clock, backoff
//! The worker reads and writes the print journal through the daemon's [`Store`] (its reader
//! connection for reads, the group-committing writer for changes), takes wall time from the
//! crate's [`Clock`] and retry delays from [`crate::engine::backoff`].
//!
//! # Retry
//! A failed slip stays pending; its next attempt is due after `retry_initial` doubling up to
//! `retry_max`. While a slip is pending or the printer is in a fault, the worker asks the
//! printer for its status every `status_poll`; an idle, healthy printer only every minute.
//! When a faulty printer (offline, paper out, cover open) answers ready again, every pending
//! slip is made due at once. On start every pending slip is due at once too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::PrinterConfig;
use super::escpos::{drawer_kick, render};
use super::printer::{open_transport, Job, PrinterHandle, PrinterStatus, Transport};
use super::profile::Profile;
use super::receipt::{layout, to_text, SlipKind};
use crate::engine::backoff::backoff;
use crate::engine::clock::Clock;
use crate::store::print_journal::{self, SlipRow};
use crate::store::Store;

/// Slips taken from the journal per round.
const BATCH: usize = 16;
/// The longest the worker sleeps without looking at the journal (a missed wake-up).
const FALLBACK_POLL: Duration = Duration::from_secs(60);
/// The status poll of an idle printer (nothing pending, last status not a fault): a slip
/// wakes the worker at once and its print reports the status anyway, so an idle terminal
/// asks its printer only this often (the idle daemon's wake-ups).
const IDLE_STATUS_POLL: Duration = Duration::from_secs(60);

/// The worker's timings and options (from `[printer]`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Status poll period.
    pub status_poll: Duration,
    /// Pulse the cash drawer after original SALE slips.
    pub open_drawer: bool,
}

impl From<&PrinterConfig> for WorkerSettings {
    fn from(c: &PrinterConfig) -> Self {
        WorkerSettings {
            retry_initial: c.retry_initial,
            retry_max: c.retry_max,
            status_poll: c.status_poll,
            open_drawer: c.open_drawer,
        }
    }
}

/// The running worker: its status channel and its wake-up.
pub struct PrintWorkerHandle {
    status: watch::Receiver<PrinterStatus>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

impl PrintWorkerHandle {
    /// Tells the worker a slip was enqueued (it also finds it on its own, later).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The worker's wake-up, for a task that forwards "slip written" signals.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The printer's last known status.
    pub fn status(&self) -> PrinterStatus {
        *self.status.borrow()
    }

    /// A receiver of status changes (for `/healthz` and `/metrics`).
    pub fn subscribe(&self) -> watch::Receiver<PrinterStatus> {
        self.status.clone()
    }

    /// Waits for the worker to stop (after the shutdown token is cancelled).
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "print worker panicked");
        }
    }
}

/// Namespace for starting the worker.
pub struct PrintWorker;

impl PrintWorker {
    /// Starts the worker for `[printer]`: loads the profile, opens the transport on its own
    /// thread and spawns the task, on the engine's clock. Fails only on a bad profile or if no
    /// thread can start.
    pub fn spawn(
        cfg: &PrinterConfig,
        store: Store,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<PrintWorkerHandle> {
        let profile = Profile::load(&cfg.profile)?;
        let h = PrintWorker::spawn_with(
            open_transport(cfg),
            profile,
            WorkerSettings::from(cfg),
            store,
            clock,
            shutdown,
        )?;
        Ok(h)
    }

    /// Starts the worker over any transport (tests pass fakes) and clock.
    pub fn spawn_with(
        transport: Box<dyn Transport>,
        profile: Profile,
        settings: WorkerSettings,
        store: Store,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> std::io::Result<PrintWorkerHandle> {
        let printer = PrinterHandle::spawn(transport)?;
        let (status_tx, status) = watch::channel(PrinterStatus::Unknown);
        let wake = Arc::new(Notify::new());
        let worker = Worker {
            store,
            printer,
            profile,
            settings,
            clock,
            wake: wake.clone(),
            status: status_tx,
        };
        let task = tokio::spawn(worker.run(shutdown));
        Ok(PrintWorkerHandle { status, wake, task })
    }
}

struct Worker {
    store: Store,
    printer: PrinterHandle,
    profile: Profile,
    settings: WorkerSettings,
    clock: Arc<dyn Clock>,
    wake: Arc<Notify>,
    status: watch::Sender<PrinterStatus>,
}

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        tracing::info!(profile = %self.profile.name, "print worker started");
        if let Err(e) = self.store.call(|c| Ok(print_journal::retry_now(c)?)).await {
            tracing::warn!(error = %e, "print journal not readable at start");
        }
        // Know the printer's status from the start (for /healthz), not after the first poll.
        self.probe().await;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let failed = self.print_due().await;
            let wait = self.next_wait(failed).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {
                    self.probe().await;
                }
            }
        }
        tracing::info!("print worker stopped");
    }

    /// Prints due slips until one fails. Returns true if one failed.
    async fn print_due(&self) -> bool {
        let now = self.clock.now_ms();
        let rows = match self
            .store
            .read(move |c| Ok(print_journal::due(c, now, BATCH)?))
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the print journal");
                return true;
            }
        };
        for row in rows {
            let id = row.id;
            let attempts = row.attempts;
            let span = tracing::info_span!(
                "slip",
                id,
                kind = row.data.kind.as_str(),
                attempt = attempts + 1
            );
            let _enter = span.enter();
            let job = self.job(&row);
            drop(_enter);
            match self.printer.print(job).await {
                Ok(status) => {
                    self.status.send_replace(status);
                    let now = self.clock.now_ms();
                    if let Err(e) = self
                        .store
                        .call(move |c| Ok(print_journal::mark_printed(c, id, now)?))
                        .await
                    {
                        // The slip is on paper; the worst case is one duplicate after a restart.
                        tracing::error!(slip = id, error = %e, "slip printed but not marked");
                        return true;
                    }
                    tracing::info!(slip = id, "slip printed");
                }
                Err(e) => {
                    let status = e.status();
                    self.status.send_replace(status);
                    // `attempts` failures before this one: retry_initial · 2^attempts, capped.
                    let delay = backoff(
                        attempts,
                        self.settings.retry_initial,
                        self.settings.retry_max,
                    );
                    let next = self.clock.now_ms()
                        + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 2);
                    let msg = e.to_string();
                    tracing::warn!(slip = id, %status, error = %msg, retry_in = ?delay, "slip not printed, kept pending");
                    if let Err(e) = self
                        .store
                        .call(move |c| {
                            Ok(print_journal::mark_failed(
                                c,
                                id,
                                &msg,
                                status.as_str(),
                                next,
                            )?)
                        })
                        .await
                    {
                        tracing::error!(slip = id, error = %e, "cannot record the failed attempt");
                    }
                    return true;
                }
            }
        }
        false
    }

    /// How long to sleep: until the next slip is due or the next status poll (the short one
    /// while a slip is pending or the printer is in a fault, else the idle one).
    async fn next_wait(&self, failed: bool) -> Duration {
        let busy = self.settings.status_poll.min(FALLBACK_POLL);
        if failed || self.status.borrow().is_fault() {
            return busy;
        }
        match self
            .store
            .read(|c| Ok(print_journal::next_due_at(c)?))
            .await
        {
            Ok(Some(at)) => {
                let ms = u64::try_from(at - self.clock.now_ms()).unwrap_or(0);
                busy.min(Duration::from_millis(ms))
            }
            Ok(None) => self.settings.status_poll.max(IDLE_STATUS_POLL),
            Err(_) => busy,
        }
    }

    /// Asks the printer how it is; when it recovers from a fault, every pending slip is due.
    async fn probe(&self) {
        let before = *self.status.borrow();
        let now = self.printer.status().await;
        self.status.send_replace(now);
        if now != before {
            tracing::info!(from = %before, to = %now, "printer status changed");
        }
        if before.is_fault() && !now.is_fault() {
            match self.store.call(|c| Ok(print_journal::retry_now(c)?)).await {
                Ok(n) if n > 0 => tracing::info!(slips = n, "printer back, retrying pending slips"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot reschedule pending slips"),
            }
        }
    }

    fn job(&self, row: &SlipRow) -> Job {
        let lines = layout(&row.data, self.profile.width);
        let mut bytes = render(&lines, &self.profile);
        if self.settings.open_drawer && row.data.kind == SlipKind::Sale && !row.data.copy {
            bytes.extend(drawer_kick(&self.profile).unwrap_or_default());
        }
        let safe: String = row
            .data
            .payment_request_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!(
            "{}-{}-{}{}",
            safe,
            row.id,
            row.data.kind.as_str().to_ascii_lowercase(),
            if row.data.copy { "-copy" } else { "" }
        );
        Job {
            slip_id: row.id,
            name,
            bytes,
            preview: to_text(&lines, self.profile.width),
        }
    }
}
