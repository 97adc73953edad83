//! The image store: unpacked images by digest, bounded in bytes, least
//! recently used out first, never one in use; one pull per digest however
//! many actions ask at once.
//!
//! An image is unpacked in a private temporary directory and renamed to
//! `<dir>/<digest hex>` only when every layer is verified and unpacked:
//! nothing half unpacked is ever handed out. An evicted image is first
//! renamed aside, then removed, so a new pull of the same digest never
//! meets a tree being deleted.
//!
//! The store outlives the worker: [`ImageStore::open`] keeps the complete
//! images a previous run left (the directories named by a digest, with
//! the size record written before the rename), in the order of their
//! last use (the entry directory's mtime, set at each use), and removes
//! everything else (pulls and removals a stop cut short).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use corral_lru::Lru;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::credentials::Credentials;
use crate::digest::Digest;
use crate::error::Error;
use crate::manifest::{self, Document, Kind};
use crate::reference::{Reference, Version};
use crate::source::{Registries, Source};
use crate::unpack::{Budget, Tree};

/// The file in an entry's directory that records its size in bytes
/// (as the cache's bound counts them), written before the entry is
/// renamed into place: an entry that has it is complete. Public for the
/// pull bench, which lays out stores to time the rescan.
pub const SIZE_RECORD: &str = "bytes";

/// A pull, shared by the actions that asked for its digest meanwhile.
type Pull = Arc<OnceCell<Result<(), Arc<Error>>>>;

struct State {
    /// Unpacked images by manifest digest; the value is the entry's
    /// directory.
    lru: Lru<Digest, PathBuf>,
    pulls: HashMap<Digest, Pull>,
}

struct Shared {
    dir: PathBuf,
    registries: Registries,
    max_bytes: u64,
    state: Mutex<State>,
    /// Names evicted entries are renamed to.
    trash: AtomicU64,
    /// Images pulled and unpacked into the store, ever.
    pulled: AtomicU64,
}

/// Unpacked images, shared read-only by the actions that run in them.
#[derive(Clone)]
pub struct ImageStore {
    shared: Arc<Shared>,
}

/// A pull that failed, naming the image.
#[derive(Debug, thiserror::Error)]
#[error("container image {image}")]
pub struct PullError {
    pub image: String,
    #[source]
    pub error: Arc<Error>,
}

/// An image in the store, kept while this handle lives.
pub struct Image {
    /// The `container-image` value asked for.
    pub reference: String,
    /// The digest it resolved to (a tag, once per pull).
    pub digest: Digest,
    /// Whether this request pulled it (false: it was in the store, or
    /// another action's pull brought it).
    pub pulled: bool,
    root: PathBuf,
    shared: Arc<Shared>,
}

/// A summary: the entries themselves can be many.
impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("dir", &self.shared.dir)
            .field("lru", &self.shared.lock().lru)
            .finish()
    }
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("reference", &self.reference)
            .field("digest", &self.digest)
            .field("root", &self.root)
            .finish()
    }
}

