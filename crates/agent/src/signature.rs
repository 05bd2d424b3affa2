//! Signed models: a model whose config names a signature (an OpenSSF model-signing bundle
//! under its source prefix, and a trust root — a public key or CA certificates — mounted into
//! the pod) is published only as the bundle says. The bundle is fetched and verified first;
//! then the prefix must hold exactly the signed files (no extra, none missing, the bundle and
//! the paths its signer ignored aside), and every file is downloaded against its signed
//! digest by the same verify-while-downloading path as configured digests. The manifest
//! records the signer; every refusal is counted by reason.

use std::path::PathBuf;

use kiln::signing::{self, SignatureError, Trust, MAX_BUNDLE_BYTES};
use serde::Deserialize;

use crate::config::File;
use crate::disk::blocking;
use crate::error::{AgentError, Result};
use crate::fetch::ObjectFetch;
use crate::metrics::AgentMetrics;
use crate::retry::{with_retries, RetrySettings};

/// A model's `signature:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    /// The bundle's path under the source prefix. Default `model.sig` (what `model_signing
    /// sign` writes).
    #[serde(default = "default_bundle")]
    pub bundle: String,
    /// A PEM public key (key-based signing, `model_signing sign key`).
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// A PEM file of CA certificates (certificate-based signing, `model_signing sign
    /// certificate`): the bundle's chain must lead to one of them.
    #[serde(default)]
    pub ca_certificates: Option<PathBuf>,
}

fn default_bundle() -> String {
    "model.sig".to_owned()
}

/// Where the trust root is read from (at every sync, so a rotated Secret is picked up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustFile {
    /// A public key.
    PublicKey(PathBuf),
    /// CA certificates.
    CaCertificates(PathBuf),
}

impl TrustFile {
    /// Reads and parses the trust root.
    ///
    /// # Errors
    /// [`SignatureError::TrustRoot`].
    pub fn load(&self) -> std::result::Result<Trust, SignatureError> {
        match self {
            Self::PublicKey(p) => Trust::public_key_file(p),
            Self::CaCertificates(p) => Trust::ca_certificates_file(p),
        }
    }
}

/// A validated signature requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The bundle's path under the prefix.
    pub bundle: String,
    /// The trust root.
    pub trust: TrustFile,
}

impl SignatureSpec {
    /// Checks the block (`field` names it in errors) and reads the trust root once, so a
    /// missing or unreadable one fails at start-up.
    ///
    /// # Errors
    /// [`AgentError::Config`].
    pub fn check(&self, field: &str) -> Result<Signature> {
        let bad = |reason: String| AgentError::Config {
            field: field.to_owned(),
            reason,
        };
        if !kiln::layout::is_contained_relative(&self.bundle)
            || self.bundle == kiln::layout::MANIFEST_FILE
        {
            return Err(bad(format!(
                "bundle {:?} must be a relative path under the source prefix",
                self.bundle
            )));
        }
        let trust = match (&self.public_key, &self.ca_certificates) {
            (Some(k), None) => TrustFile::PublicKey(k.clone()),
            (None, Some(c)) => TrustFile::CaCertificates(c.clone()),
            _ => {
                return Err(bad(
                    "give exactly one trust root: `public_key` or `ca_certificates`".into(),
                ))
            }
        };
        trust.load().map_err(|e| bad(e.to_string()))?;
        Ok(Signature {
            bundle: self.bundle.clone(),
            trust,
        })
    }
}

/// A signature refused for `model`: counted by reason, as an error.
pub(crate) fn refused(metrics: &AgentMetrics, model: &str, e: SignatureError) -> AgentError {
    metrics.verification_failure(model, e.reason());
    tracing::warn!(model, reason = e.reason(), error = %e, "signature refused; nothing published");
    AgentError::Signature {
        model: model.to_owned(),
        source: e,
    }
}

/// The listed prefix's `files` and `metas` (the bundle already taken out) narrowed to what
/// the signer did not ignore, required to be exactly the signed set, each file given its
/// signed digest.
///
/// # Errors
/// [`SignatureError::FileSet`] naming the missing and extra files.
pub(crate) fn narrow<M>(
    signed: &signing::Signed,
    files: Vec<File>,
    metas: Vec<M>,
) -> std::result::Result<(Vec<File>, Vec<M>), SignatureError> {
    signed.check_file_set(files.iter().map(|f| f.path.as_str()))?;
    let mut kept = (
        Vec::with_capacity(files.len()),
        Vec::with_capacity(files.len()),
    );
    for (mut f, m) in files.into_iter().zip(metas) {
        if signed.is_ignored(&f.path) {
            continue;
        }
        let want = signed.files.get(&f.path).copied();
        // A content-addressed source (an OCI layer) already names the file's digest: one that
        // is not the signed digest is refused before a byte of it is downloaded.
        if let (Some(known), Some(want)) = (f.sha256, want) {
            if known != want {
                return Err(SignatureError::Digest {
                    path: f.path,
                    actual: known,
                    signed: want,
                });
            }
        }
        f.sha256 = want;
        kept.0.push(f);
        kept.1.push(m);
    }
    Ok(kept)
}

/// Fetches the bundle's bytes (at most [`MAX_BUNDLE_BYTES`]).
pub(crate) async fn fetch_bundle(
    object: ObjectFetch<'_>,
    retry: &RetrySettings,
) -> Result<Vec<u8>> {
    if object.size() > MAX_BUNDLE_BYTES as u64 {
        return Err(refused(
            object.metrics,
            object.model,
            SignatureError::Malformed(format!(
                "{} bytes, more than a bundle's {MAX_BUNDLE_BYTES}",
                object.size()
            )),
        ));
    }
    with_retries(retry, object.model, object.metrics, |_| async {
        // Read with a cap, whatever the listing said (a store without ETags cannot pin the
        // GET to the object listed).
        use futures::StreamExt as _;
        let mut stream = object.get(None).await?.into_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| object.fail(e))?);
            if bytes.len() > MAX_BUNDLE_BYTES {
                return Err(refused(
                    object.metrics,
                    object.model,
                    SignatureError::Malformed(format!(
                        "more than a bundle's {MAX_BUNDLE_BYTES} bytes"
                    )),
                ));
            }
        }
        Ok(bytes)
    })
    .await
}

/// Verifies `bundle` against `trust`, off the async workers.
///
/// # Errors
/// The trust root's or the bundle's [`SignatureError`].
pub(crate) async fn verify(
    bundle: Vec<u8>,
    trust: TrustFile,
) -> Result<std::result::Result<signing::Signed, SignatureError>> {
    blocking(move || trust.load().and_then(|t| signing::verify(&bundle, &t))).await
}
