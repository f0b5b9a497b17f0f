//! The one error type of this crate.

/// Everything that can go wrong in the GBA core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GbaError {
    /// A hex or base64 field had the wrong length.
    #[error("{what}: expected {expected} octets, got {got}")]
    Length {
        /// Which field.
        what: &'static str,
        /// Expected length in octets.
        expected: usize,
        /// Actual length in octets.
        got: usize,
    },
    /// A header or body could not be parsed; `offset` is the byte offset of the problem.
    #[error("{what}: malformed at byte {offset}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Byte offset into the input.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A required Digest parameter is missing.
    #[error("Digest parameter `{0}` missing")]
    MissingParam(&'static str),
    /// A Digest parameter has a value we do not support.
    #[error("Digest parameter `{param}` has unsupported value {value:?}")]
    Unsupported {
        /// Parameter name.
        param: &'static str,
        /// The offending value.
        value: String,
    },
    /// Base64 decoding failed.
    #[error("{what}: invalid base64")]
    Base64 {
        /// Which field.
        what: &'static str,
    },
    /// AUTN MAC check failed at the UE (TS 33.102 §6.3.3): the network is not authentic.
    #[error("AUTN MAC-A verification failed")]
    MacFailure,
    /// AUTS MAC-S check failed at the network (TS 33.102 §6.3.5).
    #[error("AUTS MAC-S verification failed")]
    AutsMacFailure,
    /// The server's `rspauth` (RFC 2617 §3.2.3) did not verify.
    #[error("Authentication-Info rspauth does not verify")]
    RspauthMismatch,
    /// A B-TID is not of the form `base64(RAND)@domain` (TS 33.220 §4.5.2).
    #[error("invalid B-TID: {0}")]
    InvalidBtid(&'static str),
    /// The UICC holds no (complete) GBA_U bootstrap: no Ks, or no B-TID stored for it yet
    /// (TS 33.220 G.2 NOTE: the command answers with an error).
    #[error("the UICC holds no GBA_U bootstrapped key (run a GBA_U bootstrap first)")]
    NoBootstrap,
    /// A GBA_ME call on a GBA_U run or the reverse (TS 33.220 clause 4 vs clause 5).
    #[error("this bootstrapping run is {run}, not {called}")]
    WrongGbaMode {
        /// The mode of the run.
        run: &'static str,
        /// The mode the called method belongs to.
        called: &'static str,
    },
}