impl Image {
    /// The unpacked root tree.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.shared.release(&self.digest);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single call into the index).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pin(self: &Arc<Self>, digest: &Digest, reference: &str, pulled: bool) -> Option<Image> {
        let dir = {
            let mut state = self.lock();
            let dir = state.lru.get(digest)?.clone();
            state.lru.pin(digest);
            dir
        };
        // The order of use, for the next run's index (see `rescan`): one
        // futimens per action, and a failure only blurs that order.
        if let Err(error) =
            std::fs::File::open(&dir).and_then(|d| d.set_modified(std::time::SystemTime::now()))
        {
            debug!(%digest, %error, "could not mark an image used");
        }
        Some(Image {
            reference: reference.to_owned(),
            digest: digest.clone(),
            pulled,
            root: dir.join("rootfs"),
            shared: Arc::clone(self),
        })
    }

    fn release(&self, digest: &Digest) {
        let evicted = {
            let mut state = self.lock();
            state.lru.unpin(digest);
            self.evict(&mut state)
        };
        remove_detached(evicted);
    }

    /// Takes out least recently used unpinned entries until the total
    /// fits, renaming each aside; returns the renamed paths to remove.
    fn evict(&self, state: &mut State) -> Vec<PathBuf> {
        let mut gone = Vec::new();
        while state.lru.total_bytes() > state.lru.max_bytes() {
            let Some((digest, dir, _)) = state.lru.pop_oldest() else {
                break;
            };
            let aside = self.dir.join(format!(
                ".evicted-{}",
                self.trash.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::rename(&dir, &aside) {
                Ok(()) => gone.push(aside),
                Err(error) => warn!(%digest, %error, "could not set an evicted image aside"),
            }
            debug!(%digest, "image evicted");
        }
        gone
    }
}

/// Removes `paths` on a blocking thread (or here, without a runtime).
fn remove_detached(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let remove = move || {
        for path in paths {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                warn!(path = %path.display(), %error, "could not remove an evicted image");
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(remove)),
        Err(_) => remove(),
    }
}

/// What [`rescan`] found in a store's directory.
struct Found {
    lru: Lru<Digest, PathBuf>,
    /// Complete images kept, after the bound.
    kept: usize,
    /// Leftovers removed: partial pulls, half-removed evictions, images
    /// past the bound, anything else.
    removed: usize,
}

/// Indexes the complete images in `dir` (a previous run's), oldest use
/// first, and removes the rest, then what no longer fits `max_bytes`.
/// Their contents are not verified again: the worker alone writes the
/// store, and every image in it was verified before its rename.
fn rescan(dir: &Path, max_bytes: u64) -> Result<Found, Error> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { step, path, source }
    };
    let mut complete = Vec::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list the image store", dir))? {
        let entry = entry.map_err(io("list the image store", dir))?;
        let path = entry.path();
        match complete_image(&entry.file_name(), &path) {
            Some((digest, bytes, used)) => complete.push((used, digest, path, bytes)),
            None => leftovers.push(path),
        }
    }
    complete.sort();
    let mut lru = Lru::new(max_bytes);
    for (_, digest, path, bytes) in complete {
        for (_, evicted) in lru.insert(digest, path, bytes) {
            leftovers.push(evicted);
        }
    }
    // A single image past a bound lowered since it was pulled.
    while lru.total_bytes() > max_bytes {
        let Some((_, evicted, _)) = lru.pop_oldest() else {
            break;
        };
        leftovers.push(evicted);
    }
    let removed = leftovers.len();
    // Here, not detached: a later eviction's `.evicted-<n>` must not
    // meet a leftover of the same name.
    for path in leftovers {
        let gone = match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        match gone {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove a leftover of the image store", &path)(e))
            }
            _ => {}
        }
    }
    Ok(Found {
        kept: lru.len(),
        lru,
        removed,
    })
}

/// The digest, size and last use of the store entry `name` at `path`,
/// if it is a complete image: a directory named by a digest's hex,
/// holding `rootfs` and its size record.
fn complete_image(name: &OsStr, path: &Path) -> Option<(Digest, u64, std::time::SystemTime)> {
    let digest = Digest::parse(&format!("sha256:{}", name.to_str()?))?;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return None;
    }
    if !std::fs::symlink_metadata(path.join("rootfs"))
        .ok()?
        .is_dir()
    {
        return None;
    }
    let bytes = std::fs::read_to_string(path.join(SIZE_RECORD))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((digest, bytes, meta.modified().ok()?))
}

impl ImageStore {
    /// A store in `dir`, with the complete images a previous run left
    /// there (see [`rescan`]); partial ones are removed.
    pub fn open(dir: PathBuf, config: &Config) -> Result<ImageStore, Error> {
        let io = |step, source| Error::Io {
            step,
            path: dir.clone(),
            source,
        };
        // Readable by a runner of another user (it resolves the roots);
        // the sandbox takes the image's entries with the runner's
        // privilege, so the actions' ids need not search it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io("create the image store", e))?;
        let started = std::time::Instant::now();
        let found = rescan(&dir, config.max_bytes)?;
        info!(
            images = found.kept,
            bytes = found.lru.total_bytes(),
            leftovers_removed = found.removed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "image store reopened"
        );
        let credentials = match &config.credentials_file {
            Some(path) => Credentials::load(path).map_err(|e| Error::Unsupported {
                reason: e.to_string(),
            })?,
            None => Credentials::default(),
        };
        let registries = Registries::new(credentials, config.plain_http_registries.clone())?;
        Ok(ImageStore {
            shared: Arc::new(Shared {
                dir,
                registries,
                max_bytes: config.max_bytes,
                state: Mutex::new(State {
                    lru: found.lru,
                    pulls: HashMap::new(),
                }),
                trash: AtomicU64::new(0),
                pulled: AtomicU64::new(0),
            }),
        })
    }

