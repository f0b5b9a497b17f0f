//! The CSCF roles of the mediasec lab (TS 24.229 P-CSCF and S-CSCF, reduced to what media
//! security needs on loopback): registrar/location with `Path`, routing between two domains,
//! parallel forking to every registered contact, retargeting, and the P-CSCF's SDES checks
//! and `mediasec` registration indication.
//!
//! - [`alg`]: the P-CSCF's IMS-ALG for e2ae (drives the IMS-AGW over ng), sans-IO.
//! - [`registrar`]: location service, sans-IO.
//! - [`proxy`]: the stateful proxy core, sans-IO (endpoint events in, commands out).
//! - [`service`]: the tokio service wiring the core to a `mediasec_sip` UDP endpoint.
//! - [`lab`]: the two-domain loopback topology (tests, demo, benchmarks).
//! - [`fuzzing`]: the entry point of the `cscf_proxy` fuzz target and its corpus replay.

pub mod alg;
pub mod fuzzing;
pub mod lab;
pub mod proxy;
pub mod registrar;
pub mod service;

pub use proxy::{NgRequest, Proxy, ProxyConfig, Role, Stats};

/// Errors of this crate's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An e2ae provisioning entry ([`alg::Provisioned`]) is not `sip:user@host` or
    /// `sip:*@host`.
    #[error("e2ae provisioning entry {entry:?}: {reason} (expected sip:user@host or sip:*@host)")]
    Provisioning {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
}
