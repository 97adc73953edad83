//! [`OperationIds`] for production: a per-process random seed and a
//! counter, written like a UUID.
//!
//! Unique within a process by the counter; across restarts by the seed,
//! so that a client holding an old name gets NOT_FOUND rather than
//! somebody else's operation.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::operation_ids::OperationIds;

/// Names `operations/xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug)]
pub struct RandomOperationIds {
    seed: u64,
    next: AtomicU64,
}

impl RandomOperationIds {
    pub fn new() -> Self {
        // std seeds RandomState from the OS's randomness; the clock is
        // mixed in only in case two processes were ever given one seed.
        let mut hasher = RandomState::new().build_hasher();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        hasher.write_u32(std::process::id());
        Self {
            seed: hasher.finish(),
            next: AtomicU64::new(0),
        }
    }
}

impl Default for RandomOperationIds {
    fn default() -> Self {
        Self::new()
    }
}

impl OperationIds for RandomOperationIds {
    fn next_name(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let s = self.seed;
        format!(
            "operations/{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            s >> 32,
            (s >> 16) & 0xffff,
            s & 0xffff,
            (n >> 48) & 0xffff,
            n & 0xffff_ffff_ffff
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_uuids_and_never_repeat() {
        let ids = RandomOperationIds::new();
        let a = ids.next_name();
        let b = ids.next_name();
        assert_ne!(a, b);
        let id = a.strip_prefix("operations/").unwrap();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_ne!(
            RandomOperationIds::new().next_name(),
            a,
            "another process (seed) names differently"
        );
    }
}