    /// Where the store keeps its images.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Bytes of unpacked images held.
    pub fn total_bytes(&self) -> u64 {
        self.shared.lock().lru.total_bytes()
    }

    /// Images pulled and unpacked into the store since it opened (a
    /// pull shared by concurrent actions counts once).
    pub fn pulls(&self) -> u64 {
        self.shared.pulled.load(Ordering::Relaxed)
    }

    /// The image `value` names, pulled unless the store has it; kept
    /// until the returned handle is dropped.
    pub async fn get(&self, value: &str) -> Result<Image, PullError> {
        let fail = |error: Error| PullError {
            image: value.to_owned(),
            error: Arc::new(error),
        };
        let reference = Reference::parse(value).map_err(|e| fail(e.into()))?;
        // A digest already here needs no registry at all.
        if let Version::Digest(digest) = &reference.version {
            if let Some(image) = self.shared.pin(digest, value, false) {
                return Ok(image);
            }
        }
        let source = Source {
            registries: &self.shared.registries,
            reference: &reference,
        };
        let (digest, document) = source.resolve().await.map_err(fail)?;
        loop {
            if let Some(image) = self.shared.pin(&digest, value, false) {
                return Ok(image);
            }
            let pull: Pull =
                Arc::clone(self.shared.lock().pulls.entry(digest.clone()).or_default());
            let mut ran = false;
            let result = pull
                .get_or_init(|| {
                    ran = true;
                    async {
                        self.pull(&source, &digest, &document)
                            .await
                            .map_err(Arc::new)
                    }
                })
                .await
                .clone();
            let mine = self.shared.pin(&digest, value, ran);
            // The first back forgets the pull (the next action after a
            // failure tries again) and drops the pin the pull held, which
            // kept the image from eviction until its waiters pinned it.
            let forget = {
                let mut state = self.shared.lock();
                let ours = state
                    .pulls
                    .get(&digest)
                    .is_some_and(|p| Arc::ptr_eq(p, &pull));
                if ours {
                    state.pulls.remove(&digest);
                }
                ours
            };
            if forget && result.is_ok() {
                self.shared.release(&digest);
            }
            match (result, mine) {
                (Err(error), _) => {
                    return Err(PullError {
                        image: value.to_owned(),
                        error,
                    })
                }
                (Ok(()), Some(image)) => return Ok(image),
                // Evicted after its pull pin was dropped: pull again.
                (Ok(()), None) => {}
            }
        }
    }

