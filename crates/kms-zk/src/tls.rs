//! Mutually authenticated TLS for Zk (rustls 0.23, aws-lc-rs provider): both sides present a
//! certificate chained to the private CA of [`crate::pki`]; a server name is `kms.<domain>`.
//!
//! The server side accepts through [`mediasec_bsf::tls::TlsListener`], which hands connections
//! to axum only after the TLS handshake and runs handshakes concurrently, so a slow or silent
//! TCP client cannot hold up the accept loop.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zeroize::Zeroizing;

use crate::ZkError;
use crate::pki::{CA_FILE, cert_file, check_domain, key_file, kms_name};


fn config_err(what: &str, e: impl std::fmt::Display) -> ZkError {
    ZkError::Config(format!("{what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, ZkError> {
    std::fs::read(path).map_err(|e| ZkError::Config(format!("{}: {e}", path.display())))
}

/// The TLS identity of one KMS on Zk: its certificate and key, and the private CA it trusts.
#[derive(Clone)]
pub struct ZkTls {
    domain: String,
    server: Arc<rustls::ServerConfig>,
    client: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ZkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkTls").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl ZkTls {
    /// Loads `ca.pem`, `kms.<domain>.pem` and `kms.<domain>.key.pem` from `dir` (as written by
    /// [`crate::pki::generate`]) and builds the server configuration (client certificate
    /// required, chained to the CA) and the client configuration (CA as the only root, this
    /// KMS's certificate as client identity).
    pub fn load(dir: &Path, domain: &str) -> Result<Self, ZkError> {
        check_domain(domain)?;
        let ca_pem = read(&dir.join(CA_FILE))?;
        let cert_pem = read(&cert_file(dir, domain))?;
        let key_pem = Zeroizing::new(read(&key_file(dir, domain))?);
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config_err("KMS certificate", e))?;
        if certs.is_empty() {
            return Err(ZkError::Config(format!("{}: no certificate", cert_file(dir, domain).display())));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| config_err("KMS key", e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(c.map_err(|e| config_err("CA certificate", e))?).map_err(|e| config_err("CA certificate", e))?;
        }
        if roots.is_empty() {
            return Err(ZkError::Config(format!("{}: no CA certificate", dir.join(CA_FILE).display())));
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| config_err("client verifier", e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_err("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| config_err("KMS certificate and key", e))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The client side is exactly the BSF's NAF-side connector: CA roots + client identity.
        let client = mediasec_bsf::tls::client_connector(&ca_pem, Some((&cert_pem, &key_pem)))
            .map_err(|e| config_err("client configuration", e))?;
        Ok(Self { domain: domain.to_owned(), server: Arc::new(server), client })
    }

    /// The domain this identity belongs to.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The server configuration (client certificate required).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.server)
    }

    /// The client connector (presents this KMS's certificate).
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.client
    }
}

/// The domain of a verified peer certificate: the one domain of `allowed` whose `kms.<domain>`
/// the certificate is valid for. `Err` carries the refusal reason (names presented, or the
/// ambiguity).
pub(crate) fn peer_domain<'a>(cert: &CertificateDer<'_>, allowed: &'a std::collections::BTreeSet<String>) -> Result<&'a str, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unparsable client certificate: {e}"))?;
    let mut matches = allowed.iter().filter(|d| {
        ServerName::try_from(kms_name(d)).is_ok_and(|n| ee.verify_is_valid_for_subject_name(&n).is_ok())
    });
    match (matches.next(), matches.next()) {
        (Some(d), None) => Ok(d),
        (Some(a), Some(b)) => Err(format!("client certificate names several allowed KMSs ({a}, {b}, ...)")),
        (None, _) => {
            let names: Vec<&str> = ee.valid_dns_names().collect();
            Err(format!("peer KMS not allowed on Zk (certificate names {names:?})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::peer_domain;

    fn cert(names: &[&str]) -> rustls::pki_types::CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        rcgen::CertificateParams::new(names).expect("params").self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn certificate_maps_to_exactly_one_allowed_domain() {
        let allowed: BTreeSet<String> = ["a.example", "b.example"].iter().map(|d| (*d).to_owned()).collect();
        assert_eq!(peer_domain(&cert(&["kms.b.example", "b.example"]), &allowed), Ok("b.example"));
        // The bare domain is not enough: Zk peers are `kms.<domain>`.
        assert!(peer_domain(&cert(&["a.example"]), &allowed).is_err());
        let e = peer_domain(&cert(&["kms.a.example", "kms.b.example"]), &allowed).expect_err("ambiguous");
        assert!(e.contains("several"), "{e}");
        let e = peer_domain(&cert(&["kms.c.example"]), &allowed).expect_err("not allowed");
        assert!(e.contains("kms.c.example"), "{e}");
        assert!(peer_domain(&rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]), &allowed).is_err());
    }
}
