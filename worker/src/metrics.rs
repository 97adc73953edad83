//! Prometheus metrics of one worker: actions finished by status, the time
//! each spent in its three stages, slots by state, the file cache, and
//! the image store.
//! Counters and histograms are recorded as actions end; gauges are read
//! when the page is scraped. On prometheus-client, through
//! `corral_metrics`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_metrics::prometheus_client::metrics::counter::Counter;
use corral_metrics::prometheus_client::metrics::gauge::Gauge;
use corral_metrics::prometheus_client::registry::Registry;
use corral_metrics::{
    code_name, labels, observe, register, Counters, Declared, Gauges, Histograms,
};
use corral_proto::protobuf::Timestamp;
use corral_proto::reapi::ExecutedActionMetadata;

use crate::file_cache::{CopyReason, FileCache};

/// Everything [`Page::render`] writes, with its help text: the names
/// operators' dashboards use, pinned by a test, and the list a test
/// checks every metric against, so none is declared and never set.
pub const DECLARED: [Declared; 9] = [
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
    (
        "corral_worker_image_cache_bytes",
        "gauge",
        "Bytes of unpacked container images kept ([images] max_bytes bounds it).",
    ),
    (
        "corral_worker_image_pulls_total",
        "counter",
        "Container images pulled and unpacked (a pull shared by concurrent actions counts once).",
    ),
];

/// What the worker records as actions run; shared by its slots.
#[derive(Debug)]
pub struct Metrics {
    /// By `code`, the status code name.
    actions: Counters,
    /// By `stage`.
    stages: Histograms,
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

/// The worker's stages, as their `stage` label says them.
const STAGES: [&str; 3] = ["fetch_inputs", "execute", "upload_outputs"];

impl Metrics {
    /// Metrics of a worker with `slots` build slots.
    pub fn new(slots: usize) -> Metrics {
        let stages = corral_metrics::duration_histograms();
        // Every stage has its series from the start, at zero.
        for stage in STAGES {
            let _ = stages.get_or_create(&labels([("stage", stage)]));
        }
        Metrics {
            actions: Counters::default(),
            stages,
            slots,
            executing: AtomicUsize::new(0),
        }
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
        self.actions
            .get_or_create(&labels([("code", code_name(code))]))
            .inc();
        let stages = [
            (
                &meta.input_fetch_start_timestamp,
                &meta.input_fetch_completed_timestamp,
            ),
            (
                &meta.execution_start_timestamp,
                &meta.execution_completed_timestamp,
            ),
            (
                &meta.output_upload_start_timestamp,
                &meta.output_upload_completed_timestamp,
            ),
        ];
        for (stage, (from, to)) in STAGES.into_iter().zip(stages) {
            if let Some(took) = between(from.as_ref(), to.as_ref()) {
                observe(
                    &self.stages.get_or_create(&labels([("stage", stage)])),
                    took,
                );
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
    /// The image store, when `[images]` is enabled.
    pub images: Option<corral_image::ImageStore>,
}

impl Page {
    /// The Prometheus text page, now.
    pub fn render(&self) -> String {
        // Gauges are read now, into a registry made for this page: cheap
        // (a handful of metrics), and two scrapes share nothing to race on.
        let mut registry = Registry::default();
        let r = &mut registry;
        let metrics = &self.metrics;
        register(r, DECLARED[0], metrics.actions.clone());
        register(r, DECLARED[1], metrics.stages.clone());
        let executing = metrics.executing.load(Ordering::Relaxed);
        let idle = metrics.slots.saturating_sub(executing);
        let slots = Gauges::default();
        for (state, n) in [("idle", idle), ("executing", executing)] {
            slots
                .get_or_create(&labels([("state", state)]))
                .set(count(n));
        }
        register(r, DECLARED[2], slots);
        let (bytes, files) = self.cache.usage();
        register(r, DECLARED[3], gauge_of(count(bytes)));
        register(r, DECLARED[4], gauge_of(count(files)));
        let downloads = Counter::<u64>::default();
        downloads.inc_by(self.cache.downloads());
        register(r, DECLARED[5], downloads);
        let copies = Counters::default();
        for reason in [CopyReason::LinkLimit, CopyReason::Unprotected] {
            copies
                .get_or_create(&labels([("reason", reason.label())]))
                .inc_by(self.cache.copies(reason));
        }
        register(r, DECLARED[6], copies);
        let (image_bytes, pulls) = self
            .images
            .as_ref()
            .map_or((0, 0), |s| (s.total_bytes(), s.pulls()));
        register(r, DECLARED[7], gauge_of(count(image_bytes)));
        let pulled = Counter::<u64>::default();
        pulled.inc_by(pulls);
        register(r, DECLARED[8], pulled);
        corral_metrics::encode(&registry)
    }
}

/// A gauge set to `value`.
fn gauge_of(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// A count as a gauge's value.
fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
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
            images: None,
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
            "corral_worker_stage_seconds_sum{stage=\"execute\"} 2.0",
            "corral_worker_stage_seconds_count{stage=\"upload_outputs\"} 0",
            "corral_worker_slots{state=\"idle\"} 2",
            "corral_worker_slots{state=\"executing\"} 1",
            "corral_worker_file_cache_bytes 0",
            "corral_worker_file_cache_files 0",
            "corral_worker_file_cache_downloads_total 0",
            "corral_worker_input_copies_total{reason=\"link_limit\"} 0",
            "corral_worker_input_copies_total{reason=\"unprotected\"} 0",
            "corral_worker_image_cache_bytes 0",
            "corral_worker_image_pulls_total 0",
        ] {
            assert!(series.contains(&expected), "{expected} not in\n{page}");
        }
        drop(busy);
        assert_eq!(metrics.executing.load(Ordering::Relaxed), 0);
    }

    /// Operators' dashboards and alerts use these names: a change here is
    /// a change for every farm that scrapes a worker.
    #[test]
    fn the_worker_metric_names_are_pinned() {
        let names: Vec<&str> = DECLARED.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(
            names,
            [
                "corral_worker_actions_total",
                "corral_worker_stage_seconds",
                "corral_worker_slots",
                "corral_worker_file_cache_bytes",
                "corral_worker_file_cache_files",
                "corral_worker_file_cache_downloads_total",
                "corral_worker_input_copies_total",
                "corral_worker_image_cache_bytes",
                "corral_worker_image_pulls_total",
            ]
        );
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