    /// Pulls the image whose top document (`digest`) is `document`.
    async fn pull(
        &self,
        source: &Source<'_>,
        digest: &Digest,
        document: &[u8],
    ) -> Result<(), Error> {
        let parse = |what: String, bytes: &[u8]| -> Result<Document, Error> {
            serde_json::from_slice(bytes).map_err(|source| Error::Document { what, source })
        };
        let mut doc = parse(format!("manifest {digest}"), document)?;
        if let Some(Kind::Index(manifests)) = doc.kind() {
            let chosen =
                manifest::select_platform(manifests).ok_or_else(|| Error::Unsupported {
                    reason: format!(
                        "the index {digest} has no image for linux/{}",
                        manifest::host_architecture()
                    ),
                })?;
            let chosen = manifest::digest_of(chosen).ok_or_else(|| Error::BadDigest {
                digest: chosen.digest.clone(),
            })?;
            let body = source.document(&chosen).await?;
            doc = parse(format!("manifest {chosen}"), &body)?;
        }
        let Some(Kind::Manifest { config, layers }) = doc.kind() else {
            return Err(Error::Unsupported {
                reason: format!("{digest} is neither an image manifest nor an index of them"),
            });
        };
        let (config, layers) = (config.clone(), layers.to_vec());
        let config_digest = manifest::digest_of(&config).ok_or_else(|| Error::BadDigest {
            digest: config.digest.clone(),
        })?;
        let config_body = source.config(&config_digest).await?;
        let config: manifest::Config =
            serde_json::from_slice(&config_body).map_err(|source| Error::Document {
                what: format!("config {config_digest}"),
                source,
            })?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(Error::Unsupported {
                reason: format!(
                    "{} layers but {} diff_ids in the config",
                    layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        let compressed: u64 = layers.iter().map(|l| l.size).sum();
        let max_bytes = self.shared.max_bytes;
        if compressed > max_bytes {
            return Err(Error::TooLarge {
                what: format!("image {digest} (its layers)"),
                bytes: compressed,
                max_bytes,
            });
        }

        let dir = &self.shared.dir;
        let io = |step, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { step, path, source }
        };
        let scratch = tempfile::Builder::new()
            .prefix(".pull-")
            .tempdir_in(dir)
            .map_err(io("create a pull's directory in", dir))?;
        let rootfs = scratch.path().join("rootfs");
        std::fs::create_dir(&rootfs).map_err(io("create", &rootfs))?;
        let mut tree = Tree::new(rootfs);
        let mut budget = Budget {
            written_bytes: 0,
            max_bytes,
        };
        let blob = scratch.path().join("layer");
        for (layer, diff_id) in layers.iter().zip(config.rootfs.diff_ids) {
            let compression = manifest::layer_compression(&layer.media_type).ok_or_else(|| {
                Error::Unsupported {
                    reason: format!("layer media type {:?}", layer.media_type),
                }
            })?;
            let layer_digest = manifest::digest_of(layer).ok_or_else(|| Error::BadDigest {
                digest: layer.digest.clone(),
            })?;
            let mut file = tokio::fs::File::create(&blob)
                .await
                .map_err(io("create", &blob))?;
            source.blob(&layer_digest, layer.size, &mut file).await?;
            drop(file);
            let path = blob.clone();
            let (returned, unpacked) = tokio::task::spawn_blocking(move || {
                let unpacked = std::fs::File::open(&path)
                    .map_err(crate::unpack::UnpackError::Read)
                    .and_then(|file| {
                        tree.unpack(
                            std::io::BufReader::new(file),
                            compression,
                            Some(&diff_id),
                            &mut budget,
                        )
                    })
                    .map(|()| budget);
                (tree, unpacked)
            })
            .await
            .map_err(|e| Error::Io {
                step: "unpack a layer into",
                path: scratch.path().to_owned(),
                source: std::io::Error::other(e),
            })?;
            tree = returned;
            budget = unpacked.map_err(|source| match source {
                crate::unpack::UnpackError::TooLarge { max_bytes } => Error::TooLarge {
                    what: format!("image {digest} unpacked"),
                    bytes: max_bytes.saturating_add(1),
                    max_bytes,
                },
                source => Error::Unpack {
                    layer: layer_digest.clone(),
                    source,
                },
            })?;
            std::fs::remove_file(&blob).map_err(io("remove", &blob))?;
        }
        tree.finish().map_err(|source| Error::Unpack {
            layer: digest.clone(),
            source,
        })?;
        // Last before the rename: an entry with its size record is whole.
        let record = scratch.path().join(SIZE_RECORD);
        std::fs::write(&record, budget.written_bytes.to_string())
            .map_err(io("record the size of", &record))?;
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("open up", scratch.path()))?;
        let entry = dir.join(digest.hex());
        let kept = scratch.keep();
        if let Err(e) = std::fs::rename(&kept, &entry) {
            let _ = std::fs::remove_dir_all(&kept);
            return Err(io("move the unpacked image to", &entry)(e));
        }
        // Pinned for the actions waiting on this pull; the first of them
        // back releases it (and evicts what no longer fits).
        self.shared
            .lock()
            .lru
            .insert_pinned(digest.clone(), entry, budget.written_bytes);
        self.shared.pulled.fetch_add(1, Ordering::Relaxed);
        debug!(%digest, bytes = budget.written_bytes, "image unpacked");
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
    use crate::unpack::tests::layer;
    use tar::EntryType::{Regular, Symlink};

    /// Writes an OCI layout at `dir` holding one image, tagged `tag`, of
    /// `layers` (uncompressed tars); returns the manifest's digest.
    pub(crate) fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Digest {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let digest = Digest::of(bytes);
            std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
            digest
        };
        let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
        let config = serde_json::json!({
            "architecture": manifest::host_architecture(), "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        })
        .to_string();
        let config_digest = put(config.as_bytes());
        let layer_descriptors: Vec<_> = layers
            .iter()
            .map(|l| {
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": put(l).to_string(), "size": l.len()})
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(), "size": config.len()},
            "layers": layer_descriptors
        })
        .to_string();
        let manifest_digest = put(manifest.as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest.to_string(),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]
        });
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        manifest_digest
    }

    fn store(dir: &Path, max_bytes: u64) -> ImageStore {
        ImageStore::open(
            dir.join("images"),
            &Config {
                max_bytes,
                ..Config::default()
            },
        )
        .unwrap()
    }

