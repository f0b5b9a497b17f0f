//! The SIP layer of mediasec (RFC 3261, as the IMS uses it per TS 24.229).
//!
//! Message parsing, serialisation and the RFC 3261 §17 transaction state machines come from
//! [`sipx_sip`] (re-exported as [`core`]): a sans-IO core that keeps every header line as it
//! arrived, so a proxy that edits one header passes every other byte through unchanged. Why
//! we adopted it rather than writing our own is recorded in `docs/architecture.md`.
//!
//! This crate adds what media security needs on top:
//! - [`body`]: read the SDP body of a request or response and replace it, keeping
//!   `Content-Length` right and every other byte unchanged — the edit the IMS-ALG makes when
//!   it strips and inserts `a=crypto` lines (TS 33.328 §5.5.2, §7.3) and the one a UE makes
//!   when it answers.
//! - [`dialog`]: RFC 3261 §12 dialogs (route set, remote target, CSeq), sans-IO.
//! - [`endpoint`]: the tokio endpoint, UDP and TCP on one port and TLS on its own (RFC 3261
//!   §18, §26.2), that runs the transaction layer and its timers for a transaction user (the
//!   UE and the CSCF cores); [`stream`] frames messages out of a TCP or TLS byte stream
//!   (§18.3), sans-IO; [`tls`] builds the TLS setup from PEM and names the server a client
//!   verifies (RFC 5922); [`udp_queue`] reads how full the UDP receive queue is (the
//!   endpoint's early overload signal); [`locate`] finds a server's transports and addresses
//!   from its URI by DNS (RFC 3263 §4).

pub mod body;
pub mod dialog;
pub mod endpoint;
mod error;
pub mod fuzzing;
pub mod locate;
pub mod stream;
mod tcp;
pub mod tls;
pub mod udp_queue;

/// The endpoint under its first name, from when it spoke UDP only: the UE and the CSCFs
/// import it as `mediasec_sip::udp`.
pub use endpoint as udp;

pub use error::Error;
pub use sipx_sip as core;
