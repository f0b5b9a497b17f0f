//! HTTPS for the BSF (rustls 0.23 with the aws-lc-rs provider): a server configuration from
//! PEM files, a TLS listener for axum (concurrent handshakes), and a client connector trusting a given CA (lab PKI).
//!
//! NAF authentication on Zn: the bearer token (inside TLS), or a TLS client certificate that
//! verifies against the configured NAF CA (client certificates are optional at the TLS layer,
//! so UEs connect without one; only Zn looks at them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::debug;

use crate::BsfError;

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;

fn tls_err(e: impl std::fmt::Display) -> BsfError {
    BsfError::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BsfError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(tls_err)?;
    if certs.is_empty() {
        return Err(BsfError::Tls("no certificate in the PEM data".into()));
    }
    Ok(certs)
}

fn roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, BsfError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in chain(ca_pem)? {
        roots.add(c).map_err(tls_err)?;
    }
    Ok(roots)
}

/// Server configuration from a PEM certificate chain and a PEM private key; with
/// `naf_client_ca`, client certificates issued by that CA are verified when offered.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
    naf_client_ca: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, BsfError> {
    let certs = chain(cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(tls_err)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match naf_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                .allow_unauthenticated()
                .build()
                .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client connector that trusts the CA certificates in `ca_pem`; a NAF may add its client
/// certificate chain and key (PEM) to authenticate on Zn.
pub fn client_connector(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<TlsConnector, BsfError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots(ca_pem)?);
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(chain(cert)?, PrivateKeyDer::from_pem_slice(key).map_err(tls_err)?)
            .map_err(tls_err)?,
    };
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// A TCP listener that hands connections to axum after a successful TLS handshake. The
/// handshakes run concurrently (one task each, bounded in time and in number), so a slow or
/// silent TCP client cannot hold up the accept loop. Shared by the BSF and the KMS's Zk.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps a bound listener; starts accepting at once (must run inside a tokio runtime).
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
                let (tcp, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            drop(permit);
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { rx, local, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
