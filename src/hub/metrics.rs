//! The hub's Prometheus metrics. Labels are bounded: operations, outcomes, refusal reasons and
//! states are fixed sets; no terminal id or payment id is ever a label. Queue depth, oldest
//! age and payments by state are read from PostgreSQL at scrape time.
//!
//! Exposed names:
//! - `posd_hub_requests_total{operation,verdict}`: terminal requests; `verdict` is
//!   `forwarded`, `answered_from_record`, `refused` or `error`.
//! - `posd_hub_refusals_total{reason}`: `INVALID_SIGNATURE`, `CLIENT_INVALID`, `ACCESS_DENIED`,
//!   `PARAM_ILLEGAL`, `REPEAT_REQ_INCONSISTENT`, …
//! - `posd_hub_upstream_calls_total{operation,outcome}` and
//!   `posd_hub_upstream_call_duration_seconds{operation}`.
//! - `posd_hub_active_cancels_total{decision}`: `cancel`, `approved`, `failed`, `cancelled`,
//!   `postponed`.
//! - `posd_hub_queue_depth`, `posd_hub_queue_oldest_age_seconds`, `posd_hub_queue_dead`.
//! - `posd_hub_payments{state}`.
//! - `posd_hub_notifications_total{verdict}`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::gateway::client::Operation;
use crate::metrics::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
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
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

/// Every state a hub payment can be in (the `posd_hub_payments` label set).
pub const HUB_STATES: [&str; 9] = [
    "RECEIVED",
    "SUCCEEDED",
    "FAILED",
    "CANCELLING",
    "CANCELLED",
    "REFUNDING",
    "REFUNDED",
    "PARTIALLY_REFUNDED",
    "NEEDS_ATTENTION",
];

/// The registry and its families.
pub struct HubMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    calls: Family<CallLabels, Counter>,
    latency: Family<OperationLabel, Histogram>,
    active: Family<DecisionLabel, Counter>,
    notifications: Family<VerdictLabel, Counter>,
    payments: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    queue_oldest: Gauge,
    queue_dead: Gauge,
}

impl std::fmt::Debug for HubMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubMetrics")
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics::new()
    }
}

impl HubMetrics {
    /// A fresh registry.
    pub fn new() -> HubMetrics {
        let mut registry = Registry::with_prefix("posd_hub");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Terminal requests by verdict", requests.clone());
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "refusals",
            "Terminal requests refused, by reason",
            refusals.clone(),
        );
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("upstream_calls", "Upstream calls by outcome", calls.clone());
        let latency = Family::<OperationLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(LATENCY_BUCKETS)
        });
        registry.register(
            "upstream_call_duration_seconds",
            "Upstream call latency",
            latency.clone(),
        );
        let active = Family::<DecisionLabel, Counter>::default();
        registry.register("active_cancels", "Active-cancel decisions", active.clone());
        let notifications = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "notifications",
            "Upstream notifications by verdict",
            notifications.clone(),
        );
        let payments = Family::<StateLabel, Gauge>::default();
        registry.register("payments", "Hub payments by state", payments.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Pending queue items", queue_depth.clone());
        let queue_oldest = Gauge::default();
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest pending queue item",
            queue_oldest.clone(),
        );
        let queue_dead = Gauge::default();
        registry.register("queue_dead", "Dead-letter queue items", queue_dead.clone());
        HubMetrics {
            registry,
            requests,
            refusals,
            calls,
            latency,
            active,
            notifications,
            payments,
            queue_depth,
            queue_oldest,
            queue_dead,
        }
    }

    /// One terminal request.
    pub fn request(&self, op: Operation, verdict: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: op.label(),
                verdict,
            })
            .inc();
    }

    /// One refusal.
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// One upstream call.
    pub fn upstream(&self, op: Operation, outcome: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                operation: op.label(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabel {
                operation: op.label(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One active-cancel decision.
    pub fn active_cancel(&self, decision: &'static str) {
        self.active.get_or_create(&DecisionLabel { decision }).inc();
    }

    /// One notification.
    pub fn notification(&self, verdict: &'static str) {
        self.notifications
            .get_or_create(&VerdictLabel { verdict })
            .inc();
    }

    /// Payments by state, read at scrape time.
    pub fn set_payments(&self, counts: &[(String, i64)]) {
        for state in HUB_STATES {
            let n = counts
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.payments.get_or_create(&StateLabel { state }).set(n);
        }
    }

    /// Queue figures, read at scrape time.
    pub fn set_queue(&self, depth: i64, oldest: Duration, dead: i64) {
        self.queue_depth.set(depth);
        self.queue_oldest.set(oldest.as_secs() as i64);
        self.queue_dead.set(dead);
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
