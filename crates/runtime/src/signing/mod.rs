//! OpenSSF model signing (the `model-signing` package's bundles), verified offline.
//!
//! A bundle (`model.sig`) is a Sigstore bundle whose DSSE envelope carries an in-toto
//! statement: the model's name, a root digest, and every file's path and sha256. This module
//! checks the envelope's signature against a trust root the operator gives — a public key
//! (`model_signing sign key`) or CA certificates (`model_signing sign certificate`: the
//! bundle's chain must lead to one of them) — and hands back the signed file set, so a caller
//! can require each file's bytes to match and the file set to be exactly the signed one.
//! Keyless Sigstore bundles (Fulcio certificates, Rekor entries) need the public-good
//! instance online and are refused as unsupported.
//!
//! # Layout
//! - [`bundle`]: the bundle's JSON, the DSSE envelope and the in-toto statement.
//! - [`trust`]: trust roots, ECDSA verification, certificate chains.
//! - [`SignatureError`]: what failed, with a short [`SignatureError::reason`] for metrics.

use std::collections::BTreeMap;

use crate::checksum::Digest;

pub mod bundle;
pub(crate) mod dir;
pub mod trust;

pub use trust::Trust;

/// Largest bundle read, bytes: a bundle is a few KiB; anything near this is not one.
pub const MAX_BUNDLE_BYTES: usize = 4 << 20;

/// At most this much of a string from a bundle or a certificate goes into an error (they are
/// the signer's words, logged and shown in `/status`).
const SHOWN: usize = 128;

/// `text` cut to [`SHOWN`] characters for an error message.
pub(crate) fn clip(text: &str) -> String {
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not a bundle: bad JSON, a missing field, bad base64 or an unexpected payload type.
    #[error("malformed signature bundle: {0}")]
    Malformed(String),
    /// A bundle or key kind kiln does not verify (keyless Sigstore, other curves or hashes).
    #[error("unsupported signature: {0}")]
    Unsupported(String),
    /// The trust root could not be read as a key or certificates.
    #[error("invalid trust root: {0}")]
    TrustRoot(String),
    /// The bundle names another key than the trusted one.
    #[error(
        "signed by another key: the bundle's key hint is {bundle}, the trusted key's is {trusted}"
    )]
    WrongKey {
        /// The bundle's key hint (sha256 of the signer's public key PEM).
        bundle: String,
        /// The trusted key's.
        trusted: String,
    },
    /// The signature does not verify over the envelope.
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    /// The certificate chain does not lead to a trusted CA, or a certificate is not valid.
    #[error("untrusted certificate chain: {0}")]
    Untrusted(String),
    /// The statement contradicts itself (its root digest is not its files').
    #[error("inconsistent statement: {0}")]
    Inconsistent(String),
    /// The files present are not the signed ones.
    #[error("the files are not the signed set: {0}")]
    FileSet(String),
    /// A file's bytes are not what was signed.
    #[error("`{path}` is not what was signed: sha256 {actual}, signed {signed}")]
    Digest {
        /// The file.
        path: String,
        /// Its digest.
        actual: Digest,
        /// The signed digest.
        signed: Digest,
    },
}

impl SignatureError {
    /// A short, fixed label for metrics and logs: `malformed`, `unsupported`, `trust_root`,
    /// `wrong_key`, `bad_signature`, `untrusted`, `inconsistent`, `file_set` or `digest`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unsupported(_) => "unsupported",
            Self::TrustRoot(_) => "trust_root",
            Self::WrongKey { .. } => "wrong_key",
            Self::BadSignature(_) => "bad_signature",
            Self::Untrusted(_) => "untrusted",
            Self::Inconsistent(_) => "inconsistent",
            Self::FileSet(_) => "file_set",
            Self::Digest { .. } => "digest",
        }
    }
}

/// What a verified bundle says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Who signed: `key sha256:<hint>` (the sha256 of the public key's PEM, as
    /// `model-signing` prints it) or `certificate <subject> (issuer <issuer>)`.
    pub signer: String,
    /// The statement's subject name (the signed directory's name).
    pub model: String,
    /// Every signed file's path (relative, `/`-separated) and sha256.
    pub files: BTreeMap<String, Digest>,
    /// Paths the signer left out (files under them are neither signed nor extra).
    pub ignored: Vec<String>,
}

impl Signed {
    /// Requires `present` (paths relative to the model, the bundle itself left out) to be
    /// exactly the signed files: none missing, none extra.
    ///
    /// # Errors
    /// [`SignatureError::FileSet`] naming the missing and the extra files.
    pub fn check_file_set<'a>(
        &self,
        present: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), SignatureError> {
        let present: std::collections::BTreeSet<&str> = present
            .into_iter()
            .filter(|p| !self.is_ignored(p))
            .collect();
        let missing: Vec<&str> = self
            .files
            .keys()
            .map(String::as_str)
            .filter(|p| !present.contains(p))
            .collect();
        let extra: Vec<&str> = present
            .iter()
            .copied()
            .filter(|p| !self.files.contains_key(*p))
            .collect();
        if missing.is_empty() && extra.is_empty() {
            return Ok(());
        }
        Err(SignatureError::FileSet(format!(
            "signed but missing: {missing:?}; present but not signed: {extra:?}"
        )))
    }

    /// Whether `path` is under a path the signer ignored.
    pub fn is_ignored(&self, path: &str) -> bool {
        self.ignored.iter().any(|i| {
            let i = i.trim_end_matches('/');
            path == i
                || path
                    .strip_prefix(i)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    /// Requires `path`'s bytes (digest `actual`) to be the signed ones.
    ///
    /// # Errors
    /// [`SignatureError::FileSet`] for a path not signed, [`SignatureError::Digest`] for other
    /// bytes.
    pub fn check_digest(&self, path: &str, actual: &Digest) -> Result<(), SignatureError> {
        let signed = self
            .files
            .get(path)
            .ok_or_else(|| SignatureError::FileSet(format!("`{path}` is not signed")))?;
        if signed == actual {
            Ok(())
        } else {
            Err(SignatureError::Digest {
                path: path.to_owned(),
                actual: *actual,
                signed: *signed,
            })
        }
    }
}

/// Verifies `bundle` (a `model.sig`'s bytes) against `trust` and returns what it signs.
///
/// # Errors
/// Every [`SignatureError`] but `FileSet` and `Digest`, which the caller's own checks give.
pub fn verify(bundle: &[u8], trust: &Trust) -> Result<Signed, SignatureError> {
    if bundle.len() > MAX_BUNDLE_BYTES {
        return Err(SignatureError::Malformed(format!(
            "{} bytes, more than a bundle's {MAX_BUNDLE_BYTES}",
            bundle.len()
        )));
    }
    let parsed = bundle::Bundle::parse(bundle)?;
    let signer = trust.verify(&parsed)?;
    let statement = bundle::Statement::parse(&parsed.payload)?;
    Ok(Signed {
        signer,
        model: statement.model,
        files: statement.files,
        ignored: statement.ignored,
    })
}

/// Reads the bundle at `path` (at most [`MAX_BUNDLE_BYTES`]) and verifies it.
///
/// # Errors
/// An unreadable or oversized file is [`SignatureError::Malformed`]; then as [`verify`].
pub fn verify_file(path: &std::path::Path, trust: &Trust) -> Result<Signed, SignatureError> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| {
        SignatureError::Malformed(format!("cannot read {}: {e}", path.display()))
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(MAX_BUNDLE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    verify(&bytes, trust)
}
