//! Prometheus pages for Corral's daemons, on the `prometheus-client`
//! crate (the Prometheus project's Rust client), and the daemons' HTTP
//! port.
//!
//! Modules:
//! - this file — what every daemon's metrics share: a [`Registry`] built
//!   from a daemon's list of [`Declared`] metrics (names, types and help
//!   texts, pinned by each daemon's tests, since dashboards depend on
//!   them), the bucket bounds of every duration histogram, the text
//!   encoding, and a checker of rendered pages. `corral up` serves
//!   several daemons' pages as one.
//! - [`http`] — the HTTP port: `/metrics`, `/healthz`, `/readyz`, and
//!   whatever else a daemon routes there (the scheduler's web UI), over
//!   TLS when the daemon hands a rustls config in ([`Listener::tls`]).
//!
//! This crate builds no TLS config and checks no readiness itself, so it
//! stays free of our other crates.

#![forbid(unsafe_code)]

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub mod http;

pub use axum;
pub use http::{check, serve, serving_while, Check, Listener, PeerCertificate};
pub use prometheus_client;
pub use tokio_rustls::rustls;

/// Bucket bounds, in seconds, of every duration histogram: from a
/// cache-warm compile to the longest timeout allowed by default.
pub const BUCKETS_S: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Bucket bounds, in seconds, of the histograms of storage calls and
/// sandbox spawns, which take from a fraction of a millisecond (a cached
/// lookup) to seconds (a large upload).
pub const FAST_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The labels of one series: names and values, in the order written.
pub type Labels = Vec<(&'static str, String)>;

/// A family of counters by [`Labels`].
pub type Counters = Family<Labels, prometheus_client::metrics::counter::Counter>;

/// A family of gauges by [`Labels`].
pub type Gauges = Family<Labels, prometheus_client::metrics::gauge::Gauge>;

/// A family of duration histograms (over [`BUCKETS_S`]) by [`Labels`].
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// A histogram of durations over [`BUCKETS_S`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(BUCKETS_S)
}

/// A histogram of durations over [`FAST_BUCKETS_S`].
pub fn fast_histogram() -> Histogram {
    Histogram::new(FAST_BUCKETS_S)
}

/// A family of histograms over [`BUCKETS_S`].
pub fn duration_histograms() -> Histograms {
    Family::new_with_constructor(duration_histogram)
}

/// A family of histograms over [`FAST_BUCKETS_S`].
pub fn fast_histograms() -> Histograms {
    Family::new_with_constructor(fast_histogram)
}

/// Records `value` in `histogram`, in seconds.
pub fn observe(histogram: &Histogram, value: Duration) {
    histogram.observe(value.as_secs_f64());
}

/// A metric a page declares: its name as on the page (a counter's with
/// `_total`), its Prometheus type and help text. A daemon lists every
/// metric it renders: the list registers them ([`register`]), and tests
/// pin it and check none is declared and never set ([`check_page`]).
pub type Declared = (&'static str, &'static str, &'static str);

/// Registers `metric` in `registry` under the name and help of
/// `declared`. prometheus-client appends `_total` to a counter's name
/// itself, so it is taken off here.
pub fn register(registry: &mut Registry, declared: Declared, metric: impl Metric) {
    let (name, kind, help) = declared;
    let name = match kind {
        "counter" => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    // The client adds a final period to help texts; ours have one.
    let help = help.strip_suffix('.').unwrap_or(help);
    registry.register(name, help, metric);
}

/// The page of `registry` in the Prometheus text format (0.0.4), the one
/// every Prometheus reads and that pages can be joined in (OpenMetrics
/// ends each with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would mean a
    // metric the client cannot write, and the page is best served anyway.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// `(name, value)` pairs as [`Labels`].
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|&(k, v)| (k, v.to_owned())).collect()
}

/// Checks a rendered `page` against what it `declared`: every metric has
/// its `# TYPE` line and at least one sample, and no sample belongs to a
/// metric not declared. For the daemons' tests; the error says what is
/// wrong.
pub fn check_page(page: &str, declared: &[Declared]) -> Result<(), String> {
    for (name, kind, _) in declared {
        if !page.contains(&format!("# TYPE {name} {kind}\n")) {
            return Err(format!("{name} is not declared as a {kind}"));
        }
    }
    let samples = page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    for line in samples {
        let family = sample_family(line);
        if !declared.iter().any(|(name, _, _)| of(family, name)) {
            return Err(format!("undeclared sample: {line}"));
        }
    }
    for (name, _, _) in declared {
        let sampled = page
            .lines()
            .any(|l| !l.starts_with('#') && of(sample_family(l), name));
        if !sampled {
            return Err(format!("{name} has no sample"));
        }
    }
    Ok(())
}

