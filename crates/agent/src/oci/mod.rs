//! OCI registries as a model source (`oci://registry/repository:tag` or `@sha256:…`): the
//! distribution API's manifests and blobs, read through the same `ObjectStore` interface as
//! every other store, so a blob is fetched, resumed, hashed and published on the one path
//! the agent already has (`store`). Two kinds of artifact are understood (`manifest`):
//! ORAS-style artifacts, one file per layer named by its `org.opencontainers.image.title`
//! annotation (the layer digest is the file's sha256), and container images such as KServe
//! modelcars, whose tar layers are unpacked (`unpack`) keeping only the `/models` tree.
//! Auth (`auth`) is anonymous or from a docker config file (a `kubernetes.io/dockerconfigjson`
//! Secret), with the registry token flow.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod manifest;
pub(crate) mod store;
pub(crate) mod unpack;

pub use manifest::Unpack;

/// Whether `path` may name a published file: canonical (no empty, `.` or `..` segment, no
/// backslash or NUL: one file has one name, so the manifest and the disk cannot disagree) and
/// not the manifest kiln writes or its temporary file (any path under them either).
pub(crate) fn check_path(path: &str) -> Result<(), &'static str> {
    let canonical = !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if !canonical || !kiln::layout::is_contained_relative(path) {
        return Err("is not a canonical relative path inside the version");
    }
    let first = path.split('/').next().unwrap_or_default();
    let manifest = kiln::layout::MANIFEST_FILE;
    if first.starts_with(manifest) || first.starts_with(&format!(".{manifest}")) {
        return Err("would collide with the manifest kiln writes");
    }
    Ok(())
}

/// A parsed `oci://` source: where the registry is, which repository, which manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path inside the registry (`models/mlp`).
    pub repository: String,
    /// A tag (`v1`) or a digest (`sha256:<hex>`).
    pub reference: String,
}

impl Reference {
    /// Parses `oci://host[:port]/repo[/more]:tag`, `…@sha256:<hex>` or `…/repo` (tag `latest`);
    /// a trailing `/` is ignored.
    ///
    /// # Errors
    /// A message saying which part is wrong.
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix("oci://")
            .ok_or("an OCI source starts with oci://")?
            .trim_end_matches('/');
        let (registry, path) = rest
            .split_once('/')
            .ok_or("an OCI source is oci://registry/repository[:tag|@sha256:digest]")?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        {
            return Err(format!("{registry:?} is not a registry host[:port]"));
        }
        let (repository, reference) = if let Some((named, digest)) = path.split_once('@') {
            // `repo:tag@sha256:…`: the digest decides, as in every OCI client.
            let repo = match named.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r,
                _ => named,
            };
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or("a digest reference is @sha256:<64 hex digits>")?;
            if hex.len() != 64 || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
                return Err("a digest reference is @sha256:<64 lowercase hex digits>".into());
            }
            (repo, digest.to_owned())
        } else {
            match path.rsplit_once(':') {
                // A `:` after the last `/` is the tag's.
                Some((repo, tag)) if !tag.contains('/') => {
                    let ok = !tag.is_empty()
                        && tag.len() <= 128
                        && !tag.starts_with(['.', '-'])
                        && tag
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                    if !ok {
                        return Err(format!("{tag:?} is not a valid tag"));
                    }
                    (repo, tag.to_owned())
                }
                _ => (path, "latest".to_owned()),
            }
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().next().is_some_and(|f| f.is_ascii_alphanumeric())
                && c.chars().last().is_some_and(|l| l.is_ascii_alphanumeric())
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
        };
        if repository.is_empty() || !repository.split('/').all(component_ok) {
            return Err(format!(
                "{repository:?} is not a repository name (lowercase letters, digits, `._-`, `/` between components)"
            ));
        }
        // Docker Hub's API lives on another host than its name.
        let registry = match registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            reference,
        })
    }

    /// Whether the reference is a digest (the manifest's bytes are then checked against it).
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        write!(
            f,
            "oci://{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_are_refused() {
        let r = Reference::parse("oci://127.0.0.1:5000/models/mlp:v1").expect("test value");
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str()
            ),
            ("127.0.0.1:5000", "models/mlp", "v1")
        );
        let r = Reference::parse("oci://ghcr.io/a/b/").expect("test value");
        assert_eq!(r.reference, "latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("oci://reg.example/m@{d}")).expect("test value");
        assert!(r.is_digest());
        let tagged =
            Reference::parse(&format!("oci://reg.example/m:v1@{d}")).expect("tag and digest");
        assert_eq!(
            (tagged.repository.as_str(), tagged.reference.as_str()),
            ("m", d.as_str())
        );
        let hub = Reference::parse("oci://docker.io/library/m:v1").expect("hub");
        assert_eq!(hub.registry, "registry-1.docker.io");
        for bad in [
            "a//b",
            "./a",
            "a/./b",
            "a/../b",
            "kiln-manifest.json",
            ".kiln-manifest.json.tmp",
            "kiln-manifest.json/x",
            "a\\b",
            "",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        for good in [
            "model.onnx",
            "sub/dir/w.bin",
            "sub/kiln-manifest.json",
            ".hidden",
        ] {
            assert!(check_path(good).is_ok(), "{good:?}");
        }
        assert_eq!(r.to_string(), format!("oci://reg.example/m@{d}"));
        for bad in [
            "oci://reg",
            "oci:///m:v1",
            "oci://reg/M:v1",
            "oci://reg/m:",
            "oci://reg/m:..",
            "oci://reg/../m:v1",
            "oci://reg/m@sha256:abc",
            "oci://reg/m@md5:00",
            "oci://reg/a//b:v1",
            "s3://b/m",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
