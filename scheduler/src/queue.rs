//! The queue of one (instance name, platform): which queued action a free
//! worker gets next.
//!
//! Order: lower `ExecutionPolicy.priority` first; within a priority,
//! client invocations (`RequestMetadata.tool_invocation_id`) take turns,
//! one action each, so one huge build cannot starve a small one started
//! after it; within an invocation, first in, first out.
//!
//! Each item carries a sequence number, increasing across every queue of
//! the scheduler, so that the heads of several queues can be compared by
//! age ([`Queue::head`]); which queue a worker takes from is
//! [`crate::dispatch`]'s choice.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// The platform an action asks for, normalized so that equal sets of
/// properties compare equal whatever order the client sent them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PlatformKey(Vec<(String, String)>);

impl PlatformKey {
    /// The key of a REAPI `Platform` (absent: the empty platform).
    pub fn of(platform: Option<corral_proto::reapi::Platform>) -> Self {
        Self::new(
            platform
                .into_iter()
                .flat_map(|p| p.properties)
                .map(|p| (p.name, p.value)),
        )
    }

    /// Sorts (and deduplicates) the properties.
    pub fn new(properties: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut properties: Vec<_> = properties.into_iter().collect();
        properties.sort();
        properties.dedup();
        Self(properties)
    }

    /// The properties, sorted, for messages.
    pub fn properties(&self) -> &[(String, String)] {
        &self.0
    }
}

impl std::fmt::Display for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        let text: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", text.join(", "))
    }
}

/// One priority level: invocations in turn order, each with its actions.
#[derive(Debug)]
struct Level<T> {
    turns: VecDeque<String>,
    /// Each invocation's items, with their sequence numbers.
    waiting: HashMap<String, VecDeque<(u64, T)>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            turns: VecDeque::new(),
            waiting: HashMap::new(),
        }
    }
}

