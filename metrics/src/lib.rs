//! Prometheus text pages for Corral's daemons (histograms of durations,
//! label escaping, status code names) and the daemons' HTTP port.
//!
//! Modules:
//! - this file — the exposition format: each daemon keeps its own
//!   metrics and renders its own page with these; `corral up` serves
//!   several pages as one.
//! - [`http`] — the HTTP port: `/metrics`, `/healthz`, `/readyz`, and
//!   whatever else a daemon routes there (the scheduler's web UI), over
//!   TLS when the daemon hands a rustls config in ([`Listener::tls`]).
//!
//! This crate builds no TLS config and checks no readiness itself, so it
//! stays free of our other crates.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::time::Duration;

pub mod http;

pub use axum;
pub use http::{check, serve, serving_while, Check, Listener, PeerCertificate};
pub use tokio_rustls::rustls;

/// Bucket bounds, in seconds, of every histogram: from a cache-warm
/// compile to the longest timeout allowed by default.
const BUCKETS_S: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A histogram of durations over [`BUCKETS_S`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket of [`BUCKETS_S`], then +Inf; not cumulative.
    counts: [u64; BUCKETS_S.len() + 1],
    sum_s: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: Duration) {
        let s = value.as_secs_f64();
        let bucket = BUCKETS_S
            .iter()
            .position(|&bound| s <= bound)
            .unwrap_or(BUCKETS_S.len());
        self.counts[bucket] += 1;
        self.sum_s += s;
    }

    /// Writes the series of `name` (buckets, sum, count) to `out`.
    pub fn render(&self, out: &mut String, name: &str) {
        self.render_labeled(out, name, "");
    }

    /// Like [`render`](Self::render), for one member of a labeled family:
    /// `labels` (e.g. `stage="execute"`, already escaped) go on every
    /// line, before `le`.
    pub fn render_labeled(&self, out: &mut String, name: &str, labels: &str) {
        let (with_le, alone) = if labels.is_empty() {
            (String::new(), String::new())
        } else {
            (format!("{labels},"), format!("{{{labels}}}"))
        };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS_S.iter().zip(self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{with_le}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS_S.len()];
        let _ = writeln!(out, "{name}_bucket{{{with_le}le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{alone} {}", self.sum_s);
        let _ = writeln!(out, "{name}_count{alone} {cumulative}");
    }
}

/// A metric a page declares: name, type and help text. A daemon lists
/// every metric it renders, so a test can check none is declared and
/// never set.
pub type Declared = (&'static str, &'static str, &'static str);

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
        // A sample is `name{labels} value`, `name value`, or a
        // histogram's `name_bucket`, `_sum` or `_count`.
        let family = line.split(['{', ' ']).next().unwrap_or_default();
        let of = |name: &str| {
            family == name
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| family.strip_suffix(suffix) == Some(name))
        };
        if !declared.iter().any(|(name, _, _)| of(name)) {
            return Err(format!("undeclared sample: {line}"));
        }
    }
    for (name, _, _) in declared {
        let sampled = page.lines().any(|l| {
            !l.starts_with('#')
                && l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' ', '_'])
        });
        if !sampled {
            return Err(format!("{name} has no sample"));
        }
    }
    Ok(())
}

/// Writes the `# HELP` and `# TYPE` lines of `metric`; returns its name.
pub fn header(out: &mut String, metric: Declared) -> &'static str {
    let (name, kind, help) = metric;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name
}

/// `value` escaped for a label: backslash, quote and newline.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        h.observe(Duration::from_secs(7200));
        let mut out = String::new();
        h.render(&mut out, "x");
        assert!(out.contains("x_bucket{le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"3600\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn labels_go_before_le_and_on_sum_and_count() {
        let mut h = Histogram::default();
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render_labeled(&mut out, "x", "stage=\"run\"");
        assert!(
            out.contains("x_bucket{stage=\"run\",le=\"5\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_sum{stage=\"run\"} 2\n"), "{out}");
        assert!(out.contains("x_count{stage=\"run\"} 1\n"), "{out}");
    }

    #[test]
    fn a_page_is_checked_against_its_declarations() {
        const DECLARED: [Declared; 2] = [
            ("a_total", "counter", "A."),
            ("b_seconds", "histogram", "B."),
        ];
        let mut page = String::new();
        let name = header(&mut page, DECLARED[0]);
        page.push_str(&format!("{name}{{code=\"OK\"}} 1\n"));
        let name = header(&mut page, DECLARED[1]);
        Histogram::default().render(&mut page, name);
        assert_eq!(check_page(&page, &DECLARED), Ok(()));
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
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
