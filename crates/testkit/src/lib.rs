//! Test support shared by the test suites of several mediasec crates (dev-dependency only).
//!
//! - [`peer_unavailable`]: the project's rule for tests that need an independent peer: when
//!   the peer is missing, fail if `MEDIASEC_REQUIRE_PEERS=1` (as `scripts/test` sets), else
//!   print a skip line.
//! - [`libsrtp`]: libsrtp 2.7 (the OpenSSL build inside the PyPI wheel `pylibsrtp`) driven
//!   through `tests/interop/libsrtp_peer.c`.

// Test support: a failed expectation is a test failure, so panics are the intended outcome.
#![allow(clippy::indexing_slicing)]

pub mod libsrtp;

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `probe`; `true` when it ran and exited with success. Otherwise reports `tool` as an
/// unavailable peer ([`peer_unavailable`]) and returns `false`.
pub fn tool_usable(tool: &str, probe: &mut std::process::Command) -> bool {
    match probe.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            peer_unavailable(tool, &format!("probe exited with {s}"));
            false
        }
        Err(e) => {
            peer_unavailable(tool, &e.to_string());
            false
        }
    }
}

/// Reports a missing peer: panics when `MEDIASEC_REQUIRE_PEERS=1`, else prints a skip line.
pub fn peer_unavailable(peer: &str, why: &str) {
    assert!(
        std::env::var("MEDIASEC_REQUIRE_PEERS").as_deref() != Ok("1"),
        "{peer} unavailable (scripts/test installs it): {why}"
    );
    eprintln!("SKIP: {peer} unavailable: {why}");
}
