//! The runner's Prometheus metrics: how long the sandbox takes to start a
//! command, actions killed for their timeout, memory (OOM) or disk, and
//! how far landlock was enforced on each run, and the undeclared-input
//! report's summary (actions that opened host files, and how many). Served on `[metrics]
//! listen` when runner.toml has it: the runner has no other TCP port, and
//! its metrics are its own (the worker sees only exit codes).

use std::sync::Arc;

use corral_metrics::prometheus_client::metrics::counter::Counter;
use corral_metrics::prometheus_client::metrics::histogram::Histogram;
use corral_metrics::prometheus_client::registry::Registry;
use corral_metrics::{labels, observe, register, Counters, Declared};
use corral_sandbox::{LandlockState, Outcome, UndeclaredInputs};

/// Everything [`Metrics::render`] writes, with its help text: the names
/// operators' dashboards use, pinned by a test, and the list a test
/// checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 5] = [
    (
        "corral_runner_spawn_seconds",
        "histogram",
        "Time from the start of a sandbox's setup until its command was about to exec.",
    ),
    (
        "corral_runner_killed_total",
        "counter",
        "Actions killed, by reason: timeout, oom (the memory limit) or disk (the disk limit).",
    ),
    (
        "corral_runner_runs_total",
        "counter",
        "Actions run, by how far landlock was enforced: not_enforced, partially_enforced, \
         fully_enforced.",
    ),
    (
        "corral_runner_undeclared_input_actions_total",
        "counter",
        "Actions that opened files outside their input root (undeclared inputs), among those \
         whose policy asks for the report.",
    ),
    (
        "corral_runner_undeclared_input_paths_total",
        "counter",
        "Distinct files opened outside the input root, summed over actions.",
    ),
];

#[derive(Debug)]
struct Inner {
    spawn: Histogram,
    /// By `reason`.
    killed: Counters,
    /// By `landlock`.
    runs: Counters,
    undeclared_actions: Counter,
    undeclared_paths: Counter,
}

/// The runner's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

const KILLED: [&str; 3] = ["timeout", "oom", "disk"];
const LANDLOCK: [&str; 3] = ["not_enforced", "partially_enforced", "fully_enforced"];

impl Default for Metrics {
    fn default() -> Metrics {
        let killed = Counters::default();
        let runs = Counters::default();
        // Every series from the start, at zero: an alert on a rate of
        // kills needs the series before the first kill.
        for reason in KILLED {
            let _ = killed.get_or_create(&labels([("reason", reason)]));
        }
        for level in LANDLOCK {
            let _ = runs.get_or_create(&labels([("landlock", level)]));
        }
        Metrics(Arc::new(Inner {
            spawn: corral_metrics::fast_histogram(),
            killed,
            runs,
            undeclared_actions: Counter::default(),
            undeclared_paths: Counter::default(),
        }))
    }
}

/// The `landlock` label of a run.
fn landlock_label(state: LandlockState) -> &'static str {
    match state {
        LandlockState::NotEnforced => LANDLOCK[0],
        LandlockState::PartiallyEnforced => LANDLOCK[1],
        LandlockState::FullyEnforced => LANDLOCK[2],
    }
}

impl Metrics {
    /// A run ended with `outcome`.
    pub fn ran(&self, outcome: &Outcome) {
        let inner = &self.0;
        if let Some(spawn) = outcome.spawn_time {
            observe(&inner.spawn, spawn);
        }
        let landlock = landlock_label(outcome.landlock);
        inner
            .runs
            .get_or_create(&labels([("landlock", landlock)]))
            .inc();
        for (reason, killed) in
            KILLED
                .into_iter()
                .zip([outcome.timed_out, outcome.oom_killed, outcome.disk_exceeded])
        {
            if killed {
                inner
                    .killed
                    .get_or_create(&labels([("reason", reason)]))
                    .inc();
            }
        }
        self.undeclared(&outcome.undeclared_inputs);
    }

    /// Counts an action with undeclared inputs, and their number.
    fn undeclared(&self, report: &UndeclaredInputs) {
        if let UndeclaredInputs::Collected { total, .. } = report {
            if *total > 0 {
                self.0.undeclared_actions.inc();
                self.0.undeclared_paths.inc_by(*total as u64);
            }
        }
    }

    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let inner = &self.0;
        let mut registry = Registry::default();
        register(&mut registry, DECLARED[0], inner.spawn.clone());
        register(&mut registry, DECLARED[1], inner.killed.clone());
        register(&mut registry, DECLARED[2], inner.runs.clone());
        register(&mut registry, DECLARED[3], inner.undeclared_actions.clone());
        register(&mut registry, DECLARED[4], inner.undeclared_paths.clone());
        corral_metrics::encode(&registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_sandbox::disk::KernelBound;
    use corral_sandbox::Exit;
    use std::time::Duration;

    fn outcome() -> Outcome {
        Outcome {
            exit: Exit::Exited(0),
            timed_out: false,
            oom_killed: false,
            disk_exceeded: false,
            disk_excess: None,
            disk_bound: KernelBound::None,
            usage: Default::default(),
            stdout_truncated: false,
            stderr_truncated: false,
            landlock: LandlockState::FullyEnforced,
            spawn_time: Some(Duration::from_millis(3)),
            undeclared_inputs: UndeclaredInputs::Collected {
                paths: vec!["/etc/hostname".into()],
                total: 1,
                overflowed: false,
            },
        }
    }

    #[test]
    fn runs_kills_and_spawn_times_are_rendered_and_nothing_else() {
        let metrics = Metrics::default();
        metrics.ran(&outcome());
        metrics.ran(&Outcome {
            timed_out: true,
            oom_killed: true,
            landlock: LandlockState::NotEnforced,
            spawn_time: None,
            undeclared_inputs: UndeclaredInputs::Off,
            ..outcome()
        });
        let page = metrics.render();
        assert_eq!(
            corral_metrics::check_page(&page, &DECLARED),
            Ok(()),
            "{page}"
        );
        for expected in [
            "corral_runner_spawn_seconds_count 1",
            "corral_runner_spawn_seconds_bucket{le=\"0.005\"} 1",
            "corral_runner_killed_total{reason=\"timeout\"} 1",
            "corral_runner_killed_total{reason=\"oom\"} 1",
            "corral_runner_killed_total{reason=\"disk\"} 0",
            "corral_runner_runs_total{landlock=\"fully_enforced\"} 1",
            "corral_runner_runs_total{landlock=\"not_enforced\"} 1",
            "corral_runner_runs_total{landlock=\"partially_enforced\"} 0",
            "corral_runner_undeclared_input_actions_total 1",
            "corral_runner_undeclared_input_paths_total 1",
        ] {
            assert!(
                page.lines().any(|l| l == expected),
                "{expected} not in\n{page}"
            );
        }
    }

    /// Operators' dashboards and alerts use these names.
    #[test]
    fn the_runner_metric_names_are_pinned() {
        let names: Vec<&str> = DECLARED.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            names,
            [
                "corral_runner_spawn_seconds",
                "corral_runner_killed_total",
                "corral_runner_runs_total",
                "corral_runner_undeclared_input_actions_total",
                "corral_runner_undeclared_input_paths_total",
            ]
        );
    }
}
