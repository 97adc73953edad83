//! Crafted input: ByteStream resource names and digests as a client may
//! send them, valid, nearly valid or arbitrary. Whatever arrives, parsing
//! returns a value or an error that says what is wrong; it never panics,
//! and what it accepts means what it says.
//!
//! CI runs [`CASES`] cases per property; `PROPTEST_CASES=100000 cargo test
//! -p corral-storage --test it crafted` runs a longer search
//! (docs/spec.md, "Crafted input").

use corral_storage::digest::{Digest, DigestError, DigestFunction, HASH_BYTES};
use corral_storage::resource_name::{parse_read, parse_write, Compressor, ResourceNameError};
use corral_storage::status::{excerpt, message};
use proptest::prelude::*;

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        // A failure is kept as a named regression test, not a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// A hash of the right length, mostly lowercase hex, sometimes not.
fn hash() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{64}",
        1 => "[0-9a-fA-F]{64}",
        1 => "[0-9a-z]{64}",
        1 => "[0-9a-f]{0,70}",
        1 => ".{0,80}",
    ]
}

fn size() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..1 << 40).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{19,25}",
        1 => "[-+ 0-9a-z]{0,6}",
    ]
}

/// One segment of a resource name: the grammar's words, nearby words, and
/// anything.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("blobs".to_owned()),
        Just("compressed-blobs".to_owned()),
        Just("uploads".to_owned()),
        Just("zstd".to_owned()),
        Just("identity".to_owned()),
        Just("sha256".to_owned()),
        Just("blake3".to_owned()),
        Just(String::new()),
        hash(),
        size(),
        "[^/]{0,12}",
    ]
}

/// Names built from the grammar's parts in any order, and names built
/// right with one part changed.
fn resource_name() -> impl Strategy<Value = String> {
    let shuffled = prop::collection::vec(segment(), 0..10).prop_map(|s| s.join("/"));
    let shaped = (
        prop::collection::vec("[a-z]{0,5}", 0..3),
        prop::option::of("[a-z0-9-]{0,8}"),
        prop::option::of(prop_oneof![
            Just("zstd".to_owned()),
            Just("identity".to_owned()),
            "[a-z0-9]{0,5}",
        ]),
        prop::option::of(segment()),
        hash(),
        size(),
        prop::collection::vec(segment(), 0..3),
    )
        .prop_map(
            |(instance, upload, compressor, function, hash, size, metadata)| {
                let mut parts = instance;
                if let Some(id) = upload {
                    parts.extend(["uploads".to_owned(), id]);
                }
                match compressor {
                    Some(c) => parts.extend(["compressed-blobs".to_owned(), c]),
                    None => parts.push("blobs".to_owned()),
                }
                parts.extend(function);
                parts.extend([hash, size]);
                parts.extend(metadata);
                parts.join("/")
            },
        );
    prop_oneof![2 => shaped, 1 => shuffled, 1 => ".{0,200}"]
}

/// The segment that names a digest's function in a resource name.
fn function_segment(function: DigestFunction) -> &'static str {
    match function {
        DigestFunction::Sha256 => "sha256",
        DigestFunction::Blake3 => "blake3",
    }
}

fn blobs_part(compressor: Compressor, digest: &Digest) -> String {
    let compressor = match compressor {
        Compressor::Identity => "blobs".to_owned(),
        Compressor::Zstd => "compressed-blobs/zstd".to_owned(),
    };
    format!(
        "{compressor}/{}/{}/{}",
        function_segment(digest.function()),
        digest.hash_hex(),
        digest.size_bytes()
    )
}

