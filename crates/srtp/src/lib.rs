//! SRTP and SRTCP (RFC 3711) with the AES-192/256 counter-mode suites (RFC 6188) and
//! AES-GCM (RFC 7714), for every crypto suite of the IANA SDES registry that TS 33.328 uses.
//!
//! Sans-IO: a [`Session`] transforms packets in caller-owned buffers and never allocates
//! per packet (only when a new SSRC appears). Session state changes only after a packet
//! authenticates.
//!
//! ```
//! use mediasec_srtp::{MasterKey, Policy, Session, Suite};
//! let key = MasterKey::from_inline(Suite::AesCm128HmacSha1_80, &[7u8; 30])?;
//! let policy = Policy::new(Suite::AesCm128HmacSha1_80, key);
//! let (mut tx, mut rx) = (Session::new(&policy)?, Session::new(&policy)?);
//! let rtp = [0x80, 0, 0, 1, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe, b'h', b'i'];
//! let mut packet = rtp.to_vec();
//! tx.protect_rtp_vec(&mut packet)?;
//! assert_eq!(packet.len(), rtp.len() + 10);
//! rx.unprotect_rtp_vec(&mut packet)?;
//! assert_eq!(packet, rtp);
//! # Ok::<(), mediasec_srtp::Error>(())
//! ```

mod crypto;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod header;
mod kdf;
mod keys;
mod policy;
mod replay;
mod session;
mod stream;
mod suite;
#[cfg(test)]
#[allow(clippy::indexing_slicing)] // indexes vectors of known shape
mod vectors_test;

pub use error::Error;
pub use header::{is_rtcp, rtcp_ssrc, RtpHeader};
pub use policy::{MasterKey, Policy, MAX_MKI_LEN, SRTCP_MAX_PACKETS, SRTP_MAX_PACKETS};
pub use replay::{DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW};
pub use session::{Direction, Session};
pub use suite::{Suite, UnknownSuite};
