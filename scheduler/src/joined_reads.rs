//! Reads of concurrent Executes joined into shared calls to a remote
//! storage: the Actions (or the Commands) of many Executes go out in one
//! BatchReadBlobs, their input roots in one FindMissingBlobs.
//!
//! Each storage call costs the scheduler and storage a round of gRPC work
//! whatever it carries; with storage over gRPC, an Execute's three CAS
//! calls were most of its cost (docs/benchmarks.md, "Scheduler
//! throughput"). A read goes out at once while fewer than [`IN_FLIGHT`]
//! calls of its kind are out; otherwise it waits for one to come back and
//! goes with the others waiting in the next. One Execute alone is as fast
//! as before; many at once share their calls.
//!
//! No task of its own: the caller whose read starts a call sends it, and
//! hands the next one, if reads wait, to the first of their callers. A
//! caller whose read was in a call that did not come back (its sender was
//! cancelled) or failed (storage refused it, or one blob did not match
//! its digest) asks again on its own, so one client's corrupt blob or
//! cancelled Execute fails no other client's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use corral_cas_client::{CasClient, Fetched};
use corral_proto::reapi::Digest;
use tokio::sync::oneshot;
use tonic::Status;

/// Joined calls of one kind out at once; more reads wait and join the
/// next.
const IN_FLIGHT: usize = 2;
/// Reads larger than this (the sum of their sizes) go out on their own:
/// a joined batch stays far under storage's batch limit.
const JOIN_MAX_BYTES: i64 = 64 * 1024;
/// The most bytes one joined BatchReadBlobs asks for.
const BATCH_MAX_BYTES: i64 = 1024 * 1024;

/// The instance name and digest function a read is under: reads join
/// only others under the same.
type Key = (String, i32);

#[derive(Clone, Copy)]
enum Kind {
    /// BatchReadBlobs.
    Fetch,
    /// FindMissingBlobs.
    FindMissing,
}

enum Answer {
    Fetched(Fetched),
    Missing(Vec<Digest>),
}

enum Reply {
    Done(Result<Answer, Status>),
    /// The caller sends the next call; its answer comes on this.
    Lead(oneshot::Receiver<Reply>),
}

/// A read waiting to go out.
struct Ask {
    key: Key,
    digests: Vec<Digest>,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Pending {
    asks: Vec<Ask>,
    in_flight: usize,
}

/// Reads of one kind, joined across callers.
#[derive(Default)]
struct Joiner {
    pending: Mutex<Pending>,
}

/// Reads from `client`, joined across callers.
#[derive(Clone)]
pub struct JoinedReads {
    client: CasClient,
    fetches: Arc<Joiner>,
    finds: Arc<Joiner>,
}

impl JoinedReads {
    pub fn new(client: CasClient) -> Self {
        Self {
            client,
            fetches: Arc::default(),
            finds: Arc::default(),
        }
    }

    /// The client the reads go through.
    pub fn client(&self) -> &CasClient {
        &self.client
    }

    /// Reads `digests` in a BatchReadBlobs, joined with other callers',
    /// each verified by its digest.
    pub async fn fetch(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Fetched, Status> {
        let key = (instance.to_owned(), digest_function);
        let size: i64 = digests.iter().map(|d| d.size_bytes.max(0)).sum();
        let answer = if size > JOIN_MAX_BYTES {
            call(&self.client, Kind::Fetch, &key, digests).await
        } else {
            self.fetches
                .read(&self.client, Kind::Fetch, key, digests)
                .await
        };
        match answer? {
            Answer::Fetched(fetched) => Ok(fetched),
            Answer::Missing(_) => Err(Status::internal("a joined read answered another kind")),
        }
    }

    /// Which of `digests` storage lacks, asked with other callers'.
    pub async fn find_missing(
        &self,
        instance: &str,
        digest_function: i32,
        digests: &[Digest],
    ) -> Result<Vec<Digest>, Status> {
        let key = (instance.to_owned(), digest_function);
        match self
            .finds
            .read(&self.client, Kind::FindMissing, key, digests)
            .await?
        {
            Answer::Missing(missing) => Ok(missing),
            Answer::Fetched(_) => Err(Status::internal("a joined read answered another kind")),
        }
    }
}

impl Joiner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Each update is one push or one take: never left half-done.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn read(
        &self,
        client: &CasClient,
        kind: Kind,
        key: Key,
        digests: &[Digest],
    ) -> Result<Answer, Status> {
        let (reply, mut replied) = oneshot::channel();
        let mut lead = {
            let mut pending = self.lock();
            pending.asks.push(Ask {
                key: key.clone(),
                digests: digests.to_vec(),
                reply,
            });
            let lead = pending.in_flight < IN_FLIGHT;
            if lead {
                pending.in_flight += 1;
            }
            lead
        };
        loop {
            if lead {
                let mut leading = Leading {
                    joiner: self,
                    done: false,
                };
                self.send_one(client, kind).await;
                leading.hand_on();
            }
            match replied.await {
                Ok(Reply::Done(answer)) => return answer,
                Ok(Reply::Lead(next)) => {
                    replied = next;
                    lead = true;
                }
                // The call it went out in was dropped with its caller.
                Err(_) => return call(client, kind, &key, digests).await,
            }
        }
    }

