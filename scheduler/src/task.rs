//! The one place the scheduler starts background tasks: each carries the
//! span it was started in and is aborted when its handle is dropped, so
//! no task outlives the scheduler that owns it.

use std::future::Future;

use tracing::Instrument;

/// A running background task; dropping it aborts the task.
#[derive(Debug)]
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts `task` on the current tokio runtime, in the current span.
///
/// Panics outside a tokio runtime; callers check with
/// `tokio::runtime::Handle::try_current` first.
// The ban on tokio::spawn exists to route every spawn through here.
#[allow(clippy::disallowed_methods)]
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(task.in_current_span()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn dropping_the_handle_stops_the_task() {
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        let handle = spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(Arc::strong_count(&alive), 2);
        drop(handle);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            Arc::strong_count(&alive),
            1,
            "the task's captures were freed"
        );
    }
}
