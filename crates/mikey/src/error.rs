//! The crate's error type.

use crate::registry::ErrorCode;

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, Error>;

/// Everything that can go wrong in the MIKEY codec, key derivation and message processing.
///
/// Decode errors carry the absolute byte offset (within the outermost buffer handed to the
/// decoder) at which the problem was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended inside a field.
    #[error("truncated at byte {offset}: {field} needs {needed} byte(s), only {available} left")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A Next Payload value names a payload type this codec does not know. MIKEY payloads
    /// carry no generic length, so parsing cannot continue (RFC 3830 §6).
    #[error("unknown payload type {payload_type} at byte {offset}")]
    UnknownPayload {
        /// Offset of the payload.
        offset: usize,
        /// The unknown type value.
        payload_type: u8,
    },
    /// A field has a value that makes the rest of the message undecodable or is forbidden.
    #[error("invalid {field} at byte {offset}: {reason}")]
    Invalid {
        /// Offset of the field.
        offset: usize,
        /// Field name.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Bytes remain after the last payload of a chain.
    #[error("{count} trailing byte(s) at byte {offset} after the last payload")]
    TrailingBytes {
        /// Offset of the first unexpected byte.
        offset: usize,
        /// Number of unexpected bytes.
        count: usize,
    },
    /// A value cannot be encoded (a length does not fit its field, or a value contradicts its
    /// type).
    #[error("cannot encode {field}: {reason}")]
    Encode {
        /// Field name.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A key or algorithm input has the wrong length.
    #[error("{what}: expected {expected} octets, got {got}")]
    Length {
        /// What was checked.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// An algorithm identifier this implementation does not support for the requested
    /// operation.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// Which registry.
        what: &'static str,
        /// The value.
        value: u16,
    },
    /// Key material is malformed or inconsistent (a point not on the curve, a scalar out of
    /// range, an SSK that fails RFC 6507 §5.1.2 validation, a DH value outside the group).
    #[error("invalid {what}: {reason}")]
    Key {
        /// Which key.
        what: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Caller-supplied randomness is unusable for this operation (zero or out of range, or a
    /// value that hits a retry condition of the algorithm, e.g. RFC 6507 §5.2.1 step 4): draw
    /// fresh random bytes and call again.
    #[error("{what}: draw fresh random bytes and retry")]
    FreshRandomness {
        /// Which random input.
        what: &'static str,
    },
    /// A message was checked and rejected; `code` is the ERR payload code to answer with
    /// (RFC 3830 §6.12, RFC 6043 §6.12).
    #[error("rejected with ERR {code:?}: {reason}")]
    Rejected {
        /// Error code for the ERR payload.
        code: ErrorCode,
        /// Human-readable reason.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(offset: usize, field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid { offset, field, reason: reason.into() }
    }

    pub(crate) fn encode(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Encode { field, reason: reason.into() }
    }

    pub(crate) fn rejected(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Rejected { code, reason: reason.into() }
    }

    /// The ERR payload code a receiver should answer this error with (RFC 3830 §6.12).
    /// Decode errors map to "Unsupported message type" (RFC 4738 error 13).
    pub fn err_code(&self) -> ErrorCode {
        match self {
            Self::Rejected { code, .. } => *code,
            Self::Truncated { .. }
            | Self::UnknownPayload { .. }
            | Self::Invalid { .. }
            | Self::TrailingBytes { .. } => ErrorCode::UNSUPPORTED_MESSAGE,
            Self::Unsupported { .. }
            | Self::Encode { .. }
            | Self::Length { .. }
            | Self::Key { .. }
            | Self::FreshRandomness { .. } => {
                ErrorCode::UNSPECIFIED
            }
        }
    }
}
