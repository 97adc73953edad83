//! Which queue a free worker takes its next action from, without looking
//! at every queue.
//!
//! Queues are keyed by what actions ask: (instance name, platform). Workers
//! come in classes, by what they announce: (instance name prefix,
//! platform). A class serves the queues whose instance name is under its
//! prefix and whose platform its platform satisfies
//! ([`PlatformMatcher`]); that is decided once per (class, queue) pair,
//! when the second of the two appears, and kept.
//!
//! Fairness is nested: instance names (tenants) take turns, by stride
//! scheduling: each tenant has a pass, the tenant with the lowest pass
//! goes next, and each action it starts adds `2^20 / weight` to its pass,
//! so over time each gets a share of starts in proportion to its weight.
//! A tenant whose queues were empty rejoins at the pass of the last
//! tenant served, so that idling banks no turns. Inside a tenant, its
//! queue whose head is most urgent, then oldest, goes next; inside a
//! queue, [`crate::queue::Queue`] orders by priority, then invocation
//! turns, then first in, first out.
//!
//! Each class keeps the tenants it could take from now ordered by pass,
//! and for each of them its non-empty served queues ordered by head. A
//! Synchronize reads the first of each (a few map look-ups); a change to
//! one queue's head or one tenant's pass updates every class (there are
//! as many as distinct worker platforms, a handful), never every queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::FairnessConfig;
use crate::platform_matching::PlatformMatcher;
use crate::queue::PlatformKey;

/// A queue: the instance name and platform its actions ask for.
pub type QueueKey = (String, PlatformKey);

/// A class of workers: the instance name prefix and platform they
/// announce.
pub type ClassKey = (String, PlatformKey);

/// Pass added per action started at weight 1; divisible by every weight
/// up to [`crate::config::MAX_WEIGHT`] within 0.1%.
const STRIDE: u64 = 1 << 20;

/// A tenant over its cap.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapError {
    #[error(
        "instance name {instance:?} has {cap} operations queued, its cap \
         (fairness max_queued); retry later"
    )]
    QueueFull { instance: String, cap: u64 },
}

