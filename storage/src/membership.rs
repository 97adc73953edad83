//! `Membership`: which instance names may see which CAS blobs, for
//! `isolate_instances` (see docs/decisions/0010-cas-across-instance-names.md).
//!
//! Content stays stored once; this is an index of (instance name, digest)
//! pairs beside the store. A pair is recorded only after a write under that
//! instance name delivered the whole content and the store verified it
//! against the digest: knowing a digest is not enough to join, holding the
//! bytes is.
//!
//! The disk backend keeps the index as an append-only log in the store's
//! directory, one line per pair:
//!
//! ```text
//! <function> <hash hex> <size> <instance name hex> <check>\n
//! ```
//!
//! where `<check>` is the first 16 hex digits of the SHA-256 of what
//! precedes it on the line. A line counts only if it ends in a newline and
//! its check matches, so a crash mid-append (a torn last line, or a block
//! of zeros the file system left) can never grant a pair nobody recorded:
//! a truncated instance name would otherwise name another instance. On
//! open, the log is compacted (pairs whose digest the store no longer
//! holds are dropped) and rewritten by rename, so the torn tail is gone
//! before anything is appended after it.
//!
//! Bounded: once as many lines were appended as were live after the last
//! compaction (at least [`MIN_COMPACTION_LINES`]), pairs of digests the
//! store has evicted are dropped and the log is rewritten. Memory and log
//! then stay within about twice the pairs of blobs the store holds.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::digest::{Digest, DigestFunction};

/// Appended lines that never trigger a compaction by themselves: below
/// this, rewriting the log would cost more than the stale lines.
pub const MIN_COMPACTION_LINES: usize = 65_536;

/// Hex digits of a line's check: 64 bits, so a damaged line passes by
/// chance once in 2^64.
const CHECK_HEX: usize = 16;

/// Whether the store still holds a digest, without marking it used (a
/// compaction must not reorder the store's eviction).
pub type Holds = Arc<dyn Fn(&Digest) -> bool + Send + Sync>;

