//! Prometheus metrics: one [`Metrics`] registry passed around (no globals). Gateway calls are
//! fed by the client's `CallObserver`, notifications by the notify endpoint, printer and
//! scanner status through [`StatusHook`]s; payment states and the reversal queue are read from
//! the database at scrape time, so they can never drift from the truth.
//!
//! Exposed names (the `/metrics` contract):
//! - `posd_payments{state}` gauge: payments by state (every state, zeros included).
//! - `posd_gateway_calls_total{operation,outcome}` counter; `outcome` is `success`, `failed`
//!   or `unknown`.
//! - `posd_gateway_call_duration_seconds{operation}` histogram.
//! - `posd_notifications_total{verdict,reason}` counter: `verdict` is `accepted` (reason =
//!   what it did, e.g. `applied`, `duplicate`, `unknown_payment`), `rejected` (reason = why,
//!   e.g. `signature`) or `error` (not recorded; the gateway retries).
//! - `posd_reversal_queue_depth` gauge and `posd_reversal_queue_oldest_age_seconds` gauge.
//! - `posd_printer_status{status}` / `posd_scanner_status{status}` gauges: 1 for the current
//!   status, 0 for statuses seen before.
//! - `posd_store_commits_total` counter: database transactions committed (one fsync each);
//!   `posd_store_commit_jobs_total` counter: the writes they carried (their ratio is how many
//!   writes group commit puts behind one fsync).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::domain::machine::ALL_STATES;
use crate::engine::clock::now_ms;
use crate::gateway::client::{CallObserver, CallRecord};
use crate::store::{notifications, payments, Store};

/// The `Content-Type` of the scrape answer (the encoder writes OpenMetrics text, which
/// Prometheus reads; it is a superset of the classic text format).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the gateway latency buckets, in seconds (the pay deadline is 5 s).
pub const LATENCY_BUCKETS: [f64; 11] =
    [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0];

/// The status a device has before anyone reported one.
pub const UNKNOWN_STATUS: &str = "UNKNOWN";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifyLabels {
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// A device status gauge: exactly one status is 1 at a time.
#[derive(Clone, Default)]
struct StatusGauge {
    family: Family<StatusLabel, Gauge>,
    current: Arc<Mutex<String>>,
}

impl StatusGauge {
    fn set(&self, status: &str) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if !cur.is_empty() && *cur != status {
            self.family
                .get_or_create(&StatusLabel {
                    status: cur.clone(),
                })
                .set(0);
        }
        self.family
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .set(1);
        *cur = status.to_string();
    }
}

