//! The one error type of this crate.

/// Errors of the BSF server, its store and the UE/Zn HTTP clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BsfError {
    /// The store (embedded database or PostgreSQL) failed, or a read-modify-write of a
    /// record kept losing to concurrent writers ([`mediasec_kms_store::StoreError::Contention`]).
    #[error(transparent)]
    Store(#[from] mediasec_kms_store::StoreError),
    /// A stored record could not be decoded.
    #[error("store record for {key:?} is corrupt: {reason}")]
    Corrupt {
        /// Record key.
        key: String,
        /// Decoder message.
        reason: String,
    },
    /// A sealed secret of a stored record does not open: another master key, or a changed or
    /// moved row. Never garbage keys: the AEAD tag does not verify.
    #[error("store record for {key:?}: its secrets do not open under this BSF master key (wrong --master-key / MEDIASEC_BSF_MASTER_KEY, or a tampered row): {reason}")]
    Sealed {
        /// Record key.
        key: String,
        /// What the AEAD said.
        reason: String,
    },
    /// The BSF master key is unusable, or sealing failed.
    #[error("BSF master key: {0}")]
    MasterKey(#[from] mediasec_kms_store::sealed::SealError),
    /// A master-key rotation of the store failed or is unfinished ([`crate::rekey`]).
    #[error(transparent)]
    Rekey(#[from] mediasec_kms_store::rekey::RekeyError),
    /// Invalid subscriber data supplied by an operator.
    #[error("invalid subscriber: {0}")]
    InvalidSubscriber(String),
    /// Subscriber already exists / does not exist.
    #[error("subscriber {0:?}: {1}")]
    Subscriber(String, &'static str),
    /// Socket I/O.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connection to a server could not be opened.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port` tried.
        addr: String,
        /// Socket error.
        source: std::io::Error,
    },
    /// An HTTP exchange failed on its connection (closed, reset, malformed at the HTTP
    /// framing level), with hyper's reason and its causes.
    #[error("HTTP exchange failed: {0}")]
    Transport(String),
    /// The request given to the HTTP client cannot be sent (invalid method, path or header).
    #[error("invalid HTTP request: {0}")]
    Request(String),
    /// The peer's HTTP response was malformed (byte offset into the response).
    #[error("malformed HTTP response at byte {offset}: {reason}")]
    Http {
        /// Byte offset.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// Unsupported or malformed URL.
    #[error("URL {0:?}: only http(s)://host:port[/path] is supported (https needs a CA)")]
    Url(String),
    /// The server answered with an unexpected status.
    #[error("unexpected HTTP status {status}: {body}")]
    Status {
        /// Status code.
        status: u16,
        /// Response body (reason).
        body: String,
    },
    /// TLS configuration or handshake failure.
    #[error("TLS: {0}")]
    Tls(String),
    /// GBA protocol failure (AUTN, rspauth, parsing ...).
    #[error(transparent)]
    Gba(#[from] mediasec_gba::GbaError),
}
