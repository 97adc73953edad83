//! `LruIndex`: what a bounded store holds, in order of last use.
//!
//! Both backends keep one: the memory store keeps the blobs in it, the
//! disk store only their sizes (the files are the data). Ticks give the
//! order: each use moves an entry to a fresh, larger tick, so the smallest
//! tick is always the least recently used entry. Lookups are O(1), uses
//! and evictions O(log n).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::digest::Digest;

/// Which of the two tables a key belongs to. CAS blobs and Action Cache
/// entries share one size bound, so they share one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    Cas,
    Ac,
}

/// A key of a store's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Namespace,
    pub digest: Digest,
}

impl Key {
    pub fn cas(digest: Digest) -> Self {
        Self {
            namespace: Namespace::Cas,
            digest,
        }
    }

    pub fn ac(digest: Digest) -> Self {
        Self {
            namespace: Namespace::Ac,
            digest,
        }
    }
}

struct Entry<V> {
    value: V,
    size_bytes: u64,
    tick: u64,
}

/// Entries bounded by their total size, least recently used out first.
pub struct LruIndex<K, V> {
    entries: HashMap<K, Entry<V>>,
    order: BTreeMap<u64, K>,
    next_tick: u64,
    total_bytes: u64,
    max_bytes: u64,
}

impl<K: Clone + Eq + Hash, V> LruIndex<K, V> {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_tick: 0,
            total_bytes: 0,
            max_bytes,
        }
    }

    fn tick(&mut self) -> u64 {
        let tick = self.next_tick;
        self.next_tick += 1;
        tick
    }

    /// The value for `key`, marking it used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        let tick = self.tick();
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key.clone());
        Some(&entry.value)
    }

    /// Whether `key` is held, without marking it used.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Whether `key` is held, marking it used.
    pub fn touch(&mut self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces `key` as the most recently used entry, then
    /// evicts least recently used entries until the total fits the bound.
    /// Returns what was evicted, for the caller to clean up. The new entry
    /// itself is never evicted: callers refuse entries larger than the
    /// bound before inserting.
    pub fn insert(&mut self, key: K, value: V, size_bytes: u64) -> Vec<(K, V)> {
        self.remove(&key);
        let tick = self.tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                size_bytes,
                tick,
            },
        );
        self.total_bytes += size_bytes;
        let mut evicted = Vec::new();
        while self.total_bytes > self.max_bytes && self.order.len() > 1 {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&oldest) {
                self.total_bytes -= entry.size_bytes;
                evicted.push((oldest, entry.value));
            }
        }
        evicted
    }

    /// Takes out the least recently used entry, with its size.
    pub fn pop_oldest(&mut self) -> Option<(K, V, u64)> {
        let (_, oldest) = self.order.pop_first()?;
        let entry = self.entries.remove(&oldest)?;
        self.total_bytes -= entry.size_bytes;
        Some((oldest, entry.value, entry.size_bytes))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.total_bytes -= entry.size_bytes;
        Some(entry.value)
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        let mut index = LruIndex::new(10);
        assert!(index.insert("a", (), 4).is_empty());
        assert!(index.insert("b", (), 4).is_empty());
        assert!(index.touch(&"a"));
        let evicted = index.insert("c", (), 4);
        assert_eq!(
            evicted.into_iter().map(|(k, ())| k).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(index.total_bytes(), 8);
        assert!(index.touch(&"a") && index.touch(&"c") && !index.touch(&"b"));
    }

    #[test]
    fn replacing_an_entry_counts_its_size_once() {
        let mut index = LruIndex::new(100);
        index.insert("a", 1, 10);
        index.insert("a", 2, 20);
        assert_eq!(index.total_bytes(), 20);
        assert_eq!(index.len(), 1);
        assert_eq!(index.get(&"a"), Some(&2));
        assert_eq!(index.remove(&"a"), Some(2));
        assert!(index.is_empty());
        assert_eq!(index.total_bytes(), 0);
    }
}
