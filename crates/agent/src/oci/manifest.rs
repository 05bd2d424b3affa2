//! What a manifest's layers become on disk. An index (multi-platform) picks this machine's
//! linux platform, else its only entry. A layer with an `org.opencontainers.image.title`
//! annotation is one file of that name (ORAS artifacts; its digest is the file's sha256),
//! unless ORAS marked it a packed directory (`io.deis.oras.content.unpack`); a layer without a
//! title must be a container image layer (tar, optionally gzip), unpacked keeping only what
//! lies under `models/` (KServe's modelcar layout). Anything else is refused by name.

use serde::Deserialize;

/// The largest layer taken (1 TiB): a manifest's sizes are the registry's word, and their
/// sum must not wrap.
const MAX_LAYER_BYTES: u64 = 1 << 40;
/// The most layers a manifest may have.
const MAX_LAYERS: usize = 1024;

/// The annotation ORAS names a file layer with.
pub(crate) const TITLE: &str = "org.opencontainers.image.title";
/// The annotation ORAS marks a packed directory with.
pub(crate) const UNPACK: &str = "io.deis.oras.content.unpack";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const IMAGE_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How an archive layer is unpacked into the version directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpack {
    /// The layer is gzip-compressed.
    pub gzip: bool,
    /// Only entries under this directory of the archive are kept, with it stripped
    /// (`models/` for a modelcar); empty keeps every entry.
    pub subtree: String,
}

/// A layer the model is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layer {
    /// The blob's digest.
    pub(crate) digest: kiln::Digest,
    /// The blob's size.
    pub(crate) size: u64,
    /// A file's path in the version; for an archive, the name its download is staged under.
    pub(crate) path: String,
    /// `Some` for an archive to unpack.
    pub(crate) unpack: Option<Unpack>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// What a manifest's bytes say: an image's layers, or the digest of the index entry to follow.
pub(crate) enum Parsed {
    /// An image (or artifact) manifest's layers.
    Layers(Vec<Layer>),
    /// An index: the manifest to fetch next.
    Follow(String),
}

fn digest_of(d: &Descriptor) -> Result<kiln::Digest, String> {
    d.digest
        .strip_prefix("sha256:")
        .and_then(|hex| hex.parse().ok())
        .ok_or_else(|| format!("descriptor digest {:?} is not sha256:<hex>", d.digest))
}

