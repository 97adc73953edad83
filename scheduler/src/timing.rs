//! The scheduler's clocks: the ones `scheduler.toml` sets and the ones
//! fixed by Buildbarn's protocol dynamics, in one value so tests can
//! shorten them all.

use std::time::Duration;

use crate::config::Config;

/// Every interval the scheduler's behaviour depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How often an executing worker must synchronize; sent as
    /// `next_synchronization_at`. Buildbarn uses about 10 s.
    pub sync_interval: Duration,
    /// How long an idle worker's Synchronize is held waiting for work.
    /// Under a minute, so proxies that cut idle streams do not.
    pub long_poll: Duration,
    /// Grace past a missed synchronization before a worker is gone.
    pub worker_timeout: Duration,
    /// How long queued actions wait for a worker of their platform.
    pub platform_grace: Duration,
    /// How long an unfinished operation nobody watches survives.
    pub unwatched_grace: Duration,
    /// How long a completed operation stays reachable by name, for
    /// WaitExecution and GetOperation after the stream ended.
    pub keep_completed: Duration,
    /// How often the background sweep looks for all of the above.
    pub sweep_every: Duration,
}

impl Timing {
    /// The intervals `cfg` asks for, and the protocol's fixed ones.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            sync_interval: Duration::from_secs(10),
            long_poll: Duration::from_secs(50),
            worker_timeout: Duration::from_secs(cfg.worker_timeout_s),
            platform_grace: Duration::from_secs(cfg.platform_grace_s),
            unwatched_grace: Duration::from_secs(cfg.unwatched_grace_s),
            keep_completed: Duration::from_secs(60),
            sweep_every: Duration::from_secs(1),
        }
    }
}

/// The wall-clock time of `at`, a `tokio::time` instant (which runs
/// paused in tests), for timestamps sent to clients.
pub fn wall_clock(at: tokio::time::Instant) -> std::time::SystemTime {
    let now = tokio::time::Instant::now();
    let wall = std::time::SystemTime::now();
    if at >= now {
        wall + (at - now)
    } else {
        wall.checked_sub(now - at)
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    }
}
