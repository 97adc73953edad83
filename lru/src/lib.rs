//! [`Lru`]: what a size-bounded cache holds, in order of last use, with
//! pins for entries that must stay while something uses them.
//!
//! The one index of every bounded cache of ours: the worker's file cache
//! (its files pinned while input roots link them) and directory cache,
//! and storage's memory and disk stores. It holds values and their sizes
//! only; what an entry's eviction must clean up (a file, say) is the
//! caller's, which is why eviction hands the evicted entries back.
//!
//! Ticks give the order: each use moves an entry to a fresh, larger tick,
//! so the smallest tick among unpinned entries is the one to evict.
//! Lookups are O(1), uses, pins and evictions O(log n).
//!
//! It must never depend on anything: the worker and storage both use it.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

struct Entry<V> {
    value: V,
    size_bytes: u64,
    last_used: u64,
    /// Users that need it to stay; a pinned entry is never evicted.
    pins: u32,
}

/// Entries bounded by their total size, least recently used unpinned ones
/// out first.
pub struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// `last_used` to key of every entry with no pins, and only those:
    /// eviction order, oldest first. Each tick is distinct, so none hides
    /// another.
    unpinned: BTreeMap<u64, K>,
    clock: u64,
    total_bytes: u64,
    max_bytes: u64,
    /// Entries taken out as least recently used, ever: for metrics.
    evictions: u64,
}

