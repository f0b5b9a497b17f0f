//! The one error type of this crate.

use std::time::Duration;

/// A Zk failure. On the client side each variant is a distinct reason a resolve towards a
/// peer KMS did not produce an answer (the KMS maps them to a MIKEY error for its UE).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZkError {
    /// The peer domain has no configured address.
    #[error("unknown peer KMS domain {0:?} (no Zk address configured)")]
    UnknownPeer(String),
    /// TCP connection to the peer failed.
    #[error("peer KMS {peer} at {addr} unreachable: {reason}")]
    Unreachable {
        /// Peer domain.
        peer: String,
        /// `host:port` tried.
        addr: String,
        /// Socket error.
        reason: String,
    },
    /// The peer did not answer (connect + TLS + response) within the bound.
    #[error("peer KMS {peer} did not answer within {after:?}")]
    Timeout {
        /// Peer domain.
        peer: String,
        /// The configured bound.
        after: Duration,
    },
    /// TLS handshake or certificate authentication failed (either side refused the other's
    /// certificate, or the server certificate does not name `kms.<peer>`).
    #[error("TLS with peer KMS {peer} failed: {reason}")]
    Tls {
        /// Peer domain.
        peer: String,
        /// rustls' reason.
        reason: String,
    },
    /// The connection broke after the handshake.
    #[error("Zk connection to peer KMS {peer} failed: {reason}")]
    Transport {
        /// Peer domain.
        peer: String,
        /// Socket error.
        reason: String,
    },
    /// The request was refused with an HTTP status and a reason: on the client side, by the
    /// peer KMS; on the server side, a [`crate::ZkHandler`] returns it to choose the answer.
    #[error("refused with HTTP {status}: {reason}")]
    Refused {
        /// HTTP status (4xx: the requester erred; 5xx: the answering KMS did).
        status: u16,
        /// The reason (response body).
        reason: String,
    },
    /// The peer's response is not a Zk answer (byte offset into the response where known).
    #[error("bad Zk response at byte {offset}: {reason}")]
    BadResponse {
        /// Byte offset into the raw HTTP response.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
    /// PKI files, names or TLS configuration are wrong.
    #[error("Zk configuration: {0}")]
    Config(String),
    /// Local I/O (listener, PKI files).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
