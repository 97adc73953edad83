//! The background sweep: what happens because time passed rather than
//! because a client or worker called. Silent workers lose their actions,
//! actions no worker can take fail, operations nobody waits for are
//! cancelled, and completed operations are eventually forgotten. Runs
//! adopted after a restart whose worker went silent end too.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::adoption::Adoptions;
use crate::assignment::Assignments;
use crate::operation::Operations;
use crate::timing::Timing;

/// One sweep over the scheduler's state.
pub fn sweep_once(
    assignments: &Assignments,
    operations: &Mutex<Operations>,
    adoptions: &Adoptions,
    timing: &Timing,
) {
    let gone = assignments.expire() + adoptions.expire();
    if gone > 0 {
        warn!(
            gone,
            "workers stopped synchronizing; their actions were queued again"
        );
    }
    let failed = assignments.fail_unserved(timing.platform_grace);
    if failed > 0 {
        warn!(failed, "actions failed: no worker offers their platform");
    }
    let abandoned = operations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sweep(timing.keep_completed, timing.unwatched_grace);
    // An adopted run waits for the client's retried Execute, which comes
    // after its WaitExecution got NOT_FOUND: not abandoned.
    for operation in abandoned.into_iter().filter(|op| !op.is_adopted()) {
        let why = format!(
            "no client has waited on this operation for {}s",
            timing.unwatched_grace.as_secs()
        );
        if assignments.cancel(&operation, &why) {
            debug!(operation = %operation.name(), "cancelled: nobody waits for it");
        }
    }
}

/// Sweeps every `timing.sweep_every`, for as long as the task lives.
pub async fn sweep_forever(
    assignments: Arc<Assignments>,
    operations: Arc<Mutex<Operations>>,
    adoptions: Arc<Adoptions>,
    timing: Timing,
) {
    let mut tick = tokio::time::interval(timing.sweep_every);
    // After a stall, one sweep catches up with everything: no burst.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sweep_once(&assignments, &operations, &adoptions, &timing);
    }
}
