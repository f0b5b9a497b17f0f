//! SIP over TLS (RFC 3261 §26.2, §18; RFC 5922): the endpoint's TLS setup and the server
//! identity a client checks.
//!
//! rustls 0.23 with the aws-lc-rs provider, TLS 1.2 and 1.3 (rustls' safe defaults). The
//! configurations are built from PEM data: a server needs its certificate chain and key, and —
//! for mutual TLS between core nodes (TS 33.210 NDS/IP, RFC 5922 §7.4) — the roots its clients'
//! certificates must chain to (then a client without a certificate is refused in the
//! handshake); a client needs the roots it trusts and, for mutual TLS, its own certificate and
//! key.
//!
//! Server identity (RFC 5922 §7.2, §7.3): the client verifies the server's certificate against
//! the SIP domain it is trying to reach, the host of the URI the request is routed on (its top
//! `Route`, else its Request-URI, RFC 3261 §8.1.2), sent as SNI for a host name: a host name
//! must match a DNS `subjectAltName`, an IP literal an IP address `subjectAltName` (webpki's
//! name check; the `CN` is never used, RFC 5922 §7.1).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sipx_sip::uri::Host;

use crate::Error;

pub use rustls::{ClientConfig, ServerConfig};

/// The RFC 3261 §26.2 default port of SIP over TLS.
pub const DEFAULT_PORT: u16 = 5061;

/// An endpoint's TLS setup ([`crate::endpoint::Config::tls`]): either side, or both.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Accept TLS connections: on this endpoint's IP address, at [`TlsServer::port`].
    pub server: Option<TlsServer>,
    /// Open TLS connections (requests to `sips:` URIs, `;transport=tls`, or with a `TLS`
    /// top `Via`); without it such a request fails with a transport error.
    pub client: Option<Arc<ClientConfig>>,
}

/// The server side of [`Tls`].
#[derive(Clone, Debug)]
pub struct TlsServer {
    /// The TLS port ([`DEFAULT_PORT`] by RFC 3261; 0 picks a free one, see
    /// `Endpoint::tls_addr`).
    pub port: u16,
    /// The certificate, key and client-certificate policy ([`server_config`]).
    pub config: Arc<ServerConfig>,
}

fn tls_error(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Tls { what: what.to_owned(), reason: reason.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of PEM data, in order; at least one.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| tls_error(what, e))?;
    if certs.is_empty() {
        return Err(tls_error(what, "no CERTIFICATE in the PEM data"));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| tls_error(what, e))
}

fn roots(pem: &[u8], what: &str) -> Result<Arc<rustls::RootCertStore>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots.add(cert).map_err(|e| tls_error(what, e))?;
    }
    Ok(Arc::new(roots))
}

/// Reads a PEM file; its bytes are zeroized when dropped (it may hold a private key).
///
/// # Errors
/// [`Error::Tls`] naming the file when it cannot be read.
pub fn read_pem(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
    std::fs::read(path).map(zeroize::Zeroizing::new).map_err(|e| tls_error(&format!("file {}", path.display()), e))
}

/// A TLS server configuration: `chain_pem` (the server certificate first, then any
/// intermediates) and its private key `key_pem` (PKCS#8, PKCS#1 or SEC1). With
/// `client_roots_pem`, every client must present a certificate chaining to one of those roots
/// (mutual TLS); a client without one fails the handshake.
///
/// # Errors
/// [`Error::Tls`] naming the part that is missing or refused (no certificate, no key, a key
/// that does not match the certificate, an unusable root).
pub fn server_config(chain_pem: &[u8], key_pem: &[u8], client_roots_pem: Option<&[u8]>) -> Result<Arc<ServerConfig>, Error> {
    let chain = certificates(chain_pem, "server certificate chain")?;
    let key = private_key(key_pem, "server private key")?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("server protocol versions", e))?;
    let builder = match client_roots_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(pem, "client roots")?, provider())
                .build()
                .map_err(|e| tls_error("client roots", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| tls_error("server certificate and key", e))?;
    Ok(Arc::new(config))
}

