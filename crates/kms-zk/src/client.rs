//! The Zk client of the resolving KMS (KMS_R, TS 33.328 Annex B.2.3): it forwards an
//! unprotected RESOLVE_INIT to the issuing KMS (KMS_I, the domain of IDRkms in the ticket
//! policy) and returns its answer, within a bounded time.
//!
//! One pooled connection set per peer (the HTTP client of `mediasec_bsf::client`, which keeps
//! connections alive and retries only a request it never sent); the server certificate must
//! chain to the private CA and name `kms.<peer domain>`, whatever address the peer is
//! configured at, and this KMS presents its own certificate (mutual TLS).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_bsf::BsfError;
use mediasec_bsf::client::{Endpoint, HttpResponse, parse_response, request};
use rustls::pki_types::ServerName;

use crate::pki::kms_name;
use crate::server::{CERTIFICATE_CONTENT_TYPE, CERTIFICATE_PATH, MAX_BODY, MIKEY_CONTENT_TYPE, ZK_PATH, ZK_QUERY};
use crate::{ZkError, ZkTls};

/// Largest response read (a base64 MIKEY answer and headers).
const MAX_RESPONSE: usize = MAX_BODY + 8 * 1024;
/// Longest reason kept from a refusal body.
const MAX_REASON: usize = 512;

/// A Zk client: the peer KMSs this KMS may forward resolves to, each with its pool of
/// connections (shared by the clones of the client).
#[derive(Clone, Debug)]
pub struct ZkClient {
    peers: Arc<BTreeMap<String, Peer>>,
    timeout: Duration,
}

/// A configured peer: its endpoint, or why its domain cannot be a certificate name.
#[derive(Debug)]
enum Peer {
    Ready(Endpoint),
    NotDns,
}

/// Maps a failure of the HTTP client towards `peer` at `addr` to the Zk error kinds.
fn zk_err(peer: &str, addr: &str, e: BsfError) -> ZkError {
    match e {
        BsfError::Connect { source, .. } => ZkError::Unreachable { peer: peer.to_owned(), addr: addr.to_owned(), reason: source.to_string() },
        BsfError::Tls(reason) => ZkError::Tls { peer: peer.to_owned(), reason },
        BsfError::Http { offset, reason } => ZkError::BadResponse { offset, reason: reason.into() },
        other => ZkError::Transport { peer: peer.to_owned(), reason: other.to_string() },
    }
}

impl ZkClient {
    /// `peers` maps a peer KMS domain to its Zk address (`host:port`); `timeout` bounds each
    /// resolve as a whole (TCP connect, TLS handshake when a new connection is needed,
    /// request and complete response).
    pub fn new(tls: &ZkTls, peers: BTreeMap<String, String>, timeout: Duration) -> Self {
        let peers = peers
            .into_iter()
            .map(|(domain, addr)| {
                let peer = match ServerName::try_from(kms_name(&domain)) {
                    Ok(name) => Peer::Ready(Endpoint::tls(addr, name, tls.connector().clone()).max_response(MAX_RESPONSE)),
                    Err(_) => Peer::NotDns,
                };
                (domain, peer)
            })
            .collect();
        Self { peers: Arc::new(peers), timeout }
    }

    /// The configured bound of one resolve.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fetches the KMS certificate of the peer KMS of `peer_domain` (`GET
    /// /keymanagement/certificate` over the same mutually authenticated channel, bounded like
    /// a resolve): its JSON, unparsed (the KMS validates it).
    pub async fn certificate(&self, peer_domain: &str) -> Result<Vec<u8>, ZkError> {
        let endpoint = self.endpoint(peer_domain)?;
        let host = kms_name(peer_domain);
        let headers = [("Host", host.as_str()), ("Accept", CERTIFICATE_CONTENT_TYPE), ("User-Agent", "mediasec-kms-zk")];
        let fetch = async {
            let r = request(endpoint, "GET", CERTIFICATE_PATH, &headers, b"").await.map_err(|e| zk_err(peer_domain, endpoint.authority(), e))?;
            certificate_answer(&r, 0)
        };
        tokio::time::timeout(self.timeout, fetch).await.map_err(|_| ZkError::Timeout { peer: peer_domain.to_owned(), after: self.timeout })?
    }

