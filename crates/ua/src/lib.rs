//! The mediasec UE (TS 33.328 §7.2/§7.3 from the UE's side): SIP registration with the
//! media-security capability indication, calls placed and answered with a per-call media
//! security choice (none, SDES e2e, MIKEY-TICKET e2e, high-security), and SRTP media over UDP checked by content.
//!
//! - [`offer_answer`]: sans-IO SDP offer/answer with the SDES policy and the downgrade rule.
//! - [`ticket`]: MIKEY-TICKET (KMS-based e2e) in the SDP: Ticket Transfer with the KMS UE side.
//! - [`high_security`]: the high-security mode: ECCSI-signed MIKEY-DH in the SDP.
//! - [`mikey_sakke`]: MIKEY-SAKKE (RFC 6509) in the SDP: identity-based key transport.
//! - [`tone`]: the G.711 test tone and its detector.
//! - [`media`]: the RTP/SRTP endpoint of a call (tokio).
//! - [`agent`]: the UE service (tokio) on top of `mediasec_sip`'s UDP endpoint and dialogs.

pub mod agent;
mod error;
pub mod high_security;
pub mod media;
pub mod mikey_sakke;
pub mod offer_answer;
pub mod ticket;
pub mod tone;

pub use agent::{Answering, CallReport, CallState, Registration, Role, Ue, UeConfig};
pub use error::Error;
pub use offer_answer::Security;