/// A TLS client configuration trusting the roots in `roots_pem`; with `identity` (certificate
/// chain and private key, PEM) it presents that certificate to servers that ask (mutual TLS).
///
/// # Errors
/// [`Error::Tls`] naming the part that is missing or refused.
pub fn client_config(roots_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Arc<ClientConfig>, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("client protocol versions", e))?
        .with_root_certificates(roots(roots_pem, "trusted roots")?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => builder
            .with_client_auth_cert(certificates(chain_pem, "client certificate chain")?, private_key(key_pem, "client private key")?)
            .map_err(|e| tls_error("client certificate and key", e))?,
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry to be the SIP host `host` (RFC 5922 §7.2): a
/// DNS name, or an IP address for an IP literal. `None` for a host name that is not a valid
/// DNS name (no certificate can match it).
pub fn server_name(host: &Host) -> Option<ServerName<'static>> {
    match host {
        Host::Ip(ip) => Some(ServerName::IpAddress((*ip).into())),
        Host::Name(name) => {
            let name = std::str::from_utf8(name.as_bytes()).ok()?;
            ServerName::try_from(name.to_ascii_lowercase()).ok()
        }
    }
}

/// A lab PKI made at start-up (rcgen, ECDSA P-256, rcgen's default validity): a private CA
/// and one server certificate for the given names (an IP address string becomes an IP address
/// `subjectAltName`, anything else a DNS name), all PEM. For labs and demos: the CA key is
/// dropped once the certificate is signed.
#[derive(Clone)]
pub struct LabPki {
    /// The CA certificate: what clients trust ([`client_config`]).
    pub ca_pem: String,
    /// The server certificate ([`server_config`]).
    pub cert_pem: String,
    /// Its private key (zeroized on drop).
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for LabPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabPki").field("ca_pem", &self.ca_pem).field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl LabPki {
    /// A new CA and a server certificate for `names`.
    ///
    /// # Errors
    /// [`Error::Tls`] when rcgen refuses a name or fails.
    pub fn generate(names: &[&str]) -> Result<Self, Error> {
        let fail = |e: rcgen::Error| tls_error("lab certificates", e);
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca.distinguished_name.push(rcgen::DnType::CommonName, "mediasec lab SIP CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().map_err(fail)?).map_err(fail)?;
        let mut server = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).map_err(fail)?;
        server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = server.signed_by(&key, &ca).map_err(fail)?;
        Ok(Self { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: zeroize::Zeroizing::new(key.serialize_pem()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_or_an_ip_literal_is_the_name_checked() {
        let host = |s: &str| Host::parse_hostport(&bytes::Bytes::from(s.to_owned())).expect("host").0;
        assert_eq!(server_name(&host("PCSCF.ims.Example.org")).map(|n| n.to_str().into_owned()), Some("pcscf.ims.example.org".to_owned()));
        assert!(matches!(server_name(&host("192.0.2.1:5061")), Some(ServerName::IpAddress(_))));
        assert!(matches!(server_name(&host("[2001:db8::1]")), Some(ServerName::IpAddress(_))));
    }

    /// The lab PKI's files build a server and a client configuration.
    #[test]
    fn the_lab_pki_builds_both_sides() {
        let pki = LabPki::generate(&["127.0.0.1", "pcscf.lab.example"]).expect("lab PKI");
        server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None).expect("server");
        client_config(pki.ca_pem.as_bytes(), None).expect("client");
        assert!(!format!("{pki:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn pem_without_what_is_needed_is_a_named_error() {
        let e = server_config(b"", b"", None).expect_err("no certificate");
        assert!(e.to_string().starts_with("TLS server certificate chain: "), "{e}");
        let e = client_config(b"not pem", None).expect_err("no roots");
        assert!(e.to_string().starts_with("TLS trusted roots: "), "{e}");
        let e = read_pem(Path::new("/nonexistent/ca.pem")).expect_err("no file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