/// A callback that a device worker calls with its status (`READY`, `OFFLINE`, `PAPER_OUT`, …).
pub type StatusHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    payments: Family<StateLabel, Gauge>,
    gateway_calls: Family<CallLabels, Counter>,
    gateway_latency: Family<OperationLabel, Histogram>,
    notifications: Family<NotifyLabels, Counter>,
    queue_depth: Gauge,
    queue_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    printer: StatusGauge,
    scanner: StatusGauge,
    store_commits: Counter,
    store_commit_jobs: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("posd");
        let payments = Family::<StateLabel, Gauge>::default();
        registry.register("payments", "Payments by state", payments.clone());
        let gateway_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "gateway_calls",
            "Gateway calls by operation and outcome",
            gateway_calls.clone(),
        );
        let gateway_latency = Family::<OperationLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "gateway_call_duration_seconds",
            "Gateway call latency, from signing to the mapped outcome",
            gateway_latency.clone(),
        );
        let notifications = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "notifications",
            "notifyPayment messages by verdict and reason",
            notifications.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "reversal_queue_depth",
            "Cancels and refunds waiting in the queue",
            queue_depth.clone(),
        );
        let queue_oldest_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "reversal_queue_oldest_age_seconds",
            "Age of the oldest pending queue item (0 when empty)",
            queue_oldest_age.clone(),
        );
        let printer = StatusGauge::default();
        registry.register(
            "printer_status",
            "Receipt printer status (1 = current)",
            printer.family.clone(),
        );
        let scanner = StatusGauge::default();
        registry.register(
            "scanner_status",
            "Scanner status (1 = current)",
            scanner.family.clone(),
        );
        let store_commits = Counter::default();
        registry.register(
            "store_commits",
            "Database transactions committed (one fsync each)",
            store_commits.clone(),
        );
        let store_commit_jobs = Counter::default();
        registry.register(
            "store_commit_jobs",
            "Writes carried by the committed transactions (group commit)",
            store_commit_jobs.clone(),
        );
        printer.set(UNKNOWN_STATUS);
        scanner.set(UNKNOWN_STATUS);
        Arc::new(Metrics {
            registry,
            payments,
            gateway_calls,
            gateway_latency,
            notifications,
            queue_depth,
            queue_oldest_age,
            printer,
            scanner,
            store_commits,
            store_commit_jobs,
        })
    }

    /// Counts one finished gateway call and its latency.
    pub fn observe_call(&self, r: &CallRecord) {
        let operation = r.operation.label();
        self.gateway_calls
            .get_or_create(&CallLabels {
                operation,
                outcome: r.outcome,
            })
            .inc();
        self.gateway_latency
            .get_or_create(&OperationLabel { operation })
            .observe(r.elapsed.as_secs_f64());
    }

    /// The hook to install with `AmsClient::with_observer`.
    pub fn call_observer(self: &Arc<Self>) -> CallObserver {
        let m = self.clone();
        Arc::new(move |r: &CallRecord| m.observe_call(r))
    }

    /// Counts a notification: `verdict` is `accepted`, `rejected` or `error`.
    pub fn notification(&self, verdict: &'static str, reason: &'static str) {
        self.notifications
            .get_or_create(&NotifyLabels { verdict, reason })
            .inc();
    }

    /// Sets the printer's status (`devices::printer::PrinterStatus::as_str`: `READY`, `PAPER_OUT`, …).
    pub fn set_printer_status(&self, status: &str) {
        self.printer.set(status);
    }

    /// Sets the scanner's status (e.g. `READY`, `DISCONNECTED`, `DISABLED`).
    pub fn set_scanner_status(&self, status: &str) {
        self.scanner.set(status);
    }

    /// A hook the printer worker can call without knowing about metrics.
    pub fn printer_hook(self: &Arc<Self>) -> StatusHook {
        let m = self.clone();
        Arc::new(move |s: &str| m.set_printer_status(s))
    }

    /// A hook the scanner worker can call without knowing about metrics.
    pub fn scanner_hook(self: &Arc<Self>) -> StatusHook {
        let m = self.clone();
        Arc::new(move |s: &str| m.set_scanner_status(s))
    }

    /// Sets the payment gauges from `(state, count)` rows; states without a row read 0.
    pub fn set_payments(&self, counts: &[(String, i64)]) {
        for st in ALL_STATES {
            let n = counts
                .iter()
                .find(|(s, _)| s == st.as_str())
                .map_or(0, |(_, n)| *n);
            self.payments
                .get_or_create(&StateLabel { state: st.as_str() })
                .set(n);
        }
    }

    /// Sets the queue gauges.
    pub fn set_queue(&self, depth: i64, oldest_age: Duration) {
        self.queue_depth.set(depth);
        self.queue_oldest_age.set(oldest_age.as_secs_f64());
    }

    /// The exposition text of the current values.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Reads the database figures (payment states, queue, commits), then encodes everything.
    pub async fn render(&self, store: &Store) -> anyhow::Result<String> {
        let commits = store.commit_counts();
        self.store_commits.inc_by(
            commits
                .transactions
                .saturating_sub(self.store_commits.get()),
        );
        self.store_commit_jobs
            .inc_by(commits.jobs.saturating_sub(self.store_commit_jobs.get()));
        let (counts, (depth, oldest)) = store
            .read(|c| {
                Ok((
                    payments::count_by_state(c)?,
                    notifications::queue_pending(c)?,
                ))
            })
            .await?;
        self.set_payments(&counts);
        let age_ms = oldest.map_or(0, |t| (now_ms() - t).max(0));
        self.set_queue(depth, Duration::from_millis(age_ms as u64));
        Ok(self.encode())
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::client::Operation;

    /// The value of an unlabelled sample in exposition `text`.
    fn sample(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
    }

    #[tokio::test]
    async fn commits_and_the_writes_they_carry_are_counted_once() {
        let m = Metrics::new();
        let store = Store::open_in_memory().unwrap();
        let text = m.render(&store).await.unwrap();
        assert_eq!(sample(&text, "posd_store_commits_total"), 0);
        for _ in 0..3 {
            store.call(|_| Ok(())).await.unwrap();
        }
        // Twenty writes at once: one transaction may carry several of them.
        let writes: Vec<_> = (0..20)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.call(|_| Ok(())).await })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
        let text = m.render(&store).await.unwrap();
        let (commits, jobs) = (
            sample(&text, "posd_store_commits_total"),
            sample(&text, "posd_store_commit_jobs_total"),
        );
        assert_eq!(jobs, 23, "{text}");
        assert!((4..=23).contains(&commits), "{text}");
        // A second scrape adds nothing new.
        let again = m.render(&store).await.unwrap();
        assert_eq!(sample(&again, "posd_store_commits_total"), commits);
        assert_eq!(sample(&again, "posd_store_commit_jobs_total"), jobs);
    }

    #[test]
    fn device_status_keeps_one_current_value() {
        let m = Metrics::new();
        m.set_printer_status("READY");
        m.printer_hook()("PAPER_OUT");
        let text = m.encode();
        assert!(
            text.contains("posd_printer_status{status=\"PAPER_OUT\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("posd_printer_status{status=\"READY\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("posd_printer_status{status=\"UNKNOWN\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("posd_scanner_status{status=\"UNKNOWN\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn calls_are_counted_with_latency() {
        let m = Metrics::new();
        let obs = m.call_observer();
        for (outcome, ms) in [("success", 30), ("unknown", 5000), ("success", 70)] {
            obs(&CallRecord {
                operation: Operation::Pay,
                outcome,
                result_code: None,
                elapsed: Duration::from_millis(ms),
            });
        }
        let text = m.encode();
        assert!(
            text.contains("posd_gateway_calls_total{operation=\"pay\",outcome=\"success\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("posd_gateway_call_duration_seconds_count{operation=\"pay\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "posd_gateway_call_duration_seconds_bucket{le=\"0.05\",operation=\"pay\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn payments_gauge_lists_every_state() {
        let m = Metrics::new();
        m.set_payments(&[("SUCCEEDED".into(), 3)]);
        let text = m.encode();
        assert!(
            text.contains("posd_payments{state=\"SUCCEEDED\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("posd_payments{state=\"CANCEL_QUEUED\"} 0"),
            "{text}"
        );
    }
}
