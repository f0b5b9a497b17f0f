//! The crate's error type.

/// Everything that can go wrong in the voicemail server and the owner's retrieval.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VoicemailError {
    /// A stored record does not decode (byte offset of the problem).
    #[error("stored record: {reason} at byte {offset}")]
    Record {
        /// Offset into the record.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The message store failed.
    #[error("store: {0}")]
    Store(String),
    /// SIP.
    #[error(transparent)]
    Sip(#[from] mediasec_sip::Error),
    /// A SIP header could not be built.
    #[error("SIP header: {0}")]
    Header(#[from] mediasec_sip::core::BuildError),
    /// SDP, MIKEY-TICKET in SDP, or the UE side.
    #[error(transparent)]
    Ua(#[from] mediasec_ua::Error),
    /// The KMS or the UE's MIKEY-TICKET side (resolve, TRANSFER_INIT, ticket validity).
    #[error(transparent)]
    Kms(#[from] mediasec_kms::KmsError),
    /// SRTP.
    #[error("SRTP: {0}")]
    Srtp(#[from] mediasec_srtp::Error),
    /// Socket or file.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The retrieval API answered with an error status.
    #[error("voicemail API: {status} {reason}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
    /// A retrieval API answer is malformed.
    #[error("voicemail API answer: {0}")]
    Answer(String),
    /// Configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// Store failures, the contention of a read-modify-write included, as [`VoicemailError::Store`].
impl From<mediasec_kms_store::StoreError> for VoicemailError {
    fn from(e: mediasec_kms_store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}
