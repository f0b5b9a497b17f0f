//! The crate's error type.

use mediasec_mikey::registry::ErrorCode;

/// Everything that can go wrong in the KMS and the UE side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// A MIKEY message was rejected; `code` is the ERR payload code (RFC 3830 §6.12).
    #[error("MIKEY ERR {code:?}: {reason}")]
    Mikey {
        /// ERR payload code.
        code: ErrorCode,
        /// Why.
        reason: String,
    },
    /// An identity or group identity is malformed.
    #[error("identity: {0}")]
    Identity(String),
    /// A policy document is invalid.
    #[error("policy: {0}")]
    Policy(String),
    /// The key ring is unusable (no key, wrong master key, corrupt entry).
    #[error("key ring: {0}")]
    KeyRing(String),
    /// The BSF (Zn) could not be asked.
    #[error("Zn: {0}")]
    Zn(String),
    /// A peer KMS (Zk) could not be asked or answered badly.
    #[error("Zk: {0}")]
    Zk(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] mediasec_kms_store::StoreError),
    /// HTTP transport (UE driver).
    #[error("HTTP: {0}")]
    Http(String),
    /// Configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// An LI key release was refused (warrant, parties, window, issuer; docs/li.md).
    #[error("{0}")]
    LiRefused(crate::li::Refusal),
    /// An LI request is malformed (warrant fields, TRANSFER_INIT / TRANSFER_RESP).
    #[error("{0}")]
    LiInput(String),
    /// Deferred delivery (voicemail, docs/voicemail.md) is not possible for this call.
    #[error("deferred delivery refused: {0}")]
    Deferred(String),
    /// The ticket of a stored TRANSFER_INIT is no longer valid: its keys cannot be obtained.
    #[error("ticket expired at {end} (Unix seconds; now {now}): the stored message cannot be decrypted")]
    TicketExpired {
        /// TRe of the ticket's TP Data.
        end: u64,
        /// The time of the check.
        now: u64,
    },
    /// A master-key rotation of the store failed or is unfinished ([`crate::rekey`]).
    #[error(transparent)]
    Rekey(#[from] mediasec_kms_store::rekey::RekeyError),
    /// A `keyprovision` message is malformed or does not verify (docs/kms.md).
    #[error("key provisioning: {0}")]
    KeyProvision(String),
    /// A KMS certificate is malformed, or may not be used (docs/high-security.md §10.9).
    #[error("KMS certificate: {0}")]
    Certificate(String),
    /// No KMS certificate of a community is valid at the instant asked: revoked, expired or
    /// not yet valid (docs/high-security.md §10.10).
    #[error(transparent)]
    CertificateNotValid(#[from] crate::community::NotValid),
}

impl KmsError {
    /// A MIKEY rejection.
    pub fn mikey(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Mikey { code, reason: reason.into() }
    }
}

impl From<mediasec_mikey::Error> for KmsError {
    fn from(e: mediasec_mikey::Error) -> Self {
        Self::Mikey { code: e.err_code(), reason: e.to_string() }
    }
}

/// A value sealed at rest that does not seal or open (wrong master key, tampered or moved row)
/// is a key-ring error, with the messages the KMS always gave.
impl From<mediasec_kms_store::sealed::SealError> for KmsError {
    fn from(e: mediasec_kms_store::sealed::SealError) -> Self {
        Self::KeyRing(e.to_string())
    }
}