/// Queued items, in the order workers should get them.
#[derive(Debug)]
pub struct Queue<T> {
    levels: BTreeMap<i32, Level<T>>,
    len: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            levels: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> Queue<T> {
    /// Queues `item` at `priority` for client invocation `invocation`
    /// (empty when the client sent none: such actions share one turn),
    /// numbered `seq` (larger than every number pushed before).
    pub fn push(&mut self, item: T, priority: i32, invocation: &str, seq: u64) {
        let level = self.levels.entry(priority).or_default();
        let waiting = level.waiting.entry(invocation.to_owned()).or_default();
        if waiting.is_empty() {
            level.turns.push_back(invocation.to_owned());
        }
        waiting.push_back((seq, item));
        self.len += 1;
    }

    /// The next item: lowest priority number, then the invocation whose
    /// turn it is, then the oldest of its items.
    pub fn pop(&mut self) -> Option<T> {
        // The first item found is the first invocation's first.
        self.pop_first(|_| true)
    }

    /// The priority and sequence number of the item [`pop`](Self::pop)
    /// returns next.
    pub fn head(&self) -> Option<(i32, u64)> {
        let (&priority, level) = self.levels.iter().next()?;
        let invocation = level.turns.front()?;
        let (seq, _) = level.waiting.get(invocation)?.front()?;
        Some((priority, *seq))
    }

    /// The next item, in [`pop`](Self::pop)'s order, that `accept`
    /// takes; the items skipped keep their places (a size class too
    /// large for the worker asking).
    pub fn pop_first(&mut self, mut accept: impl FnMut(&T) -> bool) -> Option<T> {
        let mut found = None;
        'levels: for (&priority, level) in self.levels.iter_mut() {
            for turn in 0..level.turns.len() {
                let invocation = &level.turns[turn];
                let Some(items) = level.waiting.get_mut(invocation) else {
                    continue;
                };
                if let Some(at) = items.iter().position(|(_, item)| accept(item)) {
                    found = Some((priority, turn, at));
                    break 'levels;
                }
            }
        }
        let (priority, turn, at) = found?;
        let level = self.levels.get_mut(&priority)?;
        let invocation = level.turns.remove(turn)?;
        let items = level.waiting.get_mut(&invocation)?;
        let item = items.remove(at).map(|(_, item)| item);
        if items.is_empty() {
            level.waiting.remove(&invocation);
        } else {
            // Its next action waits for every other invocation's turn.
            level.turns.push_back(invocation);
        }
        if level.turns.is_empty() {
            self.levels.remove(&priority);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Removes the items `matches` accepts (a cancelled or merged
    /// action); returns how many.
    pub fn remove_where(&mut self, mut matches: impl FnMut(&T) -> bool) -> usize {
        let before = self.len;
        self.levels.retain(|_, level| {
            level.waiting.retain(|_, items| {
                items.retain(|(_, item)| !matches(item));
                !items.is_empty()
            });
            level.turns.retain(|inv| level.waiting.contains_key(inv));
            !level.turns.is_empty()
        });
        self.len = self
            .levels
            .values()
            .flat_map(|l| l.waiting.values())
            .map(VecDeque::len)
            .sum();
        before - self.len
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut Queue<&'static str>) -> Vec<&'static str> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn lower_priority_numbers_run_first_and_fifo_within_one() {
        let mut q = Queue::default();
        q.push("a", 0, "", 0);
        q.push("b", 0, "", 0);
        q.push("urgent", -5, "", 0);
        q.push("later", 10, "", 0);
        q.push("c", 0, "", 0);
        assert_eq!(q.len(), 5);
        assert_eq!(drain(&mut q), ["urgent", "a", "b", "c", "later"]);
        assert!(q.is_empty());
    }

    #[test]
    fn invocations_take_turns_so_a_big_build_does_not_starve_a_small_one() {
        let mut q = Queue::default();
        for item in ["big1", "big2", "big3", "big4"] {
            q.push(item, 0, "huge-build", 0);
        }
        q.push("small1", 0, "small-build", 0);
        q.push("small2", 0, "small-build", 0);
        assert_eq!(
            drain(&mut q),
            ["big1", "small1", "big2", "small2", "big3", "big4"]
        );
    }

    #[test]
    fn the_head_is_what_pop_returns_next() {
        let mut q = Queue::default();
        assert_eq!(q.head(), None);
        q.push("old", 0, "x", 1);
        q.push("urgent", -1, "y", 2);
        q.push("turn", 0, "z", 3);
        let mut heads = Vec::new();
        while let Some(head) = q.head() {
            heads.push((head, q.pop().unwrap()));
        }
        assert_eq!(
            heads,
            [((-1, 2), "urgent"), ((0, 1), "old"), ((0, 3), "turn")]
        );
    }

    #[test]
    fn removed_items_never_come_out() {
        let mut q = Queue::default();
        q.push("keep1", 0, "x", 0);
        q.push("drop", 0, "x", 0);
        q.push("drop", 3, "y", 0);
        q.push("keep2", 3, "y", 0);
        assert_eq!(q.remove_where(|i| *i == "drop"), 2);
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), ["keep1", "keep2"]);
        assert_eq!(q.remove_where(|_| true), 0);
    }

    #[test]
    fn pop_first_skips_what_is_not_accepted_and_keeps_its_place() {
        let mut q = Queue::default();
        q.push("big1", 0, "a", 1);
        q.push("small1", 0, "a", 2);
        q.push("big2", 0, "b", 3);
        q.push("small2", 0, "b", 4);
        q.push("urgent-big", -1, "c", 5);
        let small = |i: &&str| i.starts_with("small");
        assert_eq!(q.pop_first(small), Some("small1"));
        assert_eq!(q.pop_first(small), Some("small2"));
        assert_eq!(q.pop_first(small), None);
        assert_eq!(q.len(), 3);
        assert_eq!(drain(&mut q), ["urgent-big", "big1", "big2"]);
    }

    #[test]
    fn platforms_compare_equal_whatever_the_property_order() {
        let a = PlatformKey::new([
            ("OSFamily".into(), "linux".into()),
            ("arch".into(), "x86_64".into()),
        ]);
        let b = PlatformKey::new([
            ("arch".into(), "x86_64".into()),
            ("OSFamily".into(), "linux".into()),
        ]);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "{OSFamily=linux, arch=x86_64}");
        assert_eq!(PlatformKey::new([]).to_string(), "{}");
        assert_ne!(a, PlatformKey::new([("OSFamily".into(), "linux".into())]));
    }

    #[test]
    fn a_large_queue_keeps_turns_across_a_hundred_invocations() {
        let mut q: Queue<u64> = Queue::default();
        for i in 0..100_000u64 {
            q.push(i, 0, &format!("inv-{}", i % 100), 0);
        }
        assert_eq!(q.len(), 100_000);
        // Each invocation's first action comes before any second one.
        let first: Vec<u64> = (0..100).map(|_| q.pop().unwrap()).collect();
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        assert_eq!(q.pop(), Some(100));
        assert_eq!(q.len(), 100_000 - 101);
    }
}
