//! The Zk client of the resolving KMS (KMS_R, TS 33.328 Annex B.2.3): it forwards an
//! unprotected RESOLVE_INIT to the issuing KMS (KMS_I, the domain of IDRkms in the ticket
//! policy) and returns its answer, within a bounded time.
//!
//! One request per connection (`Connection: close`); the server certificate must chain to the
//! private CA and name `kms.<peer domain>`, whatever address the peer is configured at.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::pki::kms_name;
use crate::server::{MAX_BODY, MIKEY_CONTENT_TYPE, ZK_PATH, ZK_QUERY};
use crate::{ZkError, ZkTls};

/// Largest response read (a base64 MIKEY answer and headers).
const MAX_RESPONSE: usize = MAX_BODY + 8 * 1024;
/// Longest reason kept from a refusal body.
const MAX_REASON: usize = 512;

/// A Zk client: the peer KMSs this KMS may forward resolves to.
#[derive(Clone, Debug)]
pub struct ZkClient {
    tls: ZkTls,
    peers: BTreeMap<String, String>,
    timeout: Duration,
}

/// Classifies an I/O error: a rustls error inside means TLS/authentication failed.
fn io_err(peer: &str, e: &std::io::Error) -> ZkError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => ZkError::Tls { peer: peer.to_owned(), reason: tls.to_string() },
        None => ZkError::Transport { peer: peer.to_owned(), reason: e.to_string() },
    }
}

impl ZkClient {
    /// `peers` maps a peer KMS domain to its Zk address (`host:port`); `timeout` bounds each
    /// resolve as a whole (TCP connect, TLS handshake, request and complete response).
    pub fn new(tls: &ZkTls, peers: BTreeMap<String, String>, timeout: Duration) -> Self {
        Self { tls: tls.clone(), peers, timeout }
    }

    /// The configured bound of one resolve.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forwards `request` (a MIKEY RESOLVE_INIT) to the KMS of `peer_domain` and returns its
    /// answer (a RESOLVE_RESP or a MIKEY Error message).
    pub async fn resolve(&self, peer_domain: &str, request: &[u8]) -> Result<Vec<u8>, ZkError> {
        let addr = self.peers.get(peer_domain).ok_or_else(|| ZkError::UnknownPeer(peer_domain.to_owned()))?;
        let name = ServerName::try_from(kms_name(peer_domain))
            .map_err(|_| ZkError::Config(format!("peer domain {peer_domain:?} is not a DNS name")))?;
        tokio::time::timeout(self.timeout, self.exchange(peer_domain, addr, name, request))
            .await
            .map_err(|_| ZkError::Timeout { peer: peer_domain.to_owned(), after: self.timeout })?
    }

    async fn exchange(&self, peer: &str, addr: &str, name: ServerName<'static>, request: &[u8]) -> Result<Vec<u8>, ZkError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ZkError::Unreachable { peer: peer.to_owned(), addr: addr.to_owned(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let mut tls = self.tls.connector().connect(name, tcp).await.map_err(|e| io_err(peer, &e))?;
        let body = STANDARD.encode(request);
        let head = format!(
            "POST {ZK_PATH}?{ZK_QUERY} HTTP/1.1\r\nHost: {}\r\nContent-Type: {MIKEY_CONTENT_TYPE}\r\nContent-Length: {}\r\nUser-Agent: mediasec-kms-zk\r\nConnection: close\r\n\r\n",
            kms_name(peer),
            body.len()
        );
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        tls.write_all(&out).await.map_err(|e| io_err(peer, &e))?;
        tls.flush().await.map_err(|e| io_err(peer, &e))?;
        let mut raw = Vec::new();
        match (&mut tls).take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw).await {
            Ok(_) => {}
            // A peer closing without close_notify after a complete response is tolerated
            // (the Content-Length check below catches a truncated one).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(io_err(peer, &e)),
        }
        if raw.len() > MAX_RESPONSE {
            return Err(ZkError::BadResponse { offset: MAX_RESPONSE, reason: "response too large".into() });
        }
        decode_answer(&raw)
    }
}

/// Decodes a complete raw Zk HTTP response: the MIKEY answer of a 200, or
/// [`ZkError::Refused`] with the status and reason of a 4xx/5xx. Never panics (fuzzed).
pub fn decode_answer(raw: &[u8]) -> Result<Vec<u8>, ZkError> {
    let r = mediasec_bsf::client::parse_response(raw).map_err(|e| match e {
        mediasec_bsf::BsfError::Http { offset, reason } => ZkError::BadResponse { offset, reason: reason.into() },
        other => ZkError::BadResponse { offset: 0, reason: other.to_string() },
    })?;
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
    match r.status {
        200 => {
            let ct = r.header("content-type").unwrap_or_default();
            if !ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(MIKEY_CONTENT_TYPE)) {
                return Err(ZkError::BadResponse { offset: 0, reason: format!("200 with Content-Type {ct:?}, not application/mikey") });
            }
            match STANDARD.decode(r.body.trim_ascii()) {
                Ok(a) if !a.is_empty() => Ok(a),
                Ok(_) => Err(ZkError::BadResponse { offset: body_at, reason: "empty MIKEY answer".into() }),
                Err(e) => Err(ZkError::BadResponse { offset: body_at, reason: format!("body is not base64: {e}") }),
            }
        }
        status @ 400..=599 => {
            let mut reason = String::from_utf8_lossy(&r.body).trim().to_owned();
            if let Some((cut, _)) = reason.char_indices().nth(MAX_REASON) {
                reason.truncate(cut);
            }
            Err(ZkError::Refused { status, reason })
        }
        status => Err(ZkError::BadResponse { offset: 9, reason: format!("unexpected HTTP status {status}") }),
    }
}
