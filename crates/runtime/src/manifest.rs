//! `kiln-manifest.json`: the record the agent writes beside every published model version,
//! and the runtime's default source of expected digests.
//!
//! Format (schema 1; unknown fields are rejected so a typo never passes silently):
//!
//! ```json
//! {
//!   "schema": 1,
//!   "model": "magika",
//!   "version": "3",
//!   "source": "s3://models/magika/3/",
//!   "etag": "\"9b2cf535f27731c974343645a3985328\"",
//!   "version_id": null,
//!   "created": "2026-11-22T12:00:00Z",
//!   "signer": "key sha256:54fce93a…",
//!   "files": [
//!     { "path": "model.onnx", "sha256": "<64 hex>", "size": 3163737 }
//!   ]
//! }
//! ```
//!
//! `signer` is present only when the agent verified a signature bundle for the version.
//! `path` is relative to the manifest's directory and may not leave it. `source` never holds
//! credentials or signed query strings (the agent strips them before writing).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::Digest;
use crate::error::{Error, Result};
use crate::layout::{self, MANIFEST_FILE};

/// The manifest schema version this crate reads and writes.
pub const SCHEMA: u32 = 1;

/// A published model version's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version; must be [`SCHEMA`].
    pub schema: u32,
    /// Model name (the `<model>` directory).
    pub model: String,
    /// Version name (the `<version>` directory).
    pub version: String,
    /// Where the files came from, without credentials or query strings.
    #[serde(default)]
    pub source: Option<String>,
    /// The object store's ETag of the source, if it had one.
    #[serde(default)]
    pub etag: Option<String>,
    /// The object store's version id of the source, if versioned.
    #[serde(default)]
    pub version_id: Option<String>,
    /// When the version was published, RFC 3339 UTC.
    pub created: String,
    /// Who signed the files, when the agent verified an OpenSSF model-signing bundle for
    /// them (`key sha256:<hint>` or `certificate <subject> (issuer <issuer>)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Every file of the version.
    pub files: Vec<ManifestFile>,
}

/// One file of a published version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path relative to the manifest's directory.
    pub path: String,
    /// SHA-256 of the file's bytes.
    pub sha256: Digest,
    /// Size in bytes.
    pub size: u64,
}

impl Manifest {
    /// Parses and checks a manifest (`origin` names it in errors).
    ///
    /// # Errors
    /// [`Error::InvalidManifest`] for malformed JSON, a wrong schema, an unsafe or duplicate
    /// file path, or an unsafe model/version name.
    pub fn from_json(origin: &Path, text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidManifest {
            path: origin.to_owned(),
            reason,
        };
        let m: Manifest = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if m.schema != SCHEMA {
            return Err(invalid(format!(
                "schema {} is not supported (this kiln reads schema {SCHEMA})",
                m.schema
            )));
        }
        layout::check_name("model", &m.model).map_err(|e| invalid(e.to_string()))?;
        layout::check_name("version", &m.version).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for f in &m.files {
            if !layout::is_contained_relative(&f.path) {
                return Err(invalid(format!(
                    "file path {:?} must be relative and stay inside the version directory",
                    f.path
                )));
            }
            if !seen.insert(f.path.as_str()) {
                return Err(invalid(format!("file path {:?} is listed twice", f.path)));
            }
        }
        Ok(m)
    }

    /// Reads `<dir>/kiln-manifest.json`; `Ok(None)` if there is none.
    ///
    /// # Errors
    /// [`Error::Io`] if it exists but cannot be read, [`Error::InvalidManifest`] if it is
    /// not a valid manifest.
    pub fn read_in(dir: &Path) -> Result<Option<(PathBuf, Self)>> {
        let path = dir.join(MANIFEST_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path.clone(), Self::from_json(&path, &text)?))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// The entry for `relative` (a path relative to the manifest's directory).
    pub fn file(&self, relative: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == relative)
    }

    /// Serialises the manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA,
            model: "m".into(),
            version: "1".into(),
            source: Some("s3://b/m/1/".into()),
            etag: None,
            version_id: None,
            signer: None,
            created: "2026-11-22T12:00:00Z".into(),
            files: vec![ManifestFile {
                path: "model.onnx".into(),
                sha256: Digest::of(b"x"),
                size: 1,
            }],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let back = Manifest::from_json(Path::new("t"), &m.to_json()).expect("parse");
        assert_eq!(back, m);
        assert_eq!(back.file("model.onnx").map(|f| f.size), Some(1));
        assert!(back.file("other").is_none());
    }

    #[test]
    fn rejects_bad_manifests() {
        let base = serde_json::to_value(sample()).expect("value");
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("schema", serde_json::json!(2)),
            ("model", serde_json::json!("../x")),
            (
                "files",
                serde_json::json!([{"path": "../../etc/passwd", "sha256": Digest::of(b"x").to_string(), "size": 1}]),
            ),
            (
                "files",
                serde_json::json!([{"path": "/abs", "sha256": Digest::of(b"x").to_string(), "size": 1}]),
            ),
            (
                "files",
                serde_json::json!([{"path": "a", "sha256": "zz", "size": 1}]),
            ),
            ("unexpected", serde_json::json!(true)),
        ];
        for (key, value) in cases {
            let mut doc = base.clone();
            doc[key] = value;
            let err = Manifest::from_json(Path::new("t"), &doc.to_string()).expect_err(key);
            assert!(matches!(err, Error::InvalidManifest { .. }), "{key}: {err}");
        }
        let dup = sample();
        let mut doc = serde_json::to_value(&dup).expect("value");
        let file = doc["files"][0].clone();
        doc["files"] = serde_json::json!([file.clone(), file]);
        assert!(Manifest::from_json(Path::new("t"), &doc.to_string()).is_err());
    }
}
