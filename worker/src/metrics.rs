//! Prometheus metrics of one worker: actions finished by status, the time
//! each spent in its three stages, slots by state, and the file cache.
//! Counters and histograms are recorded as actions end; gauges are read
//! when the page is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_metrics::{code_name, header, Declared, Histogram};
use corral_proto::protobuf::Timestamp;
use corral_proto::reapi::ExecutedActionMetadata;

use crate::file_cache::{CopyReason, FileCache};

/// Everything [`Page::render`] writes, with its help text: the list a
/// test checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 7] = [
    (
        "corral_worker_actions_total",
        "counter",
        "Actions finished, by the status code of their response.",
    ),
    (
        "corral_worker_stage_seconds",
        "histogram",
        "Time actions spent in each stage: fetch_inputs (the Command and the input root), \
         execute (the runner's run) and upload_outputs.",
    ),
    (
        "corral_worker_slots",
        "gauge",
        "Build slots, by state (idle, executing).",
    ),
    (
        "corral_worker_file_cache_bytes",
        "gauge",
        "Bytes of the files in the file cache.",
    ),
    (
        "corral_worker_file_cache_files",
        "gauge",
        "Files in the file cache.",
    ),
    (
        "corral_worker_file_cache_downloads_total",
        "counter",
        "Files downloaded into the file cache.",
    ),
    (
        "corral_worker_input_copies_total",
        "counter",
        "Input files laid out as copies rather than hardlinks, by reason: link_limit (the \
         cache file had all the links its file system allows) or unprotected (actions run as \
         the worker's own uid, which owns the cache).",
    ),
];

#[derive(Debug, Default)]
struct Recorded {
    /// Status code name → actions.
    actions: BTreeMap<&'static str, u64>,
    fetch_inputs: Histogram,
    execute: Histogram,
    upload_outputs: Histogram,
}

/// What the worker records as actions run; shared by its slots.
#[derive(Debug)]
pub struct Metrics {
    recorded: Mutex<Recorded>,
    slots: usize,
    executing: AtomicUsize,
}

