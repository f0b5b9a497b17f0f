//! Errors of the SIP layer.

/// A SIP-layer failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The body is not a single SDP body (RFC 3261 §20.15 `Content-Type`).
    #[error("body is not application/sdp (Content-Type: {0})")]
    NotSdp(String),
    /// The message has more than one `Content-Length` header (RFC 3261 §20.14 allows one).
    #[error("more than one Content-Length header")]
    DuplicateContentLength,
    /// The SDP body is malformed.
    #[error("SDP body: {0}")]
    Sdp(#[from] mediasec_sdp::Error),
    /// A header could not be built.
    #[error("header: {0}")]
    Header(#[from] sipx_sip::BuildError),
    /// A header a dialog needs is missing (RFC 3261 §8.1.1, §12.1).
    #[error("missing {0} header")]
    MissingHeader(String),
    /// A header a dialog needs does not parse.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// The message cannot create or belong to a dialog (RFC 3261 §12).
    #[error("not a dialog: {0}")]
    NotADialog(&'static str),
    /// An in-dialog request whose CSeq is not higher than the last one (RFC 3261 §12.2.2).
    #[error("CSeq {got} not higher than the last one ({last})")]
    CSeqOrder {
        /// The last CSeq number seen.
        last: u32,
        /// The CSeq number received.
        got: u32,
    },
    /// The DNS resolver could not be set up (RFC 3263 server location, [`crate::locate`]).
    #[error("DNS resolver: {0}")]
    Dns(String),
    /// A socket operation failed.
    #[error("SIP transport: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP listener could not take the port the UDP socket got (RFC 3261 §18: a SIP
    /// element listens on both transports at the same port).
    #[error("TCP {addr} (the UDP port of this endpoint) cannot be bound: {source}")]
    TcpBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS listener could not be bound (RFC 3261 §26.2: SIP over TLS has its own port,
    /// 5061 by default).
    #[error("TLS {addr} cannot be bound: {source}")]
    TlsBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS configuration could not be built: PEM data without what it must hold, a key that
    /// does not match its certificate, an unreadable file.
    #[error("TLS {what}: {reason}")]
    Tls {
        /// Which part (e.g. `server certificate chain`, `trusted roots`, `file <path>`).
        what: String,
        /// Why.
        reason: String,
    },
    /// A stream message's header section has no end within the limit (RFC 3261 §18.3).
    #[error("stream offset {offset}: header section longer than {limit} bytes")]
    HeadTooLarge {
        /// Stream offset of the message.
        offset: u64,
        /// The limit.
        limit: usize,
    },
    /// A stream message declares a body above the limit.
    #[error("stream offset {offset}: Content-Length {declared} above the {limit}-byte limit")]
    BodyTooLarge {
        /// Stream offset of the message.
        offset: u64,
        /// The declared length.
        declared: u64,
        /// The limit.
        limit: usize,
    },
    /// A stream message without `Content-Length` (mandatory on streams, RFC 3261 §18.3):
    /// the stream cannot be framed further. Carries the request if its header section parses,
    /// so it can be answered 400.
    #[error("stream offset {offset}: no Content-Length, which a stream requires")]
    ContentLengthRequired {
        /// Stream offset of the message.
        offset: u64,
        /// The request, if its header section parses.
        request: Option<Box<sipx_sip::Request>>,
    },
    /// A stream message the parser refuses.
    #[error("stream offset {offset}: {source}")]
    Framing {
        /// Stream offset of the message.
        offset: u64,
        /// The parser's reason.
        source: sipx_sip::error::ParseError,
    },
    /// The endpoint task has stopped.
    #[error("the SIP endpoint has stopped")]
    Stopped,
}
