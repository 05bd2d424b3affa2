//! The bundle `model-signing` writes: a Sigstore bundle (v0.3 JSON) holding the verification
//! material (a public key's hint, or an X.509 chain) and a DSSE envelope whose payload is an
//! in-toto statement listing every file's sha256. Parsing only: nothing here is trusted until
//! [`super::verify`] has checked the signature over [`Bundle::pae`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{clip, SignatureError};
use crate::checksum::Digest;
use crate::layout::is_contained_relative;

/// Most certificates a bundle's chain may hold (a signer, intermediates, a root).
pub const MAX_CERTIFICATES: usize = 10;

/// The DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto statement type.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `model-signing`'s predicate type (v1.0 and later).
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// What the bundle says identifies the signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Material {
    /// Key-based signing: the hex sha256 of the signer's public key PEM, if given.
    Key {
        /// The hint.
        hint: Option<String>,
    },
    /// Certificate-based signing: DER certificates, the signing certificate first.
    Chain(Vec<Vec<u8>>),
}

/// A parsed bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Who signed, as the bundle claims.
    pub material: Material,
    /// The envelope's payload (the statement's JSON bytes).
    pub payload: Vec<u8>,
    /// The envelope's first signature (DER ECDSA).
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: RawMaterial,
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    public_key: Option<RawHint>,
    x509_certificate_chain: Option<RawChain>,
    certificate: Option<RawCertificate>,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawHint {
    #[serde(default)]
    hint: Option<String>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCertificate {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawSignature {
    sig: String,
}

fn malformed(what: impl std::fmt::Display) -> SignatureError {
    SignatureError::Malformed(what.to_string())
}

fn base64(field: &str, text: &str) -> Result<Vec<u8>, SignatureError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| malformed(format!("`{field}` is not base64: {e}")))
}

impl Bundle {
    /// Parses a bundle's bytes.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] for anything but a DSSE bundle with one in-toto payload;
    /// [`SignatureError::Unsupported`] for keyless Sigstore bundles (transparency-log entries).
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let raw: RawBundle = serde_json::from_slice(bytes).map_err(malformed)?;
        if !raw
            .media_type
            .starts_with("application/vnd.dev.sigstore.bundle")
        {
            return Err(malformed(format!(
                "media type `{}` is not a Sigstore bundle's",
                clip(&raw.media_type)
            )));
        }
        let m = raw.verification_material;
        if !m.tlog_entries.is_empty() {
            return Err(SignatureError::Unsupported(
                "a keyless Sigstore bundle (transparency-log entries): verifying it needs the \
                 Sigstore instance online; sign with a key or a certificate instead"
                    .into(),
            ));
        }
        let material = match (m.public_key, m.x509_certificate_chain, m.certificate) {
            (Some(key), None, None) => Material::Key { hint: key.hint },
            (None, Some(chain), None) if chain.certificates.len() > MAX_CERTIFICATES => {
                return Err(malformed(format!(
                    "{} certificates in the chain, more than {MAX_CERTIFICATES}",
                    chain.certificates.len()
                )))
            }
            (None, Some(chain), None) => Material::Chain(
                chain
                    .certificates
                    .iter()
                    .map(|c| base64("rawBytes", &c.raw_bytes))
                    .collect::<Result<_, _>>()?,
            ),
            (None, None, Some(cert)) => Material::Chain(vec![base64("rawBytes", &cert.raw_bytes)?]),
            _ => {
                return Err(malformed(
                    "the verification material names no key or certificate chain, or several",
                ))
            }
        };
        if matches!(&material, Material::Chain(c) if c.is_empty()) {
            return Err(malformed("an empty certificate chain"));
        }
        let envelope = raw
            .dsse_envelope
            .ok_or_else(|| malformed("no DSSE envelope (a message signature is not a model's)"))?;
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(malformed(format!(
                "payload type `{}`, not `{PAYLOAD_TYPE}`",
                clip(&envelope.payload_type)
            )));
        }
        let first = envelope
            .signatures
            .first()
            .ok_or_else(|| malformed("the envelope holds no signature"))?;
        Ok(Self {
            material,
            payload: base64("payload", &envelope.payload)?,
            signature: base64("sig", &first.sig)?,
        })
    }

    /// The bytes the signature covers: DSSE's pre-authentication encoding of the payload.
    pub fn pae(&self) -> Vec<u8> {
        let mut out = format!(
            "DSSEv1 {} {} {} ",
            PAYLOAD_TYPE.len(),
            PAYLOAD_TYPE,
            self.payload.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.payload);
        out
    }
}

/// The signed statement: the model's name and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The subject's name.
    pub model: String,
    /// Each file's path and sha256.
    pub files: BTreeMap<String, Digest>,
    /// Paths the signer left out (`.git` and the like, by default): files under them are
    /// neither signed nor extra.
    pub ignored: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<RawSubject>,
    predicate_type: String,
    predicate: RawPredicate,
}

