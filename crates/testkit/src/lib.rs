//! Test support shared by the test suites of several mediasec crates (dev-dependency only).
//!
//! - [`peer_unavailable`]: the project's rule for tests that need an independent peer: when
//!   the peer is missing, fail if `MEDIASEC_REQUIRE_PEERS=1` (as `scripts/test` sets), else
//!   print a skip line.
//! - [`libsrtp`]: libsrtp 2.7 (the OpenSSL build inside the PyPI wheel `pylibsrtp`) driven
//!   through `tests/interop/libsrtp_peer.c`.
//! - [`dns`]: a small authoritative DNS responder on 127.0.0.1 (NAPTR, SRV, A, AAAA) for the
//!   RFC 3263 server-location tests.
//! - [`free_ports`]: ports for a peer process (baresip, Kamailio, rtpengine) to bind.

// Test support: a failed expectation is a test failure, so panics are the intended outcome.
#![allow(clippy::indexing_slicing)]

pub mod dns;
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

/// The first of `span` consecutive ports on 127.0.0.1 that are each free for UDP and TCP right
/// now, for a peer process to bind later (baresip, Kamailio, rtpengine, our AGW's media range).
///
/// Taken at random *below* the kernel's ephemeral range (`ip_local_port_range`), so no socket
/// another test opens with port 0 — nextest runs many tests at once — can take it between this
/// probe and the peer's bind. (Probing with `bind(0)` and handing the port over could: CI saw
/// baresip fail "Address already in use" once.) Only another caller drawing the same ports in
/// that window could collide. Falls back to a port-0 probe when the ephemeral range leaves no
/// room below it.
pub fn free_ports(span: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FROM: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let room = ephemeral.saturating_sub(span).saturating_sub(FROM);
    let free = |p: u16| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    loop {
        let first = if room > 0 {
            // Jitter, not secrecy: std's randomly keyed hasher is enough to spread callers.
            FROM + (std::collections::hash_map::RandomState::new().build_hasher().finish() % u64::from(room)) as u16
        } else {
            std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("a free port")
        };
        if (first..first.saturating_add(span)).all(free) {
            return first;
        }
    }
}