/// A refusal a client can act on: it names the resource and says what is
/// wrong with it.
fn assert_clear(name: &str, err: &ResourceNameError) {
    let text = message(err);
    let named = format!("resource name {:?}", excerpt(name));
    assert!(
        text.starts_with(&named),
        "{text:?} does not name the resource"
    );
    assert!(text.len() > named.len() + 10, "{text:?} says nothing");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn read_names_parse_or_say_why(name in resource_name()) {
        match parse_read(&name) {
            Ok(read) => {
                // Accepted: the instance is everything before the first
                // reserved segment, and the name spelled out again from
                // what was parsed means the same.
                let again = format!(
                    "{}{}{}",
                    read.instance_name,
                    if read.instance_name.is_empty() { "" } else { "/" },
                    blobs_part(read.compressor, &read.digest)
                );
                prop_assert_eq!(parse_read(&again), Ok(read.clone()), "{}", again);
                prop_assert!(name.starts_with(&read.instance_name));
                prop_assert!(read.digest.hash_hex().len() == HASH_BYTES * 2);
                prop_assert!(name.contains(&read.digest.hash_hex()));
            }
            Err(err) => assert_clear(&name, &err),
        }
    }

    #[test]
    fn write_names_parse_or_say_why(name in resource_name()) {
        match parse_write(&name) {
            Ok(write) => {
                prop_assert!(!write.upload_id.is_empty());
                prop_assert!(!write.upload_id.contains('/'));
                let again = format!(
                    "{}{}uploads/{}/{}",
                    write.instance_name,
                    if write.instance_name.is_empty() { "" } else { "/" },
                    write.upload_id,
                    blobs_part(write.compressor, &write.digest)
                );
                prop_assert_eq!(parse_write(&again), Ok(write.clone()), "{}", again);
            }
            Err(err) => assert_clear(&name, &err),
        }
    }

    #[test]
    fn digests_parse_or_say_why(hash in hash(), size in any::<i64>(), blake3 in any::<bool>()) {
        let function = if blake3 { DigestFunction::Blake3 } else { DigestFunction::Sha256 };
        match Digest::parse(function, &hash, size) {
            Ok(digest) => {
                // Only the canonical spelling is a name: lowercase hex of
                // the right length and a size that is not negative.
                prop_assert_eq!(digest.hash_hex(), hash.clone());
                prop_assert_eq!(digest.size_bytes() as i64, size);
                prop_assert_eq!(Digest::from_proto(function, &digest.to_proto()), Ok(digest));
            }
            Err(err) => {
                let text = err.to_string();
                match err {
                    DigestError::HashLength { len, expected, .. } => {
                        prop_assert_ne!(len, expected);
                        prop_assert!(text.contains(&len.to_string()));
                    }
                    DigestError::HashNotLowercaseHex { .. } => {
                        prop_assert!(hash.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')));
                    }
                    DigestError::NegativeSize { .. } => prop_assert!(size < 0),
                    other => prop_assert!(false, "unexpected refusal {other:?}"),
                }
            }
        }
    }

    #[test]
    fn digest_functions_from_the_wire_are_known_or_refused(value in any::<i32>()) {
        match DigestFunction::from_proto(value) {
            Ok(function) => prop_assert!(matches!(value, 0 | 1 | 9), "{value} is {function}"),
            Err(err) => prop_assert!(err.to_string().contains(&value.to_string())),
        }
    }

    #[test]
    fn sizes_past_i64_are_refused_as_too_large(digits in "[1-9][0-9]{19,30}") {
        let hash = "0".repeat(HASH_BYTES * 2);
        let err = parse_read(&format!("blobs/{hash}/{digits}")).unwrap_err();
        let text = message(&err);
        prop_assert!(text.contains(&digits), "{}", text);
        prop_assert!(!text.contains("not a decimal number"), "{}", text);
    }
}

/// Found by a_huge_resource_name_is_refused_as_invalid: a refusal that
/// quoted a 100 KB name whole reached the client as "h2 protocol error"
/// (RESOURCE_EXHAUSTED): the grpc-message header was too large.
#[tokio::test]
async fn a_huge_resource_name_is_refused_as_invalid() {
    use corral_proto::bytestream::byte_stream_client::ByteStreamClient;
    use corral_proto::bytestream::ReadRequest;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 1 << 20,
        },
        ..Default::default()
    };
    let mut server = tokio::task::JoinSet::new();
    server.spawn(corral_storage::run(cfg, listener, std::future::pending()));
    let mut client = ByteStreamClient::connect(url).await.unwrap();
    let hash = "0".repeat(HASH_BYTES * 2);
    for (name, says) in [
        ("x".repeat(100), "has no `blobs/`"),
        ("é".repeat(100_000), "has no `blobs/`"),
        ("x".repeat(1_000_000), "has no `blobs/`"),
        (
            format!("blobs/{}/1", "f".repeat(100_000)),
            "is not supported",
        ),
        (
            format!("blobs/sha256/{}/1", "f".repeat(100_000)),
            "has 100000 characters",
        ),
        (
            format!("blobs/{hash}/{}", "9".repeat(100_000)),
            "larger than any blob",
        ),
        (
            format!("blobs/{hash}/{}", "z".repeat(100_000)),
            "not a decimal number",
        ),
    ] {
        let status = client
            .read(ReadRequest {
                resource_name: name.clone(),
                read_offset: 0,
                read_limit: 0,
            })
            .await
            .unwrap_err();
        let message = status.message();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{} bytes: {}",
            name.len(),
            &message[..message.len().min(200)]
        );
        assert!(message.contains(says), "{message}");
        assert!(message.len() < 2048, "{} bytes of message", message.len());
    }
}
