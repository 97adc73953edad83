//! Matching queued actions with workers, and keeping track of what each
//! worker runs, so that a worker that goes silent has its action queued
//! again and a completion is accepted only from the worker assigned. Each
//! worker id is bound to the identity that first synchronized as it, so
//! that "the worker assigned" is an authenticated one. It
//! also remembers which platforms live workers offer, so that actions no
//! worker can take fail after a grace period instead of waiting forever.
//! Which queue a worker takes from is [`crate::dispatch`]'s choice: fair
//! between tenants, platforms matched per property.
//!
//! Time comes from `tokio::time`, so tests run on paused time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_proto::reapi::{Action, Digest, ExecuteResponse};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::FairnessConfig;
pub use crate::dispatch::instance_matches;
use crate::dispatch::{CapError, Dispatch, QueueKey};
use crate::drain::{Drain, DrainQueue};
use crate::metrics::Metrics;
use crate::operation::Operation;
use crate::platform_matching::{Mismatch, PlatformError, PlatformMatcher};
use crate::queue::{PlatformKey, Queue};
use crate::size_class::{self, SizeClasses};
use crate::timing::Timing;

/// A worker (or one build slot of one), as its `worker_id` map names it.
pub type WorkerId = BTreeMap<String, String>;

/// An action waiting for a worker.
#[derive(Debug, Clone)]
pub struct Queued {
    pub operation: Arc<Operation>,
    pub action_digest: Digest,
    /// With its timeout filled in.
    pub action: Action,
    pub digest_function: i32,
    pub instance_name: String,
    /// The platform it needs.
    pub platform: PlatformKey,
    pub queued_at: std::time::SystemTime,
    /// When it last entered a queue, for the queue wait metric.
    pub waiting_since: Instant,
    /// Times it was given back after losing its worker.
    pub retries: u32,
    /// The smallest size class of worker that may take it, and the key
    /// its outcomes are learned under.
    pub size_class: size_class::Choice,
}

/// What the worker is told to run.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub queued: Queued,
    /// The part of the instance name after the worker's prefix.
    pub instance_name_suffix: String,
}

/// Why a completion report is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("this worker's action was taken back from it")]
    TakenBack,
    #[error("this worker has no action assigned")]
    NothingAssigned,
    #[error("this worker was assigned {assigned}, not {reported}")]
    OtherAction { assigned: String, reported: String },
}

#[derive(Debug)]
struct Running {
    queued: Queued,
    /// When the worker got it, for the execution time metric.
    started: Instant,
    /// When the worker must have reported again.
    deadline: Instant,
}

/// Why a worker's call is refused before anything else.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    // Names neither identity: a caller learns no other caller's name.
    #[error("{caller} may not synchronize as this worker id: another identity does")]
    OtherIdentity { caller: String },
}

/// What a worker announced the last time it synchronized.
#[derive(Debug)]
struct Seen {
    prefix: String,
    platform: PlatformKey,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    queues: HashMap<QueueKey, Queue<Queued>>,
    /// Which queue each class of worker takes from next; kept in step
    /// with `queues` ([`Inner::queue_changed`]) and `running`.
    dispatch: Dispatch,
    running: HashMap<WorkerId, Running>,
    workers: HashMap<WorkerId, Seen>,
    /// The identity (`Caller::name`) each worker id is bound to, while
    /// the worker is alive or runs an action.
    identities: HashMap<WorkerId, String>,
    /// Non-empty queues no live worker serves, since when.
    unserved_since: HashMap<QueueKey, Instant>,
    /// Workers that get no new work.
    drains: Vec<Drain>,
    /// Workers whose action this scheduler took from them (a missed
    /// report, a cancel) while they may still run it: at their next
    /// Executing report they are told to drop it. A worker executing
    /// an action this scheduler neither assigned nor took back (it was
    /// handed out before a restart) is let finish: its result reaches
    /// the Action Cache, where a client's retried Execute finds it.
    taken_back: HashMap<WorkerId, Digest>,
    /// The size class each live worker announced.
    worker_classes: HashMap<WorkerId, u32>,
    /// Long polls waiting for work, by a number drawn per poll, oldest
    /// first: a new action wakes one of them that can take it.
    waiting: BTreeMap<u64, Waiting>,
}

/// A worker's long poll, registered while it waits.
#[derive(Debug)]
struct Waiting {
    worker: WorkerId,
    prefix: String,
    platform: PlatformKey,
    class: crate::dispatch::ClassKey,
    wake: Arc<Notify>,
}

impl Inner {
    fn draining(&self, worker: &WorkerId, prefix: &str, platform: &PlatformKey) -> bool {
        self.drains
            .iter()
            .any(|d| d.stops(worker, prefix, platform))
    }

    /// Wakes the oldest waiting long poll that has something to take now,
    /// and forgets it (it registers again if it finds nothing). One
    /// action queued wakes one poll: waking them all made every other
    /// idle worker lock the queues, find nothing and wait again, work
    /// that grew with the number of idle workers on every Execute.
    fn wake_one(&mut self) {
        let found = self.waiting.iter().find_map(|(id, w)| {
            let can_take = !self.draining(&w.worker, &w.prefix, &w.platform)
                && self.dispatch.pick(&w.class).is_some();
            can_take.then_some(*id)
        });
        if let Some(waiting) = found.and_then(|id| self.waiting.remove(&id)) {
            waiting.wake.notify_one();
        }
    }

    /// Forgets workers silent for longer than `liveness`.
    fn forget_silent_workers(&mut self, now: Instant, liveness: Duration) {
        self.workers
            .retain(|_, seen| now.duration_since(seen.at) <= liveness);
        let (workers, running) = (&self.workers, &self.running);
        self.identities
            .retain(|w, _| workers.contains_key(w) || running.contains_key(w));
        self.taken_back.retain(|w, _| workers.contains_key(w));
        self.worker_classes.retain(|w, _| workers.contains_key(w));
        let live: std::collections::HashSet<(&str, &PlatformKey)> = workers
            .values()
            .map(|w| (w.prefix.as_str(), &w.platform))
            .collect();
        self.dispatch
            .retain_classes(|(prefix, platform)| live.contains(&(prefix.as_str(), platform)));
    }

