//! The scheduler's cost of one assignment (what a Synchronize does under
//! the scheduler's lock: pick the queue, pop the action, record it
//! running, then take its completion) with 1,000 queues, against a
//! baseline measured in the same run: the same with one queue.
//!
//! Shapes, each holding 100,000 queued actions before timing starts:
//! - baseline: one tenant, one platform (one queue);
//! - 1,000 tenants, one platform each the worker serves (tenants' turns);
//! - one tenant, 1,000 platforms the worker serves (`cores` matched as
//!   `minimum`: cores=1 to 1000, the worker offers 1000);
//! - 999 queues of a platform the worker does not serve, and one it does
//!   (a scan of every queue would show here): 99,900 actions unserved.
//!
//! `cargo bench -p corral-scheduler --bench assignment`. Target: every
//! shape within 3x the baseline (no cost growing with the queues).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use corral_proto::reapi::{Action, Digest, ExecuteResponse};
use corral_scheduler::assignment::{Assignments, Queued, WorkerId};
use corral_scheduler::config::FairnessConfig;
use corral_scheduler::operation::Operation;
use corral_scheduler::platform_matching::{Matching, PlatformMatcher};
use corral_scheduler::queue::PlatformKey;
use corral_scheduler::{Config, Timing};

const QUEUED: usize = 100_000;
const TIMED: usize = 50_000;
const ROUNDS: usize = 5;

fn platform(properties: &[(&str, &str)]) -> PlatformKey {
    PlatformKey::new(
        properties
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    )
}

fn queued(n: usize, instance: &str, platform: &PlatformKey) -> Queued {
    let digest = Digest {
        hash: format!("{n:064x}"),
        size_bytes: 1,
    };
    Queued {
        operation: Arc::new(Operation::new(
            format!("operations/{n}"),
            instance.to_owned(),
            digest.clone(),
            1,
        )),
        action_digest: digest,
        action: Action::default(),
        digest_function: 1,
        instance_name: instance.to_owned(),
        platform: platform.clone(),
        queued_at: SystemTime::now(),
        waiting_since: tokio::time::Instant::now(),
        retries: 0,
        size_class: Default::default(),
    }
}

/// A shape: its name, and how its queues are filled.
struct Shape {
    name: &'static str,
    fill: fn(&Assignments),
}

/// The worker's platform in every shape.
fn worker_platform() -> PlatformKey {
    platform(&[("OSFamily", "linux"), ("cores", "1000")])
}

fn push(a: &Assignments, n: usize, instance: &str, platform: &PlatformKey) {
    a.enqueue(queued(n, instance, platform), 0, "");
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "baseline: 1 queue",
        fill: |a| {
            let p = worker_platform();
            (0..QUEUED).for_each(|n| push(a, n, "", &p));
        },
    },
    Shape {
        name: "1,000 tenants x 1 platform",
        fill: |a| {
            let p = worker_platform();
            (0..QUEUED).for_each(|n| push(a, n, &format!("tenant-{}", n % 1000), &p));
        },
    },
    Shape {
        name: "1 tenant x 1,000 platforms (cores minimum)",
        fill: |a| {
            let platforms: Vec<PlatformKey> = (1..=1000)
                .map(|c| platform(&[("OSFamily", "linux"), ("cores", &c.to_string())]))
                .collect();
            (0..QUEUED).for_each(|n| push(a, n, "", &platforms[n % 1000]));
        },
    },
    Shape {
        name: "999 queues unserved + 1 served",
        fill: |a| {
            let mac = platform(&[("OSFamily", "macos")]);
            (0..99_900).for_each(|n| push(a, n, &format!("mac-{}", n % 999), &mac));
            let p = worker_platform();
            (0..QUEUED).for_each(|n| push(a, 99_900 + n, "", &p));
        },
    },
];

/// Nanoseconds per assignment and completion, with `shape`'s queues full.
fn measure(shape: &Shape) -> f64 {
    let timing = Timing::from_config(&Config::default());
    let matcher = PlatformMatcher::new(BTreeMap::from([("cores".to_owned(), Matching::Minimum)]));
    let assignments = Assignments::new(&timing, 3).with_rules(matcher, FairnessConfig::default());
    (shape.fill)(&assignments);
    let worker: WorkerId = [("slot".to_owned(), "0".to_owned())].into();
    let offers = worker_platform();
    assignments.saw_worker(&worker, "", &offers);
    let start = Instant::now();
    for _ in 0..TIMED {
        let got = assignments
            .try_assign(&worker, "", &offers)
            .expect("a served action is queued");
        assignments
            .complete(
                &worker,
                &got.queued.action_digest,
                ExecuteResponse::default(),
            )
            .expect("its own action");
        black_box(got);
    }
    start.elapsed().as_nanos() as f64 / TIMED as f64
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!(
            "assignment + completion, ns each ({TIMED} timed, at least {QUEUED} queued), \
             median of {ROUNDS}, shapes interleaved:"
        );
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); SHAPES.len()];
        for _ in 0..ROUNDS {
            for (shape, t) in SHAPES.iter().zip(&mut times) {
                t.push(measure(shape));
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let medians: Vec<f64> = times.iter_mut().map(median).collect();
        let baseline = medians[0];
        for (shape, ns) in SHAPES.iter().zip(&medians) {
            println!(
                "  {:<45} {:>8.0} ns  {:.2}x baseline (target <= 3x)",
                shape.name,
                ns,
                ns / baseline
            );
        }
    });
}
