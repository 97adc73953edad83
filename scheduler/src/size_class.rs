//! Size classes: which class of worker an action runs on first, learned
//! from how the same action (by a key: its Command, or its Action
//! without the input root, or a platform property) fared before.
//!
//! Workers announce a size class (`SynchronizeRequest.size_class`; a
//! larger number is a larger worker: more memory, more cores). The
//! analyzer starts an action on the smallest class offered; when it runs
//! out of memory or times out there, the scheduler queues it again for
//! the next larger class, without the client retrying, and remembers.
//! The next identical action starts on the smallest class whose latest
//! outcome was not such a failure. Now and then (`probe_probability`) an
//! action is tried one class below that, so an action that got smaller
//! (or a failure that was the host's, not the action's) moves back down.
//!
//! The history of each key lives in storage ([`crate::size_class_history`]),
//! so it survives a scheduler restart; this module keeps the decisions
//! pure and the randomness injected, for tests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_proto::any::Packable as _;
use corral_proto::reapi::{Action, Command, Digest, ExecuteResponse};
use corral_proto::resourceusage::PosixResourceUsage;
use prost::Message as _;

use crate::config::{SizeClassKey, SizeClassesConfig};
use crate::size_class_history::HistoryStore;

/// How one run of an action on one size class ended, as the analyzer
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end (whatever its exit code) in this long.
    Completed(Duration),
    /// The kernel's OOM killer killed it: the class has too little memory.
    OutOfMemory,
    /// It ran past its timeout: the class may be too slow.
    TimedOut,
}

impl Outcome {
    /// Whether a larger class might do better.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Completed(_))
    }

    /// The outcome a worker's `response` reports: OOM when the runner's
    /// resource usage says the OOM killer struck (Corral's runner sets
    /// `corral_oom_killed`), a timeout when the status is
    /// DEADLINE_EXCEEDED, otherwise completed in `ran`.
    pub fn of(response: &ExecuteResponse, ran: Duration) -> Outcome {
        let code = response.status.as_ref().map_or(0, |s| s.code);
        if code == tonic::Code::DeadlineExceeded as i32 {
            return Outcome::TimedOut;
        }
        let oom = response
            .result
            .as_ref()
            .and_then(|r| r.execution_metadata.as_ref())
            .into_iter()
            .flat_map(|m| &m.auxiliary_metadata)
            .filter_map(|any| PosixResourceUsage::unpack(any)?.ok())
            .any(|usage| usage.corral_oom_killed);
        if oom {
            Outcome::OutOfMemory
        } else {
            Outcome::Completed(ran)
        }
    }
}

/// Past outcomes of one key, per size class, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub classes: BTreeMap<u32, VecDeque<Outcome>>,
}

impl History {
    /// Adds `outcome` on `class`, keeping the newest `keep` per class.
    pub fn record(&mut self, class: u32, outcome: Outcome, keep: usize) {
        let outcomes = self.classes.entry(class).or_default();
        outcomes.push_back(outcome);
        while outcomes.len() > keep.max(1) {
            outcomes.pop_front();
        }
    }

    /// Whether the latest run on `class` failed for lack of resources.
    fn last_failed(&self, class: u32) -> bool {
        self.classes
            .get(&class)
            .and_then(|o| o.back())
            .is_some_and(|o| o.is_failure())
    }

    /// The median time of the completed runs on `class`, for messages
    /// and the decision record.
    pub fn median_completed(&self, class: u32) -> Option<Duration> {
        let mut times: Vec<Duration> = self
            .classes
            .get(&class)?
            .iter()
            .filter_map(|o| match o {
                Outcome::Completed(d) => Some(*d),
                _ => None,
            })
            .collect();
        times.sort();
        times.get(times.len() / 2).copied()
    }
}

/// Where an action is queued first, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// The smallest class a worker must have to take it.
    pub class: u32,
    /// The key its history is kept under (`None`: size classes are off,
    /// nothing is learned).
    pub key: Option<Digest>,
    /// Tried below the class the history points to, to learn whether the
    /// action fits there now.
    pub probing: bool,
}

/// A number in [0, 1), drawn anew each call.
pub type Random = Box<dyn FnMut() -> f64 + Send>;

