//! GBA (3GPP TS 33.220) for mediasec, sans-IO: everything a BSF and a UE compute, with no
//! sockets, clocks or files. Time (Unix seconds) and randomness are passed in.
//!
//! - [`milenage`]: f1..f5*, OPc, AUTN, AUTS (TS 35.206, TS 33.102 §6.3).
//! - [`kdf`]: the TS 33.220 Annex B KDF, Ks and Ks_NAF, NAF_Id / Ua protocol ids (Annex H).
//! - [`btid`]: B-TID = base64(RAND)@BSF-domain.
//! - [`digest`]: HTTP Digest AKA headers and computations (RFC 3310, RFC 2617).
//! - [`bootstrapping_info`]: the BSF's XML body (TS 24.109 Annex C).
//! - [`bsf`] / [`ue`]: the two ends of the Ub bootstrapping procedure (TS 24.109 §4).
//! - [`uicc`]: GBA_U (TS 33.220 clause 5, Annex G): UICC type, AUTN*, a simulated UICC.

pub mod bootstrapping_info;
pub mod bsf;
pub mod btid;
pub mod digest;
mod error;
pub mod kdf;
pub mod milenage;
pub mod ue;
pub mod uicc;

pub use error::GbaError;
