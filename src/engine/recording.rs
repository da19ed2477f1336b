//! Answers that cannot be recorded right now: which payments' commits are failing (a write
//! lock held past the busy timeout, a read-only or full disk, an I/O error), since when and
//! why. The payment's task keeps the answer and retries its commit; the cashier's view carries
//! the condition ("cannot record — do not hand over goods") and the health check reads
//! [`RecordingFault`] through `Engine::recording_fault`.

use std::collections::HashMap;
use std::sync::Mutex;

/// One failing commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When the first failed attempt happened, epoch ms.
    pub since_ms: i64,
    /// The last error, in words.
    pub error: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl Fault {
    /// What the cashier is told.
    pub fn advice(&self) -> String {
        format!(
            "cannot record this payment's outcome (the database refuses writes: {}); do not hand over goods until it is recorded",
            self.error
        )
    }
}

/// The engine's state of recording, for the health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFault {
    /// The oldest failing commit began, epoch ms.
    pub since_ms: i64,
    /// The latest error, in words.
    pub error: String,
    /// Payments whose answers wait to be recorded.
    pub payments: Vec<String>,
    /// Whether the reversal queue cannot settle either.
    pub queue: bool,
}

#[derive(Default)]
struct Faults {
    payments: HashMap<String, Fault>,
    queue: Option<Fault>,
}

/// Which commits are failing now.
#[derive(Default)]
pub(crate) struct Recording {
    faults: Mutex<Faults>,
}

fn bump(slot: &mut Option<Fault>, now_ms: i64, error: &str) -> bool {
    match slot {
        Some(f) => {
            f.error = error.to_string();
            f.attempts = f.attempts.saturating_add(1);
            false
        }
        None => {
            *slot = Some(Fault {
                since_ms: now_ms,
                error: error.to_string(),
                attempts: 1,
            });
            true
        }
    }
}

impl Recording {
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A commit for `id` failed; returns whether this began a fault for it.
    pub(crate) fn payment_failed(&self, id: &str, now_ms: i64, error: &str) -> bool {
        let mut f = self.lock();
        let mut slot = f.payments.remove(id);
        let new = bump(&mut slot, now_ms, error);
        f.payments
            .insert(id.to_string(), slot.expect("bump fills the slot"));
        new
    }

    /// A commit for `id` went through; returns whether it had been failing.
    pub(crate) fn payment_recorded(&self, id: &str) -> bool {
        self.lock().payments.remove(id).is_some()
    }

    /// The queue could not settle.
    pub(crate) fn queue_failed(&self, now_ms: i64, error: &str) {
        bump(&mut self.lock().queue, now_ms, error);
    }

    /// The queue settled (or had nothing to settle).
    pub(crate) fn queue_ok(&self) {
        self.lock().queue = None;
    }

    /// The fault of one payment, if its answer waits to be recorded.
    pub(crate) fn of(&self, id: &str) -> Option<Fault> {
        self.lock().payments.get(id).cloned()
    }

    /// Everything failing now, or `None` when every commit goes through.
    pub(crate) fn summary(&self) -> Option<RecordingFault> {
        let f = self.lock();
        let latest = f
            .payments
            .values()
            .chain(f.queue.iter())
            .max_by_key(|x| (x.since_ms, x.attempts))?;
        let since_ms = f
            .payments
            .values()
            .chain(f.queue.iter())
            .map(|x| x.since_ms)
            .min()
            .unwrap_or(latest.since_ms);
        let mut payments: Vec<String> = f.payments.keys().cloned().collect();
        payments.sort();
        Some(RecordingFault {
            since_ms,
            error: latest.error.clone(),
            payments,
            queue: f.queue.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_begins_once_and_clears_when_recorded() {
        let r = Recording::default();
        assert!(r.summary().is_none());
        assert!(r.payment_failed("P1", 10, "database is locked"));
        assert!(!r.payment_failed("P1", 20, "disk full"));
        let f = r.of("P1").unwrap();
        assert_eq!(
            (f.since_ms, f.attempts, f.error.as_str()),
            (10, 2, "disk full")
        );
        assert!(f.advice().contains("do not hand over goods"));
        r.queue_failed(5, "readonly");
        let s = r.summary().unwrap();
        assert_eq!(
            (s.since_ms, s.payments.clone(), s.queue),
            (5, vec!["P1".into()], true)
        );
        assert!(r.payment_recorded("P1"));
        assert!(!r.payment_recorded("P1"));
        r.queue_ok();
        assert!(r.summary().is_none());
    }
}
