//! Image indexes, manifests and configs: the JSON documents that name an
//! image's layers, in their OCI and Docker forms.

use serde::Deserialize;

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a registry is asked for, in order of preference.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest or config read: real ones are a few KiB.
pub const DOCUMENT_MAX_BYTES: u64 = 4 << 20;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A content descriptor (`mediaType`, `digest`, `size`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An index (or Docker manifest list) or a manifest: told apart by
/// `mediaType`, or by which fields are present when it is left out.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

/// The parts of an image config used here: the layers' uncompressed
/// digests, verified as each layer is unpacked.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

/// What the manifest document turned out to be.
pub enum Kind<'a> {
    Index(&'a [Descriptor]),
    Manifest {
        config: &'a Descriptor,
        layers: &'a [Descriptor],
    },
}

impl Document {
    pub fn kind(&self) -> Option<Kind<'_>> {
        let media_type = self.media_type.as_deref();
        match (media_type, &self.manifests, &self.config, &self.layers) {
            (Some(OCI_INDEX | DOCKER_LIST) | None, Some(manifests), _, _) => {
                Some(Kind::Index(manifests))
            }
            (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, None, Some(config), Some(layers)) => {
                Some(Kind::Manifest { config, layers })
            }
            _ => None,
        }
    }
}

/// The OCI architecture name of this host.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The index entry for linux on this host's architecture.
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = host_architecture();
    manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    })
}

/// The compression of a layer media type; `None` for a type that is not
/// a layer we can unpack (foreign or encrypted layers).
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// A descriptor's digest, parsed.
pub fn digest_of(descriptor: &Descriptor) -> Option<Digest> {
    Digest::parse(&descriptor.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_selects_linux_on_this_architecture() {
        let index: Document = serde_json::from_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
                {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:aa","size":1,"platform":{{"architecture":"s390x","os":"linux"}}}},
                {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:bb","size":1,"platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
            host_architecture()
        ))
        .unwrap();
        let Some(Kind::Index(manifests)) = index.kind() else {
            panic!("not an index");
        };
        assert_eq!(select_platform(manifests).unwrap().digest, "sha256:bb");
    }

    #[test]
    fn a_manifest_without_media_type_is_recognised_by_its_fields() {
        let doc: Document = serde_json::from_str(
            r#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":2},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l","size":3}]}"#,
        )
        .unwrap();
        assert!(matches!(doc.kind(), Some(Kind::Manifest { layers, .. }) if layers.len() == 1));
        let neither: Document = serde_json::from_str(r#"{"schemaVersion":1}"#).unwrap();
        assert!(neither.kind().is_none());
    }
}
