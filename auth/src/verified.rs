//! What was verified once and need not be again: bearer tokens (until
//! they expire) and client certificates' identities. A client sends the
//! same token, or shows the same certificate, on every call; verifying a
//! JWT's signature and parsing its JSON, or parsing a certificate, on each
//! one would cost more than the call itself.
//!
//! Bounded: past `capacity` entries the cache starts empty again, which
//! costs one verification per credential and keeps memory flat whatever
//! callers send.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

/// A bounded map from a credential to what it proved.
#[derive(Debug)]
pub struct Verified<K, V> {
    entries: Mutex<HashMap<K, V>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> Verified<K, V> {
    pub fn new(capacity: usize) -> Self {
        Verified {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// What `key` proved, if it was verified before.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    /// Remembers what `key` proved.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    /// Forgets `key` (it expired).
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        // Every change is one map operation: a panic cannot leave it half
        // done.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_remembers_up_to_its_capacity_then_starts_again() {
        let cache = Verified::new(2);
        cache.insert("a".to_owned(), 1);
        cache.insert("b".to_owned(), 2);
        assert_eq!(cache.get("a"), Some(1));
        cache.insert("c".to_owned(), 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("c"), Some(3));
        cache.remove("c");
        assert_eq!(cache.get("c"), None);
    }
}
