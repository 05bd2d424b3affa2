//! Trust roots and what they verify: an ECDSA public key (P-256 with SHA-256, P-384 with
//! SHA-384, as `model-signing` signs), or CA certificates a bundle's X.509 chain must lead to.
//!
//! Certificate chains: every certificate on the path is signed by the next (ECDSA with SHA-256
//! or SHA-384, the same algorithm inside and outside the signed part), issuers are CAs
//! (basic constraints `CA:TRUE`, `keyCertSign` when they state a key usage, within their
//! path length), no certificate carries a critical extension kiln does not check (name
//! constraints included: refused, not ignored), and the signing certificate may sign (key
//! usage `digitalSignature` or extended key usage `codeSigning`, as `model-signing` accepts).
//! As in `model-signing`, each certificate must be valid at the signing certificate's start,
//! not now: a signature made while the certificate was valid stays valid after it expires —
//! so a leaked key of an expired signer can still sign; rotate the CA, not only the signer.
//! RSA certificates are not supported. No revocation (CRL, OCSP) is checked.

use std::path::Path;
use std::time::SystemTime;

use base64::Engine as _;
use der::{Decode as _, Encode as _};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use sha2::{Digest as _, Sha256, Sha384};
use spki::DecodePublicKey as _;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::Certificate;

use super::bundle::{Bundle, Material};
use super::{clip, SignatureError};

const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// Critical extensions kiln understands (any other critical one refuses the certificate).
const UNDERSTOOD: [ObjectIdentifier; 4] = [
    KEY_USAGE,
    EXT_KEY_USAGE,
    BASIC_CONSTRAINTS,
    SUBJECT_ALT_NAME,
];
const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");

/// Longest chain from the signing certificate to a trusted CA.
const MAX_CHAIN: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
}

