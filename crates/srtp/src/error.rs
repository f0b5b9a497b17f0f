//! The one error type of the SRTP crate.

/// Why a packet could not be protected or unprotected, or a policy was refused.
///
/// Every variant is cheap to copy, carries no secret, and maps to a stable
/// [`Error::reason`] string that tools use as a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The packet is not a well-formed RTP/RTCP or SRTP/SRTCP packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The authentication tag (HMAC-SHA1 or GCM) did not verify (RFC 3711 §3.3 step 5).
    #[error("authentication failed")]
    AuthFailed,
    /// The packet index was already received (RFC 3711 §3.3.2).
    #[error("replayed packet")]
    Replay,
    /// The packet index is older than the replay window (RFC 3711 §3.3.2).
    #[error("packet index too old for the replay window")]
    TooOld,
    /// The master key reached its packet limit (RFC 3711 §9.2: 2^48 SRTP, 2^31 SRTCP packets,
    /// or a shorter lifetime signalled by key management); a new master key is needed.
    #[error("master key exhausted: re-keying is required")]
    KeyExhausted,
    /// The SRTCP index space of a stream is used up (RFC 3711 §3.4: never wraps under one key).
    #[error("SRTCP index exhausted: re-keying is required")]
    IndexExhausted,
    /// The MKI in the packet names no master key of this session.
    #[error("unknown MKI")]
    UnknownMki,
    /// A new SSRC arrived but the session already holds its maximum number of streams.
    #[error("stream limit reached")]
    StreamLimit,
    /// The output buffer has no room for the SRTP trailer; the needed total is given.
    #[error("buffer too small: {0} bytes needed")]
    BufferTooSmall(usize),
    /// The policy is not valid (wrong key length, unsupported option, ...).
    #[error("invalid policy: {0}")]
    Policy(&'static str),
}

impl Error {
    /// A short, stable label for counting failures by reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::AuthFailed => "auth_failed",
            Self::Replay => "replay",
            Self::TooOld => "too_old",
            Self::KeyExhausted => "key_exhausted",
            Self::IndexExhausted => "index_exhausted",
            Self::UnknownMki => "unknown_mki",
            Self::StreamLimit => "stream_limit",
            Self::BufferTooSmall(_) => "buffer_too_small",
            Self::Policy(_) => "policy",
        }
    }
}
