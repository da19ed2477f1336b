//! The registry of payment tasks: at most one task owns an open payment, and a wake-up that
//! arrives while that task is finishing is never lost (the task runs once more instead of
//! leaving the payment unowned until the next start).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a payment's task waits on between steps, and the mark a wake-up leaves.
#[derive(Debug, Default)]
pub(super) struct Slot {
    notify: Notify,
    again: AtomicBool,
}

impl Slot {
    /// The signal the task waits on (an inquiry pause ends early when it fires).
    pub(super) fn notify(&self) -> &Notify {
        &self.notify
    }
}

/// Whether a caller must start the payment's task.
#[derive(Debug)]
pub(super) enum Claim {
    /// No task owned the payment: the caller starts one with this slot.
    Start(Arc<Slot>),
    /// A task owns it and was woken; it re-reads the state before it stops.
    Woken,
}

/// Whether a task that finished its steps may end.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// Nobody asked for the payment meanwhile: the slot is gone, the task ends.
    Done,
    /// Someone woke the payment meanwhile: the task keeps its slot and reads the state again.
    Again,
}

/// Every open payment's task slot, by `paymentRequestId`.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Tasks {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots
            .lock()
            .expect("the task registry's lock is never held across a panic")
    }

    /// Claims payment `id` for a new task, or wakes the task that owns it.
    pub(super) fn claim(&self, id: &str) -> Claim {
        let mut slots = self.slots();
        match slots.get(id) {
            Some(slot) => {
                wake(slot);
                Claim::Woken
            }
            None => {
                let slot = Arc::new(Slot::default());
                slots.insert(id.to_string(), slot.clone());
                Claim::Start(slot)
            }
        }
    }

    /// Wakes the task that owns `id`; `false` when none does.
    pub(super) fn wake(&self, id: &str) -> bool {
        match self.slots().get(id) {
            Some(slot) => {
                wake(slot);
                true
            }
            None => false,
        }
    }

    /// Called by the task owning `id` when its steps are done: it ends only if no wake-up
    /// came since it last read the state. Checked under the same lock as [`Tasks::claim`],
    /// so a claim either sees the slot (and the task runs again) or finds it gone (and starts
    /// a new task).
    pub(super) fn finish(&self, id: &str, slot: &Arc<Slot>) -> Finish {
        let mut slots = self.slots();
        if slot.again.swap(false, Ordering::SeqCst) {
            return Finish::Again;
        }
        if slots.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(id);
        }
        Finish::Done
    }

    /// Takes the wake-up mark before the task reads the state, so a wake-up after the read
    /// is the one that counts.
    pub(super) fn reading(slot: &Slot) {
        slot.again.store(false, Ordering::SeqCst);
    }
}

fn wake(slot: &Slot) {
    slot.again.store(true, Ordering::SeqCst);
    slot.notify.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_task_per_payment() {
        let t = Tasks::default();
        let Claim::Start(slot) = t.claim("p1") else {
            panic!("the first claim starts a task")
        };
        assert!(matches!(t.claim("p1"), Claim::Woken));
        assert!(matches!(t.claim("p2"), Claim::Start(_)));
        assert!(t.wake("p1"));
        assert!(!t.wake("p3"));
        // Woken twice since it started: it runs again before it may end.
        assert_eq!(t.finish("p1", &slot), Finish::Again);
        assert_eq!(t.finish("p1", &slot), Finish::Done);
        assert!(!t.wake("p1"), "a finished task's slot is gone");
    }

    #[test]
    fn a_claim_while_the_task_finishes_is_not_lost() {
        // The task has done its last step (a refund confirmed) and is about to end when the
        // next refund is committed and claims the payment: the claim finds the slot, so the
        // task must run once more rather than end and leave the new refund unowned.
        let t = Tasks::default();
        let Claim::Start(slot) = t.claim("p1") else {
            panic!("the first claim starts a task")
        };
        assert!(matches!(t.claim("p1"), Claim::Woken));
        assert_eq!(t.finish("p1", &slot), Finish::Again);
        // After the run it ends, and the next claim starts a fresh task.
        assert_eq!(t.finish("p1", &slot), Finish::Done);
        assert!(matches!(t.claim("p1"), Claim::Start(_)));
    }

    #[test]
    fn a_wake_before_the_read_does_not_force_another_run() {
        let t = Tasks::default();
        let Claim::Start(slot) = t.claim("p1") else {
            panic!("the first claim starts a task")
        };
        assert!(t.wake("p1"));
        // The task reads the state after that wake-up: it has seen what the wake-up meant.
        Tasks::reading(&slot);
        assert_eq!(t.finish("p1", &slot), Finish::Done);
    }

    #[test]
    fn an_old_slot_never_removes_a_new_task() {
        let t = Tasks::default();
        let Claim::Start(old) = t.claim("p1") else {
            panic!("the first claim starts a task")
        };
        assert_eq!(t.finish("p1", &old), Finish::Done);
        let Claim::Start(new) = t.claim("p1") else {
            panic!("a claim after the end starts a task")
        };
        assert_eq!(t.finish("p1", &old), Finish::Done);
        assert!(t.wake("p1"), "the new task's slot stays");
        assert_eq!(t.finish("p1", &new), Finish::Again);
    }
}