/// Whether `instance` is served by a worker announcing `prefix`: equal,
/// or `prefix` followed by more path components.
pub fn instance_matches(prefix: &str, instance: &str) -> bool {
    prefix.is_empty()
        || instance == prefix
        || instance
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[derive(Debug, Default)]
struct Tenant {
    /// Its place in the turns: lowest goes next.
    pass: u64,
    /// Items in its queues.
    queued: usize,
    /// Its actions running now.
    executing: usize,
}

#[derive(Debug, Default)]
struct Class {
    /// The tenants it may take from now (a non-empty served queue, under
    /// their running cap), by (pass, name).
    turns: BTreeSet<(u64, String)>,
    /// Per tenant, its non-empty served queues by head (priority,
    /// sequence number), with the platform naming the queue.
    heads: HashMap<String, BTreeMap<(i32, u64), PlatformKey>>,
}

/// What is known of one non-empty queue.
#[derive(Debug)]
struct Indexed {
    head: Option<(i32, u64)>,
    len: usize,
    /// The classes serving it.
    classes: Vec<ClassKey>,
}

/// The index from worker classes to queues, and the tenants' turns.
#[derive(Debug, Default)]
pub struct Dispatch {
    matcher: PlatformMatcher,
    fairness: FairnessConfig,
    tenants: HashMap<String, Tenant>,
    classes: HashMap<ClassKey, Class>,
    queues: HashMap<QueueKey, Indexed>,
    /// The pass of the last tenant served; a tenant rejoining starts there.
    virtual_time: u64,
    last_seq: u64,
}

fn serves(
    matcher: &PlatformMatcher,
    (prefix, worker): &ClassKey,
    (instance, action): &QueueKey,
) -> bool {
    instance_matches(prefix, instance) && matcher.satisfies(worker, action)
}

impl Dispatch {
    pub fn new(matcher: PlatformMatcher, fairness: FairnessConfig) -> Self {
        Self {
            matcher,
            fairness,
            ..Self::default()
        }
    }

    pub fn matcher(&self) -> &PlatformMatcher {
        &self.matcher
    }

    /// A number larger than every one before, for [`crate::queue::Queue::push`].
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Refuses one more queued operation for `instance` past its cap.
    pub fn check_room(&self, instance: &str) -> Result<(), CapError> {
        let (_, max_queued, _) = self.fairness.of(instance);
        let queued = self.tenants.get(instance).map_or(0, |t| t.queued);
        match max_queued {
            Some(cap) if queued as u64 >= cap => Err(CapError::QueueFull {
                instance: instance.to_owned(),
                cap,
            }),
            _ => Ok(()),
        }
    }

    /// Queued and running actions of `instance`.
    pub fn load(&self, instance: &str) -> (usize, usize) {
        self.tenants
            .get(instance)
            .map_or((0, 0), |t| (t.queued, t.executing))
    }

    /// Whether `instance` may start one more action (under its
    /// `max_executing`): for callers that choose a queue themselves
    /// (size classes, `Inner::pop_sized`).
    pub fn may_start(&self, instance: &str) -> bool {
        self.tenants
            .get(instance)
            .is_none_or(|tenant| self.under_running_cap(instance, tenant))
    }

    fn under_running_cap(&self, instance: &str, tenant: &Tenant) -> bool {
        let (_, _, max_executing) = self.fairness.of(instance);
        max_executing.is_none_or(|cap| (tenant.executing as u64) < cap)
    }

    /// Takes `instance` out of every class's turns (before its pass or
    /// running count changes).
    fn retire(&mut self, instance: &str) {
        let Some(tenant) = self.tenants.get(instance) else {
            return;
        };
        let entry = (tenant.pass, instance.to_owned());
        for class in self.classes.values_mut() {
            class.turns.remove(&entry);
        }
    }

    /// Puts `instance` back in the turns of every class that serves one
    /// of its non-empty queues, if it is under its running cap.
    fn admit(&mut self, instance: &str) {
        let Some(tenant) = self.tenants.get(instance) else {
            return;
        };
        if !self.under_running_cap(instance, tenant) {
            return;
        }
        let entry = (tenant.pass, instance.to_owned());
        for class in self.classes.values_mut() {
            if class.heads.contains_key(instance) {
                class.turns.insert(entry.clone());
            }
        }
    }

    fn forget_if_idle(&mut self, instance: &str) {
        if self
            .tenants
            .get(instance)
            .is_some_and(|t| t.queued == 0 && t.executing == 0)
        {
            self.tenants.remove(instance);
        }
    }

    /// `key`'s queue now holds `len` items, `head` first: called after
    /// every push, pop or removal.
    pub fn queue_changed(&mut self, key: &QueueKey, head: Option<(i32, u64)>, len: usize) {
        if !self.queues.contains_key(key) {
            if len == 0 {
                return;
            }
            let classes = self
                .classes
                .keys()
                .filter(|c| serves(&self.matcher, c, key))
                .cloned()
                .collect();
            self.queues.insert(
                key.clone(),
                Indexed {
                    head: None,
                    len: 0,
                    classes,
                },
            );
        }
        let Some(indexed) = self.queues.get_mut(key) else {
            return;
        };
        let (old_head, old_len) = (indexed.head, indexed.len);
        indexed.head = head;
        indexed.len = len;
        // Borrowed out while the classes change, put back below.
        let classes = if old_head == head {
            Vec::new()
        } else {
            std::mem::take(&mut indexed.classes)
        };
        let instance = &key.0;
        let virtual_time = self.virtual_time;
        let tenant = self.tenants.entry(instance.clone()).or_default();
        if tenant.queued == 0 && len > old_len {
            // Rejoining: idle time banks no turns.
            tenant.pass = tenant.pass.max(virtual_time);
        }
        tenant.queued = (tenant.queued + len).saturating_sub(old_len);
        let pass = tenant.pass;
        let eligible = match self.tenants.get(instance) {
            Some(tenant) => self.under_running_cap(instance, tenant),
            None => false,
        };
        for class_key in &classes {
            let Some(class) = self.classes.get_mut(class_key) else {
                continue;
            };
            if !class.heads.contains_key(instance) {
                class.heads.insert(instance.clone(), BTreeMap::new());
            }
            let Some(heads) = class.heads.get_mut(instance) else {
                continue;
            };
            if let Some(old) = old_head {
                heads.remove(&old);
            }
            if let Some(new) = head {
                heads.insert(new, key.1.clone());
            }
            let entry = (pass, instance.clone());
            if heads.is_empty() {
                class.heads.remove(instance);
                class.turns.remove(&entry);
            } else if eligible {
                class.turns.insert(entry);
            }
        }
        if len == 0 {
            self.queues.remove(key);
        } else if let Some(indexed) = self.queues.get_mut(key) {
            if indexed.classes.is_empty() {
                indexed.classes = classes;
            }
        }
        self.forget_if_idle(instance);
    }

    /// The class of workers announcing `prefix` and `platform`, indexed
    /// against every queue the first time it is seen.
    pub fn class(&mut self, prefix: &str, platform: &PlatformKey) -> ClassKey {
        let key = (prefix.to_owned(), platform.clone());
        if self.classes.contains_key(&key) {
            return key;
        }
        let mut class = Class::default();
        for (queue, indexed) in &mut self.queues {
            if serves(&self.matcher, &key, queue) {
                indexed.classes.push(key.clone());
                if let Some(head) = indexed.head {
                    class
                        .heads
                        .entry(queue.0.clone())
                        .or_default()
                        .insert(head, queue.1.clone());
                }
            }
        }
        for (instance, tenant) in &self.tenants {
            if class.heads.contains_key(instance) && self.under_running_cap(instance, tenant) {
                class.turns.insert((tenant.pass, instance.clone()));
            }
        }
        self.classes.insert(key.clone(), class);
        key
    }

    /// Forgets the classes `live` refuses (no live worker announces them).
    pub fn retain_classes(&mut self, live: impl Fn(&ClassKey) -> bool) {
        let before = self.classes.len();
        self.classes.retain(|k, _| live(k));
        if self.classes.len() != before {
            let classes = &self.classes;
            for indexed in self.queues.values_mut() {
                indexed.classes.retain(|k| classes.contains_key(k));
            }
        }
    }

    /// Whether some known class serves `key`'s queue.
    pub fn served(&self, key: &QueueKey) -> bool {
        self.queues
            .get(key)
            .is_some_and(|indexed| !indexed.classes.is_empty())
    }

    /// The queue a worker of `class` takes from next: the tenant whose
    /// turn it is, and its queue with the most urgent, then oldest, head.
    pub fn pick(&self, class: &ClassKey) -> Option<QueueKey> {
        let class = self.classes.get(class)?;
        let (_, instance) = class.turns.first()?;
        let (_, platform) = class.heads.get(instance)?.first_key_value()?;
        Some((instance.clone(), platform.clone()))
    }

    /// An action of `instance` started: its turn is used.
    pub fn started(&mut self, instance: &str) {
        self.retire(instance);
        let (weight, _, _) = self.fairness.of(instance);
        let tenant = self.tenants.entry(instance.to_owned()).or_default();
        self.virtual_time = self.virtual_time.max(tenant.pass);
        tenant.pass += STRIDE / u64::from(weight.max(1));
        tenant.executing += 1;
        self.admit(instance);
    }

    /// An action of `instance` stopped running (completed, given back,
    /// cancelled).
    pub fn ended(&mut self, instance: &str) {
        self.retire(instance);
        if let Some(tenant) = self.tenants.get_mut(instance) {
            tenant.executing = tenant.executing.saturating_sub(1);
        }
        self.admit(instance);
        self.forget_if_idle(instance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceFairness;
    use crate::queue::Queue;

    fn linux() -> PlatformKey {
        PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())])
    }

    /// Queues and their index, kept in step as `Assignments` does.
    struct World {
        dispatch: Dispatch,
        queues: HashMap<QueueKey, Queue<u32>>,
    }

    impl World {
        fn new(fairness: FairnessConfig) -> Self {
            Self {
                dispatch: Dispatch::new(PlatformMatcher::default(), fairness),
                queues: HashMap::new(),
            }
        }

        fn push(&mut self, instance: &str, item: u32, priority: i32) {
            let key = (instance.to_owned(), linux());
            let seq = self.dispatch.next_seq();
            let queue = self.queues.entry(key.clone()).or_default();
            queue.push(item, priority, "", seq);
            self.dispatch.queue_changed(&key, queue.head(), queue.len());
        }

        /// A linux worker takes one; the action starts.
        fn take(&mut self) -> Option<(String, u32)> {
            let class = self.dispatch.class("", &linux());
            let key = self.dispatch.pick(&class)?;
            let queue = self.queues.get_mut(&key)?;
            let item = queue.pop()?;
            self.dispatch.queue_changed(&key, queue.head(), queue.len());
            self.dispatch.started(&key.0);
            Some((key.0, item))
        }
    }

    #[test]
    fn priorities_count_inside_a_tenant_and_turns_between_tenants() {
        let mut w = World::new(FairnessConfig::default());
        w.push("a", 1, 0);
        w.push("a", 2, -10);
        w.push("b", 3, 0);
        w.push("b", 4, 0);
        let order: Vec<_> = std::iter::from_fn(|| w.take()).collect();
        assert_eq!(
            order,
            [
                ("a".into(), 2),
                ("b".into(), 3),
                ("a".into(), 1),
                ("b".into(), 4)
            ]
        );
    }

    #[test]
    fn a_tenant_at_its_running_cap_waits_while_others_run() {
        let fairness = FairnessConfig {
            instances: [(
                "a".to_owned(),
                InstanceFairness {
                    max_executing: Some(1),
                    ..InstanceFairness::default()
                },
            )]
            .into(),
            ..FairnessConfig::default()
        };
        let mut w = World::new(fairness);
        for n in 0..3 {
            w.push("a", n, 0);
        }
        w.push("b", 10, 0);
        w.push("b", 11, 0);
        assert_eq!(w.take(), Some(("a".into(), 0)));
        assert_eq!(w.take(), Some(("b".into(), 10)));
        assert_eq!(w.take(), Some(("b".into(), 11)));
        assert_eq!(w.take(), None, "a is at its cap");
        assert_eq!(w.dispatch.load("a"), (2, 1));
        w.dispatch.ended("a");
        assert_eq!(w.take(), Some(("a".into(), 1)));
    }

    #[test]
    fn an_idle_tenant_rejoins_without_banked_turns() {
        let mut w = World::new(FairnessConfig::default());
        for n in 0..10 {
            w.push("a", n, 0);
        }
        for _ in 0..6 {
            assert_eq!(w.take().unwrap().0, "a");
        }
        // b arrives late: it rejoins at a's last pass, so it goes once,
        // then they take turns; not six b in a row to catch up.
        w.push("b", 100, 0);
        w.push("b", 101, 0);
        w.push("b", 102, 0);
        let next: Vec<String> = (0..5).map(|_| w.take().unwrap().0).collect();
        assert_eq!(next, ["b", "a", "b", "a", "b"]);
    }

    #[test]
    fn a_worker_class_seen_late_finds_the_queues_it_serves() {
        let mut w = World::new(FairnessConfig::default());
        w.push("main/x", 1, 0);
        let mac = PlatformKey::new([("OSFamily".to_owned(), "macos".to_owned())]);
        let other = w.dispatch.class("other", &linux());
        let macs = w.dispatch.class("", &mac);
        let main = w.dispatch.class("main", &linux());
        assert_eq!(w.dispatch.pick(&other), None);
        assert_eq!(w.dispatch.pick(&macs), None);
        assert_eq!(w.dispatch.pick(&main), Some(("main/x".into(), linux())));
        assert!(w.dispatch.served(&("main/x".into(), linux())));
        w.dispatch.retain_classes(|c| c.0 != "main");
        assert!(!w.dispatch.served(&("main/x".into(), linux())));
    }
}
