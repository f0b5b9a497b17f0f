//! The lab PKI of the BSF crate's TLS tests (rcgen): a self-signed CA, and certificates it
//! issues for a name.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A fresh self-signed CA, unconstrained.
pub(crate) fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, key).expect("CA")
}

/// A certificate for `name` issued by `ca`: (certificate PEM, private key PEM).
pub(crate) fn issue(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![name.to_owned()]).expect("params").signed_by(&key, ca).expect("certificate");
    (cert.pem(), key.serialize_pem())
}