    /// The size classes of the live workers serving `instance` with
    /// `platform`, sorted.
    fn offered_size_classes(&self, instance: &str, platform: &PlatformKey) -> Vec<u32> {
        let mut classes: Vec<u32> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                instance_matches(&w.prefix, instance)
                    && self.dispatch.matcher().satisfies(&w.platform, platform)
            })
            .map(|(id, _)| self.worker_classes.get(id).copied().unwrap_or(0))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    }

    /// With size classes: the next action for a worker of `class` and
    /// size class `size` that it may run: of its size class, or of a
    /// smaller one no live worker offers any more (gone since the action
    /// was queued). The queue the index picks first, then, if it holds
    /// none such, every other queue the worker serves.
    fn pop_sized(
        &mut self,
        class: &crate::dispatch::ClassKey,
        prefix: &str,
        platform: &PlatformKey,
        size: u32,
    ) -> Option<Queued> {
        let picked = self.dispatch.pick(class)?;
        let mut keys = vec![picked.clone()];
        keys.extend(
            self.queues
                .iter()
                .filter(|(key, queue)| {
                    **key != picked
                        && !queue.is_empty()
                        && self.dispatch.may_start(&key.0)
                        && instance_matches(prefix, &key.0)
                        && self.dispatch.matcher().satisfies(platform, &key.1)
                })
                .map(|(key, _)| key.clone()),
        );
        // Cancelled operations may still sit in the queue, and ones a
        // worker from before a restart runs (adopted): skip them.
        let live = |q: &Queued| !q.operation.is_completed() && !q.operation.is_adopted();
        for key in keys {
            let offered = self.offered_size_classes(&key.0, &key.1);
            let fits = |q: &Queued| {
                let wanted = q.size_class.class;
                wanted == size || (wanted < size && !offered.contains(&wanted))
            };
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let found = std::iter::from_fn(|| queue.pop_first(|q| fits(q) || !live(q))).find(live);
            self.queue_changed(&key);
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Tells the index what `key`'s queue holds now.
    fn queue_changed(&mut self, key: &QueueKey) {
        let (head, len) = self
            .queues
            .get(key)
            .map_or((None, 0), |q| (q.head(), q.len()));
        self.dispatch.queue_changed(key, head, len);
    }

    /// Queues `queued` without checking its tenant's cap.
    fn push(&mut self, queued: Queued, priority: i32, invocation: &str) {
        let key = (queued.instance_name.clone(), queued.platform.clone());
        let seq = self.dispatch.next_seq();
        self.queues
            .entry(key.clone())
            .or_default()
            .push(queued, priority, invocation, seq);
        self.queue_changed(&key);
    }

    /// Takes `worker`'s running action off it, and its tenant's count.
    fn stop_running(&mut self, worker: &WorkerId) -> Option<Running> {
        let running = self.running.remove(worker)?;
        self.dispatch.ended(&running.queued.instance_name);
        Some(running)
    }

    /// Why live workers serving `instance` cannot take `platform`: per
    /// property that fails, what the action asks and what they offer.
    fn mismatches(&self, (instance, platform): &QueueKey) -> String {
        let mut failing: BTreeMap<String, (Mismatch, Vec<String>)> = BTreeMap::new();
        for seen in self.workers.values() {
            if !instance_matches(&seen.prefix, instance) {
                continue;
            }
            let Some(miss) = self.dispatch.matcher().mismatch(&seen.platform, platform) else {
                continue;
            };
            let (_, offered) = failing
                .entry(miss.name.clone())
                .or_insert_with(|| (miss.clone(), Vec::new()));
            if miss.offered.is_empty() {
                offered.push("nothing".to_owned());
            } else {
                offered.push(miss.offered.join(" and "));
            }
        }
        failing
            .into_values()
            .map(|(miss, mut offered)| {
                offered.sort();
                offered.dedup();
                let wanted = if miss.wanted.is_empty() {
                    "nothing".to_owned()
                } else {
                    miss.wanted.join(" and ")
                };
                format!(
                    "property {} ({}) asks {}, workers offer {}",
                    miss.name,
                    miss.matching,
                    wanted,
                    offered.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The platforms live workers offer, sorted, for messages.
    fn offered(&self) -> Vec<String> {
        let mut offered: Vec<String> = self
            .workers
            .values()
            .map(|w| {
                if w.prefix.is_empty() {
                    w.platform.to_string()
                } else {
                    format!("{} (instance {:?})", w.platform, w.prefix)
                }
            })
            .collect();
        offered.sort();
        offered.dedup();
        offered
    }
}

/// The status of an operation ended by the scheduler, not a worker.
fn status(code: tonic::Code, message: String) -> ExecuteResponse {
    ExecuteResponse {
        status: Some(corral_proto::rpc::Status {
            code: code as i32,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}

/// The queues and the running actions of a scheduler.
#[derive(Debug)]
pub struct Assignments {
    inner: Mutex<Inner>,
    work: Notify,
    /// How often executing workers must report.
    sync_interval: Duration,
    /// Grace past a missed report before the worker is gone.
    worker_timeout: Duration,
    /// How long after its last call a worker still counts as offering
    /// its platform: a whole long poll, plus the same grace.
    liveness: Duration,
    max_retries: u32,
    metrics: Arc<Metrics>,
    /// Learns from each completion where actions fit; `None`: size
    /// classes are off.
    size_classes: Option<Arc<SizeClasses>>,
}

/// Queue lengths and worker counts, for metrics.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub queued: Vec<((String, PlatformKey), usize)>,
    pub idle_workers: usize,
    pub executing_workers: usize,
    pub draining_workers: usize,
}

fn digest_text(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// Numbers each long poll, for [`Inner::waiting`].
static NEXT_POLL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A long poll's entry in [`Inner::waiting`], removed when dropped.
struct Registered<'a> {
    assignments: &'a Assignments,
    id: u64,
}

impl Drop for Registered<'_> {
    /// A poll no longer registered was woken (or took work). If its call
    /// ended before it looked (the worker went away), the wake would be
    /// lost and the action would wait for another poll's deadline: pass
    /// it on to the next poll that can take what is queued.
    fn drop(&mut self) {
        let mut inner = self.assignments.lock();
        if inner.waiting.remove(&self.id).is_none() {
            inner.wake_one();
        }
    }
}

impl Assignments {
    /// Every platform property matched exactly; tenants equal, uncapped.
    pub fn new(timing: &Timing, max_retries: u32) -> Self {
        Self {
            inner: Mutex::default(),
            work: Notify::new(),
            sync_interval: timing.sync_interval,
            worker_timeout: timing.worker_timeout,
            liveness: timing.long_poll.max(timing.sync_interval) + timing.worker_timeout,
            max_retries,
            metrics: Arc::default(),
            size_classes: None,
        }
    }

    /// Matches platforms with `matcher` and shares workers between
    /// tenants as `fairness` says.
    pub fn with_rules(mut self, matcher: PlatformMatcher, fairness: FairnessConfig) -> Self {
        self.inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .dispatch = Dispatch::new(matcher, fairness);
        self
    }

    /// Refuses an action's platform no worker could ever satisfy (a
    /// `minimum` property that is not a number).
    pub fn check_platform(&self, platform: &PlatformKey) -> Result<(), PlatformError> {
        self.lock().dispatch.matcher().check_action(platform)
    }

    /// Queued and running actions of `instance` (a tenant).
    pub fn load(&self, instance: &str) -> (usize, usize) {
        self.lock().dispatch.load(instance)
    }

    /// Learns where actions fit from their completions, and queues one
    /// that ran out of memory or time again for a larger class.
    pub fn with_size_classes(mut self, size_classes: Arc<SizeClasses>) -> Self {
        self.size_classes = Some(size_classes);
        self
    }

    /// `worker` announced size class `class`.
    pub fn saw_size_class(&self, worker: &WorkerId, class: u32) {
        self.lock().worker_classes.insert(worker.clone(), class);
    }

    /// The size classes live workers offer for `instance` and `platform`,
    /// sorted: where an action may start.
    pub fn offered_size_classes(&self, instance: &str, platform: &PlatformKey) -> Vec<u32> {
        self.lock().offered_size_classes(instance, platform)
    }

    /// Where results, waits and execution times are recorded.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queue lengths and workers by state, now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let mut snapshot = Snapshot {
            queued: inner
                .queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, q)| (k.clone(), q.len()))
                .collect(),
            ..Snapshot::default()
        };
        snapshot.queued.sort();
        for (worker, seen) in &inner.workers {
            if inner.running.contains_key(worker) {
                snapshot.executing_workers += 1;
            } else if inner.draining(worker, &seen.prefix, &seen.platform) {
                snapshot.draining_workers += 1;
            } else {
                snapshot.idle_workers += 1;
            }
        }
        snapshot
    }

    /// Binds `worker` to `caller` (a `Caller::name`) if no one else holds
    /// it; refuses another caller while the binding lasts (the worker is
    /// alive or runs an action).
    pub fn bind_worker(&self, worker: &WorkerId, caller: &str) -> Result<(), IdentityError> {
        let mut inner = self.lock();
        match inner.identities.get(worker) {
            Some(bound) if bound != caller => Err(IdentityError::OtherIdentity {
                caller: caller.to_owned(),
            }),
            Some(_) => Ok(()),
            None => {
                inner.identities.insert(worker.clone(), caller.to_owned());
                Ok(())
            }
        }
    }

    /// `worker` synchronized, serving instance names under `prefix` with
    /// `platform`.
    pub fn saw_worker(&self, worker: &WorkerId, prefix: &str, platform: &PlatformKey) {
        let seen = Seen {
            prefix: prefix.to_owned(),
            platform: platform.clone(),
            at: Instant::now(),
        };
        let mut inner = self.lock();
        inner.dispatch.class(prefix, platform);
        inner.workers.insert(worker.clone(), seen);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a single step on the maps; a panic elsewhere
        // cannot leave them half-changed.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `queued` for workers of its platform, whatever its
    /// tenant's cap on queued operations (tests, benches; Execute calls
    /// [`enqueue_within_cap`](Self::enqueue_within_cap)).
    pub fn enqueue(&self, queued: Queued, priority: i32, invocation: &str) {
        let mut inner = self.lock();
        inner.push(queued, priority, invocation);
        self.wake_for_new_work(inner);
    }

    /// After an action was queued: one waiting worker that can take it
    /// is woken. With size classes, which waiting worker fits is the
    /// size class's to say, so all are woken to look.
    fn wake_for_new_work(&self, mut inner: std::sync::MutexGuard<'_, Inner>) {
        if self.size_classes.is_some() {
            drop(inner);
            self.work.notify_waiters();
        } else {
            inner.wake_one();
        }
    }

    /// Queues `queued` unless its instance name has its cap of queued
    /// operations (`fairness.max_queued`).
    pub fn enqueue_within_cap(
        &self,
        queued: Queued,
        priority: i32,
        invocation: &str,
    ) -> Result<(), CapError> {
        let mut inner = self.lock();
        inner.dispatch.check_room(&queued.instance_name)?;
        inner.push(queued, priority, invocation);
        self.wake_for_new_work(inner);
        Ok(())
    }

    /// The next action for a worker serving instance names under `prefix`
    /// with `platform`, if one is queued that it may run: the tenant
    /// whose turn it is, then its most urgent, oldest action.
    pub fn try_assign(
        &self,
        worker: &WorkerId,
        prefix: &str,
        platform: &PlatformKey,
    ) -> Option<Assignment> {
        self.try_assign_locked(&mut self.lock(), worker, prefix, platform)
    }

    fn try_assign_locked(
        &self,
        inner: &mut Inner,
        worker: &WorkerId,
        prefix: &str,
        platform: &PlatformKey,
    ) -> Option<Assignment> {
        if inner.draining(worker, prefix, platform) {
            return None;
        }
        // A worker asking for work runs nothing: an action still recorded
        // on it was dropped (the service releases it first; this keeps
        // the tenant's running count right for any other caller).
        if let Some(dropped) = inner.stop_running(worker) {
            self.requeue_or_fail(inner, dropped.queued);
        }
        let class = inner.dispatch.class(prefix, platform);
        let queued = if self.size_classes.is_some() {
            let size = inner.worker_classes.get(worker).copied().unwrap_or(0);
            inner.pop_sized(&class, prefix, platform, size)?
        } else {
            loop {
                let key = inner.dispatch.pick(&class)?;
                let popped = inner.queues.get_mut(&key).and_then(Queue::pop);
                inner.queue_changed(&key);
                match popped {
                    // Cancelled operations may still sit in the queue, and ones
                    // a worker from before a restart runs (adopted): skip them.
                    Some(queued)
                        if queued.operation.is_completed() || queued.operation.is_adopted() =>
                    {
                        continue
                    }
                    Some(queued) => break queued,
                    // The index named an empty queue: it is corrected now.
                    None => continue,
                }
            }
        };
        inner.dispatch.started(&queued.instance_name);
        queued.operation.executing();
        let now = Instant::now();
        self.metrics
            .queue_wait(now.duration_since(queued.waiting_since));
        let suffix = suffix(prefix, &queued.instance_name);
        inner.running.insert(
            worker.clone(),
            Running {
                queued: queued.clone(),
                started: now,
                deadline: now + self.sync_interval,
            },
        );
        Some(Assignment {
            queued,
            instance_name_suffix: suffix,
        })
    }

    /// Like [`try_assign`](Self::try_assign), waiting up to `wait` for
    /// work to arrive (a long poll).
    pub async fn next_assignment(
        &self,
        worker: &WorkerId,
        prefix: &str,
        platform: &PlatformKey,
        wait: Duration,
    ) -> Option<Assignment> {
        let deadline = Instant::now() + wait;
        let wake = Arc::new(Notify::new());
        let id = NEXT_POLL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Unregisters the poll however it ends, a dropped call included.
        let _registered = Registered {
            assignments: self,
            id,
        };
        loop {
            // Created before checking, so that a wake in between counts:
            // `notify_waiters` reaches every `Notified` already made, and
            // `notify_one` leaves a permit when none waits.
            let everyone = self.work.notified();
            let mine = wake.notified();
            {
                let mut inner = self.lock();
                if let Some(assignment) =
                    self.try_assign_locked(&mut inner, worker, prefix, platform)
                {
                    inner.waiting.remove(&id);
                    return Some(assignment);
                }
                let class = inner.dispatch.class(prefix, platform);
                inner.waiting.insert(
                    id,
                    Waiting {
                        worker: worker.clone(),
                        prefix: prefix.to_owned(),
                        platform: platform.clone(),
                        class,
                        wake: Arc::clone(&wake),
                    },
                );
            }
            tokio::select! {
                () = everyone => {}
                () = mine => {}
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// An executing worker reported in: its next report is due one
    /// interval from now. [`ReportError::TakenBack`]: it must drop its
    /// action; [`ReportError::NothingAssigned`]: this scheduler never
    /// handed it out (it restarted since), and the worker may finish it.
    pub fn still_running(&self, worker: &WorkerId) -> Result<(), ReportError> {
        let mut inner = self.lock();
        let Some(running) = inner.running.get_mut(worker) else {
            return Err(match inner.taken_back.remove(worker) {
                Some(_) => ReportError::TakenBack,
                None => ReportError::NothingAssigned,
            });
        };
        running.deadline = Instant::now() + self.sync_interval;
        Ok(())
    }

    /// `worker` reported it is no longer executing what was taken back.
    pub fn forget_taken_back(&self, worker: &WorkerId) {
        self.lock().taken_back.remove(worker);
    }

    /// How long until an executing worker must report again (for
    /// `next_synchronization_at`).
    pub fn next_report_in(&self) -> Duration {
        self.sync_interval
    }

    /// A worker finished `action_digest` with `response`.
    pub fn complete(
        &self,
        worker: &WorkerId,
        action_digest: &Digest,
        response: ExecuteResponse,
    ) -> Result<(), ReportError> {
        let mut inner = self.lock();
        let running = inner
            .running
            .get(worker)
            .ok_or(ReportError::NothingAssigned)?;
        if running.queued.action_digest != *action_digest {
            return Err(ReportError::OtherAction {
                assigned: digest_text(&running.queued.action_digest),
                reported: digest_text(action_digest),
            });
        }
        let running = inner
            .stop_running(worker)
            .ok_or(ReportError::NothingAssigned)?;
        let ran = Instant::now().duration_since(running.started);
        let Some(running) = self.learn_size_class(&mut inner, worker, running, &response, ran)
        else {
            drop(inner);
            self.work.notify_waiters();
            return Ok(());
        };
        let code = response
            .status
            .as_ref()
            .map_or(tonic::Code::Ok, |s| tonic::Code::from(s.code));
        if running.queued.operation.complete(response) {
            self.metrics
                .execution(Instant::now().duration_since(running.started));
            self.metrics.result(code, false);
        }
        Ok(())
    }

    /// Records how `running` fared on `worker`'s size class; when it ran
    /// out of memory or time and a larger class is offered, queues it
    /// again for that class, ahead of everything (its client still
    /// waits), and returns `None`.
    fn learn_size_class(
        &self,
        inner: &mut Inner,
        worker: &WorkerId,
        running: Running,
        response: &ExecuteResponse,
        ran: Duration,
    ) -> Option<Running> {
        let (Some(sizes), Some(key)) = (&self.size_classes, &running.queued.size_class.key) else {
            return Some(running);
        };
        let queued = &running.queued;
        let class = inner
            .worker_classes
            .get(worker)
            .copied()
            .unwrap_or(queued.size_class.class);
        let outcome = size_class::Outcome::of(response, ran);
        sizes.record(key, class, outcome);
        if !outcome.is_failure() || queued.operation.is_completed() {
            return Some(running);
        }
        let offered = inner.offered_size_classes(&queued.instance_name, &queued.platform);
        let Some(larger) = size_class::next_larger(class, &offered) else {
            // The largest class failed too: that is the answer.
            return Some(running);
        };
        tracing::info!(
            ?outcome,
            from = class,
            to = larger,
            "queued again for a larger size class"
        );
        let mut queued = running.queued;
        queued.size_class.class = larger;
        queued.size_class.probing = false;
        queued.waiting_since = Instant::now();
        inner.push(queued, i32::MIN, "");
        None
    }

    /// Workers silent past their deadline plus the grace are gone: their
    /// actions are queued again ahead of everything else, or, past
    /// `max_retries`, completed with UNAVAILABLE. Returns how
    /// many workers were declared gone.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let gone: Vec<WorkerId> = inner
            .running
            .iter()
            .filter(|(_, r)| r.deadline + self.worker_timeout < now)
            .map(|(w, _)| w.clone())
            .collect();
        for worker in &gone {
            if let Some(running) = inner.stop_running(worker) {
                inner
                    .taken_back
                    .insert(worker.clone(), running.queued.action_digest.clone());
                self.requeue_or_fail(&mut inner, running.queued);
            }
        }
        if !gone.is_empty() {
            self.work.notify_waiters();
        }
        gone.len()
    }

    /// Gives back an action that lost its worker: queued again ahead of
    /// everything else, or, past `max_retries`, completed with
    /// UNAVAILABLE. A cancelled one is dropped.
    fn requeue_or_fail(&self, inner: &mut Inner, mut queued: Queued) {
        if queued.operation.is_completed() {
            return;
        }
        if queued.retries >= self.max_retries {
            let lost = status(
                tonic::Code::Unavailable,
                format!(
                    "the action lost its worker {} times; giving up",
                    queued.retries + 1
                ),
            );
            if queued.operation.complete(lost) {
                self.metrics.result(tonic::Code::Unavailable, false);
            }
            return;
        }
        queued.retries += 1;
        queued.waiting_since = Instant::now();
        // The lowest priority number: it has waited once already, so it
        // goes ahead of everything its tenant queued since.
        inner.push(queued, i32::MIN, "");
    }

    /// `worker` says it is idle: if it was running an action, it dropped
    /// it (it restarted, or its runner failed before reporting), so the
    /// action is given back. Returns whether there was one.
    pub fn release(&self, worker: &WorkerId) -> bool {
        let mut inner = self.lock();
        let Some(running) = inner.stop_running(worker) else {
            return false;
        };
        self.requeue_or_fail(&mut inner, running.queued);
        drop(inner);
        self.work.notify_waiters();
        true
    }

    /// Stops giving new work to workers of `queue` (`None`: of any queue)
    /// whose id contains every key and value of `pattern` (an empty
    /// pattern drains all); what they run now, they finish. Adding the
    /// same drain twice keeps one.
    pub fn drain(&self, queue: Option<DrainQueue>, pattern: WorkerId) {
        let mut inner = self.lock();
        if !inner.drains.iter().any(|d| d.is(queue.as_ref(), &pattern)) {
            inner.drains.push(Drain {
                queue,
                pattern,
                created: std::time::SystemTime::now(),
            });
        }
    }

    /// Undoes [`drain`](Self::drain) of exactly `queue` and `pattern`;
    /// false if there was no such drain.
    pub fn undrain(&self, queue: Option<&DrainQueue>, pattern: &WorkerId) -> bool {
        let mut inner = self.lock();
        let before = inner.drains.len();
        inner.drains.retain(|d| !d.is(queue, pattern));
        let removed = inner.drains.len() != before;
        drop(inner);
        self.work.notify_waiters();
        removed
    }

    /// The drains of `queue` (`None`: every drain), oldest first.
    pub fn drains(&self, queue: Option<&DrainQueue>) -> Vec<Drain> {
        self.lock()
            .drains
            .iter()
            .filter(|d| queue.is_none() || d.queue.as_ref() == queue)
            .cloned()
            .collect()
    }

    /// How many workers whose id contains `pattern` run an action now.
    pub fn running_matching(&self, pattern: &WorkerId) -> usize {
        self.lock()
            .running
            .keys()
            .filter(|w| crate::drain::matches(pattern, w))
            .count()
    }

    /// Fails the actions of every queue no live worker has served for
    /// `grace`, naming their platform and the platforms workers offer.
    /// Returns how many actions failed.
    pub fn fail_unserved(&self, grace: Duration) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.forget_silent_workers(now, self.liveness);
        let waiting: Vec<QueueKey> = inner
            .queues
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let mut unserved = HashMap::new();
        for key in waiting {
            if !inner.dispatch.served(&key) {
                let since = inner.unserved_since.get(&key).copied().unwrap_or(now);
                unserved.insert(key, since);
            }
        }
        inner.unserved_since = unserved;
        let expired: Vec<QueueKey> = inner
            .unserved_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(k, _)| k.clone())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        let offered = inner.offered();
        let offered = if offered.is_empty() {
            "no worker is connected".to_owned()
        } else {
            format!("workers offer: {}", offered.join("; "))
        };
        let mut failed = 0;
        for key in expired {
            inner.unserved_since.remove(&key);
            let why = inner.mismatches(&key);
            let Some(mut queue) = inner.queues.remove(&key) else {
                continue;
            };
            inner.queue_changed(&key);
            let (instance, platform) = &key;
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            };
            let message = format!(
                "no worker offers platform {platform} for instance {instance:?} \
                 (waited {}s){why}; {offered}",
                grace.as_secs()
            );
            while let Some(queued) = queue.pop() {
                if queued
                    .operation
                    .complete(status(tonic::Code::FailedPrecondition, message.clone()))
                {
                    self.metrics.result(tonic::Code::FailedPrecondition, false);
                    failed += 1;
                }
            }
        }
        failed
    }

    /// Ends `operation` with CANCELLED: out of its queue, and its worker,
    /// if it has one, is told to stop at its next synchronization.
    pub fn cancel(&self, operation: &Operation, why: &str) -> bool {
        self.kill(operation, status(tonic::Code::Cancelled, why.to_owned()))
    }

    /// [`cancel`](Self::cancel) with `response` as the operation's end
    /// (KillOperations chooses the status). False if it had ended.
    pub fn kill(&self, operation: &Operation, response: ExecuteResponse) -> bool {
        let mut inner = self.lock();
        let same = |q: &Queued| std::ptr::eq(Arc::as_ptr(&q.operation), operation);
        let changed: Vec<QueueKey> = inner
            .queues
            .iter_mut()
            .filter_map(|(key, queue)| (queue.remove_where(same) > 0).then(|| key.clone()))
            .collect();
        for key in &changed {
            inner.queue_changed(key);
        }
        let stopped: Vec<(WorkerId, Digest)> = inner
            .running
            .iter()
            .filter(|(_, r)| same(&r.queued))
            .map(|(w, r)| (w.clone(), r.queued.action_digest.clone()))
            .collect();
        for (worker, digest) in stopped {
            inner.stop_running(&worker);
            inner.taken_back.insert(worker, digest);
        }
        let code = response
            .status
            .as_ref()
            .map_or(tonic::Code::Ok, |s| tonic::Code::from(s.code));
        let ended = operation.complete(response);
        if ended {
            self.metrics.result(code, false);
        }
        ended
    }

    /// Whether `worker` runs an action (and so must keep reporting).
    pub fn is_running(&self, worker: &WorkerId) -> bool {
        self.lock().running.contains_key(worker)
    }

    /// Queued actions, over all queues.
    pub fn queued(&self) -> usize {
        self.lock().queues.values().map(Queue::len).sum()
    }
}

/// A worker as [`Assignments::workers_view`] sees it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: WorkerId,
    /// The instance name prefix and platform it announced last.
    pub prefix: String,
    pub platform: PlatformKey,
    /// Whether a drain stops it from taking new work.
    pub drained: bool,
    /// What it executes, and when it counts as gone unless it reports.
    pub running: Option<(Arc<Operation>, Instant)>,
}

/// A read-only copy of who serves what, for BuildQueueState: copied
/// under the lock, read without it.
#[derive(Debug, Clone, Default)]
pub struct WorkersView {
    /// Live workers (those that synchronized within their liveness).
    pub workers: Vec<WorkerView>,
    /// Every action being executed, by worker, including workers
    /// forgotten as silent whose action is not yet taken back.
    pub running: Vec<(WorkerId, Arc<Operation>)>,
    pub drains: Vec<Drain>,
    /// Queues (instance name, platform) no live worker serves, and since
    /// when.
    pub unserved_since: Vec<((String, PlatformKey), Instant)>,
    /// How actions' platforms match workers' (`[platform_matching]`).
    pub matcher: PlatformMatcher,
}

impl Assignments {
    /// Workers, running actions, drains and unserved queues, now.
    pub fn workers_view(&self) -> WorkersView {
        let inner = self.lock();
        let workers = inner
            .workers
            .iter()
            .map(|(id, seen)| WorkerView {
                id: id.clone(),
                prefix: seen.prefix.clone(),
                platform: seen.platform.clone(),
                drained: inner.draining(id, &seen.prefix, &seen.platform),
                running: inner.running.get(id).map(|r| {
                    (
                        Arc::clone(&r.queued.operation),
                        r.deadline + self.worker_timeout,
                    )
                }),
            })
            .collect();
        WorkersView {
            workers,
            running: inner
                .running
                .iter()
                .map(|(w, r)| (w.clone(), Arc::clone(&r.queued.operation)))
                .collect(),
            drains: inner.drains.clone(),
            unserved_since: inner
                .unserved_since
                .iter()
                .map(|(k, since)| (k.clone(), *since))
                .collect(),
            matcher: inner.dispatch.matcher().clone(),
        }
    }
}

fn suffix(prefix: &str, instance: &str) -> String {
    instance
        .strip_prefix(prefix)
        .unwrap_or(instance)
        .trim_start_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(n: u32) -> WorkerId {
        WorkerId::from([("slot".to_owned(), n.to_string())])
    }

    fn digest(n: u8) -> Digest {
        Digest {
            hash: format!("{n:02x}").repeat(32),
            size_bytes: 1,
        }
    }

    fn queued(n: u8, instance: &str) -> Queued {
        Queued {
            operation: Arc::new(Operation::new(
                format!("operations/{n}"),
                instance.to_owned(),
                digest(n),
                1,
            )),
            action_digest: digest(n),
            action: Action::default(),
            digest_function: 1,
            instance_name: instance.to_owned(),
            platform: linux(),
            queued_at: std::time::SystemTime::UNIX_EPOCH,
            waiting_since: Instant::now(),
            retries: 0,
            size_class: size_class::Choice::default(),
        }
    }

    fn linux() -> PlatformKey {
        PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())])
    }

    fn assignments() -> Assignments {
        let timing = Timing {
            sync_interval: Duration::from_secs(10),
            long_poll: Duration::from_secs(30),
            worker_timeout: Duration::from_secs(60),
            platform_grace: Duration::from_secs(60),
            unwatched_grace: Duration::from_secs(60),
            keep_completed: Duration::from_secs(60),
            sweep_every: Duration::from_secs(1),
        };
        Assignments::new(&timing, 1)
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_id_stays_with_its_first_identity_while_it_lives_or_runs() {
        let a = assignments();
        let other = || IdentityError::OtherIdentity {
            caller: "cert:CN=w2".to_owned(),
        };
        a.bind_worker(&worker(1), "cert:CN=w1").unwrap();
        a.saw_worker(&worker(1), "", &linux());
        a.bind_worker(&worker(1), "cert:CN=w1").unwrap();
        assert_eq!(a.bind_worker(&worker(1), "cert:CN=w2"), Err(other()));
        a.enqueue(queued(20, ""), 0, "");
        a.try_assign(&worker(1), "", &linux()).unwrap();
        // Silent past its liveness (30 + 60 s): forgotten as a worker,
        // but its action is not yet given back, so the id stays bound.
        tokio::time::advance(Duration::from_secs(91)).await;
        a.fail_unserved(Duration::from_secs(3600));
        assert_eq!(a.bind_worker(&worker(1), "cert:CN=w2"), Err(other()));
        // Once its action is taken back, the id is free again.
        assert_eq!(a.expire(), 1);
        a.fail_unserved(Duration::from_secs(3600));
        a.bind_worker(&worker(1), "cert:CN=w2").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn actions_go_only_to_workers_of_their_platform_and_instance() {
        let a = assignments();
        a.enqueue(queued(1, "main/team"), 0, "");
        let mac = PlatformKey::new([("OSFamily".to_owned(), "macos".to_owned())]);
        assert!(a.try_assign(&worker(1), "", &mac).is_none());
        assert!(a.try_assign(&worker(1), "other", &linux()).is_none());
        assert!(
            a.try_assign(&worker(1), "mai", &linux()).is_none(),
            "prefix is per component"
        );
        let got = a.try_assign(&worker(1), "main", &linux()).unwrap();
        assert_eq!(got.queued.action_digest, digest(1));
        assert_eq!(got.instance_name_suffix, "team");
        assert!(
            got.queued.operation.watch().borrow().clone() == crate::operation::Progress::Executing
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_waits_for_work_and_gets_it_when_it_arrives() {
        let a = Arc::new(assignments());
        let waiter = {
            let a = Arc::clone(&a);
            async move {
                a.next_assignment(&worker(1), "", &linux(), Duration::from_secs(30))
                    .await
            }
        };
        let producer = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            a.enqueue(queued(2, ""), 0, "");
        };
        let (got, ()) = tokio::join!(waiter, producer);
        assert_eq!(got.unwrap().queued.action_digest, digest(2));
        // And without work, the poll ends empty at its deadline.
        let none = a
            .next_assignment(&worker(2), "", &linux(), Duration::from_secs(30))
            .await;
        assert!(none.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_poll_whose_call_ends_passes_the_wake_to_another() {
        let a = assignments();
        let long = Duration::from_secs(30);
        let (one, two, platform) = (worker(1), worker(2), linux());
        let mut first = Box::pin(a.next_assignment(&one, "", &platform, long));
        let mut second = Box::pin(a.next_assignment(&two, "", &platform, long));
        // Both register as waiting, the first one oldest.
        let tick = Duration::from_millis(1);
        assert!(tokio::time::timeout(tick, first.as_mut()).await.is_err());
        assert!(tokio::time::timeout(tick, second.as_mut()).await.is_err());
        a.enqueue(queued(2, ""), 0, "");
        // The first poll was woken, but its call ends before it looks.
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the other poll is woken, not left to its deadline");
        assert_eq!(got.unwrap().queued.action_digest, digest(2));
    }

    #[tokio::test(start_paused = true)]
    async fn completions_are_accepted_only_from_the_assigned_worker() {
        let a = assignments();
        a.enqueue(queued(3, ""), 0, "");
        let got = a.try_assign(&worker(1), "", &linux()).unwrap();
        assert_eq!(
            a.complete(&worker(2), &digest(3), ExecuteResponse::default()),
            Err(ReportError::NothingAssigned)
        );
        assert!(matches!(
            a.complete(&worker(1), &digest(4), ExecuteResponse::default()),
            Err(ReportError::OtherAction { .. })
        ));
        a.complete(&worker(1), &digest(3), ExecuteResponse::default())
            .unwrap();
        assert!(got.queued.operation.is_completed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_worker_loses_its_action_then_retries_run_out() {
        let a = assignments();
        a.enqueue(queued(5, ""), 0, "");
        let first = a.try_assign(&worker(1), "", &linux()).unwrap();
        // Reporting keeps it alive past the first deadline.
        tokio::time::advance(Duration::from_secs(9)).await;
        a.still_running(&worker(1)).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(a.expire(), 0);
        // Then it goes silent: deadline (10 s) + grace (60 s) passes.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(a.expire(), 1);
        assert_eq!(a.queued(), 1);
        // Were it only slow, its next report tells it to drop the action.
        assert_eq!(a.still_running(&worker(1)), Err(ReportError::TakenBack));
        // The old worker's late completion is refused; a new one runs it.
        assert_eq!(
            a.complete(&worker(1), &digest(5), ExecuteResponse::default()),
            Err(ReportError::NothingAssigned)
        );
        let second = a.try_assign(&worker(2), "", &linux()).unwrap();
        assert_eq!(second.queued.retries, 1);
        // max_retries = 1: losing this worker too fails the action.
        tokio::time::advance(Duration::from_secs(71)).await;
        assert_eq!(a.expire(), 1);
        assert_eq!(a.queued(), 0);
        let progress = first.queued.operation.watch().borrow().clone();
        let crate::operation::Progress::Completed(response) = progress else {
            panic!("not completed: {progress:?}");
        };
        assert_eq!(
            response.status.unwrap().code,
            tonic::Code::Unavailable as i32
        );
    }

    fn failure(operation: &Operation) -> corral_proto::rpc::Status {
        let progress = operation.watch().borrow().clone();
        let crate::operation::Progress::Completed(response) = progress else {
            panic!("not completed: {progress:?}");
        };
        response.status.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_no_worker_can_take_fails_after_the_grace_naming_platforms() {
        let a = assignments();
        let grace = Duration::from_secs(60);
        let mut mac = queued(6, "main");
        mac.platform = PlatformKey::new([("OSFamily".to_owned(), "macos".to_owned())]);
        let operation = Arc::clone(&mac.operation);
        a.enqueue(mac, 0, "");
        a.enqueue(queued(7, "main"), 0, "");
        a.saw_worker(&worker(1), "", &linux());
        assert_eq!(a.fail_unserved(grace), 0, "the grace starts now");
        tokio::time::advance(Duration::from_secs(59)).await;
        a.saw_worker(&worker(1), "", &linux());
        assert_eq!(a.fail_unserved(grace), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.fail_unserved(grace), 1);
        let status = failure(&operation);
        assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
        assert_eq!(
            status.message,
            "no worker offers platform {OSFamily=macos} for instance \"main\" (waited 60s): \
             property OSFamily (exact) asks macos, workers offer linux; \
             workers offer: {OSFamily=linux}"
        );
        // The linux action, served all along, is still queued.
        assert_eq!(a.queued(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_arriving_within_the_grace_saves_the_action() {
        let a = assignments();
        let grace = Duration::from_secs(60);
        a.enqueue(queued(8, ""), 0, "");
        assert_eq!(a.fail_unserved(grace), 0);
        tokio::time::advance(Duration::from_secs(30)).await;
        a.saw_worker(&worker(1), "", &linux());
        assert_eq!(a.fail_unserved(grace), 0);
        // The worker then vanishes: its liveness (30 + 60 s) runs out and
        // the grace starts again from there.
        tokio::time::advance(Duration::from_secs(91)).await;
        assert_eq!(a.fail_unserved(grace), 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(a.fail_unserved(grace), 1);
        assert!(a.try_assign(&worker(1), "", &linux()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_action_leaves_its_queue_and_its_worker() {
        let a = assignments();
        let first = queued(9, "");
        let queued_op = Arc::clone(&first.operation);
        a.enqueue(first, 0, "");
        assert!(a.cancel(&queued_op, "nobody waits"));
        assert!(a.try_assign(&worker(1), "", &linux()).is_none());
        assert_eq!(failure(&queued_op).code, tonic::Code::Cancelled as i32);

        a.enqueue(queued(10, ""), 0, "");
        let running = a.try_assign(&worker(1), "", &linux()).unwrap();
        assert!(a.is_running(&worker(1)));
        assert!(a.cancel(&running.queued.operation, "cancelled"));
        assert!(!a.is_running(&worker(1)), "the worker will be told to stop");
        assert!(!a.cancel(&running.queued.operation, "twice"));
        assert_eq!(a.still_running(&worker(1)), Err(ReportError::TakenBack));
        // Told once; what it reports after that is not this action.
        assert_eq!(
            a.still_running(&worker(1)),
            Err(ReportError::NothingAssigned)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_saying_idle_mid_action_gives_it_back() {
        let a = assignments();
        a.enqueue(queued(11, ""), 0, "");
        let first = a.try_assign(&worker(1), "", &linux()).unwrap();
        assert!(a.release(&worker(1)), "it restarted and forgot the action");
        assert!(!a.release(&worker(1)));
        let again = a.try_assign(&worker(2), "", &linux()).unwrap();
        assert_eq!(again.queued.action_digest, first.queued.action_digest);
        assert_eq!(again.queued.retries, 1);
        // Asking for work again without a word about it gives it back
        // too
        // (here past max_retries = 1, so it fails), and its tenant's
        // running count with it.
        assert_eq!(a.load(""), (0, 1));
        assert!(a.try_assign(&worker(2), "", &linux()).is_none());
        assert_eq!(a.load(""), (0, 0));
        assert_eq!(
            failure(&first.queued.operation).code,
            tonic::Code::Unavailable as i32
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_size_classes_a_worker_takes_its_class_and_classes_no_one_offers() {
        let sizes = crate::size_class::SizeClasses::new(
            crate::config::SizeClassesConfig::default(),
            Box::new(|| 0.99),
            None,
        );
        let a = assignments().with_size_classes(sizes);
        let (small, large) = (worker(1), worker(4));
        for (w, class) in [(&small, 1), (&large, 4)] {
            a.saw_worker(w, "", &linux());
            a.saw_size_class(w, class);
        }
        assert_eq!(a.offered_size_classes("", &linux()), [1, 4]);
        let mut on_small = queued(15, "");
        on_small.size_class.class = 1;
        a.enqueue(on_small, 0, "");
        assert!(a.try_assign(&large, "", &linux()).is_none());
        // The small worker goes silent past its liveness (30 + 60 s)
        // while the large one keeps calling: its class is gone, so the
        // large worker takes the action.
        tokio::time::advance(Duration::from_secs(91)).await;
        a.saw_worker(&large, "", &linux());
        a.fail_unserved(Duration::from_secs(3600));
        assert_eq!(a.offered_size_classes("", &linux()), [4]);
        assert!(a.try_assign(&large, "", &linux()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn with_size_classes_a_worker_finds_its_class_in_another_tenants_queue() {
        let sizes = crate::size_class::SizeClasses::new(
            crate::config::SizeClassesConfig::default(),
            Box::new(|| 0.99),
            None,
        );
        let a = assignments().with_size_classes(sizes);
        let (small, large) = (worker(1), worker(4));
        for (w, class) in [(&small, 1), (&large, 4)] {
            a.saw_worker(w, "", &linux());
            a.saw_size_class(w, class);
        }
        // Whichever tenant's turn it is, the small worker gets the small
        // action and the large worker the large one.
        for (n, tenant, class) in [(16, "team-a", 4), (17, "team-b", 1)] {
            let mut q = queued(n, tenant);
            q.size_class.class = class;
            a.enqueue(q, 0, "");
        }
        let got = a.try_assign(&small, "", &linux()).unwrap();
        assert_eq!(got.queued.action_digest, digest(17));
        let other_small = worker(2);
        a.saw_worker(&other_small, "", &linux());
        a.saw_size_class(&other_small, 1);
        assert!(a.try_assign(&other_small, "", &linux()).is_none());
        let got = a.try_assign(&large, "", &linux()).unwrap();
        assert_eq!(got.queued.action_digest, digest(16));
    }

    #[tokio::test(start_paused = true)]
    async fn drained_workers_finish_their_action_but_take_no_new_one() {
        let a = assignments();
        let site = |n: u32| {
            let mut id = worker(n);
            id.insert("host".to_owned(), "old-host".to_owned());
            id
        };
        a.enqueue(queued(12, ""), 0, "");
        a.enqueue(queued(13, ""), 0, "");
        let running = a.try_assign(&site(1), "", &linux()).unwrap();
        let pattern = WorkerId::from([("host".to_owned(), "old-host".to_owned())]);
        a.drain(None, pattern.clone());
        assert!(a.try_assign(&site(2), "", &linux()).is_none());
        assert_eq!(a.running_matching(&pattern), 1);
        a.still_running(&site(1)).unwrap();
        a.complete(
            &site(1),
            &running.queued.action_digest,
            ExecuteResponse::default(),
        )
        .unwrap();
        assert!(a.try_assign(&site(1), "", &linux()).is_none());
        assert!(
            a.try_assign(&worker(3), "", &linux()).is_some(),
            "other hosts still work"
        );
        a.enqueue(queued(14, ""), 0, "");
        assert_eq!(a.running_matching(&pattern), 0);
        assert_eq!(a.drains(None).len(), 1);
        assert!(a.undrain(None, &pattern));
        assert!(!a.undrain(None, &pattern), "already gone");
        assert!(a.try_assign(&site(2), "", &linux()).is_some());
    }
}
