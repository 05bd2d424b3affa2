"""Keys and certificates for the signature tests, made fresh in each test (never committed),
with the `cryptography` package `model-signing` itself uses. Signing is then done with the real
`model_signing` command line.

    signing-fixture.py key OUT_DIR [p256|p384]
        OUT_DIR/key.pem (private, PKCS#8) and OUT_DIR/key.pub (SubjectPublicKeyInfo PEM)
    signing-fixture.py ca OUT_DIR [--leaf-cannot-sign] [--intermediate-not-ca]
                                  [--expired-intermediate] [--forged-intermediate]
        OUT_DIR/ca.pem (a P-384 root), OUT_DIR/int.pem (a P-256 intermediate it signs),
        OUT_DIR/leaf.key + OUT_DIR/leaf.pem (the signer, issued by the intermediate, with key
        usage digitalSignature and extended key usage codeSigning; neither with
        --leaf-cannot-sign). Broken chains for the negative tests: an intermediate that is not
        a CA; one whose validity ended before the signer's began; or (forged) int.pem is
        another intermediate with the real one's name, also signed by the root, but not the
        key that issued the signer.
"""

import datetime
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(path, 0o600)


def write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def issue(subject, key, issuer_name, issuer_key, ca, usage, expired=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    if expired:
        start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start)
         .not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=True, crl_sign=True,
                                          encipher_only=False, decipher_only=False), critical=True)
    elif usage:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                          key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                          key_encipherment=True, data_encipherment=False,
                                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                                          encipher_only=False, decipher_only=False), critical=True)
    return b.sign(issuer_key, hashes.SHA384() if isinstance(issuer_key.curve, ec.SECP384R1) else hashes.SHA256())


def main():
    kind, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    if kind == "key":
        curve = ec.SECP384R1() if sys.argv[3:4] == ["p384"] else ec.SECP256R1()
        key = ec.generate_private_key(curve)
        write_key(os.path.join(out, "key.pem"), key)
        with open(os.path.join(out, "key.pub"), "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    elif kind == "ca":
        flags = sys.argv[3:]
        can_sign = "--leaf-cannot-sign" not in flags
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test root")])
        root = issue("kiln test root", root_key, root_name, root_key, True, False)
        int_key = ec.generate_private_key(ec.SECP256R1())
        inter = issue("kiln test intermediate", int_key, root.subject, root_key,
                      "--intermediate-not-ca" not in flags, False,
                      expired="--expired-intermediate" in flags)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue("ml-platform signer", leaf_key, inter.subject, int_key, False, can_sign)
        if "--forged-intermediate" in flags:
            forged_key = ec.generate_private_key(ec.SECP256R1())
            inter = issue("kiln test intermediate", forged_key, root.subject, root_key, True, False)
        write_cert(os.path.join(out, "ca.pem"), root)
        write_cert(os.path.join(out, "int.pem"), inter)
        write_cert(os.path.join(out, "leaf.pem"), leaf)
        write_key(os.path.join(out, "leaf.key"), leaf_key)
    else:
        sys.exit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main()
