//! Host ids leased to runs, one per concurrent run, so that no two
//! actions running at once share per-user kernel counters (pipe buffer
//! pages, inotify instances, pending signals, message queues) — as
//! Buildbarn gives each build slot its own user, here through the user
//! namespace's map.
//!
//! As root the ids come from `runner.toml`'s `action_ids`; without root
//! from the caller's subordinate range (`/etc/subuid`); without either,
//! every run has the runner's own ids (the sandbox warns).

use std::sync::{Arc, Mutex};

use corral_sandbox::{HostIds, IdRange, Mapping};

use crate::error::Error;

/// The free ids, shared by the runs.
#[derive(Debug)]
pub struct ActionIds {
    free: Mutex<Vec<HostIds>>,
    /// How many ids there are; 0 when every run has `shared`.
    count: usize,
    shared: HostIds,
}

/// One run's ids; back in the pool when dropped, which the run does once
/// the sandbox has returned: its processes are dead and its cgroup gone.
#[derive(Debug)]
pub struct Lease {
    pub ids: HostIds,
    pool: Option<Arc<ActionIds>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.lock().push(self.ids);
        }
    }
}

impl ActionIds {
    /// The ids `mapping` can give runs out of `configured`.
    pub fn new(mapping: &Mapping, configured: IdRange) -> ActionIds {
        let mut free = mapping.per_run_ids(configured);
        // Handed out from the end: the lowest ids first.
        free.reverse();
        ActionIds {
            count: free.len(),
            free: Mutex::new(free),
            shared: mapping.default_ids(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HostIds>> {
        // Only a list of ids is behind the lock; it stays usable.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ids no other run has now; fails when every one is in use.
    pub fn lease(self: &Arc<Self>) -> Result<Lease, Error> {
        if self.count == 0 {
            return Ok(Lease {
                ids: self.shared,
                pool: None,
            });
        }
        let ids = self
            .lock()
            .pop()
            .ok_or(Error::NoFreeIds { count: self.count })?;
        Ok(Lease {
            ids,
            pool: Some(Arc::clone(self)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_runs_get_distinct_ids_and_return_them() {
        let range = IdRange {
            uid: 5000,
            gid: 7000,
            count: 2,
        };
        let pool = Arc::new(ActionIds::new(&Mapping::Root, range));
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        assert_eq!(
            a.ids,
            HostIds {
                uid: 5000,
                gid: 7000
            }
        );
        assert_eq!(
            b.ids,
            HostIds {
                uid: 5001,
                gid: 7001
            }
        );
        assert!(matches!(pool.lease(), Err(Error::NoFreeIds { count: 2 })));
        drop(a);
        assert_eq!(pool.lease().unwrap().ids.uid, 5000, "returned on drop");
    }

    #[test]
    fn without_ids_to_lease_every_run_shares_the_callers() {
        let caller = HostIds {
            uid: 1000,
            gid: 1000,
        };
        let own = Mapping::Own {
            caller,
            why: String::new(),
        };
        let range = IdRange {
            uid: 5000,
            gid: 5000,
            count: 4,
        };
        let pool = Arc::new(ActionIds::new(&own, range));
        let leases: Vec<Lease> = (0..8).map(|_| pool.lease().unwrap()).collect();
        assert!(leases.iter().all(|l| l.ids == caller));
    }
}
