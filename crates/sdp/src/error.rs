//! The one error type of the SDP crate.

use crate::sdes::LineRejection;

/// Why an SDP body, an attribute value or an offer/answer could not be used.
///
/// Offsets (`offset`) count bytes from the start of the text handed to the parser: the
/// attribute *value* (what follows `a=crypto:` / `a=key-mgmt:` / `a=3ge2ae:`), or the whole
/// body for [`Error::Utf8`]. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text does not follow the grammar (`what` names the expected element).
    #[error("syntax error at byte {offset}: {what}")]
    Syntax {
        /// Byte offset of the offending element.
        offset: usize,
        /// What was expected or what is wrong.
        what: &'static str,
    },
    /// A number is outside the range the grammar or the RFC allows.
    #[error("value out of range at byte {offset}: {what}")]
    Range {
        /// Byte offset of the number.
        offset: usize,
        /// Which value and which range.
        what: &'static str,
    },
    /// Base64 text that does not decode (padded and unpadded forms are both accepted).
    #[error("invalid base64 at byte {offset}")]
    Base64 {
        /// Byte offset of the first offending base64 character.
        offset: usize,
    },
    /// The decoded `key||salt` does not have the length the crypto-suite requires
    /// (RFC 4568 §6.1 / RFC 6188 §3 / RFC 7714 §12).
    #[error("key||salt for {suite} must be {expected} bytes, got {got} (at byte {offset})")]
    KeyLength {
        /// Byte offset of the `inline:` key-param.
        offset: usize,
        /// Crypto-suite name.
        suite: String,
        /// Master key + master salt length of the suite.
        expected: usize,
        /// Decoded length.
        got: usize,
    },
    /// The body is not UTF-8 (SDP text is UTF-8, RFC 4566 §5).
    #[error("SDP body is not UTF-8 at byte {offset}")]
    Utf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// An edit would break the line structure (a line break inside a line, an `m=` line
    /// moved or created by an attribute edit, an index out of range).
    #[error("invalid edit: {0}")]
    Edit(&'static str),
    /// The media section index does not exist.
    #[error("no media section {0}")]
    NoSuchMedia(usize),
    /// SDES answerer: no offered `a=crypto` line is acceptable (RFC 4568 §7.1.2); the stream
    /// must be rejected (port 0) or the whole offer answered with 488. Each rejected line is
    /// listed with its index in the offer and the reason.
    #[error("no acceptable a=crypto line in the offer ({} rejected)", rejected.len())]
    NoAcceptableCrypto {
        /// `(index of the line in the offer, reason)`.
        rejected: Vec<(usize, LineRejection)>,
    },
    /// SDES offerer: the answer cannot be accepted (RFC 4568 §7.1.3/§7.1.4).
    #[error("unacceptable SDES answer: {0}")]
    BadAnswer(LineRejection),
    /// A policy that cannot produce an offer/answer (e.g. a suite with unknown key lengths).
    #[error("invalid SDES policy: {0}")]
    Policy(&'static str),
}