    fn endpoint(&self, peer_domain: &str) -> Result<&Endpoint, ZkError> {
        match self.peers.get(peer_domain) {
            None => Err(ZkError::UnknownPeer(peer_domain.to_owned())),
            Some(Peer::NotDns) => Err(ZkError::Config(format!("peer domain {peer_domain:?} is not a DNS name"))),
            Some(Peer::Ready(e)) => Ok(e),
        }
    }

    /// Forwards `request` (a MIKEY RESOLVE_INIT) to the KMS of `peer_domain` and returns its
    /// answer (a RESOLVE_RESP or a MIKEY Error message).
    pub async fn resolve(&self, peer_domain: &str, request: &[u8]) -> Result<Vec<u8>, ZkError> {
        let endpoint = self.endpoint(peer_domain)?;
        tokio::time::timeout(self.timeout, exchange(endpoint, peer_domain, request))
            .await
            .map_err(|_| ZkError::Timeout { peer: peer_domain.to_owned(), after: self.timeout })?
    }
}

async fn exchange(endpoint: &Endpoint, peer: &str, mikey: &[u8]) -> Result<Vec<u8>, ZkError> {
    let body = STANDARD.encode(mikey);
    let host = kms_name(peer);
    let headers = [("Host", host.as_str()), ("Content-Type", MIKEY_CONTENT_TYPE), ("User-Agent", "mediasec-kms-zk")];
    let r = request(endpoint, "POST", &format!("{ZK_PATH}?{ZK_QUERY}"), &headers, body.as_bytes())
        .await
        .map_err(|e| zk_err(peer, endpoint.authority(), e))?;
    answer(&r, 0)
}

/// Decodes a complete raw Zk HTTP response (parsed by
/// [`mediasec_bsf::client::parse_response`]) as the client decodes the responses it reads:
/// the entry point of the `zk_response` fuzz target. Never panics.
pub fn decode_answer(raw: &[u8]) -> Result<Vec<u8>, ZkError> {
    let (r, body_at) = parse_raw(raw)?;
    answer(&r, body_at)
}

/// Decodes a complete raw HTTP response to a certificate request as
/// [`ZkClient::certificate`] does (the `kms_certificate` fuzz target). Never panics.
pub fn decode_certificate_answer(raw: &[u8]) -> Result<Vec<u8>, ZkError> {
    let (r, body_at) = parse_raw(raw)?;
    certificate_answer(&r, body_at)
}

/// A complete raw HTTP response parsed, and the offset of its body (for error offsets).
fn parse_raw(raw: &[u8]) -> Result<(HttpResponse, usize), ZkError> {
    let r = parse_response(raw).map_err(|e| match e {
        BsfError::Http { offset, reason } => ZkError::BadResponse { offset, reason: reason.into() },
        other => ZkError::BadResponse { offset: 0, reason: other.to_string() },
    })?;
    Ok((r, raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4)))
}

/// The certificate JSON of a 200 (`application/json`, non-empty), or the refusal of a
/// 4xx/5xx as for resolves.
fn certificate_answer(r: &HttpResponse, body_at: usize) -> Result<Vec<u8>, ZkError> {
    if r.status != 200 {
        return answer(r, body_at);
    }
    let ct = r.header("content-type").unwrap_or_default();
    if !ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(CERTIFICATE_CONTENT_TYPE)) {
        return Err(ZkError::BadResponse { offset: 0, reason: format!("200 with Content-Type {ct:?}, not {CERTIFICATE_CONTENT_TYPE}") });
    }
    if r.body.trim_ascii().is_empty() {
        return Err(ZkError::BadResponse { offset: body_at, reason: "empty KMS certificate".into() });
    }
    Ok(r.body.to_vec())
}

/// The MIKEY answer of a 200, or [`ZkError::Refused`] with the status and reason of a
/// 4xx/5xx; `body_at` is where the body starts in the raw response (for error offsets).
fn answer(r: &HttpResponse, body_at: usize) -> Result<Vec<u8>, ZkError> {
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