/// The metric name of a sample line: `name{labels} value` or
/// `name value`.
fn sample_family(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or_default()
}

/// Whether a sample named `family` belongs to metric `name`: the name
/// itself or a histogram's `_bucket`, `_sum` or `_count`.
fn of(family: &str, name: &str) -> bool {
    family == name
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| family.strip_suffix(suffix) == Some(name))
}

/// The metric names a page has samples of (a histogram's under its own
/// name), each once, sorted: for tests that pin a daemon's names.
pub fn sampled_names(page: &str) -> Vec<String> {
    let typed: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut names: Vec<String> = page
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(sample_family)
        .map(|family| {
            typed
                .iter()
                .find(|name| of(family, name))
                .map_or(family, |name| name)
                .to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The canonical name of the gRPC status `code`, as in
/// google/rpc/code.proto.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = duration_histogram();
        observe(&h, Duration::from_millis(5));
        observe(&h, Duration::from_secs(2));
        observe(&h, Duration::from_secs(7200));
        let mut registry = Registry::default();
        register(&mut registry, ("x", "histogram", "X."), h);
        let out = encode(&registry);
        assert!(out.contains("x_bucket{le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"3600\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn labels_go_before_le_and_on_sum_and_count() {
        let family = duration_histograms();
        observe(
            &family.get_or_create(&labels([("stage", "run")])),
            Duration::from_secs(2),
        );
        let mut registry = Registry::default();
        register(&mut registry, ("x", "histogram", "X."), family);
        let out = encode(&registry);
        assert!(
            out.contains("x_bucket{stage=\"run\",le=\"5\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_sum{stage=\"run\"} 2.0\n"), "{out}");
        assert!(out.contains("x_count{stage=\"run\"} 1\n"), "{out}");
    }

    #[test]
    fn counters_keep_their_declared_names_and_help() {
        let counters = Counters::default();
        counters.get_or_create(&labels([("code", "OK")])).inc();
        let mut registry = Registry::default();
        register(&mut registry, ("a_total", "counter", "A."), counters);
        let out = encode(&registry);
        assert_eq!(
            out,
            "# HELP a_total A.\n# TYPE a_total counter\na_total{code=\"OK\"} 1\n"
        );
    }

    #[test]
    fn a_page_is_checked_against_its_declarations() {
        const DECLARED: [Declared; 2] = [
            ("a_total", "counter", "A."),
            ("b_seconds", "histogram", "B."),
        ];
        let counters = Counters::default();
        counters.get_or_create(&labels([("code", "OK")])).inc();
        let mut registry = Registry::default();
        register(&mut registry, DECLARED[0], counters);
        register(&mut registry, DECLARED[1], duration_histogram());
        let page = encode(&registry);
        assert_eq!(check_page(&page, &DECLARED), Ok(()), "{page}");
        assert_eq!(sampled_names(&page), ["a_total", "b_seconds"]);
        let undeclared = format!("{page}c_total 1\n");
        assert!(check_page(&undeclared, &DECLARED)
            .unwrap_err()
            .contains("c_total"));
        let unsampled = page.replace("a_total{code=\"OK\"} 1\n", "");
        assert!(check_page(&unsampled, &DECLARED)
            .unwrap_err()
            .contains("a_total"));
        let untyped = page.replace("# TYPE b_seconds histogram\n", "");
        assert!(check_page(&untyped, &DECLARED)
            .unwrap_err()
            .contains("b_seconds"));
    }

    #[test]
    fn labels_are_escaped() {
        let gauges = Gauges::default();
        gauges.get_or_create(&labels([("p", "a\"b\\c\nd")])).set(1);
        let mut registry = Registry::default();
        register(&mut registry, ("g", "gauge", "G."), gauges);
        let out = encode(&registry);
        assert!(out.contains("g{p=\"a\\\"b\\\\c\\nd\"} 1\n"), "{out}");
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }

    #[test]
    fn a_counter_without_labels_is_one_series() {
        let counter = Counter::<u64>::default();
        counter.inc_by(3);
        let mut registry = Registry::default();
        register(&mut registry, ("n_total", "counter", "N."), counter);
        assert!(encode(&registry).contains("\nn_total 3\n"));
    }
}
