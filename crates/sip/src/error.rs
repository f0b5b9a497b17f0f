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
    /// The UDP transport failed.
    #[error("UDP transport: {0}")]
    Io(#[from] std::io::Error),
    /// The endpoint task has stopped.
    #[error("the SIP endpoint has stopped")]
    Stopped,
}
