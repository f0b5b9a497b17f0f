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
}