    fn busybox_like() -> Vec<Vec<u8>> {
        vec![
            layer(&[
                ("bin/busybox", Regular, "#!elf", 0o755),
                ("etc/only-in-image", Regular, "image", 0o644),
            ]),
            layer(&[("bin/sh", Symlink, "busybox", 0o777)]),
        ]
    }

    fn blame(err: &PullError) -> crate::Blame {
        err.error.blame()
    }

    #[tokio::test]
    async fn a_layout_image_is_unpacked_once_and_found_by_digest_after() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let digest = write_layout(&layout, "v1", &busybox_like());
        let store = store(dir.path(), 1 << 30);
        let value = format!("oci:{}:v1", layout.display());
        let image = store.get(&value).await.unwrap();
        assert!(image.pulled);
        assert_eq!(image.digest, digest);
        assert_eq!(
            std::fs::read_to_string(image.root().join("etc/only-in-image")).unwrap(),
            "image"
        );
        assert_eq!(
            std::fs::read_link(image.root().join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        drop(image);
        // By digest: found without reading the layout at all.
        std::fs::remove_dir_all(&layout).unwrap();
        let again = store
            .get(&format!("oci:{}@{digest}", layout.display()))
            .await
            .unwrap();
        assert!(!again.pulled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_actions_share_one_pull() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        write_layout(&layout, "v1", &busybox_like());
        let store = store(dir.path(), 1 << 30);
        let value = format!("oci:{}:v1", layout.display());
        // Tasks, so the gets run on both threads at once.
        let mut gets = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, value) = (store.clone(), value.clone());
            gets.spawn(async move { store.get(&value).await.unwrap() });
        }
        let mut pulled = 0;
        let mut images = Vec::new();
        while let Some(image) = gets.join_next().await {
            let image = image.unwrap();
            pulled += usize::from(image.pulled);
            images.push(image);
        }
        assert_eq!(pulled, 1, "one pull for eight concurrent actions");
        assert_eq!(store.pulls(), 1);
        assert!(images.iter().all(|i| i.root() == images[0].root()));
    }

