//! Crafted input: input roots as a client may send them. Arbitrary trees
//! of Directory messages, with names that are empty, `.`, `..`, hold a
//! slash or a NUL, are too long or repeat, nodes without digests,
//! symlinks to anywhere, and entry limits, are laid out by the real
//! `materialize` over an in-process storage. Each is either laid out
//! exactly as the tree says, inside the directory given, or refused as
//! the action's fault (INVALID_ARGUMENT, with a message); never a panic,
//! never the worker's fault.
//!
//! CI runs [`CASES`] cases per property; `PROPTEST_CASES=100000 cargo test
//! -p corral-worker --test it crafted` runs a longer search (docs/spec.md,
//! "Crafted input").

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use corral_proto::reapi::{Digest, Directory, DirectoryNode, FileNode, SymlinkNode};
use corral_worker::cas_client::{digest_of, CasClient};
use corral_worker::directory_cache::DirectoryCache;
use corral_worker::executor;
use corral_worker::file_cache::FileCache;
use corral_worker::input_root::{self, materialize, CheckedDirectory};
use proptest::prelude::*;
use prost::Message as _;

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 256;

fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig {
        // A failure is kept as a named regression test, not a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// One runtime and one in-process storage for every case: starting them
/// per case would cost more than the case.
fn storage() -> &'static (tokio::runtime::Runtime, String) {
    static STORAGE: OnceLock<(tokio::runtime::Runtime, String)> = OnceLock::new();
    STORAGE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port");
        let endpoint = format!("http://{}", listener.local_addr().expect("its address"));
        let cfg = corral_storage::config::Config {
            backend: corral_storage::config::Backend::Memory {
                max_size_bytes: 256 << 20,
            },
            ..Default::default()
        };
        // Detached: the storage serves until the test binary exits.
        drop(runtime.spawn(corral_storage::run(cfg, listener, std::future::pending())));
        (runtime, endpoint)
    })
}

/// An entry of a tree as the test means it.
#[derive(Debug, Clone)]
enum Entry {
    File {
        content: u8,
        executable: bool,
        /// The node is sent without its digest.
        no_digest: bool,
    },
    Symlink(String),
    Dir(Vec<(String, Entry)>),
}

/// Names: mostly good ones from a small set, so that repeats happen;
/// sometimes every kind of bad one.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(vec!["a", "b", "c", "d.txt", "..a", "é", " "]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just(".".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("a/b".to_owned()),
        1 => Just("/".to_owned()),
        1 => Just("a\0".to_owned()),
        1 => Just("n".repeat(256)),
        1 => Just("n".repeat(255)),
    ]
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["a", "../a", "../../../../etc/passwd", "/etc/passwd", "/", ".", "b/c"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("a\0b".to_owned()),
        1 => Just("t".repeat(4095)),
        1 => Just("t".repeat(4096)),
    ]
}

fn leaf() -> impl Strategy<Value = Entry> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>(), prop::bool::weighted(0.03)).prop_map(
            |(content, executable, no_digest)| Entry::File { content, executable, no_digest }
        ),
        2 => target().prop_map(Entry::Symlink),
    ]
}

/// A directory: a few entries each, some levels deep.
fn tree() -> impl Strategy<Value = Vec<(String, Entry)>> {
    let entry = leaf().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            2 => inner.clone(),
            1 => prop::collection::vec((name(), inner), 0..5).prop_map(Entry::Dir),
        ]
    });
    prop::collection::vec((name(), entry), 0..6)
}

/// What a tree should be: refused, or laid out as these paths.
#[derive(Debug, PartialEq)]
enum Laid {
    File { content: u8, executable: bool },
    Symlink(String),
    Dir,
}

/// Why the tree must be refused, if it must; otherwise every path in it.
fn expected(
    entries: &[(String, Entry)],
    prefix: &str,
    out: &mut BTreeMap<String, Laid>,
    count: &mut u64,
) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (name, entry) in entries {
        *count += 1;
        input_root::checked_name(name).map_err(|e| e.to_string())?;
        if !seen.insert(name) {
            return Err(format!("{name:?} twice"));
        }
        let path = format!("{prefix}{name}");
        match entry {
            Entry::File {
                no_digest: true, ..
            } => return Err(format!("{path} has no digest")),
            Entry::File {
                content,
                executable,
                ..
            } => {
                out.insert(
                    path,
                    Laid::File {
                        content: *content,
                        executable: *executable,
                    },
                );
            }
            Entry::Symlink(target) => {
                if target.is_empty() || target.contains('\0') || target.len() > 4095 {
                    return Err(format!("{path} has target {} bytes long", target.len()));
                }
                out.insert(path, Laid::Symlink(target.clone()));
            }
            Entry::Dir(children) => {
                out.insert(path.clone(), Laid::Dir);
                expected(children, &format!("{path}/"), out, count)?;
            }
        }
    }
    Ok(())
}

