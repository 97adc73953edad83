//! What the worker's `/readyz` checks: each runner it uses answers its
//! readiness check, and the scheduler answered the last Synchronize a
//! slot sent. The scheduler's side is what the slots saw, not a probe of
//! its own: a worker is ready when its real calls go through.

use std::sync::{Mutex, PoisonError};

/// Whether the scheduler answered the slots' last Synchronize.
#[derive(Debug)]
pub struct SchedulerContact {
    last: Mutex<Result<(), String>>,
}

impl Default for SchedulerContact {
    fn default() -> Self {
        Self {
            last: Mutex::new(Err("no Synchronize answered yet".to_owned())),
        }
    }
}

impl SchedulerContact {
    /// A Synchronize was answered.
    pub fn answered(&self) {
        *self.lock() = Ok(());
    }

    /// A Synchronize failed with `status`.
    pub fn failed(&self, status: &tonic::Status) {
        *self.lock() = Err(format!(
            "the last Synchronize failed: {:?}: {}",
            status.code(),
            status.message()
        ));
    }

    /// Ok if the last Synchronize was answered, else why not.
    pub fn check(&self) -> Result<(), String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Result<(), String>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_counts_as_reachable_after_an_answer_only() {
        let contact = SchedulerContact::default();
        assert!(contact.check().is_err());
        contact.answered();
        assert_eq!(contact.check(), Ok(()));
        contact.failed(&tonic::Status::unavailable("connection refused"));
        let why = contact.check().unwrap_err();
        assert!(why.contains("Unavailable: connection refused"), "{why}");
    }
}
