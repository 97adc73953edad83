//! The CAS client against storage whose batch limit is lower than the
//! client's own: it asks storage's Capabilities and keeps every batch
//! under the limit announced, streaming blobs larger than it.

#![allow(clippy::unwrap_used)] // test helpers: a failed step stops the test

use corral_cas_client::{digest_of, BatchLimits, CasClient};

#[tokio::test]
async fn batches_stay_under_the_limit_storage_announces() {
    const LIMIT: u64 = 64 << 10;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 16 << 20,
        },
        max_batch_total_size_bytes: LIMIT,
        ..Default::default()
    };
    let mut server = tokio::task::JoinSet::new();
    server.spawn(corral_storage::run(cfg, listener, std::future::pending()));
    let client = CasClient::new(&url).unwrap();

    // 40 small blobs, 200 KB together: more than three batches' worth;
    // and one of 100 KiB, larger than a whole batch may be.
    let mut blobs: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("{i:05}").repeat(1000).into_bytes())
        .collect();
    blobs.push(vec![7u8; 100 << 10]);
    let digests: Vec<_> = blobs.iter().map(|b| digest_of(b)).collect();
    client
        .upload(digests.iter().cloned().zip(blobs.iter().cloned()).collect())
        .await
        .unwrap();
    let read = client.read_many(&digests).await.unwrap();
    for (digest, blob) in digests.iter().zip(&blobs) {
        assert!(
            read[&digest.hash] == *blob,
            "{} read back wrong",
            digest.hash
        );
    }
    assert_eq!(
        client.batch_limits().await,
        BatchLimits {
            blob_max_bytes: LIMIT as i64,
            total_max_bytes: LIMIT as i64,
        }
    );
}
