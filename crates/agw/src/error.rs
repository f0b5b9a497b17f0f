//! The one error type of the AGW crate.

/// Why an ng request, an SDP rewrite, a port allocation or a bencode message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bencode text does not follow the grammar (offset of the offending byte).
    #[error("bencode error at byte {offset}: {what}")]
    Bencode {
        /// Byte offset in the bencode message.
        offset: usize,
        /// What was expected or what is wrong.
        what: &'static str,
    },
    /// The ng datagram has no `cookie SP message` framing.
    #[error("ng datagram without a cookie")]
    NoCookie,
    /// A required ng key is missing or has the wrong type.
    #[error("missing or invalid key {0:?}")]
    BadKey(&'static str),
    /// An ng command this AGW does not implement.
    #[error("unsupported command {0:?}")]
    UnsupportedCommand(String),
    /// An ng key or flag this AGW does not implement (the text names it).
    #[error("unsupported {0}")]
    Unsupported(String),
    /// No call with this call-id (and tags).
    #[error("unknown call-id")]
    UnknownCall,
    /// The SDP cannot be handled (the text says why).
    #[error("SDP: {0}")]
    Sdp(String),
    /// SDES negotiation failed or an SRTP policy was refused.
    #[error("SDES: {0}")]
    Sdes(String),
    /// No free media port pair in the configured range.
    #[error("no free media port in the configured range")]
    NoPorts,
}

impl From<mediasec_sdp::Error> for Error {
    fn from(e: mediasec_sdp::Error) -> Self {
        Self::Sdp(e.to_string())
    }
}