/// A failed step of the membership log.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("failed to read the membership log {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to rewrite the membership log {path}")]
    Rewrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to append to the membership log {path}")]
    Append {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a blocking write of the membership log {path} did not finish")]
    Join {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The (instance name, digest) index. Cloning shares it.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    holds: Holds,
    /// Where the log is, if there is one.
    log_path: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    /// Instance names, interned: a pair costs a digest and four bytes.
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    pairs: HashSet<(u32, Digest)>,
    /// Lines appended since the last compaction, and pairs live after it.
    appended: usize,
    live_at_compaction: usize,
    log: Option<Log>,
}

struct Log {
    path: PathBuf,
    file: fs::File,
    fsync: bool,
}

impl Membership {
    /// An index kept in memory only (the memory backend).
    pub fn in_memory(holds: Holds) -> Self {
        Self::with_state(State::default(), holds)
    }

    /// Opens (creating if needed) the log at `path`, keeping the pairs whose
    /// digest `holds`, and rewrites it with only those. With `fsync`, each
    /// append is synced before the write that made it is acknowledged.
    pub async fn open_log(
        path: PathBuf,
        fsync: bool,
        holds: Holds,
    ) -> Result<Self, MembershipError> {
        let join_path = path.clone();
        tokio::task::spawn_blocking(move || Self::open_log_blocking(path, fsync, holds))
            .await
            .map_err(|source| MembershipError::Join {
                path: join_path,
                source,
            })?
    }

    fn open_log_blocking(
        path: PathBuf,
        fsync: bool,
        holds: Holds,
    ) -> Result<Self, MembershipError> {
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(MembershipError::Read { path, source }),
        };
        let mut state = State::default();
        let mut ignored = 0usize;
        // Only newline-terminated lines: whatever follows the last newline
        // is a torn append.
        let complete = text
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&text[..0], |end| &text[..=end]);
        for line in complete.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Some((instance, digest)) if holds(&digest) => state.insert(&instance, digest),
                Some(_) => {}
                None => ignored += 1,
            };
        }
        if ignored > 0 || complete.len() != text.len() {
            tracing::warn!(
                path = %path.display(),
                ignored,
                torn_tail_bytes = text.len() - complete.len(),
                "ignoring damaged lines of the membership log"
            );
        }
        let file = rewrite(&path, &state, fsync)?;
        state.live_at_compaction = state.pairs.len();
        state.log = Some(Log { path, file, fsync });
        tracing::info!(pairs = state.pairs.len(), "membership log opened");
        Ok(Self::with_state(state, holds))
    }

    fn with_state(state: State, holds: Holds) -> Self {
        Self {
            inner: Arc::new(Inner {
                log_path: state.log.as_ref().map(|l| l.path.clone()),
                state: Mutex::new(state),
                holds,
            }),
        }
    }

    /// Whether `instance` may see `digest`. The empty blob is everyone's:
    /// REAPI says it is always present.
    pub fn contains(&self, instance: &str, digest: &Digest) -> bool {
        digest.is_empty_blob() || self.inner.lock().contains(instance, digest)
    }

    /// For each of `digests`, whether `instance` may see it, under one lock.
    pub fn members(&self, instance: &str, digests: &[Digest]) -> Vec<bool> {
        let state = self.inner.lock();
        digests
            .iter()
            .map(|d| d.is_empty_blob() || state.contains(instance, d))
            .collect()
    }

    /// Records that `instance` wrote all of `digest`'s content and the store
    /// verified it. Call only after the store's write committed.
    pub async fn record(&self, instance: &str, digest: &Digest) -> Result<(), MembershipError> {
        if self.contains(instance, digest) {
            return Ok(());
        }
        let Some(path) = self.inner.log_path.clone() else {
            return self.inner.record_blocking(instance, *digest);
        };
        // Appending a line to the page cache takes microseconds, less than
        // a trip to the blocking pool: through the pool, isolated batch
        // writes of 4 KiB blobs took 1.21-1.25x as long, inline 0.92-1.14x
        // (benches/throughput.rs). A sync or a compaction (a rewrite of
        // the whole log) goes to the pool.
        if !self.inner.lock().may_block() {
            return self.inner.record_blocking(instance, *digest);
        }
        let inner = Arc::clone(&self.inner);
        let instance = instance.to_owned();
        let digest = *digest;
        tokio::task::spawn_blocking(move || inner.record_blocking(&instance, digest))
            .await
            .map_err(|source| MembershipError::Join { path, source })?
    }

    /// Pairs held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.inner.lock().pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is made of single set and map updates;
        // a panic between them leaves at worst an unused interned name.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the pair, appending it to the log first: a pair in memory but
    /// not in the log would vanish on restart, which is safe, but the
    /// other order could acknowledge a pair the log never got.
    fn record_blocking(&self, instance: &str, digest: Digest) -> Result<(), MembershipError> {
        let mut state = self.lock();
        if state.contains(instance, &digest) {
            return Ok(());
        }
        if let Some(log) = state.log.as_mut() {
            let line = format_line(instance, &digest);
            log.file
                .write_all(line.as_bytes())
                .and_then(|()| {
                    if log.fsync {
                        log.file.sync_data()
                    } else {
                        Ok(())
                    }
                })
                .map_err(|source| MembershipError::Append {
                    path: log.path.clone(),
                    source,
                })?;
        }
        state.insert(instance, digest);
        state.appended += 1;
        if state.appended >= state.live_at_compaction.max(MIN_COMPACTION_LINES) {
            self.compact(&mut state)?;
        }
        Ok(())
    }

    /// Drops the pairs of digests the store no longer holds and rewrites
    /// the log with the rest.
    fn compact(&self, state: &mut State) -> Result<(), MembershipError> {
        let before = state.pairs.len();
        let mut kept = State::default();
        for (id, digest) in &state.pairs {
            if (self.holds)(digest) {
                let name = Arc::clone(&state.names[*id as usize]);
                kept.insert(&name, *digest);
            }
        }
        if let Some(log) = state.log.take() {
            let file = rewrite(&log.path, &kept, log.fsync)?;
            kept.log = Some(Log { file, ..log });
        }
        kept.live_at_compaction = kept.pairs.len();
        tracing::debug!(before, after = kept.pairs.len(), "membership compacted");
        *state = kept;
        Ok(())
    }
}

impl State {
    /// Whether the next append may take long: it syncs, or compacts.
    fn may_block(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.fsync)
            || self.appended + 1 >= self.live_at_compaction.max(MIN_COMPACTION_LINES)
    }

    fn contains(&self, instance: &str, digest: &Digest) -> bool {
        self.ids
            .get(instance)
            .is_some_and(|id| self.pairs.contains(&(*id, *digest)))
    }

    fn insert(&mut self, instance: &str, digest: Digest) {
        let id = match self.ids.get(instance) {
            Some(id) => *id,
            None => {
                // More than 2^32 distinct names cannot fit in memory first.
                let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
                let name: Arc<str> = Arc::from(instance);
                self.names.push(Arc::clone(&name));
                self.ids.insert(name, id);
                id
            }
        };
        self.pairs.insert((id, digest));
    }
}