/// A [`Random`] from the standard library's randomly keyed SipHash (a
/// new key per draw): probes need no unguessable numbers, only evenly
/// spread ones, and no dependency is added for them.
pub fn os_random() -> Random {
    use std::hash::{BuildHasher as _, Hasher as _};
    Box::new(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The decisions: which class first, and which next after a failure.
pub struct Analyzer {
    probe_probability: f64,
    max_slowdown: f64,
    random: Random,
}

impl std::fmt::Debug for Analyzer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyzer")
            .field("probe_probability", &self.probe_probability)
            .field("max_slowdown", &self.max_slowdown)
            .finish_non_exhaustive()
    }
}

impl Analyzer {
    /// `max_slowdown`: how many times slower (median of completed runs)
    /// than a larger class a class may be and still be chosen.
    pub fn new(probe_probability: f64, max_slowdown: f64, random: Random) -> Self {
        Self {
            probe_probability,
            max_slowdown,
            random,
        }
    }

    /// The class to start on, among `offered` (sorted, deduplicated; empty
    /// when no worker has announced one yet: then 0, which every worker
    /// takes). The smallest class whose latest run did not fail and whose
    /// runs are not more than `max_slowdown` times slower than on a
    /// larger class; the largest if none is; one class lower now and
    /// then.
    pub fn choose(&mut self, history: &History, offered: &[u32]) -> (u32, bool) {
        let Some(&largest) = offered.last() else {
            return (0, false);
        };
        let too_slow = |at: usize| {
            let Some(here) = history.median_completed(offered[at]) else {
                return false;
            };
            offered[at + 1..]
                .iter()
                .filter_map(|&c| history.median_completed(c))
                .any(|faster| here.as_secs_f64() > self.max_slowdown * faster.as_secs_f64())
        };
        let fits = (0..offered.len())
            .find(|&at| !history.last_failed(offered[at]) && !too_slow(at))
            .unwrap_or(offered.len() - 1);
        if fits > 0 && (self.random)() < self.probe_probability {
            return (offered[fits - 1], true);
        }
        (offered.get(fits).copied().unwrap_or(largest), false)
    }
}

/// The next class above `class` among `offered`, if any.
pub fn next_larger(class: u32, offered: &[u32]) -> Option<u32> {
    offered.iter().copied().find(|&c| c > class)
}

/// The key an action's history is kept under, as `cfg` says: a digest
/// (SHA-256) of a label and the chosen material, and the instance name,
/// so that tenants never share (or poison) each other's history.
pub fn key(
    cfg: &SizeClassesConfig,
    instance: &str,
    action: &Action,
    command: &Command,
    platform: &crate::queue::PlatformKey,
) -> Digest {
    let mut material = Vec::new();
    material.extend_from_slice(b"corral size class\0");
    material.extend_from_slice(instance.as_bytes());
    material.push(0);
    let property = cfg.key_platform_property.as_deref().and_then(|name| {
        platform
            .properties()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    });
    match (property, cfg.key) {
        (Some(value), _) => {
            material.extend_from_slice(b"property\0");
            material.extend_from_slice(value.as_bytes());
        }
        (None, SizeClassKey::Command) => {
            material.extend_from_slice(b"command\0");
            material.extend_from_slice(&command.encode_to_vec());
        }
        (None, SizeClassKey::ActionWithoutInputRoot) => {
            material.extend_from_slice(b"action\0");
            let reduced = Action {
                input_root_digest: None,
                ..action.clone()
            };
            material.extend_from_slice(&reduced.encode_to_vec());
        }
    }
    corral_storage::DigestFunction::Sha256
        .digest_of(&material)
        .to_proto()
}

/// Histories cached in memory, at most this many keys: past it the cache
/// is cleared (storage still has them).
const CACHED_KEYS: usize = 10_000;

/// Histories waiting to be written, at most: past it a write is dropped
/// (storage is slower than completions come in).
const PENDING_WRITES: usize = 1024;

/// The analyzer with its histories: read from storage at Execute, written
/// back after each run.
pub struct SizeClasses {
    cfg: SizeClassesConfig,
    analyzer: Mutex<Analyzer>,
    cache: Mutex<HashMap<Digest, History>>,
    store: Option<HistoryStore>,
    /// To the task writing histories to `store`, one at a time, in the
    /// order they were recorded.
    writes: Option<tokio::sync::mpsc::Sender<(Digest, History)>>,
    _writer: Option<crate::task::AbortOnDrop>,
}