    /// Sends the reads that go together next and answers them.
    async fn send_one(&self, client: &CasClient, kind: Kind) {
        let asks = take_batch(&mut self.lock());
        let Some(first) = asks.first() else { return };
        let key = first.key.clone();
        let mut seen = HashSet::new();
        let all: Vec<Digest> = asks
            .iter()
            .flat_map(|a| a.digests.iter())
            .filter(|d| seen.insert((d.hash.as_str(), d.size_bytes)))
            .cloned()
            .collect();
        match call(client, kind, &key, &all).await {
            Ok(answer) => {
                for ask in asks {
                    let own = share(&answer, &ask.digests);
                    let _ = ask.reply.send(Reply::Done(Ok(own)));
                }
            }
            // Perhaps one read's fault: each asks again on its own.
            Err(_) => drop(asks),
        }
    }
}

/// The sender of a call, while it is out: once it is back (or dropped),
/// the next call goes to the first caller still waiting, or the count of
/// calls out goes down.
struct Leading<'a> {
    joiner: &'a Joiner,
    done: bool,
}

impl Leading<'_> {
    fn hand_on(&mut self) {
        self.done = true;
        let mut pending = self.joiner.lock();
        while !pending.asks.is_empty() {
            let ask = pending.asks.remove(0);
            let (reply, replied) = oneshot::channel();
            if ask.reply.send(Reply::Lead(replied)).is_ok() {
                pending.asks.insert(0, Ask { reply, ..ask });
                return;
            }
            // Its caller is gone: the read is dropped with it.
        }
        pending.in_flight -= 1;
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.hand_on();
        }
    }
}

/// Takes the reads that go out together: the first one's instance name
/// and digest function, at most [`BATCH_MAX_BYTES`] of blobs.
fn take_batch(pending: &mut Pending) -> Vec<Ask> {
    let Some(first) = pending.asks.first() else {
        return Vec::new();
    };
    let key = first.key.clone();
    let mut bytes = 0;
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for ask in pending.asks.drain(..) {
        let size: i64 = ask.digests.iter().map(|d| d.size_bytes.max(0)).sum();
        if ask.key == key && (taken.is_empty() || bytes + size <= BATCH_MAX_BYTES) {
            bytes += size;
            taken.push(ask);
        } else {
            kept.push(ask);
        }
    }
    pending.asks = kept;
    taken
}

/// One call to storage, for `digests`.
async fn call(
    client: &CasClient,
    kind: Kind,
    key: &Key,
    digests: &[Digest],
) -> Result<Answer, Status> {
    let client = client
        .with_instance(&key.0)
        .with_digest_function(key.1)
        .map_err(corral_cas_client::Error::into_status)?;
    match kind {
        Kind::Fetch => client.fetch(digests).await.map(Answer::Fetched),
        Kind::FindMissing => client.find_missing(digests).await.map(Answer::Missing),
    }
    .map_err(corral_cas_client::Error::into_status)
}

/// The part of a joined call's `answer` that is `digests`'.
fn share(answer: &Answer, digests: &[Digest]) -> Answer {
    match answer {
        Answer::Fetched(fetched) => {
            let found: HashMap<(&str, i64), &Vec<u8>> = fetched
                .found
                .iter()
                .map(|(d, data)| ((d.hash.as_str(), d.size_bytes), data))
                .collect();
            let mut own = Fetched::default();
            for digest in digests {
                match found.get(&(digest.hash.as_str(), digest.size_bytes)) {
                    Some(data) => own.found.push((digest.clone(), (*data).clone())),
                    None => own.missing.push(digest.clone()),
                }
            }
            Answer::Fetched(own)
        }
        Answer::Missing(missing) => {
            let missing: HashSet<(&str, i64)> = missing
                .iter()
                .map(|d| (d.hash.as_str(), d.size_bytes))
                .collect();
            Answer::Missing(
                digests
                    .iter()
                    .filter(|d| missing.contains(&(d.hash.as_str(), d.size_bytes)))
                    .cloned()
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(hash: &str, size: i64) -> Digest {
        Digest {
            hash: hash.to_owned(),
            size_bytes: size,
        }
    }

    #[test]
    fn each_caller_gets_its_own_digests_of_a_joined_answer() {
        let answer = Answer::Fetched(Fetched {
            found: vec![
                (digest("a", 1), b"A".to_vec()),
                (digest("b", 1), b"B".to_vec()),
            ],
            missing: vec![digest("c", 1)],
        });
        let Answer::Fetched(own) = share(&answer, &[digest("b", 1), digest("c", 1)]) else {
            panic!("another kind");
        };
        assert_eq!(own.found, vec![(digest("b", 1), b"B".to_vec())]);
        assert_eq!(own.missing, vec![digest("c", 1)]);
        // Same hash, another size: not the blob found.
        let Answer::Fetched(own) = share(&answer, &[digest("a", 2)]) else {
            panic!("another kind");
        };
        assert!(own.found.is_empty());
        assert_eq!(own.missing, vec![digest("a", 2)]);
        let missing = Answer::Missing(vec![digest("c", 1)]);
        let Answer::Missing(own) = share(&missing, &[digest("a", 1), digest("c", 1)]) else {
            panic!("another kind");
        };
        assert_eq!(own, vec![digest("c", 1)]);
    }

    #[test]
    fn a_batch_is_one_instance_name_and_bounded_in_bytes() {
        let ask = |instance: &str, size: i64| Ask {
            key: (instance.to_owned(), 0),
            digests: vec![digest("x", size)],
            reply: oneshot::channel().0,
        };
        let mut pending = Pending {
            asks: vec![
                ask("a", 10),
                ask("b", 10),
                ask("a", BATCH_MAX_BYTES),
                ask("a", 10),
            ],
            in_flight: 1,
        };
        let taken = take_batch(&mut pending);
        let sizes: Vec<(String, i64)> = taken
            .iter()
            .map(|a| (a.key.0.clone(), a.digests[0].size_bytes))
            .collect();
        assert_eq!(sizes, vec![("a".to_owned(), 10), ("a".to_owned(), 10)]);
        assert_eq!(pending.asks.len(), 2);
        assert_eq!(pending.asks[0].key.0, "b");
    }
}