/// A summary: the entries themselves can be many.
impl<K, V> std::fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru")
            .field("len", &self.entries.len())
            .field("pinned", &(self.entries.len() - self.unpinned.len()))
            .field("total_bytes", &self.total_bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    /// An empty index bounded to `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: HashMap::new(),
            unpinned: BTreeMap::new(),
            clock: 0,
            total_bytes: 0,
            max_bytes,
            evictions: 0,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Marks the entry of `key` used now; its entry if any.
    fn use_entry(&mut self, key: &K) -> Option<&mut Entry<V>> {
        let now = self.tick();
        let entry = self.entries.get_mut(key)?;
        if entry.pins == 0 {
            self.unpinned.remove(&entry.last_used);
            self.unpinned.insert(now, key.clone());
        }
        entry.last_used = now;
        Some(entry)
    }

    /// The value for `key`, marking it used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.use_entry(key).map(|e| &e.value)
    }

    /// Whether `key` is held, without marking it used.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether `key` is held, marking it used.
    pub fn touch(&mut self, key: &K) -> bool {
        self.use_entry(key).is_some()
    }

    /// Pins the entry of `key` and marks it used; false if there is none.
    pub fn pin(&mut self, key: &K) -> bool {
        let Some(entry) = self.use_entry(key) else {
            return false;
        };
        entry.pins += 1;
        let (pins, last_used) = (entry.pins, entry.last_used);
        if pins == 1 {
            self.unpinned.remove(&last_used);
        }
        true
    }

    /// Releases one pin of `key`'s entry; once none is left, it may be
    /// evicted, in the order it was last used (not released).
    pub fn unpin(&mut self, key: &K) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        // Pins are only released by their owner: never below 0.
        if entry.pins == 0 {
            return;
        }
        entry.pins -= 1;
        if entry.pins == 0 {
            self.unpinned.insert(entry.last_used, key.clone());
        }
    }

    /// Inserts or replaces `key` as the most recently used entry, then
    /// evicts least recently used unpinned entries until the total fits
    /// the bound. Returns what was evicted, for the caller to clean up.
    /// The new entry itself is never evicted: callers refuse entries
    /// larger than the bound before inserting.
    pub fn insert(&mut self, key: K, value: V, size_bytes: u64) -> Vec<(K, V)> {
        self.put(key, value, size_bytes, 0);
        let mut evicted = Vec::new();
        // The new entry has the newest tick: it is the last unpinned one.
        while self.total_bytes > self.max_bytes && self.unpinned.len() > 1 {
            match self.pop_oldest() {
                Some((key, value, _)) => evicted.push((key, value)),
                None => break,
            }
        }
        evicted
    }

    /// Inserts or replaces `key` as the most recently used entry, pinned
    /// once, and evicts nothing: the caller evicts when it unpins.
    pub fn insert_pinned(&mut self, key: K, value: V, size_bytes: u64) {
        self.put(key, value, size_bytes, 1);
    }

    fn put(&mut self, key: K, value: V, size_bytes: u64, pins: u32) {
        self.remove(&key);
        let now = self.tick();
        if pins == 0 {
            self.unpinned.insert(now, key.clone());
        }
        self.entries.insert(
            key,
            Entry {
                value,
                size_bytes,
                last_used: now,
                pins,
            },
        );
        self.total_bytes += size_bytes;
    }

    /// Takes out the least recently used unpinned entry, with its size.
    pub fn pop_oldest(&mut self) -> Option<(K, V, u64)> {
        let (_, oldest) = self.unpinned.pop_first()?;
        let entry = self.entries.remove(&oldest)?;
        self.total_bytes -= entry.size_bytes;
        self.evictions += 1;
        Some((oldest, entry.value, entry.size_bytes))
    }

    /// How many entries [`pop_oldest`](Self::pop_oldest) has taken out,
    /// directly or to make room: the evictions a store reports.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Takes out `key`'s entry, pinned or not.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        if entry.pins == 0 {
            self.unpinned.remove(&entry.last_used);
        }
        self.total_bytes -= entry.size_bytes;
        Some(entry.value)
    }

    /// The unpinned keys, in eviction order (least recently used first).
    pub fn eviction_order(&self) -> impl Iterator<Item = &K> {
        self.unpinned.values()
    }

    /// The sum of the entries' sizes.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The bound on [`total_bytes`](Self::total_bytes).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries with at least one pin.
    pub fn pinned(&self) -> usize {
        self.entries.len() - self.unpinned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(evicted: Vec<(&'static str, V)>) -> Vec<&'static str> {
        evicted.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut lru = Lru::new(10);
        assert!(lru.insert("a", (), 4).is_empty());
        assert!(lru.insert("b", (), 4).is_empty());
        assert!(lru.touch(&"a"));
        assert_eq!(keys(lru.insert("c", (), 4)), ["b"]);
        assert_eq!(lru.total_bytes(), 8);
        assert!(lru.touch(&"a") && lru.touch(&"c") && !lru.touch(&"b"));
    }

    #[test]
    fn replacing_an_entry_counts_its_size_once() {
        let mut lru = Lru::new(100);
        lru.insert("a", 1, 10);
        lru.insert("a", 2, 20);
        assert_eq!(lru.total_bytes(), 20);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.get(&"a"), Some(&2));
        assert_eq!(lru.remove(&"a"), Some(2));
        assert!(lru.is_empty());
        assert_eq!(lru.total_bytes(), 0);
    }

    #[test]
    fn pinned_entries_are_passed_over_and_keep_their_place_by_last_use() {
        let mut lru = Lru::new(30);
        for k in ["a", "b", "c"] {
            lru.insert(k, (), 10);
        }
        // b is pinned, then a is used: c, a in eviction order.
        assert!(lru.pin(&"b"));
        assert!(lru.touch(&"a"));
        assert_eq!(lru.pinned(), 1);
        assert_eq!(lru.eviction_order().collect::<Vec<_>>(), [&"c", &"a"]);
        // Past the bound: c and a go, the pinned b stays although oldest.
        assert_eq!(keys(lru.insert("d", (), 20)), ["c", "a"]);
        assert_eq!(lru.evictions(), 2);
        assert!(lru.contains(&"b"));
        // Released, b takes its place by last use (before d), not release.
        lru.unpin(&"b");
        assert_eq!(lru.eviction_order().collect::<Vec<_>>(), [&"b", &"d"]);
        assert_eq!(lru.pop_oldest(), Some(("b", (), 10)));
        assert_eq!(lru.evictions(), 3);
    }

    #[test]
    fn pins_count_and_never_go_below_zero() {
        let mut lru = Lru::new(100);
        lru.insert_pinned("a", (), 10);
        assert!(lru.pin(&"a"));
        lru.unpin(&"a");
        assert_eq!(lru.pop_oldest(), None, "still pinned once");
        lru.unpin(&"a");
        lru.unpin(&"a");
        assert_eq!(lru.pinned(), 0);
        assert!(!lru.pin(&"missing"));
        // A pinned entry removed outright leaves nothing behind.
        assert!(lru.pin(&"a"));
        assert_eq!(lru.remove(&"a"), Some(()));
        assert_eq!((lru.len(), lru.pinned(), lru.total_bytes()), (0, 0, 0));
    }

    #[test]
    fn an_entry_larger_than_the_rest_evicts_all_unpinned_but_itself() {
        let mut lru = Lru::new(10);
        lru.insert("a", (), 5);
        lru.insert_pinned("p", (), 5);
        assert_eq!(keys(lru.insert("big", (), 10)), ["a"]);
        assert!(lru.contains(&"big") && lru.contains(&"p"));
        assert_eq!(lru.total_bytes(), 15);
    }
}