/// An ECDSA public key.
#[derive(Debug, Clone)]
enum Key {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl Key {
    fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P384(k));
        }
        Err(
            "not an ECDSA P-256 or P-384 public key (RSA, Ed25519 and P-521 are not supported)"
                .into(),
        )
    }

    /// The hash `model-signing` signs with for this curve.
    fn natural_hash(&self) -> Hash {
        match self {
            Self::P256(_) => Hash::Sha256,
            Self::P384(_) => Hash::Sha384,
        }
    }

    fn verify(&self, hash: Hash, message: &[u8], signature_der: &[u8]) -> Result<(), String> {
        let digest = match hash {
            Hash::Sha256 => Sha256::digest(message).to_vec(),
            Hash::Sha384 => Sha384::digest(message).to_vec(),
        };
        let bad = |e: p256::ecdsa::Error| e.to_string();
        match self {
            Self::P256(k) => {
                let s = p256::ecdsa::Signature::from_der(signature_der).map_err(bad)?;
                k.verify_prehash(&digest, &s).map_err(bad)
            }
            Self::P384(k) => {
                let s = p384::ecdsa::Signature::from_der(signature_der).map_err(bad)?;
                k.verify_prehash(&digest, &s).map_err(bad)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Root {
    Key { key: Key, hint: String },
    Certificates(Vec<Certificate>),
}

/// What a bundle must be signed by.
#[derive(Debug, Clone)]
pub struct Trust {
    root: Root,
}

/// The PEM blocks of `text` with `label`, decoded.
fn pem_blocks(text: &[u8], label: &str) -> Result<Vec<Vec<u8>>, SignatureError> {
    let text =
        std::str::from_utf8(text).map_err(|_| SignatureError::TrustRoot("not PEM text".into()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body = &rest[start + begin.len()..];
        let stop = body
            .find(&end)
            .ok_or_else(|| SignatureError::TrustRoot(format!("a `{begin}` block never ends")))?;
        let b64: String = body[..stop].split_whitespace().collect();
        out.push(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| SignatureError::TrustRoot(format!("a {label} block: {e}")))?,
        );
        rest = &body[stop + end.len()..];
    }
    if out.is_empty() {
        return Err(SignatureError::TrustRoot(format!("no `{begin}` block")));
    }
    Ok(out)
}

/// `model-signing`'s key hint: the hex sha256 of the key's PEM as `cryptography` writes it.
fn key_hint(spki_der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki_der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    hex::encode(Sha256::digest(pem.as_bytes()))
}

impl Trust {
    /// A public key (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256 or P-384): bundles signed
    /// with `model_signing sign key` by its private key verify.
    ///
    /// # Errors
    /// [`SignatureError::TrustRoot`] for anything else.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, SignatureError> {
        let blocks = pem_blocks(pem, "PUBLIC KEY")?;
        let [der] = blocks.as_slice() else {
            return Err(SignatureError::TrustRoot(format!(
                "{} public keys; give one",
                blocks.len()
            )));
        };
        let key = Key::from_spki_der(der).map_err(SignatureError::TrustRoot)?;
        Ok(Self {
            root: Root::Key {
                key,
                hint: key_hint(der),
            },
        })
    }

    /// CA certificates (`-----BEGIN CERTIFICATE-----`, one or more): bundles signed with
    /// `model_signing sign certificate` whose chain leads to one of them verify.
    ///
    /// # Errors
    /// [`SignatureError::TrustRoot`] for a file with no certificate or a certificate that does
    /// not parse.
    pub fn ca_certificates_pem(pem: &[u8]) -> Result<Self, SignatureError> {
        let certs = pem_blocks(pem, "CERTIFICATE")?
            .iter()
            .map(|der| {
                Certificate::from_der(der)
                    .map_err(|e| SignatureError::TrustRoot(format!("a certificate: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            root: Root::Certificates(certs),
        })
    }

    /// [`Trust::public_key_pem`] from a file.
    ///
    /// # Errors
    /// As `public_key_pem`; an unreadable file is a [`SignatureError::TrustRoot`] too.
    pub fn public_key_file(path: &Path) -> Result<Self, SignatureError> {
        Self::public_key_pem(&read(path)?)
    }

    /// [`Trust::ca_certificates_pem`] from a file.
    ///
    /// # Errors
    /// As `ca_certificates_pem`; an unreadable file is a [`SignatureError::TrustRoot`] too.
    pub fn ca_certificates_file(path: &Path) -> Result<Self, SignatureError> {
        Self::ca_certificates_pem(&read(path)?)
    }

    /// Checks `bundle`'s signature; returns the signer's identity.
    pub(crate) fn verify(&self, bundle: &Bundle) -> Result<String, SignatureError> {
        let message = bundle.pae();
        match (&self.root, &bundle.material) {
            (Root::Key { key, hint }, Material::Key { hint: claimed }) => {
                if let Some(claimed) = claimed.as_deref().filter(|c| !c.is_empty()) {
                    if !claimed.eq_ignore_ascii_case(hint) {
                        return Err(SignatureError::WrongKey {
                            bundle: clip(claimed),
                            trusted: hint.clone(),
                        });
                    }
                }
                key.verify(key.natural_hash(), &message, &bundle.signature)
                    .map_err(SignatureError::BadSignature)?;
                Ok(format!("key sha256:{hint}"))
            }
            (Root::Certificates(roots), Material::Chain(chain)) => {
                let (key, signer) = verify_chain(chain, roots)?;
                key.verify(key.natural_hash(), &message, &bundle.signature)
                    .map_err(SignatureError::BadSignature)?;
                Ok(signer)
            }
            (Root::Key { .. }, Material::Chain(_)) => Err(SignatureError::Untrusted(
                "the bundle is signed with a certificate; the trust root is a public key".into(),
            )),
            (Root::Certificates(_), Material::Key { .. }) => Err(SignatureError::Untrusted(
                "the bundle is signed with a bare key; the trust root is CA certificates".into(),
            )),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SignatureError> {
    std::fs::read(path)
        .map_err(|e| SignatureError::TrustRoot(format!("cannot read {}: {e}", path.display())))
}

fn untrusted(what: impl Into<String>) -> SignatureError {
    SignatureError::Untrusted(what.into())
}

fn extension(cert: &Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id == oid)
        .map(|e| e.extn_value.as_bytes())
}

fn subject(cert: &Certificate) -> String {
    clip(&cert.tbs_certificate.subject.to_string())
}

/// `cert` is signed by `issuer`'s key.
fn signed_by(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    if cert.signature_algorithm != cert.tbs_certificate.signature {
        return Err("the signature algorithm differs inside and outside the signed part".into());
    }
    let hash = match cert.signature_algorithm.oid {
        ECDSA_SHA256 => Hash::Sha256,
        ECDSA_SHA384 => Hash::Sha384,
        other => {
            return Err(format!(
                "signature algorithm {other} is not ECDSA with SHA-256/384"
            ))
        }
    };
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| e.to_string())?;
    let key = Key::from_spki_der(&spki)?;
    let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let signature = cert
        .signature
        .as_bytes()
        .ok_or("the signature is not whole bytes")?;
    key.verify(hash, &tbs, signature)
}

fn valid_at(cert: &Certificate, at: SystemTime) -> Result<(), SignatureError> {
    let v = &cert.tbs_certificate.validity;
    if v.not_before.to_system_time() <= at && at <= v.not_after.to_system_time() {
        Ok(())
    } else {
        Err(untrusted(format!(
            "`{}` is not valid when the signing certificate starts ({} to {})",
            subject(cert),
            v.not_before,
            v.not_after
        )))
    }
}

/// `cert` may issue certificates, with `below` CA certificates between it and the signer.
fn is_ca(cert: &Certificate, below: usize) -> Result<(), SignatureError> {
    let constraints = extension(cert, BASIC_CONSTRAINTS)
        .and_then(|der| x509_cert::ext::pkix::BasicConstraints::from_der(der).ok())
        .filter(|b| b.ca)
        .ok_or_else(|| {
            untrusted(format!(
                "`{}` issues certificates but is not a CA",
                subject(cert)
            ))
        })?;
    if let Some(max) = constraints.path_len_constraint {
        if below > usize::from(max) {
            return Err(untrusted(format!(
                "`{}` allows {max} CA certificates below it, the chain has {below}",
                subject(cert)
            )));
        }
    }
    let usage = extension(cert, KEY_USAGE)
        .map(|der| x509_cert::ext::pkix::KeyUsage::from_der(der).map(|u| u.key_cert_sign()));
    if matches!(usage, Some(Ok(false) | Err(_))) {
        return Err(untrusted(format!(
            "`{}` is a CA whose key usage does not include keyCertSign",
            subject(cert)
        )));
    }
    Ok(())
}

/// No critical extension kiln does not check.
fn understood(cert: &Certificate) -> Result<(), SignatureError> {
    let unknown = cert
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.critical && !UNDERSTOOD.contains(&e.extn_id));
    match unknown {
        Some(e) => Err(untrusted(format!(
            "`{}` has a critical extension kiln does not check ({})",
            subject(cert),
            e.extn_id
        ))),
        None => Ok(()),
    }
}

fn may_sign(cert: &Certificate) -> bool {
    let usage = extension(cert, KEY_USAGE)
        .and_then(|der| x509_cert::ext::pkix::KeyUsage::from_der(der).ok())
        .is_some_and(|u| u.digital_signature());
    let code = extension(cert, EXT_KEY_USAGE)
        .and_then(|der| x509_cert::ext::pkix::ExtendedKeyUsage::from_der(der).ok())
        .is_some_and(|u| u.0.contains(&CODE_SIGNING));
    usage || code
}

/// Walks from the bundle's signing certificate to a trusted one; returns the signing key and
/// the signer's identity.
fn verify_chain(chain: &[Vec<u8>], roots: &[Certificate]) -> Result<(Key, String), SignatureError> {
    let certs = chain
        .iter()
        .map(|der| {
            Certificate::from_der(der)
                .map_err(|e| SignatureError::Malformed(format!("a certificate in the bundle: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = &certs[0];
    if !may_sign(leaf) {
        return Err(untrusted(format!(
            "`{}` may not sign (no digitalSignature key usage, no codeSigning extended key usage)",
            subject(leaf)
        )));
    }
    let at = leaf.tbs_certificate.validity.not_before.to_system_time();
    let mut current = leaf;
    for below in 0..=MAX_CHAIN {
        valid_at(current, at)?;
        understood(current)?;
        if roots.iter().any(|r| r == current) {
            return finish(leaf);
        }
        let issuer = &current.tbs_certificate.issuer;
        if let Some(root) = roots
            .iter()
            .find(|r| &r.tbs_certificate.subject == issuer && signed_by(current, r).is_ok())
        {
            valid_at(root, at)?;
            is_ca(root, below)?;
            understood(root)?;
            return finish(leaf);
        }
        let next = certs[1..]
            .iter()
            .find(|c| {
                !std::ptr::eq(*c, current)
                    && &c.tbs_certificate.subject == issuer
                    && signed_by(current, c).is_ok()
            })
            .ok_or_else(|| {
                untrusted(format!(
                    "`{}` is issued by `{}`, which is neither trusted nor in the bundle's chain (or did not sign it)",
                    subject(current),
                    clip(&issuer.to_string())
                ))
            })?;
        is_ca(next, below)?;
        current = next;
    }
    Err(untrusted(format!(
        "no trusted CA within {MAX_CHAIN} certificates"
    )))
}

fn finish(leaf: &Certificate) -> Result<(Key, String), SignatureError> {
    let spki = leaf
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let key = Key::from_spki_der(&spki).map_err(SignatureError::Unsupported)?;
    let signer = format!(
        "certificate {} (issuer {})",
        subject(leaf),
        clip(&leaf.tbs_certificate.issuer.to_string())
    );
    Ok((key, signer))
}