    #[tokio::test]
    async fn bad_images_fail_naming_the_image_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path(), 1 << 20);
        let layout = |name: &str, layers: &[Vec<u8>]| {
            let path = dir.path().join(name);
            write_layout(&path, "v1", layers);
            path
        };
        // Unknown tag, missing image.
        let good = layout("good", &busybox_like());
        let err = store
            .get(&format!("oci:{}:nope", good.display()))
            .await
            .unwrap_err();
        assert_eq!(blame(&err), crate::Blame::Image);
        let text = crate::tests::chain(&err);
        assert!(
            text.contains("tag nope") && text.contains(&good.display().to_string()),
            "{text}"
        );
        let err = store.get("oci:/nonexistent/image").await.unwrap_err();
        assert!(crate::tests::chain(&err).contains("not found"), "{err:?}");

        // A layer whose bytes differ from its digest.
        let tampered = layout("tampered", &busybox_like());
        let blob = Digest::of(&busybox_like()[0]);
        std::fs::write(tampered.join("blobs/sha256").join(blob.hex()), b"evil").unwrap();
        let err = store
            .get(&format!("oci:{}:v1", tampered.display()))
            .await
            .unwrap_err();
        assert!(
            matches!(*err.error, Error::DigestMismatch { .. }),
            "{err:?}"
        );
        assert_eq!(blame(&err), crate::Blame::Image);

        // A layer escaping its root.
        let escaping = layout(
            "escaping",
            &[layer(&[("x", tar::EntryType::Link, "/etc/shadow", 0o644)])],
        );
        let err = store
            .get(&format!("oci:{}:v1", escaping.display()))
            .await
            .unwrap_err();
        let text = crate::tests::chain(&err);
        assert!(text.contains("escapes the image root"), "{text}");
        assert_eq!(blame(&err), crate::Blame::Image);

        // Larger than the cache.
        let big = "x".repeat(2 << 20);
        let large = layout("large", &[layer(&[("big", Regular, &big, 0o644)])]);
        let err = store
            .get(&format!("oci:{}:v1", large.display()))
            .await
            .unwrap_err();
        assert!(matches!(*err.error, Error::TooLarge { .. }), "{err:?}");
        // Nothing half unpacked is left or handed out.
        let left: Vec<_> = std::fs::read_dir(store.dir()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");

        // A malformed value is the reference's fault.
        let err = store.get("docker://UPPER/x").await.unwrap_err();
        assert_eq!(blame(&err), crate::Blame::Reference);
    }

    #[tokio::test]
    async fn images_in_use_are_never_evicted_and_the_oldest_unused_goes_first() {
        let dir = tempfile::tempdir().unwrap();
        let payload = "y".repeat(40_000);
        let mut values = Vec::new();
        for name in ["a", "b", "c"] {
            let path = dir.path().join(name);
            write_layout(&path, "v1", &[layer(&[(name, Regular, &payload, 0o644)])]);
            values.push(format!("oci:{}:v1", path.display()));
        }
        // Room for two images.
        let store = store(dir.path(), 100_000);
        let a = store.get(&values[0]).await.unwrap();
        let b = store.get(&values[1]).await.unwrap();
        drop(b);
        // c needs room: b (unused) goes, a (in use) stays.
        let c = store.get(&values[2]).await.unwrap();
        assert!(a.root().join("a").exists());
        drop(c);
        let b_again = store.get(&values[1]).await.unwrap();
        assert!(b_again.pulled, "b was evicted");
        assert!(a.root().join("a").exists(), "a in use was not");
        assert!(store.total_bytes() <= 100_000 + 45_000);
    }

    fn set_used(dir: &Path, ago: std::time::Duration) {
        std::fs::File::open(dir)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - ago)
            .unwrap();
    }

    #[tokio::test]
    async fn a_reopened_store_keeps_its_complete_images_in_use_order_and_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let payload = "y".repeat(40_000);
        let mut by_digest = Vec::new();
        for name in ["a", "b"] {
            let path = dir.path().join(name);
            let digest = write_layout(&path, "v1", &[layer(&[(name, Regular, &payload, 0o644)])]);
            by_digest.push((format!("oci:{}@{digest}", path.display()), digest));
        }
        let first = store(dir.path(), 1 << 30);
        for (value, _) in &by_digest {
            assert!(first.get(value).await.unwrap().pulled);
        }
        let bytes = first.total_bytes();
        let images = first.dir().to_owned();
        drop(first);
        // What a stop can leave: a pull cut short, an eviction cut short,
        // an entry named by a digest without its size record, a stray file.
        std::fs::create_dir_all(images.join(".pull-x1y2/rootfs/usr")).unwrap();
        std::fs::create_dir_all(images.join(".evicted-0/rootfs/etc")).unwrap();
        let unrecorded = images.join("ab".repeat(32));
        std::fs::create_dir_all(unrecorded.join("rootfs")).unwrap();
        std::fs::write(images.join("stray"), "").unwrap();
        // No source any more: whatever runs now comes from the store.
        for name in ["a", "b"] {
            std::fs::remove_dir_all(dir.path().join(name)).unwrap();
        }
        let entry = |digest: &Digest| images.join(digest.hex());
        // b used an hour ago, a a minute ago.
        set_used(&entry(&by_digest[0].1), std::time::Duration::from_secs(60));
        set_used(
            &entry(&by_digest[1].1),
            std::time::Duration::from_secs(3600),
        );

        let reopened = store(dir.path(), 1 << 30);
        assert_eq!(reopened.total_bytes(), bytes);
        let mut left: Vec<_> = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut kept: Vec<_> = by_digest.iter().map(|(_, d)| d.hex().to_owned()).collect();
        kept.sort();
        assert_eq!(left, kept, "leftovers removed, complete images kept");
        for (value, digest) in &by_digest {
            let image = reopened.get(value).await.unwrap();
            assert!(!image.pulled);
            assert_eq!(&image.digest, digest);
        }
        assert_eq!(reopened.pulls(), 0);
        drop(reopened);

        // Reopened with room for one image: the least recently used (b)
        // goes, from the index and the disk.
        set_used(&entry(&by_digest[0].1), std::time::Duration::from_secs(60));
        set_used(
            &entry(&by_digest[1].1),
            std::time::Duration::from_secs(3600),
        );
        let smaller = store(dir.path(), 60_000);
        assert!(smaller.total_bytes() <= 60_000);
        assert!(entry(&by_digest[0].1).exists());
        assert!(!entry(&by_digest[1].1).exists());
        assert!(!smaller.get(&by_digest[0].0).await.unwrap().pulled);
        let err = smaller.get(&by_digest[1].0).await.unwrap_err();
        assert!(crate::tests::chain(&err).contains("not found"), "{err:?}");
    }
}