/// Marks one slot executing until dropped (also when the action is
/// abandoned midway).
#[derive(Debug)]
pub struct Executing<'a>(&'a Metrics);

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.0.executing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `to - from`, when both are set and in order.
fn between(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<Duration> {
    let (from, to) = (from?, to?);
    let system_time = corral_proto::time::system_time;
    system_time(to).duration_since(system_time(from)).ok()
}

impl Metrics {
    /// Metrics of a worker with `slots` build slots.
    pub fn new(slots: usize) -> Metrics {
        Metrics {
            recorded: Mutex::default(),
            slots,
            executing: AtomicUsize::new(0),
        }
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // Counters only ever add: a panic mid-update loses one sample.
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many slots run an action now.
    pub fn executing_now(&self) -> usize {
        self.executing.load(Ordering::Relaxed)
    }

    /// A slot starts an action.
    pub fn executing(&self) -> Executing<'_> {
        self.executing.fetch_add(1, Ordering::Relaxed);
        Executing(self)
    }

    /// An action finished with status `code`; its stages' times come from
    /// the timestamps in `meta` (a stage it never reached has none).
    pub fn finished(&self, code: i32, meta: &ExecutedActionMetadata) {
        let mut guard = self.recorded();
        let recorded = &mut *guard;
        *recorded.actions.entry(code_name(code)).or_default() += 1;
        let stages = [
            (
                &meta.input_fetch_start_timestamp,
                &meta.input_fetch_completed_timestamp,
                &mut recorded.fetch_inputs,
            ),
            (
                &meta.execution_start_timestamp,
                &meta.execution_completed_timestamp,
                &mut recorded.execute,
            ),
            (
                &meta.output_upload_start_timestamp,
                &meta.output_upload_completed_timestamp,
                &mut recorded.upload_outputs,
            ),
        ];
        for (from, to, histogram) in stages {
            if let Some(took) = between(from.as_ref(), to.as_ref()) {
                histogram.observe(took);
            }
        }
    }
}

/// The worker's page: its metrics and the file cache they describe.
/// Cheap to clone, for the server's page function.
#[derive(Debug, Clone)]
pub struct Page {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<FileCache>,
}

impl Page {
    /// The Prometheus text page, now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let recorded = self.metrics.recorded();
        let name = header(&mut out, DECLARED[0]);
        for (code, n) in &recorded.actions {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
        }
        let name = header(&mut out, DECLARED[1]);
        for (stage, histogram) in [
            ("fetch_inputs", &recorded.fetch_inputs),
            ("execute", &recorded.execute),
            ("upload_outputs", &recorded.upload_outputs),
        ] {
            histogram.render_labeled(&mut out, name, &format!("stage=\"{stage}\""));
        }
        drop(recorded);
        let executing = self.metrics.executing.load(Ordering::Relaxed);
        let name = header(&mut out, DECLARED[2]);
        let idle = self.metrics.slots.saturating_sub(executing);
        let _ = writeln!(out, "{name}{{state=\"idle\"}} {idle}");
        let _ = writeln!(out, "{name}{{state=\"executing\"}} {executing}");
        let (bytes, files) = self.cache.usage();
        let name = header(&mut out, DECLARED[3]);
        let _ = writeln!(out, "{name} {bytes}");
        let name = header(&mut out, DECLARED[4]);
        let _ = writeln!(out, "{name} {files}");
        let name = header(&mut out, DECLARED[5]);
        let _ = writeln!(out, "{name} {}", self.cache.downloads());
        let name = header(&mut out, DECLARED[6]);
        for reason in [CopyReason::LinkLimit, CopyReason::Unprotected] {
            let copies = self.cache.copies(reason);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {copies}", reason.label());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    #[test]
    fn every_declared_metric_is_rendered_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 20).unwrap());
        let metrics = Arc::new(Metrics::new(3));
        let meta = ExecutedActionMetadata {
            input_fetch_start_timestamp: at(10, 0),
            input_fetch_completed_timestamp: at(10, 500_000_000),
            execution_start_timestamp: at(11, 0),
            execution_completed_timestamp: at(13, 0),
            // Never uploaded: no upload sample.
            ..Default::default()
        };
        let busy = metrics.executing();
        metrics.finished(0, &meta);
        metrics.finished(4, &ExecutedActionMetadata::default());
        let page = Page {
            metrics: Arc::clone(&metrics),
            cache,
        }
        .render();
        assert_eq!(
            corral_metrics::check_page(&page, &DECLARED),
            Ok(()),
            "{page}"
        );
        let series: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        for expected in [
            "corral_worker_actions_total{code=\"OK\"} 1",
            "corral_worker_actions_total{code=\"DEADLINE_EXCEEDED\"} 1",
            "corral_worker_stage_seconds_bucket{stage=\"fetch_inputs\",le=\"0.5\"} 1",
            "corral_worker_stage_seconds_sum{stage=\"fetch_inputs\"} 0.5",
            "corral_worker_stage_seconds_sum{stage=\"execute\"} 2",
            "corral_worker_stage_seconds_count{stage=\"upload_outputs\"} 0",
            "corral_worker_slots{state=\"idle\"} 2",
            "corral_worker_slots{state=\"executing\"} 1",
            "corral_worker_file_cache_bytes 0",
            "corral_worker_file_cache_files 0",
            "corral_worker_file_cache_downloads_total 0",
            "corral_worker_input_copies_total{reason=\"link_limit\"} 0",
            "corral_worker_input_copies_total{reason=\"unprotected\"} 0",
        ] {
            assert!(series.contains(&expected), "{expected} not in\n{page}");
        }
        drop(busy);
        assert_eq!(metrics.executing.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn stage_times_need_both_ends_in_order() {
        assert_eq!(
            between(at(1, 0).as_ref(), at(2, 5).as_ref()),
            Some(Duration::new(1, 5))
        );
        assert_eq!(between(None, at(2, 0).as_ref()), None);
        assert_eq!(between(at(3, 0).as_ref(), at(2, 0).as_ref()), None);
    }
}
