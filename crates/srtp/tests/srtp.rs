//! Integration tests of the SRTP crate: behaviour, properties, and interop with libsrtp.
#![allow(clippy::indexing_slicing)] // test code indexes packets and vectors of known shape

#[path = "srtp/behaviour.rs"]
mod behaviour;
#[path = "srtp/interop.rs"]
mod interop;
#[path = "srtp/properties.rs"]
mod properties;
#[path = "srtp/util.rs"]
mod util;
