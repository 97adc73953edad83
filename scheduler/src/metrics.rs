//! Prometheus metrics: queue length per platform, operations by stage,
//! workers by state, queue wait and execution time histograms, results
//! by status. Gauges are read from the state when scraped; histograms and
//! counters are recorded as things happen. On prometheus-client, through
//! `corral_metrics`.
//!
//! Served as text on `GET /metrics` by `corral_metrics::serve`.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use corral_metrics::prometheus_client::metrics::histogram::Histogram;
use corral_metrics::prometheus_client::registry::Registry;
use corral_metrics::{code_name, labels, observe, Counters, Declared, Gauges};

use crate::assignment::Assignments;
use crate::operation::{Operations, Progress};

/// Everything [`Metrics::render`] writes, with its help text: the names
/// operators' dashboards use, pinned by a test, and the list a test
/// checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 6] = [
    (
        "corral_scheduler_queued_actions",
        "gauge",
        "Actions waiting for a worker, per instance name and platform.",
    ),
    (
        "corral_scheduler_operations",
        "gauge",
        "Operations the scheduler holds, by stage.",
    ),
    (
        "corral_scheduler_workers",
        "gauge",
        "Workers seen recently, by state.",
    ),
    (
        "corral_scheduler_queue_wait_seconds",
        "histogram",
        "Time from queued to handed to a worker.",
    ),
    (
        "corral_scheduler_execution_seconds",
        "histogram",
        "Time from handed to a worker to its result.",
    ),
    (
        "corral_scheduler_results_total",
        "counter",
        "Operations completed, by status code and whether from the Action Cache.",
    ),
];

/// The scheduler's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    queued: Gauges,
    operations: Gauges,
    workers: Gauges,
    queue_wait: Histogram,
    execution: Histogram,
    /// By `code` (status code name) and `cached`.
    results: Counters,
    /// Held while the gauges are set and the page encoded, so two scrapes
    /// at once do not clear each other's queues.
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let queued = Gauges::default();
        let operations = Gauges::default();
        let workers = Gauges::default();
        let queue_wait = corral_metrics::duration_histogram();
        let execution = corral_metrics::duration_histogram();
        let results = Counters::default();
        let mut registry = Registry::default();
        let r = &mut registry;
        corral_metrics::register(r, DECLARED[0], queued.clone());
        corral_metrics::register(r, DECLARED[1], operations.clone());
        corral_metrics::register(r, DECLARED[2], workers.clone());
        corral_metrics::register(r, DECLARED[3], queue_wait.clone());
        corral_metrics::register(r, DECLARED[4], execution.clone());
        corral_metrics::register(r, DECLARED[5], results.clone());
        Metrics {
            queued,
            operations,
            workers,
            queue_wait,
            execution,
            results,
            registry: Mutex::new(registry),
        }
    }
}

impl Metrics {
    pub fn queue_wait(&self, waited: Duration) {
        observe(&self.queue_wait, waited);
    }

    pub fn execution(&self, took: Duration) {
        observe(&self.execution, took);
    }

    /// An operation completed with `code`; `cached` for Action Cache hits.
    pub fn result(&self, code: tonic::Code, cached: bool) {
        let name = code_name(code as i32);
        let cached = if cached { "true" } else { "false" };
        self.results
            .get_or_create(&labels([("code", name), ("cached", cached)]))
            .inc();
    }

    /// The Prometheus text page.
    pub fn render(&self, assignments: &Assignments, operations: &Mutex<Operations>) -> String {
        // The page is encoded from the registry only: a panic mid-render
        // leaves nothing half-updated that the next scrape does not set.
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let snapshot = assignments.snapshot();
        // Queues that emptied since the last scrape go from the page.
        self.queued.clear();
        for ((instance, platform), len) in &snapshot.queued {
            let platform = platform.to_string();
            let key = labels([("instance", instance.as_str()), ("platform", &platform)]);
            self.queued.get_or_create(&key).set(gauge(*len));
        }
        let mut stages = [("queued", 0usize), ("executing", 0), ("completed", 0)];
        for op in operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list()
        {
            let at = match op.current() {
                Progress::Queued => 0,
                Progress::Executing => 1,
                Progress::Completed(_) => 2,
            };
            stages[at].1 += 1;
        }
        for (stage, n) in stages {
            let key = labels([("stage", stage)]);
            self.operations.get_or_create(&key).set(gauge(n));
        }
        for (state, n) in [
            ("idle", snapshot.idle_workers),
            ("executing", snapshot.executing_workers),
            ("draining", snapshot.draining_workers),
        ] {
            let key = labels([("state", state)]);
            self.workers.get_or_create(&key).set(gauge(n));
        }
        corral_metrics::encode(&registry)
    }
}

/// A count as a gauge's value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators' dashboards and alerts use these names: a change here is
    /// a change for every farm that scrapes a scheduler.
    #[test]
    fn the_scheduler_metric_names_are_pinned() {
        let names: Vec<&str> = DECLARED.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            names,
            [
                "corral_scheduler_queued_actions",
                "corral_scheduler_operations",
                "corral_scheduler_workers",
                "corral_scheduler_queue_wait_seconds",
                "corral_scheduler_execution_seconds",
                "corral_scheduler_results_total",
            ]
        );
    }
}
