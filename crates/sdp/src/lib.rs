//! SDP for IMS media plane security (3GPP TS 33.328): a lossless SDP line model that an
//! IMS-ALG can edit without disturbing other bytes, and the key-management attributes —
//! `a=crypto` with SDES offer/answer (RFC 4568), `a=key-mgmt` (RFC 4567) and the e2ae
//! indication `a=3ge2ae` (TS 24.229 §7.5.2). Sans-IO: key material comes from a caller's
//! [`KeySource`]. See `docs/sdp.md`.

mod b64;
pub mod body;
pub mod crypto;
pub mod e2ae;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod key_mgmt;
pub mod sdes;
pub mod suite;

pub use body::{Attribute, Connection, Ending, Level, Line, MediaLine, Sdp};
pub use crypto::{fingerprint, CryptoAttribute, FecOrder, InlineKey, KeyParam, Lifetime, Mki, SessionParam};
pub use e2ae::E2aeIndication;
pub use error::Error;
pub use key_mgmt::KeyMgmt;
pub use sdes::{KeySource, LineRejection, Negotiated, SdesPolicy, SuiteOrder};
pub use suite::{CryptoSuite, SuiteParams};