/// Writes `state`'s pairs to a fresh file beside `path`, then renames it
/// over `path`: a crash leaves the old log or the new one, never half of
/// either. Returns the new log opened for appending.
fn rewrite(path: &Path, state: &State, fsync: bool) -> Result<fs::File, MembershipError> {
    let err = |source| MembershipError::Rewrite {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("log.compacting");
    let mut text = String::new();
    for (id, digest) in &state.pairs {
        text.push_str(&format_line(&state.names[*id as usize], digest));
    }
    let mut file = fs::File::create(&tmp).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    if fsync {
        file.sync_all().map_err(err)?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    if fsync {
        // The rename is durable only once its directory is.
        if let Some(parent) = path.parent() {
            fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
    }
    fs::OpenOptions::new().append(true).open(path).map_err(err)
}

fn format_line(instance: &str, digest: &Digest) -> String {
    let body = format!(
        "{} {} {} {}",
        digest.function().name(),
        digest.hash_hex(),
        digest.size_bytes(),
        hex::encode(instance.as_bytes()),
    );
    let check = check(&body);
    format!("{body} {check}\n")
}

fn check(body: &str) -> String {
    let mut hex = DigestFunction::Sha256.digest_of(body.as_bytes()).hash_hex();
    hex.truncate(CHECK_HEX);
    hex
}

/// A line without its newline, or `None` if it is damaged.
fn parse_line(line: &[u8]) -> Option<(String, Digest)> {
    let line = std::str::from_utf8(line).ok()?;
    let (body, sum) = line.rsplit_once(' ')?;
    if sum != check(body) {
        return None;
    }
    let mut fields = body.split(' ');
    let function = DigestFunction::from_name(fields.next()?).ok()?;
    let hash = fields.next()?;
    let size = fields.next()?.parse::<i64>().ok()?;
    let instance = String::from_utf8(hex::decode(fields.next()?).ok()?).ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some((instance, Digest::parse(function, hash, size).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    fn holds_all() -> Holds {
        Arc::new(|_| true)
    }

    #[tokio::test]
    async fn pairs_are_per_instance_and_the_empty_blob_is_everyones() {
        let m = Membership::in_memory(holds_all());
        m.record("team-a", &sha(b"x")).await.unwrap();
        assert!(m.contains("team-a", &sha(b"x")));
        assert!(!m.contains("team-b", &sha(b"x")));
        assert!(!m.contains("", &sha(b"x")));
        assert!(m.contains("team-b", &DigestFunction::Blake3.empty()));
        assert_eq!(m.members("team-a", &[sha(b"x"), sha(b"y")]), [true, false]);
    }

    #[tokio::test]
    async fn membership_survives_reopening_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership.log");
        let m = Membership::open_log(path.clone(), false, holds_all())
            .await
            .unwrap();
        m.record("team-a", &sha(b"x")).await.unwrap();
        m.record("team a/with\nodd name", &sha(b"y")).await.unwrap();
        m.record("team-a", &sha(b"x")).await.unwrap();
        drop(m);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 2);
        let m = Membership::open_log(path, false, holds_all())
            .await
            .unwrap();
        assert!(m.contains("team-a", &sha(b"x")));
        assert!(m.contains("team a/with\nodd name", &sha(b"y")));
        assert!(!m.contains("team-a", &sha(b"y")));
        assert_eq!(m.len(), 2);
    }

    #[tokio::test]
    async fn a_torn_or_damaged_line_grants_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership.log");
        let good = format_line("team-a", &sha(b"a"));
        // "team-ab" cut short would name "team-a" but for the check.
        let torn = format_line("team-ab", &sha(b"b"));
        let cut = &torn[..torn.find(" 7465616d2d6162").unwrap() + " 7465616d2d61".len()];
        // One bit of the instance name changed: "team-a" became "team-b".
        let flipped = format_line("team-a", &sha(b"c")).replace(" 7465616d2d61 ", " 7465616d2d62 ");
        let zeros = "\0".repeat(40);
        fs::write(
            &path,
            format!("{good}{}\n{flipped}{zeros}\n{good}{cut}", &torn[..20]),
        )
        .unwrap();
        let m = Membership::open_log(path.clone(), false, holds_all())
            .await
            .unwrap();
        assert!(m.contains("team-a", &sha(b"a")));
        assert!(!m.contains("team-a", &sha(b"b")));
        assert!(!m.contains("team-ab", &sha(b"b")));
        assert_eq!(m.len(), 1);
        // The damage is compacted away before anything is appended.
        m.record("team-c", &sha(b"d")).await.unwrap();
        drop(m);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{good}{}", format_line("team-c", &sha(b"d"))));
    }

    #[tokio::test]
    async fn reopening_drops_digests_the_store_no_longer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership.log");
        let m = Membership::open_log(path.clone(), true, holds_all())
            .await
            .unwrap();
        m.record("a", &sha(b"kept")).await.unwrap();
        m.record("a", &sha(b"evicted")).await.unwrap();
        drop(m);
        let kept = sha(b"kept");
        let m = Membership::open_log(path.clone(), false, Arc::new(move |d| *d == kept))
            .await
            .unwrap();
        assert_eq!(m.len(), 1);
        assert!(m.contains("a", &kept));
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[tokio::test]
    async fn stale_pairs_are_dropped_once_the_log_doubles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("membership.log");
        let held = Arc::new(Mutex::new(HashSet::new()));
        let holds: Holds = {
            let held = Arc::clone(&held);
            Arc::new(move |d| held.lock().unwrap().contains(d))
        };
        let m = Membership::open_log(path.clone(), false, holds)
            .await
            .unwrap();
        // Blobs come and go: only the last one written is still held.
        for i in 0..MIN_COMPACTION_LINES + 10 {
            let d = sha(&i.to_le_bytes());
            *held.lock().unwrap() = HashSet::from([d]);
            m.record("a", &d).await.unwrap();
        }
        assert!(m.len() <= 11, "{} pairs kept", m.len());
        let lines = fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= 11, "{lines} lines kept");
    }
}