#[derive(Deserialize)]
struct RawSubject {
    name: String,
    digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawPredicate {
    resources: Vec<RawResource>,
    serialization: RawSerialization,
}

#[derive(Deserialize)]
struct RawResource {
    algorithm: String,
    name: String,
    digest: String,
}

#[derive(Deserialize)]
struct RawSerialization {
    method: String,
    hash_type: String,
    #[serde(default)]
    ignore_paths: Vec<String>,
}

impl Statement {
    /// Parses a verified payload.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] for another statement or predicate shape;
    /// [`SignatureError::Unsupported`] for the pre-1.0 predicate, sharded serialization or a
    /// hash other than sha256; [`SignatureError::Inconsistent`] for a root digest that is not
    /// its files', an unsafe or duplicate path.
    pub fn parse(payload: &[u8]) -> Result<Self, SignatureError> {
        let raw: RawStatement = serde_json::from_slice(payload).map_err(malformed)?;
        if raw.kind != STATEMENT_TYPE {
            return Err(malformed(format!("statement type `{}`", clip(&raw.kind))));
        }
        if raw.predicate_type != PREDICATE_TYPE {
            return Err(SignatureError::Unsupported(format!(
                "predicate `{}` (kiln reads model-signing 1.0's `{PREDICATE_TYPE}`; re-sign with model-signing ≥ 1.0)",
                clip(&raw.predicate_type)
            )));
        }
        let s = &raw.predicate.serialization;
        if s.method != "files" || s.hash_type != "sha256" {
            return Err(SignatureError::Unsupported(format!(
                "serialization `{}` with `{}` (kiln verifies whole files hashed with sha256)",
                clip(&s.method),
                clip(&s.hash_type)
            )));
        }
        let [subject] = raw.subject.as_slice() else {
            return Err(malformed(format!(
                "{} subjects, not one",
                raw.subject.len()
            )));
        };
        let root: Digest = subject
            .digest
            .get("sha256")
            .ok_or_else(|| malformed("the subject has no sha256 digest"))?
            .parse()
            .map_err(|_| malformed("the subject's digest is not 64 hex digits"))?;
        let mut files = BTreeMap::new();
        let mut hasher = Sha256::new();
        for r in &raw.predicate.resources {
            if r.algorithm != "sha256" {
                return Err(SignatureError::Unsupported(format!(
                    "`{}` hashed with {}",
                    clip(&r.name),
                    clip(&r.algorithm)
                )));
            }
            let digest: Digest = r.digest.parse().map_err(|_| {
                malformed(format!("`{}`'s digest is not 64 hex digits", clip(&r.name)))
            })?;
            hasher.update(digest.as_bytes());
            if !is_contained_relative(&r.name) {
                return Err(SignatureError::Inconsistent(format!(
                    "the signed path `{}` leaves the model directory",
                    clip(&r.name)
                )));
            }
            if files.insert(r.name.clone(), digest).is_some() {
                return Err(SignatureError::Inconsistent(format!(
                    "`{}` is signed twice",
                    clip(&r.name)
                )));
            }
        }
        let computed = Digest::from_bytes(hasher.finalize().into());
        if computed != root {
            return Err(SignatureError::Inconsistent(format!(
                "the root digest is {root}, but the files hash to {computed}"
            )));
        }
        Ok(Self {
            model: subject.name.clone(),
            files,
            ignored: raw.predicate.serialization.ignore_paths.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(material: &str, media: &str) -> Vec<u8> {
        format!(
            r#"{{"mediaType":"{media}","verificationMaterial":{material},"dsseEnvelope":{{"payload":"e30=","payloadType":"{PAYLOAD_TYPE}","signatures":[{{"sig":"AA=="}}]}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn long_chains_and_long_strings_are_refused_short() {
        let cert = r#"{"rawBytes":"AA=="}"#;
        let chain = |n: usize| {
            format!(
                r#"{{"x509CertificateChain":{{"certificates":[{}]}}}}"#,
                vec![cert; n].join(",")
            )
        };
        let ok = "application/vnd.dev.sigstore.bundle.v0.3+json";
        assert!(Bundle::parse(&bundle(&chain(MAX_CERTIFICATES), ok)).is_ok());
        let e = Bundle::parse(&bundle(&chain(MAX_CERTIFICATES + 1), ok)).expect_err("long");
        assert_eq!(e.reason(), "malformed", "{e}");
        let media = "x".repeat(100_000);
        let e = Bundle::parse(&bundle(r#"{"publicKey":{}}"#, &media)).expect_err("media type");
        assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
        let e = Bundle::parse(br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{},"tlogEntries":[{}]},"dsseEnvelope":null}"#)
            .expect_err("keyless");
        assert_eq!(e.reason(), "unsupported", "{e}");
    }
}
