//! The object-store tier on Azure Blob Storage, against Azurite (the
//! Azure Storage emulator, published on npm), started by the test on a
//! loopback port: the same wiped-disk-tier scenario the S3 tests run.
//! scripts/test.sh installs Azurite under target/test-tools/.
//!
//! Without Azurite the test prints one line and passes; under CI (env CI
//! set) it fails instead.

#![allow(clippy::unwrap_used)] // test helpers: a failed step stops the test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use corral_storage::Config;
use sha2::{Digest as _, Sha256};

use super::object_store::{free_port, tiered_config, wiped_disk_tier_is_served_from};

/// Azurite's development account and key, the same in every copy of it
/// (Azure's documentation publishes them).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "corral-test";
/// The REST API version the container is made with.
const API_VERSION: &str = "2021-08-06";

/// Azurite's blob server: `CORRAL_TEST_AZURITE`, or where scripts/test.sh
/// installs it.
fn azurite_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CORRAL_TEST_AZURITE") {
        return Some(PathBuf::from(path));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-tools/node_modules/.bin/azurite-blob");
    installed.exists().then_some(installed)
}

/// One Azurite blob server over a temporary directory.
struct Azurite {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Azurite {
    fn start(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let azurite = Self {
            _dir: dir,
            port,
            child,
        };
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return azurite;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("azurite did not listen on port {port} within 10 s");
    }

    /// Makes the container: object_store writes into containers, it does
    /// not create them. One Put Container request, signed with the
    /// account's shared key.
    fn create_container(&self) {
        use std::io::{Read as _, Write as _};
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        // Put Container's string to sign: the verb, eleven empty standard
        // headers, the x-ms- headers, the account and path, the query.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n\
             /{ACCOUNT}/{ACCOUNT}/{CONTAINER}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let signature =
            base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let request = format!(
            "PUT /{ACCOUNT}/{CONTAINER}?restype=container HTTP/1.1\r\n\
             host: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {API_VERSION}\r\n\
             authorization: SharedKey {ACCOUNT}:{signature}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n",
            port = self.port
        );
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    }

    fn storage_config(&self, disk: &Path) -> Config {
        let credentials = disk.with_extension("azure.toml");
        std::fs::write(
            &credentials,
            format!("account = \"{ACCOUNT}\"\naccess_key = \"{KEY}\"\n"),
        )
        .unwrap();
        tiered_config(
            disk,
            format!("az://{CONTAINER}/farm"),
            format!("http://127.0.0.1:{}/{ACCOUNT}", self.port),
            credentials,
        )
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HMAC-SHA-256 (RFC 2104) over the sha2 already in the tree.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[test]
fn hmac_sha256_matches_rfc_4231() {
    // Test case 2 of RFC 4231.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(mac),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[tokio::test]
async fn a_wiped_disk_tier_is_served_from_azure_blob_storage() {
    let test = "a_wiped_disk_tier_is_served_from_azure_blob_storage";
    let Some(binary) = azurite_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: no azurite under CI: scripts/test.sh installs it in target/test-tools"
        );
        println!("{test}: skipped: no azurite (scripts/test.sh installs it in target/test-tools)");
        return;
    };
    let azurite = Azurite::start(&binary);
    azurite.create_container();
    let large = wiped_disk_tier_is_served_from(|disk| azurite.storage_config(disk)).await;
    assert!(large.len() > 10 << 20, "the large blob went up in blocks");
}
