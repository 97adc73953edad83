//! Test container images built from the host's busybox-static: a tree,
//! an OCI image layout of it (layers made with the `tar` and `gzip`
//! commands), and a push to a registry over the distribution API.

// Test support: a failed step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// busybox-static (scripts/test.sh installs it).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets the tests' scripts use, as symlinks to busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "id", "touch", "test", "echo", "unshare", "ls", "stat", "true", "cp", "mkdir",
];

/// A file only the image has, and its content.
pub const IMAGE_ONLY: (&str, &str) = ("etc/only-in-image", "from the image\n");

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(command: &mut Command) {
    let status = command.status().expect("run a command");
    assert!(status.success(), "{command:?}: {status}");
}

/// Writes a busybox image tree at `dir`: `bin/` with busybox and its
/// applets, `suid/busybox` setuid root (mode 4755), [`IMAGE_ONLY`], a
/// 0600 `etc/secret`. `None` without busybox.
pub fn busybox_tree(dir: &Path) -> Option<()> {
    if !Path::new(BUSYBOX).exists() {
        return None;
    }
    for sub in ["bin", "etc", "suid", "usr", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    let suid = dir.join("suid/busybox");
    std::fs::copy(BUSYBOX, &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(dir.join(IMAGE_ONLY.0), IMAGE_ONLY.1).unwrap();
    std::fs::write(dir.join("etc/removed-by-layer2"), "lower\n").unwrap();
    let secret = dir.join("etc/secret");
    std::fs::write(&secret, "secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    Some(())
}

/// An OCI image layout at `layout` tagged `tag`, of two gzip layers: the
/// tree at `tree`, then one adding `etc/layer2` and whiting out
/// `etc/removed-by-layer2`. Returns the manifest's digest.
pub fn oci_layout(tree: &Path, layout: &Path, tag: &str) -> String {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let upper = scratch.path().join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/layer2"), "second layer\n").unwrap();
    std::fs::write(upper.join("etc/.wh.removed-by-layer2"), "").unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        std::fs::write(blobs.join(&digest["sha256:".len()..]), bytes).unwrap();
        digest
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, dir) in [tree, upper.as_path()].into_iter().enumerate() {
        let tar = scratch.path().join(format!("{i}.tar"));
        run(Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(dir)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let bytes = std::fs::read(&tar).unwrap();
        diff_ids.push(sha256(&bytes));
        run(Command::new("gzip").arg("-n").arg(&tar));
        let gz = std::fs::read(scratch.path().join(format!("{i}.tar.gz"))).unwrap();
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(&gz), "size": gz.len()
        }));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config.as_bytes()), "size": config.len()},
        "layers": layers
    })
    .to_string();
    let digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    digest
}

/// One HTTP/1.1 request to `addr` (with an `Authorization` header if
/// given); the status and the `Location` header.
fn request(
    addr: SocketAddr,
    authorization: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let authorization = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .map(|l| l.trim().to_owned());
    (status, location)
}

/// Pushes the image tagged `tag` in `layout` to the registry at `addr`
/// (plain HTTP, no auth) as `repository:tag`: each blob by a monolithic
/// upload, then the manifest.
pub fn push_layout(addr: SocketAddr, layout: &Path, repository: &str, tag: &str) {
    push_layout_as(addr, None, layout, repository, tag);
}

/// Like [`push_layout`], sending `authorization` (`Basic …`) with each
/// request.
pub fn push_layout_as(
    addr: SocketAddr,
    authorization: Option<&str>,
    layout: &Path,
    repository: &str,
    tag: &str,
) {
    let request = |method: &str, path: &str, content_type: &str, body: &[u8]| {
        request(addr, authorization, method, path, content_type, body)
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest_bytes = blob(&digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for layer in manifest["layers"].as_array().unwrap() {
        digests.push(layer["digest"].as_str().unwrap().to_owned());
    }
    for d in digests {
        let (status, location) = request(
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            "application/octet-stream",
            b"",
        );
        assert_eq!(status, 202, "start an upload");
        let location = location.expect("an upload location");
        let path = location
            .strip_prefix(&format!("http://{addr}"))
            .unwrap_or(&location)
            .to_owned();
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, _) = request(
            "PUT",
            &format!("{path}{separator}digest={d}"),
            "application/octet-stream",
            &blob(&d),
        );
        assert_eq!(status, 201, "upload {d}");
    }
    let (status, _) = request(
        "PUT",
        &format!("/v2/{repository}/manifests/{tag}"),
        "application/vnd.oci.image.manifest.v1+json",
        &manifest_bytes,
    );
    assert_eq!(status, 201, "push the manifest");
}

/// Debian's registry (scripts/test.sh installs docker-registry).
pub const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry on a free loopback port, storing under a temporary
/// directory, without authentication; killed when dropped.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts [`REGISTRY`] and waits until it listens.
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), requiring the login `user:password`
    /// (the registry's htpasswd authentication: Basic, bcrypt hashed by
    /// perl's crypt(3), which libxcrypt gives bcrypt).
    pub fn start_with_login(user: &str, password: &str) -> Registry {
        Self::start_with(Some((user, password)))
    }

    fn start_with(login: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = match login {
            None => String::new(),
            Some((user, password)) => {
                let hash = Command::new("perl")
                    .args([
                        "-e",
                        "print crypt($ARGV[0], '$2b$05$' . 'corralcorralcorralcorr')",
                        password,
                    ])
                    .output()
                    .unwrap();
                let hash = String::from_utf8(hash.stdout).unwrap();
                assert!(hash.starts_with("$2b$05$"), "bcrypt from crypt(3): {hash}");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: corral\n    path: {}\n",
                    file.display()
                )
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