impl std::fmt::Debug for SizeClasses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizeClasses")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl SizeClasses {
    /// Histories in `store` (`None`: in memory only, for tests). With a
    /// store, must run inside a tokio runtime: it starts the writer.
    pub fn new(cfg: SizeClassesConfig, random: Random, store: Option<HistoryStore>) -> Arc<Self> {
        let (writes, writer) = match &store {
            Some(store) => {
                let (tx, rx) = tokio::sync::mpsc::channel(PENDING_WRITES);
                let writer = crate::task::spawn(write_forever(store.clone(), rx));
                (Some(tx), Some(writer))
            }
            None => (None, None),
        };
        Arc::new(Self {
            analyzer: Mutex::new(Analyzer::new(
                cfg.probe_probability,
                cfg.max_slowdown,
                random,
            )),
            cfg,
            cache: Mutex::default(),
            store,
            writes,
            _writer: writer,
        })
    }

    pub fn config(&self) -> &SizeClassesConfig {
        &self.cfg
    }

    /// The history of `key`: cached, else read from storage (a failed
    /// read is an empty history: the action starts small, as if new).
    pub async fn history(&self, key: &Digest) -> History {
        if let Some(history) = self.cached().get(key) {
            return history.clone();
        }
        let history = match &self.store {
            Some(store) => store.load(key).await.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "reading a size class history failed; starting small");
                History::default()
            }),
            None => History::default(),
        };
        self.cached().insert(key.clone(), history.clone());
        history
    }

    /// Where an action with history `key` starts, among `offered`.
    pub async fn choose(&self, key: Digest, offered: &[u32]) -> Choice {
        let history = self.history(&key).await;
        let (class, probing) = self
            .analyzer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .choose(&history, offered);
        Choice {
            class,
            key: Some(key),
            probing,
        }
    }

    /// Records `outcome` of a run of `key` on `class`, in memory at once
    /// and in storage in the background (a lost write costs one more
    /// failed run later, never a wrong result).
    pub fn record(&self, key: &Digest, class: u32, outcome: Outcome) {
        let history = {
            let mut cache = self.cached();
            if cache.len() >= CACHED_KEYS && !cache.contains_key(key) {
                cache.clear();
            }
            let history = cache.entry(key.clone()).or_default();
            history.record(class, outcome, self.cfg.history_size);
            history.clone()
        };
        if let Some(writes) = &self.writes {
            if writes.try_send((key.clone(), history)).is_err() {
                tracing::warn!("too many size class histories waiting to be written; one dropped");
            }
        }
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, History>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes each history sent, until the sender is gone. A write in flight
/// when the scheduler stops is one of the lost writes of
/// [`SizeClasses::record`].
async fn write_forever(
    store: HistoryStore,
    mut writes: tokio::sync::mpsc::Receiver<(Digest, History)>,
) {
    while let Some((key, history)) = writes.recv().await {
        if let Err(err) = store.save(&key, &history).await {
            tracing::warn!(error = %err, "writing a size class history failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws the numbers given, in turn, then 0.99 forever.
    fn draws(numbers: &[f64]) -> Random {
        let mut numbers: VecDeque<f64> = numbers.iter().copied().collect();
        Box::new(move || numbers.pop_front().unwrap_or(0.99))
    }

    const CLASSES: [u32; 3] = [1, 2, 4];

    #[test]
    fn a_new_action_starts_on_the_smallest_class() {
        let mut a = Analyzer::new(0.1, 2.0, draws(&[0.0]));
        assert_eq!(a.choose(&History::default(), &CLASSES), (1, false));
        assert_eq!(a.choose(&History::default(), &[]), (0, false));
    }

    #[test]
    fn an_action_moves_up_after_oom_or_timeout_and_remembers() {
        let mut a = Analyzer::new(0.1, 2.0, draws(&[]));
        let mut h = History::default();
        h.record(1, Outcome::OutOfMemory, 4);
        assert_eq!(next_larger(1, &CLASSES), Some(2));
        h.record(2, Outcome::TimedOut, 4);
        assert_eq!(next_larger(2, &CLASSES), Some(4));
        assert_eq!(next_larger(4, &CLASSES), None);
        h.record(4, Outcome::Completed(Duration::from_secs(3)), 4);
        // Remembered: the next identical action starts on 4, every time
        // the draw says not to probe.
        for _ in 0..5 {
            assert_eq!(a.choose(&h, &CLASSES), (4, false));
        }
        // Every class failed last: the largest.
        h.record(4, Outcome::OutOfMemory, 4);
        assert_eq!(a.choose(&h, &CLASSES), (4, false));
    }

    #[test]
    fn now_and_then_a_smaller_class_is_tried_again_and_success_moves_down() {
        let mut h = History::default();
        h.record(1, Outcome::OutOfMemory, 4);
        h.record(2, Outcome::Completed(Duration::from_secs(1)), 4);
        // 0.05 < 0.1: probe one class down; 0.5: stay.
        let mut a = Analyzer::new(0.1, 2.0, draws(&[0.5, 0.05, 0.5]));
        assert_eq!(a.choose(&h, &CLASSES), (2, false));
        assert_eq!(a.choose(&h, &CLASSES), (1, true));
        assert_eq!(a.choose(&h, &CLASSES), (2, false));
        // The probe succeeded: class 1 fits again, and is chosen.
        h.record(1, Outcome::Completed(Duration::from_secs(2)), 4);
        assert_eq!(a.choose(&h, &CLASSES), (1, false));
        // Never below the smallest, whatever the draw.
        let mut always = Analyzer::new(1.0, 2.0, draws(&[0.0, 0.0]));
        assert_eq!(always.choose(&h, &CLASSES), (1, false));
        // probe_probability 0: never.
        h.record(1, Outcome::OutOfMemory, 4);
        let mut never = Analyzer::new(0.0, 2.0, draws(&[0.0]));
        assert_eq!(never.choose(&h, &CLASSES), (2, false));
    }

    #[test]
    fn a_class_much_slower_than_a_larger_one_is_passed_over() {
        let secs = |s| Outcome::Completed(Duration::from_secs(s));
        let mut a = Analyzer::new(0.0, 2.0, draws(&[]));
        let mut h = History::default();
        // Only the small class has run: it is chosen, however slow.
        h.record(1, secs(100), 4);
        assert_eq!(a.choose(&h, &CLASSES), (1, false));
        // A larger class ran it 2.5 times faster: past max_slowdown 2.
        // The untried class between is tried, as a new action would be.
        h.record(4, secs(40), 4);
        assert_eq!(a.choose(&h, &[1, 4]), (4, false));
        assert_eq!(a.choose(&h, &CLASSES), (2, false));
        // Class 2 ran it in 70 s: within twice class 4's 40 s.
        h.record(2, secs(70), 4);
        assert_eq!(a.choose(&h, &CLASSES), (2, false));
        // The medians move with the history: two fast runs on class 1.
        h.record(1, secs(30), 4);
        h.record(1, secs(30), 4);
        assert_eq!(a.choose(&h, &CLASSES), (1, false));
    }

    #[test]
    fn the_default_random_source_spreads_over_zero_to_one() {
        let mut random = os_random();
        let draws: Vec<f64> = (0..1000).map(|_| random()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        // 1000 draws: each tenth of [0, 1) gets some (a failure here is
        // about 10 x 0.9^1000, never).
        for tenth in 0..10 {
            let (lo, hi) = (f64::from(tenth) / 10.0, f64::from(tenth + 1) / 10.0);
            assert!(draws.iter().any(|d| (lo..hi).contains(d)), "{tenth}");
        }
    }

    #[test]
    fn history_keeps_the_newest_outcomes_per_class() {
        let mut h = History::default();
        for s in 1..=5 {
            h.record(1, Outcome::Completed(Duration::from_secs(s)), 3);
        }
        assert_eq!(h.classes[&1].len(), 3);
        assert_eq!(h.median_completed(1), Some(Duration::from_secs(4)));
        assert_eq!(h.median_completed(2), None);
    }

    #[test]
    fn oom_and_timeouts_are_read_from_the_response() {
        use corral_proto::reapi::{ActionResult, ExecutedActionMetadata};
        let usage = |oom: bool| {
            PosixResourceUsage {
                corral_oom_killed: oom,
                termination_signal: "KILL".into(),
                ..Default::default()
            }
            .pack()
        };
        let response = |oom: bool, code: tonic::Code| ExecuteResponse {
            result: Some(ActionResult {
                exit_code: 137,
                execution_metadata: Some(ExecutedActionMetadata {
                    auxiliary_metadata: vec![usage(oom)],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(corral_proto::rpc::Status {
                code: code as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let ran = Duration::from_secs(1);
        assert_eq!(
            Outcome::of(&response(true, tonic::Code::Ok), ran),
            Outcome::OutOfMemory
        );
        // Killed by a signal, but not the OOM killer's: the action's own.
        assert_eq!(
            Outcome::of(&response(false, tonic::Code::Ok), ran),
            Outcome::Completed(ran)
        );
        assert_eq!(
            Outcome::of(&response(false, tonic::Code::DeadlineExceeded), ran),
            Outcome::TimedOut
        );
    }
}
