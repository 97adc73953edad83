//! ByteStream resource names, built in one place for every client:
//! `{instance}/blobs/{function}/{hash}/{size}` to read and
//! `{instance}/uploads/{uuid}/blobs/{function}/{hash}/{size}` to write.
//! Storage parses them (`corral_storage::resource_name`).

use crate::digest::DigestFunction;

/// The digest-function segment; SHA-256, REAPI's default, has none so
/// that servers predating the segment understand the name.
fn function_segment(function: DigestFunction) -> String {
    match function {
        DigestFunction::Sha256 => String::new(),
        other => format!("{}/", other.name()),
    }
}

/// `{instance}/{rest}`, or `rest` for the empty instance name.
fn join_instance(instance: &str, rest: &str) -> String {
    if instance.is_empty() {
        rest.to_owned()
    } else {
        format!("{instance}/{rest}")
    }
}

/// The name to read the blob `hash`/`size` made by `function`.
pub fn read_name(instance: &str, function: DigestFunction, hash: &str, size: i64) -> String {
    let segment = function_segment(function);
    join_instance(instance, &format!("blobs/{segment}{hash}/{size}"))
}

/// The name to write the blob `hash`/`size` made by `function` as upload
/// `upload_id`.
pub fn upload_name(
    instance: &str,
    upload_id: &str,
    function: DigestFunction,
    hash: &str,
    size: i64,
) -> String {
    let segment = function_segment(function);
    join_instance(
        instance,
        &format!("uploads/{upload_id}/blobs/{segment}{hash}/{size}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_prefix_resources() {
        let sha = DigestFunction::Sha256;
        assert_eq!(read_name("", sha, "a", 1), "blobs/a/1");
        assert_eq!(read_name("x/y", sha, "a", 1), "x/y/blobs/a/1");
    }

    #[test]
    fn functions_other_than_sha256_are_named() {
        let blake = DigestFunction::Blake3;
        assert_eq!(read_name("i", blake, "a", 1), "i/blobs/blake3/a/1");
        assert_eq!(
            upload_name("", "u", blake, "a", 1),
            "uploads/u/blobs/blake3/a/1"
        );
        assert_eq!(
            upload_name("i", "u", DigestFunction::Sha256, "a", 1),
            "i/uploads/u/blobs/a/1"
        );
    }
}
