//! A lab PKI for Zk (TS 33.328 §4.2.4 / Annex B.2.3: the KMSs authenticate each other;
//! 3GPP asks for NDS/IP, here mutually authenticated TLS under one private CA).
//!
//! Files written to the output directory (PEM):
//!
//! | file | content |
//! |---|---|
//! | `ca.pem` | the private CA certificate (trust anchor of every KMS) |
//! | `kms.<domain>.pem` | the KMS certificate of `<domain>`: SAN `kms.<domain>` and `<domain>`, EKU serverAuth + clientAuth |
//! | `kms.<domain>.key.pem` | its private key (mode 0600) |
//!
//! The CA key is not written: to add a domain, generate the PKI again for every domain.
//! Certificates use rcgen's default validity; keys are ECDSA P-256.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use zeroize::Zeroizing;

use crate::ZkError;

/// The CA certificate file in a PKI directory.
pub const CA_FILE: &str = "ca.pem";

/// The DNS name a KMS certificate must carry for `domain` (the Zk server name).
pub fn kms_name(domain: &str) -> String {
    format!("kms.{domain}")
}

/// `kms.<domain>.pem` in `dir`.
pub fn cert_file(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("kms.{domain}.pem"))
}

/// `kms.<domain>.key.pem` in `dir`.
pub fn key_file(dir: &Path, domain: &str) -> PathBuf {
    dir.join(format!("kms.{domain}.key.pem"))
}

/// Checks that `domain` is a DNS name (letters, digits, `-`, dot-separated labels), so
/// `kms.<domain>` is a valid certificate name and a safe file name.
pub fn check_domain(domain: &str) -> Result<(), ZkError> {
    let bad = |why: &str| Err(ZkError::Config(format!("domain {domain:?}: {why}")));
    if domain.is_empty() || domain.len() > 249 {
        return bad("must be 1..249 characters");
    }
    for label in domain.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("empty or over-long label");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || label.starts_with('-') || label.ends_with('-') {
            return bad("labels are letters, digits and inner '-'");
        }
    }
    Ok(())
}

fn pki_err(e: rcgen::Error) -> ZkError {
    ZkError::Config(format!("certificate generation: {e}"))
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), ZkError> {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Generates a private CA and, per domain, a KMS certificate and key in `out_dir` (created if
/// missing; existing files of the same names are replaced).
pub fn generate(out_dir: &Path, domains: &[String]) -> Result<(), ZkError> {
    if domains.is_empty() {
        return Err(ZkError::Config("give at least one domain".into()));
    }
    for d in domains {
        check_domain(d)?;
    }
    std::fs::create_dir_all(out_dir)?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    ca_params.distinguished_name.push(DnType::CommonName, "mediasec lab Zk CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(pki_err)?).map_err(pki_err)?;
    write(&out_dir.join(CA_FILE), &ca.pem(), 0o644)?;

    for d in domains {
        let mut params = CertificateParams::new(vec![kms_name(d), d.clone()]).map_err(pki_err)?;
        params.distinguished_name.push(DnType::CommonName, kms_name(d));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(pki_err)?;
        let cert = params.signed_by(&key, &ca).map_err(pki_err)?;
        write(&key_file(out_dir, d), &Zeroizing::new(key.serialize_pem()), 0o600)?;
        write(&cert_file(out_dir, d), &cert.pem(), 0o644)?;
    }
    Ok(())
}
