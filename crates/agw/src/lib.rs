//! IMS Access Gateway (3GPP TS 33.328 e2ae, §4.1.2.1 / §5.4.1): a media relay that
//! terminates SRTP/SRTCP towards the UE and relays plain RTP/RTCP (or SRTP under other
//! keys) towards the core, controlled by the rtpengine *ng* protocol so that Kamailio's
//! `rtpengine` module can drive it. See `docs/agw.md`.
//!
//! Layers: [`relay`] (sans-IO packet core), [`bencode`] and [`ng`] (control codec and
//! command handling, sans-IO), [`server`] (tokio UDP driver).

pub mod bencode;
pub mod control;
pub mod ng;
mod error;
mod ports;
#[doc(hidden)]
pub mod fuzzing;
pub mod relay;
pub mod server;
pub mod stats;
// The one module with `unsafe`: the media io_uring (soundness argued at each block and in
// its module documentation).
#[allow(unsafe_code)]
mod uring;

pub use control::{Config, Controller, PortSource};
pub use error::Error;
pub use server::{ensure_open_files, open_files_wanted, Agw, MediaPath, ServerConfig};
pub use relay::{Leg, MediaStream, Protection, Relay, Side, StreamId, Verdict};
pub use stats::{Component, Counter, DropReason, LegStats};
