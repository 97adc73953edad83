//! Prometheus metrics: queue length per platform, operations by stage,
//! workers by state, queue wait and execution time histograms, results
//! by status. Gauges are read from the state when scraped; histograms and
//! counters are recorded as things happen.
//!
//! Served as text on `GET /metrics` by [`serve`], a deliberately tiny
//! HTTP/1.1 responder: one fixed page does not justify an HTTP stack.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::assignment::Assignments;
use crate::operation::{Operations, Progress};

/// Bucket bounds, in seconds, of both histograms: from a cache-warm
/// compile to the longest timeout allowed by default.
const BUCKETS_S: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Largest request head read before answering; scrapers send a few
/// hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 << 10;

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket of [`BUCKETS_S`], then +Inf; not cumulative.
    counts: [u64; BUCKETS_S.len() + 1],
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, value: Duration) {
        let s = value.as_secs_f64();
        let bucket = BUCKETS_S
            .iter()
            .position(|&bound| s <= bound)
            .unwrap_or(BUCKETS_S.len());
        self.counts[bucket] += 1;
        self.sum_s += s;
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS_S.iter().zip(self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS_S.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_s);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[derive(Debug, Default)]
struct Recorded {
    queue_wait: Histogram,
    execution: Histogram,
    /// (status code name, from the cache) → operations completed.
    results: BTreeMap<(&'static str, bool), u64>,
}

/// What is recorded as it happens.
#[derive(Debug, Default)]
pub struct Metrics {
    recorded: Mutex<Recorded>,
}

/// Everything [`Metrics::render`] writes, with its help text: the list a
/// test checks every metric against, so none is declared and never set.
pub const DECLARED: [(&str, &str, &str); 6] = [
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

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // Counters only ever add: a panic mid-update loses one sample.
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn queue_wait(&self, waited: Duration) {
        self.recorded().queue_wait.observe(waited);
    }

    pub fn execution(&self, took: Duration) {
        self.recorded().execution.observe(took);
    }

    /// An operation completed with `code`; `cached` for Action Cache hits.
    pub fn result(&self, code: tonic::Code, cached: bool) {
        let name = code_name(code);
        *self.recorded().results.entry((name, cached)).or_default() += 1;
    }

    /// The Prometheus text page.
    pub fn render(&self, assignments: &Assignments, operations: &Mutex<Operations>) -> String {
        let mut out = String::new();
        let header = |out: &mut String, index: usize| {
            let (name, kind, help) = DECLARED[index];
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            name
        };
        let snapshot = assignments.snapshot();
        let name = header(&mut out, 0);
        for ((instance, platform), len) in &snapshot.queued {
            let _ = writeln!(
                out,
                "{name}{{instance=\"{}\",platform=\"{}\"}} {len}",
                label(instance),
                label(&platform.to_string())
            );
        }
        let name = header(&mut out, 1);
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
            let _ = writeln!(out, "{name}{{stage=\"{stage}\"}} {n}");
        }
        let name = header(&mut out, 2);
        for (state, n) in [
            ("idle", snapshot.idle_workers),
            ("executing", snapshot.executing_workers),
            ("draining", snapshot.draining_workers),
        ] {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {n}");
        }
        let recorded = self.recorded();
        let name = header(&mut out, 3);
        recorded.queue_wait.render(&mut out, name);
        let name = header(&mut out, 4);
        recorded.execution.render(&mut out, name);
        let name = header(&mut out, 5);
        for ((code, cached), n) in &recorded.results {
            let _ = writeln!(out, "{name}{{code=\"{code}\",cached=\"{cached}\"}} {n}");
        }
        out
    }
}

/// The canonical gRPC name of `code`, as in google/rpc/code.proto.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Answers one scrape: `GET /metrics` gets `page()`, anything else 404.
async fn answer(mut stream: TcpStream, page: impl FnOnce() -> String) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") {
        ("200 OK", page())
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves `page()` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    page: impl Fn() -> String + Clone + Send + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let mut scrapes = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let page = page.clone();
                // A scraper that stalls holds only its own connection;
                // finished ones are reaped as others arrive.
                scrapes.spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        answer(stream, page),
                    )
                    .await;
                });
                while scrapes.try_join_next().is_some() {}
            }
        }
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
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