/// This machine's platform in OCI's words.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Parses a manifest whose `Content-Type` was `content_type`.
pub(crate) fn parse(body: &[u8], content_type: &str) -> Result<Parsed, String> {
    let m: Manifest =
        serde_json::from_slice(body).map_err(|e| format!("the manifest is not valid JSON: {e}"))?;
    let media_type = m
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| content_type.to_owned());
    if INDEX_TYPES.contains(&media_type.as_str()) || (m.layers.is_none() && m.manifests.is_some()) {
        let entries = m.manifests.unwrap_or_default();
        let arch = architecture();
        let chosen = entries
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .or_else(|| (entries.len() == 1).then(|| &entries[0]))
            .ok_or_else(|| {
                format!(
                    "the index has no linux/{arch} manifest among its {} entries",
                    entries.len()
                )
            })?;
        digest_of(chosen)?;
        return Ok(Parsed::Follow(chosen.digest.clone()));
    }
    if !IMAGE_TYPES.contains(&media_type.as_str()) && m.layers.is_none() {
        return Err(format!(
            "manifest media type {media_type:?} is not an image manifest"
        ));
    }
    let descriptors = m.layers.unwrap_or_default();
    if descriptors.is_empty() {
        return Err("the manifest has no layers".into());
    }
    if descriptors.len() > MAX_LAYERS {
        return Err(format!(
            "the manifest has {} layers, more than kiln takes ({MAX_LAYERS})",
            descriptors.len()
        ));
    }
    let mut layers = Vec::with_capacity(descriptors.len());
    let mut paths = std::collections::BTreeSet::new();
    for (n, d) in descriptors.iter().enumerate() {
        let digest = digest_of(d)?;
        if d.size > MAX_LAYER_BYTES {
            return Err(format!(
                "layer {n} claims {} bytes, more than kiln takes ({MAX_LAYER_BYTES})",
                d.size
            ));
        }
        let gzip = d.media_type.ends_with("gzip");
        // An archive layer, staged under a name of its own and unpacked keeping `subtree`.
        let archive = |subtree: String| Layer {
            digest,
            size: d.size,
            path: format!("layer-{n}-{}", &digest.to_string()[..16]),
            unpack: Some(Unpack { gzip, subtree }),
        };
        let layer = match d.annotations.get(TITLE) {
            Some(title) if d.annotations.get(UNPACK).is_some_and(|v| v == "true") => {
                if !(d.media_type.ends_with("tar") || gzip) {
                    return Err(format!("layer {n} ({title:?}) is a packed directory of media type {:?}, not tar or tar+gzip", d.media_type));
                }
                archive(String::new())
            }
            Some(title) => {
                if let Err(why) = super::check_path(title) {
                    return Err(format!("layer {n}'s title {title:?} {why}"));
                }
                Layer {
                    digest,
                    size: d.size,
                    path: title.clone(),
                    unpack: None,
                }
            }
            None => {
                let image_layer = matches!(
                    d.media_type.as_str(),
                    "application/vnd.oci.image.layer.v1.tar"
                        | "application/vnd.oci.image.layer.v1.tar+gzip"
                        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
                        | "application/vnd.docker.image.rootfs.diff.tar"
                );
                if !image_layer {
                    return Err(format!(
                        "layer {n} has no {TITLE} annotation and media type {:?} is not an uncompressed or gzip image layer (zstd is not supported)",
                        d.media_type
                    ));
                }
                archive("models/".into())
            }
        };
        if !paths.insert(layer.path.clone()) {
            return Err(format!("two layers are both {:?}", layer.path));
        }
        layers.push(layer);
    }
    Ok(Parsed::Layers(layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn artifacts_images_and_indexes_are_understood() {
        let oras = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","artifactType":"application/vnd.kiln.model","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:{}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"sha256:{}","size":5,"annotations":{{"{TITLE}":"model.onnx"}}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":9,"annotations":{{"{TITLE}":"tokenizer","{UNPACK}":"true"}}}}]}}"#,
            hex('a'),
            hex('b'),
            hex('c')
        );
        let Parsed::Layers(layers) = parse(oras.as_bytes(), "").expect("test value") else {
            panic!("layers")
        };
        assert_eq!(layers[0].path, "model.onnx");
        assert!(layers[0].unpack.is_none());
        assert_eq!(layers[1].unpack.as_ref().expect("test value").subtree, "");
        assert!(layers[1].unpack.as_ref().expect("test value").gzip);

        let image = format!(
            r#"{{"schemaVersion":2,"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:{}","size":5}}]}}"#,
            hex('d')
        );
        let Parsed::Layers(layers) = parse(image.as_bytes(), IMAGE_TYPES[1]).expect("test value")
        else {
            panic!("layers")
        };
        assert_eq!(
            layers[0].unpack.as_ref().expect("test value").subtree,
            "models/"
        );

        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":5,"platform":{{"os":"linux","architecture":"s390x"}}}},{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":5,"platform":{{"os":"linux","architecture":"{}"}}}}]}}"#,
            hex('e'),
            hex('f'),
            architecture()
        );
        let Parsed::Follow(next) = parse(index.as_bytes(), "").expect("test value") else {
            panic!("follow")
        };
        assert_eq!(next, format!("sha256:{}", hex('f')));
    }

    #[test]
    fn unsafe_titles_and_unknown_layers_are_refused() {
        for (title, media) in [
            ("../escape", "application/octet-stream"),
            ("/etc/passwd", "application/octet-stream"),
            (kiln::layout::MANIFEST_FILE, "application/octet-stream"),
        ] {
            let m = format!(
                r#"{{"layers":[{{"mediaType":"{media}","digest":"sha256:{}","size":1,"annotations":{{"{TITLE}":"{title}"}}}}]}}"#,
                hex('a')
            );
            let e = parse(m.as_bytes(), IMAGE_TYPES[0]).err().expect("an error");
            assert!(
                e.contains("relative path") || e.contains("manifest kiln writes"),
                "{e}"
            );
        }
        let zstd = format!(
            r#"{{"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:{}","size":1}}]}}"#,
            hex('a')
        );
        assert!(parse(zstd.as_bytes(), IMAGE_TYPES[0])
            .err()
            .expect("test value")
            .contains("zstd"));
        let twice = format!(
            r#"{{"layers":[{{"digest":"sha256:{0}","size":1,"annotations":{{"{TITLE}":"m"}}}},{{"digest":"sha256:{0}","size":1,"annotations":{{"{TITLE}":"m"}}}}]}}"#,
            hex('a')
        );
        assert!(parse(twice.as_bytes(), IMAGE_TYPES[0])
            .err()
            .expect("test value")
            .contains("both"));
        let bad_digest = r#"{"layers":[{"digest":"md5:00","size":1,"annotations":{"org.opencontainers.image.title":"m"}}]}"#;
        assert!(parse(bad_digest.as_bytes(), IMAGE_TYPES[0]).is_err());
    }
}