/// The Directory messages and file blobs of a tree; returns its digest.
fn encode(entries: &[(String, Entry)], blobs: &mut Vec<(Digest, Vec<u8>)>) -> Digest {
    let mut dir = Directory::default();
    for (name, entry) in entries {
        match entry {
            Entry::File {
                content,
                executable,
                no_digest,
            } => {
                let data = vec![*content; usize::from(*content % 4)];
                let digest = digest_of(&data);
                blobs.push((digest.clone(), data));
                dir.files.push(FileNode {
                    name: name.clone(),
                    digest: (!no_digest).then_some(digest),
                    is_executable: *executable,
                    ..Default::default()
                });
            }
            Entry::Symlink(target) => dir.symlinks.push(SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                ..Default::default()
            }),
            Entry::Dir(children) => dir.directories.push(DirectoryNode {
                name: name.clone(),
                digest: Some(encode(children, blobs)),
            }),
        }
    }
    let data = dir.encode_to_vec();
    let digest = digest_of(&data);
    blobs.push((digest.clone(), data));
    digest
}

/// Every path under `root`, as laid out.
fn laid_out(root: &Path, prefix: &str, out: &mut BTreeMap<String, Laid>) {
    for entry in std::fs::read_dir(root).expect("readable layout") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().into_string().expect("UTF-8 names only");
        let path = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(entry.path()).expect("its metadata");
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path()).expect("its target");
            let target = target.into_os_string().into_string().expect("UTF-8 target");
            out.insert(path, Laid::Symlink(target));
        } else if meta.is_dir() {
            out.insert(path.clone(), Laid::Dir);
            laid_out(&entry.path(), &format!("{path}/"), out);
        } else {
            let data = std::fs::read(entry.path()).expect("its content");
            out.insert(
                path,
                Laid::File {
                    content: data.first().copied().unwrap_or(0),
                    executable: meta.permissions().mode() & 0o111 != 0,
                },
            );
        }
    }
}

/// What the file content of an empty blob compares as: the test's model
/// keeps only the byte, and blobs of `content % 4` copies of it.
fn normalise(laid: BTreeMap<String, Laid>) -> BTreeMap<String, Laid> {
    laid.into_iter()
        .map(|(path, laid)| match laid {
            Laid::File {
                content,
                executable,
            } if content % 4 == 0 => (
                path,
                Laid::File {
                    content: 0,
                    executable,
                },
            ),
            other => (path, other),
        })
        .collect()
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn an_input_root_is_laid_out_as_sent_or_refused_as_the_actions_fault(
        tree in tree(),
        max_entries in prop_oneof![3 => Just(1_000u64), 1 => 0u64..30],
    ) {
        let (runtime, endpoint) = storage();
        let mut want = BTreeMap::new();
        let mut count = 0;
        let verdict = expected(&tree, "", &mut want, &mut count);
        let mut blobs = Vec::new();
        let root = encode(&tree, &mut blobs);
        blobs.sort_by(|a, b| a.0.hash.cmp(&b.0.hash));
        blobs.dedup_by(|a, b| a.0 == b.0);

        let work = tempfile::tempdir().expect("a temporary directory");
        let dest = work.path().join("root");
        std::fs::create_dir(&dest).expect("the input root's directory");
        let result = runtime.block_on(async {
            let cas = CasClient::new(endpoint).expect("a client");
            cas.upload(blobs).await.expect("blobs uploaded");
            let files = Arc::new(
                FileCache::open(work.path().join("cache"), 1 << 20).expect("a file cache"),
            );
            let directories = DirectoryCache::new(1 << 20);
            materialize(&cas, &files, &directories, &root, &dest, max_entries).await
        });
        match (verdict, count <= max_entries, result) {
            (Ok(()), true, Ok(())) => {
                let mut got = BTreeMap::new();
                laid_out(&dest, "", &mut got);
                prop_assert_eq!(normalise(got), normalise(want));
                // Nothing was written beside the input root.
                let beside: Vec<_> = std::fs::read_dir(work.path())
                    .expect("the work directory")
                    .map(|e| e.expect("an entry").file_name())
                    .collect();
                prop_assert_eq!(beside.len(), 2, "{:?}", beside);
            }
            (verdict, within, Ok(())) => {
                prop_assert!(false, "accepted a tree that is {verdict:?}, within limit: {within}");
            }
            (verdict, within, Err(err)) => {
                let status = executor::status(&executor::Error::InputRoot(err));
                prop_assert!(
                    status.code == tonic::Code::InvalidArgument as i32,
                    "refused a tree that is {:?} (within limit: {}) as code {}: {}",
                    verdict, within, status.code, status.message
                );
                prop_assert!(!status.message.is_empty());
                prop_assert!(verdict.is_err() || !within, "refused a good tree: {}", status.message);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(4 * CASES))]

    /// Any bytes read as a Directory: a decode error, a refusal naming
    /// the fault, or a directory whose every name is one component.
    #[test]
    fn any_bytes_as_a_directory_decode_and_check_or_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let Ok(directory) = Directory::decode(bytes.as_slice()) else {
            return Ok(());
        };
        match CheckedDirectory::check(directory, Path::new("/r")) {
            Ok(checked) => {
                let names = checked.directories.iter().map(|d| &d.name)
                    .chain(checked.files.iter().map(|f| &f.name))
                    .chain(checked.symlinks.iter().map(|s| &s.name));
                for name in names {
                    prop_assert!(input_root::checked_name(name).is_ok(), "{:?}", name);
                }
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }
}
