//! Size class histories in storage, so that what the scheduler learned
//! survives its restart and is shared by schedulers in front of one
//! storage.
//!
//! One Action Cache entry per key ([`crate::size_class::key`]), under the
//! instance name `size_classes.history_instance_name`: an `ActionResult`
//! naming no blob, whose `execution_metadata.auxiliary_metadata` holds
//! one `corral.scheduler.SizeClassHistory` (below). It names no blob, so
//! storage keeps it as any entry (least recently used goes first) and
//! never finds it incomplete. The scheduler's identity needs `ac-read`
//! and `ac-write` on that instance name (docs/shared-farm.md).

use std::time::Duration;

use corral_proto::protobuf::Any;
use corral_proto::reapi::{ActionResult, Digest, ExecutedActionMetadata};
use prost::Message;

use crate::size_class::{History, Outcome};
use crate::storage_client::StorageClient;

/// The `Any.type_url` of a stored history.
const TYPE_URL: &str = "type.googleapis.com/corral.scheduler.SizeClassHistory";

/// The stored form: per size class, its outcomes, oldest first.
#[derive(Clone, PartialEq, Message)]
struct SizeClassHistory {
    #[prost(message, repeated, tag = "1")]
    classes: Vec<ClassOutcomes>,
}

#[derive(Clone, PartialEq, Message)]
struct ClassOutcomes {
    #[prost(uint32, tag = "1")]
    size_class: u32,
    #[prost(message, repeated, tag = "2")]
    outcomes: Vec<StoredOutcome>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredOutcome {
    /// 0 completed, 1 out of memory, 2 timed out.
    #[prost(uint32, tag = "1")]
    kind: u32,
    /// For completed runs: how long it ran.
    #[prost(uint64, tag = "2")]
    duration_ms: u64,
}

/// Why a history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the size class history {hash} from the action cache")]
    Read {
        hash: String,
        #[source]
        source: tonic::Status,
    },
    #[error("failed to decode the size class history {hash}")]
    Decode {
        hash: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("failed to write the size class history {hash} to the action cache")]
    Write {
        hash: String,
        #[source]
        source: tonic::Status,
    },
}

/// Reads and writes histories in the Action Cache.
#[derive(Clone)]
pub struct HistoryStore {
    storage: StorageClient,
    instance: String,
}

impl HistoryStore {
    pub fn new(storage: StorageClient, instance: String) -> Self {
        Self { storage, instance }
    }

    /// The history of `key`; empty if none was stored.
    pub async fn load(&self, key: &Digest) -> Result<History, Error> {
        let entry = self
            .storage
            .cached_result(&self.instance, 0, key, crate::operation::Inline::default())
            .await
            .map_err(|source| Error::Read {
                hash: key.hash.clone(),
                source,
            })?;
        let Some(any) = entry.and_then(|r| r.execution_metadata).and_then(|m| {
            m.auxiliary_metadata
                .into_iter()
                .find(|a| a.type_url == TYPE_URL)
        }) else {
            return Ok(History::default());
        };
        let stored =
            SizeClassHistory::decode(any.value.as_slice()).map_err(|source| Error::Decode {
                hash: key.hash.clone(),
                source,
            })?;
        Ok(decode(stored))
    }

    /// Replaces the history of `key`.
    pub async fn save(&self, key: &Digest, history: &History) -> Result<(), Error> {
        let entry = ActionResult {
            execution_metadata: Some(ExecutedActionMetadata {
                worker: "corral-scheduler size classes".to_owned(),
                auxiliary_metadata: vec![Any {
                    type_url: TYPE_URL.to_owned(),
                    value: encode(history).encode_to_vec(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        self.storage
            .update_action_result(&self.instance, key, entry)
            .await
            .map_err(|source| Error::Write {
                hash: key.hash.clone(),
                source,
            })
    }
}

fn encode(history: &History) -> SizeClassHistory {
    SizeClassHistory {
        classes: history
            .classes
            .iter()
            .map(|(&size_class, outcomes)| ClassOutcomes {
                size_class,
                outcomes: outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Completed(d) => StoredOutcome {
                            kind: 0,
                            duration_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                        },
                        Outcome::OutOfMemory => StoredOutcome {
                            kind: 1,
                            duration_ms: 0,
                        },
                        Outcome::TimedOut => StoredOutcome {
                            kind: 2,
                            duration_ms: 0,
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn decode(stored: SizeClassHistory) -> History {
    let mut history = History::default();
    for class in stored.classes {
        let outcomes = class
            .outcomes
            .into_iter()
            .filter_map(|o| match o.kind {
                0 => Some(Outcome::Completed(Duration::from_millis(o.duration_ms))),
                1 => Some(Outcome::OutOfMemory),
                2 => Some(Outcome::TimedOut),
                // A kind from a newer scheduler: not counted.
                _ => None,
            })
            .collect();
        history.classes.insert(class.size_class, outcomes);
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_history_survives_storage_and_a_missing_one_is_empty() {
        let cfg = corral_storage::Config {
            backend: corral_storage::config::Backend::Memory {
                max_size_bytes: 1 << 20,
            },
            ..Default::default()
        };
        let stores = corral_storage::open(&cfg).await.unwrap();
        let store = HistoryStore::new(
            StorageClient::in_process(&cfg, &stores),
            "size-class-history".to_owned(),
        );
        let key = corral_storage::DigestFunction::Sha256
            .digest_of(b"key")
            .to_proto();
        assert_eq!(store.load(&key).await.unwrap(), History::default());
        let mut history = History::default();
        history.record(1, Outcome::OutOfMemory, 8);
        history.record(2, Outcome::TimedOut, 8);
        history.record(4, Outcome::Completed(Duration::from_millis(1500)), 8);
        store.save(&key, &history).await.unwrap();
        assert_eq!(store.load(&key).await.unwrap(), history);
    }
}
