//! Drains: patterns of worker ids that get no new work, for every queue
//! or for one (Buildbarn's AddDrain and TerminateWorkers). A drained
//! worker finishes what it runs; then it can be stopped without losing
//! an action.

use std::time::SystemTime;

use crate::assignment::WorkerId;
use crate::queue::PlatformKey;

/// The workers of one instance name prefix and platform, as they announce
/// themselves when they synchronize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainQueue {
    pub instance_name_prefix: String,
    pub platform: PlatformKey,
}

/// One drain.
#[derive(Debug, Clone)]
pub struct Drain {
    /// `None`: workers of every queue.
    pub queue: Option<DrainQueue>,
    /// Matches a worker whose id has every key of it with the same value;
    /// empty matches every worker.
    pub pattern: WorkerId,
    pub created: SystemTime,
}

impl Drain {
    /// Whether it stops `worker`, which serves `prefix` with `platform`.
    pub fn stops(&self, worker: &WorkerId, prefix: &str, platform: &PlatformKey) -> bool {
        let in_queue = self
            .queue
            .as_ref()
            .is_none_or(|q| q.instance_name_prefix == prefix && q.platform == *platform);
        in_queue && matches(&self.pattern, worker)
    }

    /// Whether it is the drain `queue` and `pattern` name.
    pub fn is(&self, queue: Option<&DrainQueue>, pattern: &WorkerId) -> bool {
        self.queue.as_ref() == queue && self.pattern == *pattern
    }
}

/// Whether `worker` has every key of `pattern` with the same value.
pub fn matches(pattern: &WorkerId, worker: &WorkerId) -> bool {
    pattern
        .iter()
        .all(|(k, v)| worker.get(k).is_some_and(|w| w == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pairs: &[(&str, &str)]) -> WorkerId {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_drain_stops_matching_workers_of_its_queue_only() {
        let linux = PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())]);
        let other = PlatformKey::new([("OSFamily".to_owned(), "other".to_owned())]);
        let host_a = id(&[("host", "a"), ("slot", "1")]);
        let host_b = id(&[("host", "b"), ("slot", "1")]);
        let everywhere = Drain {
            queue: None,
            pattern: id(&[("host", "a")]),
            created: SystemTime::now(),
        };
        assert!(everywhere.stops(&host_a, "", &linux));
        assert!(everywhere.stops(&host_a, "x", &other));
        assert!(!everywhere.stops(&host_b, "", &linux));
        let one_queue = Drain {
            queue: Some(DrainQueue {
                instance_name_prefix: String::new(),
                platform: linux.clone(),
            }),
            pattern: WorkerId::new(),
            created: SystemTime::now(),
        };
        assert!(one_queue.stops(&host_b, "", &linux), "empty pattern: all");
        assert!(!one_queue.stops(&host_b, "", &other));
        assert!(!one_queue.stops(&host_b, "x", &linux));
    }
}
