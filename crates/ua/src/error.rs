//! Errors of the UE.

/// A UE failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SIP layer.
    #[error("SIP: {0}")]
    Sip(#[from] mediasec_sip::Error),
    /// SDP / SDES.
    #[error("SDP: {0}")]
    Sdp(#[from] mediasec_sdp::Error),
    /// SRTP.
    #[error("SRTP: {0}")]
    Srtp(#[from] mediasec_srtp::Error),
    /// A SIP header could not be built.
    #[error("SIP header: {0}")]
    Header(#[from] mediasec_sip::core::BuildError),
    /// Socket.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The offer or answer is not acceptable under the local media-security policy
    /// (RFC 3264 / RFC 4568 §7.1; TR 33.828 req 43: no silent downgrade).
    #[error("media negotiation: {0}")]
    Negotiation(String),
    /// The call failed with this SIP status (or 408 for a timeout).
    #[error("call failed: {code} {reason}")]
    CallFailed {
        /// SIP status code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// The answer would downgrade media security below the caller's policy; the call was
    /// refused (ACK + BYE for a 2xx).
    #[error("answer refused by policy: {0}")]
    Downgrade(String),
    /// The offer's key management failed verification (high-security mode: a DH_INIT whose
    /// signature, identity, time or DH value is refused); answered 488 with the MIKEY Error
    /// message in the SDP when there is one.
    #[error("key management refused: {reason}")]
    KeyRefused {
        /// Why.
        reason: String,
        /// The RFC 3830 §5.1.2 Error message answering the offer's MIKEY message.
        mikey_error: Option<Vec<u8>>,
    },
    /// Unknown call.
    #[error("no such call")]
    NoSuchCall,
    /// The UE task stopped.
    #[error("the UE has stopped")]
    Stopped,
}
